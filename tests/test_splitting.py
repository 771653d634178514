"""How a K >= 2 model starts (pal_mm.splitting): prototypes split from a fitted K = 1 model, users
clustered by what they prefer, and the guarantee that a split model is never worse than K = 1 on
validation."""

from dataclasses import replace

import pytest
import torch

from encoders import create_encoder
from pal_mm import PALConfig, PreferenceData, TrainConfig, evaluate, fit
from pal_mm.embedding import EncodedPairs
from pal_mm.errors import PalMMError
from pal_mm.heads import create_head
from pal_mm.splitting import (CLUSTER_LOGIT, cluster_logits, cluster_users, mixture_outcome, split_head,
                               user_signatures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(model_type, k, users=4, **kw):
    return create_head(PALConfig(model_type=model_type, k=k, prompt_dim=3, item_dim=5, dim=6, init_seed=k, **kw), users)


@pytest.mark.parametrize("model_type", ["pal-a", "pal-b"])
def test_split_head_starts_at_the_source_for_any_weights(model_type):
    source, target = _head(model_type, 1), _head(model_type, 3)
    p, x = torch.randn(7, 3), torch.randn(7, 5)
    split_head(target, source)
    want = source.reward(p, x, torch.ones(7, 1))
    for w in (torch.tensor([[1.0, 0, 0]]), torch.tensor([[0.2, 0.3, 0.5]]), torch.softmax(torch.randn(7, 3), -1)):
        got = target.reward(p, x, w.expand(7, 3))
        assert torch.allclose(got, want, atol=1e-5), (model_type, w)
    assert not torch.equal(target.user_logits, source.user_logits[:, :1].expand(4, 3))  # user rows untouched


@pytest.mark.parametrize("model_type", ["pal-a", "pal-b"])
def test_split_from_k2_keeps_each_users_rewards(model_type):
    source, target = _head(model_type, 2), _head(model_type, 3)
    split_head(target, source)
    p, x = torch.randn(4, 3), torch.randn(4, 5)
    users = torch.arange(4)
    want = source.reward(p, x, source.user_weights(users))
    assert torch.allclose(target.reward(p, x, target.user_weights(users)), want, atol=1e-5)
    assert torch.allclose(target.user_weights(users)[:, :2], source.user_weights(users), atol=1e-6)


def test_split_head_copies_prototype_k_mod_source_k():
    source, target = _head("pal-a", 2), _head("pal-a", 5)
    split_head(target, source)
    assert torch.equal(target.P, source.P[torch.tensor([0, 1, 0, 1, 0])])
    b_src, b_tgt = _head("pal-b", 2), _head("pal-b", 3)
    split_head(b_tgt, b_src)
    assert torch.equal(b_tgt.g[2].net[0].weight, b_src.g[0].net[0].weight)
    assert torch.equal(b_tgt.f.net[0].weight, b_src.f.net[0].weight)


def test_split_refuses_other_types_and_larger_sources():
    with pytest.raises(PalMMError, match="cannot split"):
        split_head(_head("pal-b", 2), _head("pal-a", 1))
    with pytest.raises(PalMMError, match="cannot split"):
        split_head(_head("pal-b", 2), _head("pal-b", 3))
    with pytest.raises(PalMMError, match="cannot start from a smaller model"):
        split_head(_head("single-rm", 1), _head("single-rm", 1))


def test_cluster_users_recovers_separated_groups_and_logits():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [-4.0, 0, 0], [0, 5.0, 0]])
    truth = torch.arange(30) % 3
    sig = centres[truth] + 0.5 * torch.randn(30, 3, generator=gen)
    labels, info = cluster_users(sig, 3, seed=1)
    # the same partition up to a renaming of the clusters
    assert all(len(set(labels[truth == g].tolist())) == 1 for g in range(3)) and len(set(labels.tolist())) == 3
    assert sorted(info["sizes"]) == [10, 10, 10]
    logits = cluster_logits(torch.tensor([1, 0]), 3)
    assert torch.equal(logits, torch.tensor([[0, CLUSTER_LOGIT, 0], [CLUSTER_LOGIT, 0, 0]]))
    few, info = cluster_users(torch.randn(2, 3), 3, seed=0)  # fewer users than K: one user per prototype
    assert few.tolist() == [0, 1] and info["sizes"] == [1, 1, 0]


def _two_group_pairs(users=12, per_user=30, width=6, seed=0):
    """Group 0 prefers items with a large first coordinate, group 1 a small one; everybody prefers a
    large second coordinate (a shared taste); labels without noise."""
    gen = torch.Generator().manual_seed(seed)
    n = users * per_user
    a, b = torch.randn(n, width, generator=gen), torch.randn(n, width, generator=gen)
    user = torch.arange(n) // per_user
    sign = 1 - 2 * (user % 2).float()
    score = lambda x: sign * x[:, 0] + 0.5 * x[:, 1]  # noqa: E731
    first = score(a) > score(b)
    chosen, rejected = torch.where(first[:, None], a, b), torch.where(first[:, None], b, a)
    return EncodedPairs(torch.randn(n, 3, generator=gen), chosen, rejected, [f"u{int(u):02d}" for u in user]), user % 2


def test_user_signatures_separate_the_groups():
    pairs, group = _two_group_pairs()
    head = create_head(PALConfig(k=2, prompt_dim=3, item_dim=6, dim=8), 12)
    head.fit_normalizers(pairs.prompt, torch.cat([pairs.chosen, pairs.rejected]))
    uidx = torch.as_tensor([int(u[1:]) for u in pairs.user_ids])
    sig = user_signatures(head, None, pairs.chosen, pairs.rejected, uidx, 12)
    assert sig.shape[0] == 12 and torch.allclose(sig.mean(0), torch.zeros(sig.shape[1]), atol=1e-5)  # centred
    labels, info = cluster_users(sig, 2, seed=0)
    per_user_group = group[:: 30]
    assert len(set(labels[per_user_group == 0].tolist())) == 1 and len(set(labels[per_user_group == 1].tolist())) == 1
    assert labels[per_user_group == 0][0] != labels[per_user_group == 1][0]
    assert info["separation"] > 1.5


def test_split_fit_is_never_worse_than_k1_on_validation(tmp_path):
    import json

    pairs, _ = _two_group_pairs(users=10, per_user=40)
    rows = list(range(len(pairs)))
    train, val = pairs.subset([i for i in rows if i % 40 < 30]), pairs.subset([i for i in rows if i % 40 >= 30])
    enc = create_encoder("precomputed")
    tc = TrainConfig(epochs=4, progress=False, seed=0)
    k1 = fit(train, val, enc, PALConfig(k=1, dim=8), tc)
    path = tmp_path / "metrics.jsonl"
    k2 = fit(train, val, enc, PALConfig(k=2, dim=8), tc, metrics_path=path, split_source=k1)
    assert k2.metrics["val_loss"] <= k1.metrics["val_loss"] + 1e-6
    assert k2.metrics["k_init"]["k_init"] == "cluster" and k2.metrics["split_source"]["k"] == 1
    records = [json.loads(line) for line in path.read_text().splitlines()]
    own = [r for r in records if r.get("stage") != "split-source"]
    assert [r["epoch"] for r in own][:2] == [0, 1]  # epoch 0: K = 1 as a K = 2 model
    assert abs(own[0]["val_loss"] - k1.metrics["val_loss"]) < 1e-5  # ... computes what K = 1 does
    source = [r for r in records if r.get("stage") == "split-source"]
    assert [r["val_loss"] for r in source] == [r["val_loss"] for r in k1.history]
    # with the groups found, K = 2 beats K = 1 clearly
    assert evaluate(k2, val)["accuracy"] > evaluate(k1, val)["accuracy"] + 0.1


def test_split_evidence_is_the_bar_a_mixture_must_clear():
    # two clear groups: the mixture's per-pair validation gain is many standard errors, so the default (0)
    # and 2 keep it; a bar no gain can clear keeps the K = 1 copy (epoch 0), whose rewards are K = 1's
    pairs, _ = _two_group_pairs(users=10, per_user=40)
    rows = list(range(len(pairs)))
    train, val = pairs.subset([i for i in rows if i % 40 < 30]), pairs.subset([i for i in rows if i % 40 >= 30])
    enc = create_encoder("precomputed")
    tc = TrainConfig(epochs=4, progress=False, seed=0)
    assert tc.split_evidence == 0.0
    k1 = fit(train, val, enc, PALConfig(k=1, dim=8), tc, beliefs=False)
    kept = {}
    for bar in (0.0, 2.0, 1e9):
        m = fit(train, val, enc, PALConfig(k=2, dim=8), replace(tc, split_evidence=bar), split_source=k1, beliefs=False)
        kept[bar] = m.metrics["k_init"]["kept_k1"]
        gain = m.metrics["k_init"]["gain_over_k1_se"]
        assert gain > 2.0  # recorded whatever the bar
    assert kept == {0.0: False, 2.0: False, 1e9: True}
    assert m.metrics["best_epoch"] == 0 and m.metrics["val_loss"] == pytest.approx(k1.metrics["val_loss"], abs=1e-5)
    # the model card says so: this K = 2 model computes K = 1's rewards
    card = str(m.generate_model_card())
    assert "## Mixture" in card and "did not clear --split-evidence 1e+09" in card
    with pytest.raises(PalMMError, match="split-evidence must be >= 0"):
        TrainConfig(split_evidence=-1.0)


def test_mixture_outcome_sentences():
    assert mixture_outcome({}) is None and mixture_outcome({"k_init": {"k_init": "cluster"}}) is None
    kept = {"k_init": {"kept_k1": False, "gain_over_k1_se": 4.26, "split_evidence": 0.0}, "split_source": {"k": 1}}
    assert mixture_outcome(kept) == ("the mixture beat its K = 1 start on the validation loss by 4.3 standard errors "
                                     "(needed > 0) and was kept")
    flat = {"k_init": {"kept_k1": True, "gain_over_k1_se": None, "split_evidence": 0.0}}
    assert mixture_outcome(flat).startswith("the model is its K = 1 start (no epoch beat it on the validation loss)")
    short = {"k_init": {"kept_k1": True, "gain_over_k1_se": 1.5, "split_evidence": 2.0}, "split_source": {"k": 2}}
    assert "K = 2 start (its validation gain, 1.5 standard errors, did not clear --split-evidence 2)" in mixture_outcome(short)


def test_k_init_choices_and_errors():
    with pytest.raises(PalMMError, match="k_init"):
        TrainConfig(k_init="grow")
    pairs, _ = _two_group_pairs(users=6, per_user=20)
    enc = create_encoder("precomputed")
    for how in ("cluster", "split", "random"):
        m = fit(pairs, None, enc, PALConfig(k=2, dim=8), TrainConfig(epochs=1, progress=False, k_init=how))
        assert (m.metrics.get("k_init") or {}).get("k_init") == (None if how == "random" else how)
        assert ("split_source" in m.metrics) == (how == "split")  # without validation data no K = 1 to fall back on
    k1 = fit(pairs, None, enc, PALConfig(model_type="pal-a", k=1, dim=8), TrainConfig(epochs=1, progress=False))
    with pytest.raises(PalMMError, match="split_source"):
        fit(pairs, None, enc, PALConfig(k=2, dim=8), TrainConfig(epochs=1, progress=False), split_source=k1)


def test_preference_data_input_splits_too(synthetic_dir):
    train = PreferenceData.load(synthetic_dir / "train.jsonl")
    val = PreferenceData.load(synthetic_dir / "val.jsonl")
    m = fit(train, val, create_encoder("precomputed"), PALConfig(k=2), TrainConfig(epochs=2, progress=False))
    assert m.metrics["split_source"]["k"] == 1 and m.metrics["k_init"]["k_init"] == "cluster"


@pytest.mark.parametrize("how", ["cluster", "split"])
def test_k1_is_kept_when_nothing_beats_it(how):
    # learning rates so small that the K = 3 model cannot move: no epoch beats the fitted K = 1 model,
    # so the result is K = 1 with its prototype copied three times (the same rewards for any weights)
    pairs, _ = _two_group_pairs(users=8, per_user=30)
    rows = list(range(len(pairs)))
    train, val = pairs.subset([i for i in rows if i % 30 < 20]), pairs.subset([i for i in rows if i % 30 >= 20])
    enc = create_encoder("precomputed")
    # (the plain Bradley-Terry loss: the frozen fresh start of `cluster` must not beat K = 1 by chance)
    k1 = fit(train, val, enc, PALConfig(k=1, dim=8, label_noise=0.0), TrainConfig(epochs=3, progress=False))
    frozen = TrainConfig(epochs=2, progress=False, k_init=how, lr_projector=1e-12, lr_users=1e-12, lr_logit_scale=1e-12)
    k3 = fit(train, val, enc, PALConfig(k=3, dim=8, label_noise=0.0), frozen, split_source=k1)
    assert k3.metrics["best_epoch"] == 0 and k3.metrics["val_loss"] == pytest.approx(k1.metrics["val_loss"], abs=1e-5)
    p = val.prompt[:5]
    for w in (torch.tensor([1.0, 0, 0]), torch.tensor([0.1, 0.6, 0.3])):
        got = k3.head.reward(p, val.chosen[:5], w.expand(5, 3))
        assert torch.allclose(got, k1.head.reward(p, val.chosen[:5], torch.ones(5, 1)), atol=1e-5)


def test_prompt_signature_separates_prompt_dependent_groups():
    # group 0 prefers a large first item coordinate when the prompt's first coordinate is positive and a
    # small one otherwise; group 1 the opposite: the plain per-user mean difference is ~0 for everybody
    gen = torch.Generator().manual_seed(1)
    users, per_user = 12, 80
    n = users * per_user
    p, a, b = torch.randn(n, 4, generator=gen), torch.randn(n, 6, generator=gen), torch.randn(n, 6, generator=gen)
    user = torch.arange(n) // per_user
    sign = (1 - 2 * (user % 2).float()) * torch.sign(p[:, 0])
    first = sign * (a[:, 0] - b[:, 0]) > 0
    chosen, rejected = torch.where(first[:, None], a, b), torch.where(first[:, None], b, a)
    head = create_head(PALConfig(k=2, prompt_dim=4, item_dim=6, dim=8), users)
    head.fit_normalizers(p, torch.cat([chosen, rejected]))
    group = (torch.arange(users) % 2).tolist()

    def separated(sig):
        labels, _ = cluster_users(sig, 2, seed=0)
        return len({(int(l), g) for l, g in zip(labels, group)}) == 2

    assert separated(user_signatures(head, p, chosen, rejected, user, users))
    assert not separated(user_signatures(head, None, chosen, rejected, user, users))
