"""pal_mm.fewshot: the one unseen-user protocol (splits, nested n-shot sets, adapt curve, mean +- std)."""

from __future__ import annotations

import math

import pytest
import torch

import pal_mm.adaptation

from data_scripts.synthetic import make_pairs, make_population
from encoders import create_encoder
from pal_mm import AdaptConfig, PALConfig, PreferenceData, TrainConfig, evaluate, fit
from pal_mm import fewshot
from pal_mm.data import split_indices_per_user
from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.errors import PalMMError
from pal_mm.fewshot import adapt_curve, curve_summary, fewshot_rows, fewshot_sets, fewshot_split, mean_std

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 users with 12, 9, 30 and 3 rows, interleaved
USERS = [u for i in range(30) for u, count in (("a", 12), ("b", 9), ("c", 30), ("d", 3)) if i < count]
NS = [1, 2, 5, 10]


@pytest.mark.parametrize("test_pairs", [None, 4])
@pytest.mark.parametrize("seed", [0, 7])
def test_training_sets_are_nested_and_never_meet_the_test_pairs(seed, test_pairs):
    split = fewshot_split(USERS, NS, seed, test_pairs)
    assert split.ns == NS
    for small, big in zip(NS, NS[1:]):  # a user kept at the bigger n keeps its smaller set
        kept = {USERS[i] for i in split.train[big]}
        assert {i for i in split.train[small] if USERS[i] in kept} <= set(split.train[big]), (small, big)
    for n in NS:
        train, test = split.train[n], split.test[n]
        assert not set(train) & set(test)
        per_user = {u: sum(USERS[i] == u for i in train) for u in set(USERS[i] for i in train)}
        assert set(per_user.values()) == {n}  # exactly n pairs of every kept user
        assert {USERS[i] for i in test} == set(per_user)  # and only kept users are tested
        assert split.users[n] == len(per_user)


def test_users_without_enough_rows_are_left_out_at_that_n():
    rest = fewshot_split(USERS, NS, 0)
    assert rest.users == {1: 4, 2: 4, 5: 3, 10: 2}  # d (3 rows) goes at n = 5, b (9 rows) at n = 10
    assert len(rest.test[1]) == (12 - 1) + (9 - 1) + (30 - 1) + (3 - 1)
    fixed = fewshot_split(USERS, NS, 0, test_pairs=4)
    assert fixed.users == {1: 3, 2: 3, 5: 3, 10: 1}  # n + 4 rows needed
    # the fixed test pairs of a user are the same for every n
    test_c = [set(i for i in fixed.test[n] if USERS[i] == "c") for n in NS]
    assert len(test_c[0]) == 4 and all(t == test_c[0] for t in test_c)


def test_the_split_is_seeded_and_matches_the_data_builders_split():
    assert fewshot_split(USERS, NS, 3) == fewshot_split(USERS, NS, 3)
    assert fewshot_split(USERS, NS, 3).train != fewshot_split(USERS, NS, 4).train
    # n = 2: every user has more than 2 rows, so the builders' split (pal_mm.data) is the same
    split = fewshot_split(USERS, [2], 42)
    assert (split.train[2], split.test[2]) == split_indices_per_user(USERS, 2, 42)
    # the n-shot training sets do not depend on how the test pairs are chosen
    fixed = fewshot_split(USERS, [1, 2, 5], 1, test_pairs=3).train[2]
    assert {USERS[i] for i in fixed} == {"a", "b", "c"}  # d has 3 rows: not 2 + 3
    assert fixed == [i for i in fewshot_split(USERS, [1, 2, 5], 1).train[2] if USERS[i] != "d"]


def test_sets_and_rows_helpers_follow_the_split():
    rows = [{"user_id": u, "prompt": f"p{i}", "chosen": "x", "rejected": "y"} for i, u in enumerate(USERS)]
    split = fewshot_split(USERS, [2, 5], 9, test_pairs=2)
    by_rows = fewshot_rows(rows, [2, 5], 9, test_pairs=2)
    assert [r["prompt"] for r in by_rows[5][0]] == [f"p{i}" for i in split.train[5]]
    assert [r["prompt"] for r in by_rows[5][1]] == [f"p{i}" for i in split.test[5]]
    data = PreferenceData.from_rows(rows)
    sets = fewshot_sets(data, [2, 5], 9, test_pairs=2)
    assert sets[2][0].prompts == [r["prompt"] for r in by_rows[2][0]]
    assert set(sets[2][0].prompts) <= set(sets[5][0].prompts)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(PalMMError, match="positive"):
        fewshot_split(USERS, [0, 2], 0)
    with pytest.raises(PalMMError, match="test_pairs"):
        fewshot_split(USERS, [2], 0, test_pairs=0)


def test_mean_std_is_the_sample_std_on_a_hand_example():
    mean, std = mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / (3 - 1)); ddof = 0 would give 0.163
    assert mean_std([0.6, float("nan"), 0.8]) == pytest.approx([0.7, math.sqrt(0.02)])
    assert mean_std([0.3]) == [0.3, 0.0]
    assert all(math.isnan(x) for x in mean_std([]))


def test_curve_summary_pools_seeds_with_the_convention():
    rs = [fewshot.ShotResult(n=n, seed=s, accuracy=acc, n_pairs=10, n_ties=0, n_users=2, per_user={},
                             per_group={"g": acc - 0.1})
          for n, s, acc in ((1, 0, 0.5), (1, 1, 0.7), (1, 2, 0.9), (5, 0, 0.8))]
    out = curve_summary(rs)
    assert out["accuracy"]["1"] == pytest.approx([0.7, 0.2])
    assert out["accuracy"]["5"] == [0.8, 0.0]
    assert out["per_group"]["g"]["1"] == pytest.approx([0.6, 0.2])
    assert out["per_seed"]["1"] == [0.5, 0.7, 0.9] and out["users"]["5"] == [2]


# --------------------------------------------------------------------------------------------
# the adapt curve on a tiny generated mixture
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture():
    """K* = 2 ideal-point mixture, well separated users; a PAL-A K = 2 model of the seen users."""
    protos, w = make_population(k_true=2, dim=8, num_users=36, seed=0, alpha=0.1)
    train = PreferenceData.from_rows(make_pairs(protos, w[:24], 60, seed=1, prompt_dim=4))
    val = PreferenceData.from_rows(make_pairs(protos, w[:24], 15, seed=2, prompt_dim=4))
    rows = make_pairs(protos, w[24:], 50, seed=3, prompt_dim=4, user_prefix="new")
    for r in rows:
        r["group"] = "first" if r["user_id"] < "new006" else "second"
    new = PreferenceData.from_rows(rows)
    enc = create_encoder("precomputed")
    tc = TrainConfig(epochs=25, batch_size=128, lr_projector=3e-3, lr_users=5e-2, lr_prototypes=5e-2, seed=0, progress=False)
    model = fit(train, val, enc, PALConfig(model_type="pal-a", k=2, projector="mlp2-gelu-residual",
                                            pal_a_use_prompt=False), tc)
    rm = fit(train, val, enc, PALConfig(model_type="single-rm", k=1), tc)
    return model, rm, new


def test_curve_rises_with_n_and_reports_users_and_groups(mixture):
    model, _, new = mixture
    splits = fewshot.fewshot_splits(new.user_ids, [1, 20], seeds=[0, 1], test_pairs=25)
    results = adapt_curve(model, new, splits, AdaptConfig(steps=200))
    assert [(r.n, r.seed) for r in results] == [(1, 0), (1, 1), (20, 0), (20, 1)]
    curve = curve_summary(results)
    assert curve["accuracy"]["20"][0] > curve["accuracy"]["1"][0] + 0.05, curve["accuracy"]
    assert set(curve["per_group"]) == {"first", "second"}
    for r in results:
        assert r.n_users == 12 and set(r.per_user) == set(new.users) and r.n_pairs == 12 * 25
    assert not any(u.startswith("new") for u in model.users)  # the model itself is not changed


def test_curve_equals_adapt_and_evaluate_one_block_at_a_time(mixture):
    """The batched blocks give what one library adapt per (n, seed) gives."""
    import copy

    from pal_mm import adapt

    model, _, new = mixture
    enc = encode_data(model.encoder, new)
    split = fewshot_split(new.user_ids, [2, 10], seed=5)
    cfg = AdaptConfig(steps=100)
    results = adapt_curve(model, enc, [split], cfg, weights=True)
    for r in results:
        one = adapt(copy.deepcopy(model), enc.subset(split.train[r.n]), cfg)
        ev = evaluate(one, enc.subset(split.test[r.n]))
        assert r.accuracy == pytest.approx(ev["accuracy"], abs=2e-3)
        for u, w in r.weights.items():
            # MAP under the prior, solved in two different batches: equal up to the solver's stopping rule
            # (Gauss-Newton, which converges linearly here, ends when a step gains < 1e-6 nats); on a flat
            # posterior from 2 pairs that leaves a few 1e-3 in a weight
            assert w == pytest.approx(one.user_weights(u), abs=5e-3)


def test_the_model_and_its_encoder_are_left_alone(mixture):
    model, _, new = mixture
    before = {k: v.clone() for k, v in model.state_dict().items()}
    users = list(model.users)
    adapt_curve(model, new, [fewshot_split(new.user_ids, [2], seed=0)], AdaptConfig(steps=10))
    assert model.users == users
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(PalMMError, match="seeds must differ"):
        adapt_curve(model, new, [fewshot_split(new.user_ids, [2], seed=0)] * 2)
    with pytest.raises(PalMMError, match="made for 10 rows"):
        adapt_curve(model, new, [fewshot_split(new.user_ids[:10], [2], seed=0)])


def test_no_test_pair_reaches_adapt(mixture, monkeypatch):
    model, _, new = mixture
    enc = encode_data(model.encoder, new)
    enc = EncodedPairs(enc.prompt.clone(), enc.chosen, enc.rejected, enc.user_ids)
    enc.prompt[:, 0] = torch.arange(len(enc), dtype=torch.float32)  # row id in the first prompt coordinate
    seen_rows = []
    real_adapt = pal_mm.adaptation.adapt

    def spy(m, data, config=None, **kw):
        seen_rows.extend(int(x) for x in data.prompt[:, 0])
        return real_adapt(m, data, config, **kw)

    monkeypatch.setattr("pal_mm.adaptation.adapt", spy)
    split = fewshot_split(new.user_ids, [3, 8], seed=2, test_pairs=20)
    adapt_curve(model, enc, [split], AdaptConfig(steps=5))
    assert sorted(seen_rows) == sorted(split.train[3] + split.train[8])
    assert not set(seen_rows) & (set(split.test[3]) | set(split.test[8]))


def test_a_model_without_user_state_gets_its_population_accuracy(mixture):
    _, rm, new = mixture
    enc = encode_data(rm.encoder, new)
    split = fewshot_split(new.user_ids, [1, 10], seed=0, test_pairs=20)
    results = adapt_curve(rm, enc, [split])
    assert len({r.accuracy for r in results}) == 1  # the same test pairs for every n, nothing to adapt
    test = enc.subset(split.test[1])
    with torch.no_grad():  # the population reward: any weights give the same single-RM reward
        margin = rm.reward_embeddings(test.prompt, test.chosen, weights=[1.0]) - rm.reward_embeddings(
            test.prompt, test.rejected, weights=[1.0])
    assert results[0].accuracy == pytest.approx(float((margin > 0).float().mean()))
