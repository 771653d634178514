"""New users: calibration, the prior over users, posteriors, online updates, active querying,
inspect. A tiny PAL-B K = 2 model of a two-group population (antipodal true prototypes, so the two
groups disagree on every pair) is trained once per module."""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
import torch

from data_scripts.synthetic import make_pairs
from encoders import create_encoder
from encoders.atomic import write_jsonl
from pal_mm import AdaptConfig, PALConfig, PALModel, PreferenceData, TrainConfig, adapt, evaluate, fit
from pal_mm.calibration import brier, ece, fit_inv_temperature, reliability
from pal_mm.cli import main
from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.errors import PalMMError
from pal_mm.fewshot import fewshot_split
from pal_mm.beliefs import user_basis
from pal_mm.posterior import UserPairs, fit_map
from pal_mm.prior import fit_mixture, fit_mixtures
from pal_mm.query import information_gain, pair_key, read_pool, select_queries

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_groups(n_users: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).random(n_users) < 0.5
    return np.where(g[:, None], [0.95, 0.05], [0.05, 0.95])


@pytest.fixture(scope="module")
def world():
    v = np.random.default_rng(0).normal(size=8)
    protos = np.stack([v, -v]) / np.linalg.norm(v)
    w = two_groups(36, 1)
    kw = {"prompt_dim": 4, "beta": 10.0}
    train = PreferenceData.from_rows(make_pairs(protos, w[:24], 40, seed=1, **kw))
    val = PreferenceData.from_rows(make_pairs(protos, w[:24], 12, seed=2, **kw))
    test = PreferenceData.from_rows(make_pairs(protos, w[:24], 10, seed=3, **kw))
    new = PreferenceData.from_rows(make_pairs(protos, w[24:], 50, seed=4, user_prefix="new", **kw))
    # fixed training (random user logits, one start, the plain Bradley-Terry loss) so these tests do not move
    # with the library's defaults
    tc = TrainConfig(epochs=20, batch_size=64, lr_users=5e-2, lr_projector=3e-3, seed=0, progress=False,
                     k_init="random", restarts=1)
    model = fit(train, val, create_encoder("precomputed"), PALConfig(model_type="pal-b", k=2, label_noise=0.0), tc)
    return {"model": model, "test": test, "new": new, "enc": encode_data(model.encoder, new), "rows": new.to_rows(),
            "groups": w[:, 0] > 0.5}


def population_model(model: PALModel, users: list[str]) -> PALModel:
    """The model with ``users`` added at the prior mean: what it knows about a user before any pair."""
    m = copy.deepcopy(model)
    mean = m.beliefs.collapsed_prior()[0][None] @ user_basis(m.config.k).T
    m.add_users(users, mean.expand(len(users), -1))
    return m


# ------------------------------------------------------------------------------------------
# calibration maths by hand
# ------------------------------------------------------------------------------------------
def test_ece_and_brier_on_hand_examples():
    # each pair in both orders: (0.9, 1) (0.8, 1) (0.3, 1) (0.1, 0) (0.2, 0) (0.7, 0), one per bin:
    # |gap| = 0.1, 0.2, 0.7, 0.1, 0.2, 0.7 -> 2.0 / 6 (= the top-label ECE of confidences 0.9, 0.8, 0.7)
    assert ece([0.9, 0.8, 0.3]) == pytest.approx(2.0 / 6)
    assert brier([0.9, 0.8, 0.3]) == pytest.approx((0.01 + 0.04 + 0.49) / 3)
    # two confident correct pairs share a bin: |1 - 0.93| in the top bin, |0 - 0.07| in the bottom one
    assert ece([0.91, 0.95]) == pytest.approx(0.07)
    bins = reliability([0.91, 0.95])
    assert bins[9]["count"] == 2 and bins[9]["frequency"] == 1.0 and bins[9]["mean_p"] == pytest.approx(0.93)
    assert bins[0]["frequency"] == 0.0 and sum(b["count"] for b in bins) == 4
    assert ece([0.5, 0.5]) == 0.0 and math.isnan(ece([]))


def test_temperature_fit_by_hand():
    # Platt's target t = (N + 1) / (N + 2) = 5/6 for N = 4 pairs; 3 with margin +1, 1 with margin -1:
    # d/da = -[3 (t - s(a)) - (t - s(-a))] = -[2t + 1 - 4 s(a)] = 0 at s(a) = 2/3, a = ln 2
    assert fit_inv_temperature([1, 1, 1, -1]) == pytest.approx(math.log(2), rel=1e-6)
    assert fit_inv_temperature([2, 2, 2, -2]) == pytest.approx(math.log(2) / 2, rel=1e-6)
    # separated pairs give a finite a: t = 3/4 for N = 2; s(a) + 2 s(2a) = 9/4
    a = fit_inv_temperature([1.0, 2.0])
    assert a < 100 and 1 / (1 + math.exp(-a)) + 2 / (1 + math.exp(-2 * a)) == pytest.approx(2.25, rel=1e-6)
    assert fit_inv_temperature([]) == 1.0


def test_the_prior_finds_groups_of_users():
    g = torch.Generator().manual_seed(0)
    two = torch.cat([torch.randn(30, 1, generator=g) * 0.2 - 3, torch.randn(10, 1, generator=g) * 0.2 + 3])
    mix = fit_mixture(two)
    assert len(mix["means"]) == 2 and mix["bic"]["2"] < mix["bic"]["1"]
    assert sorted(round(float(m)) for m in mix["means"][:, 0]) == [-3, 3]
    assert sorted(round(float(w), 2) for w in mix["log_weights"].exp()) == [0.25, 0.75]
    one = torch.randn(40, 2, generator=g)
    assert len(fit_mixture(one)["means"]) == 1


def test_information_gain_prefers_uncertain_users_not_noisy_pairs():
    a = 1.0
    # the same predicted answer (coin flip) but only the first one's uncertainty is about the user
    ig = information_gain(np.array([0.0, 0.0, 3.0]), np.array([9.0, 0.0, 0.0]), a)
    assert ig[0] > 0.3 and ig[1] == pytest.approx(0.0, abs=1e-9) and ig[2] == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------
# the head's reduced margins, Jacobians, the MAP solver
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["pal-a", "pal-b"])
def test_reduced_margins_and_jacobians_match_the_direct_ones(model_type):
    from pal_mm.heads import create_head

    head = create_head(PALConfig(model_type=model_type, k=3, prompt_dim=5, item_dim=6), num_users=0).eval()
    g = torch.Generator().manual_seed(0)
    p, c, r = torch.randn(90, 5, generator=g), torch.randn(90, 6, generator=g), torch.randn(90, 6, generator=g)
    rows = torch.arange(90) % 4
    logits = torch.randn(4, 3, generator=g)
    pairs = UserPairs.of(head, p, c, r, rows, 4)
    with torch.no_grad():
        direct = head.margin(p, c, r, torch.softmax(logits, -1)[rows])
        assert torch.allclose(pairs.margins(logits), direct, atol=1e-5)
    basis = user_basis(3)
    z = logits @ basis
    m, jac = pairs.jacobian(z, basis)  # 90 pairs: the double-backward path
    small = UserPairs(head, {k: v[:20] for k, v in pairs.features.items()}, rows[:20], 4)
    _, jac_small = small.jacobian(z, basis)  # 20 pairs: one row of coordinates per pair
    eps = 1e-3
    for j in range(2):
        dz = torch.zeros_like(z)
        dz[:, j] = eps
        with torch.no_grad():
            fd = (pairs.margins((z + dz) @ basis.T) - pairs.margins((z - dz) @ basis.T)) / (2 * eps)
        assert torch.allclose(jac[:, j], fd, atol=2e-2, rtol=2e-2)
    assert torch.allclose(jac[:20], jac_small, atol=1e-5)
    # the head's closed-form per-pair gradients (PAL-B) equal the autograd default
    from pal_mm.heads.base import PreferenceHead

    m1, g1 = head.margin_gradients_from_features(pairs.features, logits, rows)
    m2, g2 = PreferenceHead.margin_gradients_from_features(head, pairs.features, logits, rows)
    assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(g1, g2, atol=1e-5)


def test_map_solver_finds_the_minimum_of_the_objective(world):
    """Gauss-Newton + line search vs many small Adam steps on the same negative log posterior."""
    model, enc = world["model"], world["enc"]
    head = model.head
    users = sorted(set(enc.user_ids))[:3]
    rows_idx = [i for i, u in enumerate(enc.user_ids) if u in users][:15]
    sub = enc.subset(rows_idx)
    rows = torch.as_tensor([users.index(u) for u in sub.user_ids])
    pairs = UserPairs.of(head, sub.prompt, sub.chosen, sub.rejected, rows, 3)
    basis = user_basis(2)
    mean, prec = model.beliefs.collapsed_prior()
    a = model.beliefs.inv_temperature
    z, h = fit_map(pairs, basis, a, mean.expand(3, -1), prec.expand(3, -1, -1))
    zz = mean.expand(3, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([zz], lr=0.02)
    for _ in range(3000):
        d = zz - mean
        loss = torch.nn.functional.softplus(-a * pairs.margins(zz @ basis.T)).sum() + 0.5 * (d @ prec * d).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    def objective(x):  # per user: negative log posterior
        with torch.no_grad():
            per_pair = torch.nn.functional.softplus(-a * pairs.margins(x @ basis.T))
            d = x - mean
            return torch.zeros(3, dtype=per_pair.dtype).index_add(0, rows, per_pair) + 0.5 * (d @ prec * d).sum(-1)

    # at least as low as where Adam gets, and a stationary point (the objective is flat far out on the
    # simplex, so Adam's point can sit a few 1e-2 away along the flat direction)
    assert bool((objective(z) <= objective(zz.detach()) + 1e-4).all()), (objective(z), objective(zz.detach()))
    zg = z.clone().requires_grad_(True)
    d = zg - mean
    total = torch.nn.functional.softplus(-a * pairs.margins(zg @ basis.T)).sum() + 0.5 * (d @ prec * d).sum()
    (grad,) = torch.autograd.grad(total, zg)
    assert float(grad.abs().max()) < 1e-3, grad
    assert torch.allclose(z, zz.detach(), atol=5e-2)
    assert h.shape == (3, 1, 1) and bool((h[:, 0, 0] >= prec[0, 0] - 1e-9).all())


# ------------------------------------------------------------------------------------------
# prior, posterior, calibration of a trained model
# ------------------------------------------------------------------------------------------
def test_training_fits_calibration_prior_and_posteriors(world):
    model = world["model"]
    b = model.beliefs
    assert 0.01 <= b.inv_temperature <= 100 and b.strength in (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    c = len(b.prior_means)
    assert b.prior_means.shape == (c, 1) and b.prior_log_weights.shape == (c,) and b.prior_precision.shape == (1, 1)
    assert model.metrics["beliefs"]["prior_components"] == c
    assert b.precision.shape == (len(model.users), 1, 1)
    sel = model.metrics["beliefs"]["prior_selection"]
    strengths = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    assert set(sel["brier"]) == {f"C={c},s={s}" for c in (1, 2) for s in strengths}
    # the rule: the highest few-shot accuracy (within 0.1 point), then the lowest Brier score
    chosen = f"C={c},s={b.strength}"
    assert sel["accuracy"][chosen] >= max(sel["accuracy"].values()) - 1e-3
    near_top = [key for key, acc in sel["accuracy"].items() if acc >= max(sel["accuracy"].values()) - 1e-3]
    assert sel["brier"][chosen] <= min(sel["brier"][key] for key in near_top) + 1e-9
    # the two-component candidate finds the two groups of seen users (which of the two C the
    # noisy few-shot selection on 24 users keeps varies with the training seed)
    z = model.head.user_logits.detach() @ user_basis(2)
    groups = torch.as_tensor(world["groups"][: len(model.users)])
    order = torch.as_tensor([int(u.removeprefix("user")) for u in model.users])
    found = fit_mixtures(z)[2]["responsibilities"].argmax(1).bool()
    agree = float((found == groups[order]).double().mean())
    assert max(agree, 1 - agree) >= 0.9, agree
    m = evaluate(model, world["test"])
    assert m["accuracy"] > 0.75 and m["ece"] < 0.1 and 0 < m["brier"] < 0.25
    assert set(m["per_user"][model.users[0]]) >= {"accuracy", "ece", "brier"}


def test_posterior_shape_and_shrinkage_with_n(world):
    model, enc = world["model"], world["enc"]
    stds = {}
    for n in (1, 5, 30):
        split = fewshot_split(enc.user_ids, [n], seed=0, test_pairs=15)
        m = adapt(copy.deepcopy(model), enc.subset(split.train[n]))
        new_users = sorted(set(enc.user_ids))
        assert m.beliefs.precision.shape == (len(m.users), 1, 1)
        std = m.user_weight_std(new_users)
        assert std.shape == (len(new_users), 2)
        stds[n] = std[:, 0]
    prior_std = population_model(model, ["nobody"]).user_weight_std(["nobody"])[0, 0]
    # (under a mixture prior one surprising pair can widen a user's posterior: only the average must shrink)
    assert float(stds[30].mean()) < float(stds[5].mean()) < float(stds[1].mean()) <= float(prior_std) + 0.02
    assert float(stds[30].max()) < 0.5 * float(prior_std)


def test_prior_beats_the_population_model_with_one_to_five_pairs(world):
    model, enc = world["model"], world["enc"]
    users = sorted(set(enc.user_ids))
    for n in (1, 2, 5):
        with_prior, population = [], []
        for seed in range(3):
            split = fewshot_split(enc.user_ids, [n], seed=seed, test_pairs=25)
            test = enc.subset(split.test[n])
            with_prior.append(evaluate(adapt(copy.deepcopy(model), enc.subset(split.train[n])), test)["accuracy"])
            population.append(evaluate(population_model(model, users), test)["accuracy"])
        assert np.mean(with_prior) > np.mean(population) + (0.1 if n == 1 else 0.15), (n, with_prior, population)


def test_flipping_a_new_users_labels_flips_their_predictions(world):
    model, enc = world["model"], world["enc"]
    user = sorted(set(enc.user_ids))[0]
    split = fewshot_split(enc.user_ids, [20], seed=0, test_pairs=25)
    train = enc.subset([i for i in split.train[20] if enc.user_ids[i] == user])
    test = enc.subset([i for i in split.test[20] if enc.user_ids[i] == user])
    flipped = EncodedPairs(train.prompt, train.rejected, train.chosen, ["flipped"] * len(train))
    m = adapt(adapt(copy.deepcopy(model), train), flipped)
    with torch.no_grad():
        a = m.reward_embeddings(test.prompt, test.chosen, user=user) - m.reward_embeddings(test.prompt, test.rejected, user=user)
        b = m.reward_embeddings(test.prompt, test.chosen, user="flipped") - m.reward_embeddings(test.prompt, test.rejected, user="flipped")
    assert float(((a > 0) != (b > 0)).float().mean()) >= 0.9


def test_predict_preference_averages_over_the_posterior(world):
    model, rows = world["model"], world["rows"]
    r = rows[0]
    few = adapt(copy.deepcopy(model), PreferenceData.from_rows([r]))
    p = few.predict_preference(r["prompt"], [r["chosen"]], [r["rejected"]], user=r["user_id"])[0]
    point = few.predict_preference(r["prompt"], [r["chosen"]], [r["rejected"]], weights=few.user_weights(r["user_id"]))[0]
    assert 0.5 < p < point or point < p < 0.5  # the posterior pulls toward 0.5, the same side
    std = few.reward_std(r["prompt"], [r["chosen"], r["rejected"]], user=r["user_id"])
    assert len(std) == 2 and all(s > 0 for s in std)
    assert few.reward_std(r["prompt"], [r["chosen"]], weights=[0.5, 0.5]) == [0.0]


# ------------------------------------------------------------------------------------------
# online updates
# ------------------------------------------------------------------------------------------
def test_update_user_tracks_a_full_refit(world):
    model, enc = world["model"], world["enc"]
    split = fewshot_split(enc.user_ids, [20], seed=1, test_pairs=25)
    train, test = enc.subset(split.train[20]), enc.subset(split.test[20])
    online = copy.deepcopy(model)
    times = []
    for i in range(len(train)):
        t = time.thread_time()  # CPU time of this thread: robust to other processes on a shared machine
        online.update_user_embeddings(train.user_ids[i], train.prompt[i:i + 1], train.chosen[i:i + 1], train.rejected[i:i + 1])
        times.append(time.thread_time() - t)
    refit = adapt(copy.deepcopy(model), train)
    users = sorted(set(train.user_ids))
    w_online = np.array([online.user_weights(u) for u in users])
    w_refit = np.array([refit.user_weights(u) for u in users])
    # one Gauss-Newton step per pair tracks the refit closely; in flat directions a mode can lag a little
    assert np.abs(w_online - w_refit).mean() < 0.02 and np.abs(w_online - w_refit).max() < 0.15
    assert abs(evaluate(online, test)["accuracy"] - evaluate(refit, test)["accuracy"]) <= 0.005
    assert np.median(times) < 0.02  # a few ms at most (experiments/new_users measures it)


def test_update_user_by_inputs_adds_a_new_user_from_the_prior(world):
    model, rows = copy.deepcopy(world["model"]), world["rows"]
    r = rows[0]
    w = model.update_user("fresh", r["prompt"], r["chosen"], r["rejected"])
    assert "fresh" in model.users and len(w) == 2 and abs(sum(w) - 1) < 1e-6
    assert model.beliefs.precision.shape[0] == len(model.users)
    assert float(model.beliefs.precision[-1, 0, 0]) > float(model.beliefs.collapsed_prior()[1][0, 0])


# ------------------------------------------------------------------------------------------
# saving, loading, corruption
# ------------------------------------------------------------------------------------------
def test_beliefs_are_saved_with_the_model_and_checked(world, tmp_path):
    model = adapt(copy.deepcopy(world["model"]), PreferenceData.from_rows(world["rows"][:30]))
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["beliefs"]["prior"] is True and cfg["beliefs"]["state_coordinates"] == 1
    back = PALModel.from_pretrained(tmp_path / "m")
    assert torch.equal(back.beliefs.precision, model.beliefs.precision)
    assert back.beliefs.inv_temperature == pytest.approx(model.beliefs.inv_temperature)
    # a non-positive-definite precision is refused even with matching checksums
    from safetensors.torch import load_file, save_file

    import hashlib

    f = tmp_path / "m" / "model.safetensors"
    tensors = load_file(f)
    tensors["beliefs.precision"][0] = -1.0
    save_file(tensors, f, metadata={"format": "pt"})
    cfg["files"]["model.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PalMMError, match="not symmetric positive definite"):
        PALModel.from_pretrained(tmp_path / "m")
    # a model saved without beliefs (older pal-mm) still loads, without posteriors
    old = copy.deepcopy(world["model"])
    old.beliefs = None
    old.save_pretrained(tmp_path / "old")
    back = PALModel.from_pretrained(tmp_path / "old")
    assert back.beliefs is None and back.user_weight_std() is None
    assert 0.0 <= back.predict_preference(world["rows"][0]["prompt"], [world["rows"][0]["chosen"]],
                                          [world["rows"][0]["rejected"]], user=back.users[0])[0] <= 1.0


# ------------------------------------------------------------------------------------------
# active querying
# ------------------------------------------------------------------------------------------
def _pool(rows):
    return [{"user_id": r["user_id"], "prompt": r["prompt"], "response_a": r["rejected"], "response_b": r["chosen"]} for r in rows]


def test_query_never_repeats_an_excluded_pair(world, tmp_path):
    model = world["model"]
    rows = [r for r in world["rows"] if r["user_id"] in ("new000", "new001")]
    pool = _pool(rows) + _pool(rows[:5])  # duplicates
    write_jsonl(tmp_path / "pool.jsonl", pool)
    answered = rows[:6] + [{**rows[7], "chosen": rows[7]["rejected"], "rejected": rows[7]["chosen"]}]  # either order
    write_jsonl(tmp_path / "answered.jsonl", answered)
    excluded = {pair_key(r["user_id"], r["prompt"], r["chosen"], r["rejected"]) for r in answered}
    assert main(["query", "--model", _saved(model, tmp_path), "--pool", str(tmp_path / "pool.jsonl"), "--n", "60",
                 "--exclude", str(tmp_path / "answered.jsonl"), "--out", str(tmp_path / "ask.jsonl")]) == 0
    asked = [json.loads(line) for line in (tmp_path / "ask.jsonl").read_text().splitlines()]
    keys = [pair_key(r["user_id"], r["prompt"], r["response_a"], r["response_b"]) for r in asked]
    assert not set(keys) & excluded and len(keys) == len(set(keys))
    assert len(asked) == len({pair_key(r["user_id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows}) - len(excluded)
    assert set(asked[0]) == {"user_id", "prompt", "response_a", "response_b"}


def test_query_picks_informative_pairs_and_bad_input_is_one_line(world, tmp_path, capsys):
    model = world["model"]
    pool = read_pool_rows = _pool(world["rows"])
    write_jsonl(tmp_path / "pool.jsonl", pool)
    p = read_pool(tmp_path / "pool.jsonl")
    picked = select_queries(model, p, 3)
    assert set(picked) == set(r["user_id"] for r in read_pool_rows) and all(len(v) == 3 for v in picked.values())
    # EIG picks pairs whose answer the model cannot predict for a new user: not the most one-sided ones
    enc = encode_data(model.encoder, p.data)
    probe = population_model(model, sorted(set(p.data.user_ids)))
    probs = probe.pair_probabilities(enc).numpy()
    chosen_rows = [i for v in picked.values() for i in v]
    assert np.mean(np.abs(probs[chosen_rows] - 0.5)) <= np.mean(np.abs(probs - 0.5))
    model_dir = _saved(model, tmp_path)
    for argv, message in [
        (["--n", "0", "--out", str(tmp_path / "q.jsonl")], "--n must be a positive integer"),
        (["--n", "2", "--out", str(tmp_path / "q.txt")], "write the queries as"),
    ]:
        assert main(["query", "--model", model_dir, "--pool", str(tmp_path / "pool.jsonl"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    write_jsonl(tmp_path / "labelled.jsonl", world["rows"][:3])
    assert main(["query", "--model", model_dir, "--pool", str(tmp_path / "labelled.jsonl"), "--n", "2",
                 "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "no chosen/rejected labels" in capsys.readouterr().err and not (tmp_path / "q.jsonl").exists()


def _saved(model, tmp_path) -> str:
    d = tmp_path / "model"
    if not d.exists():
        model.save_pretrained(d)
    return str(d)


# ------------------------------------------------------------------------------------------
# command line: eval, score, inspect
# ------------------------------------------------------------------------------------------
def test_eval_score_inspect_commands(world, tmp_path, capsys):
    rows = [r for r in world["rows"] if r["user_id"] in ("new000", "new001", "new002")]
    model = adapt(copy.deepcopy(world["model"]), PreferenceData.from_rows(rows[::5]))
    d = _saved(model, tmp_path)
    write_jsonl(tmp_path / "test.jsonl", [r for i, r in enumerate(rows) if i % 5])
    assert main(["eval", "--model", d, "--data", str(tmp_path / "test.jsonl"), "--json", str(tmp_path / "m.json"),
                 "--plot", str(tmp_path / "rel.png")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["brier"] <= 1 and len(metrics["reliability"]) == 10
    assert all({"ece", "brier"} <= set(u) for u in metrics["per_user"].values())
    assert (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"
    r = world["rows"][0]
    vec = lambda v: ",".join(str(x) for x in v)  # noqa: E731
    capsys.readouterr()
    assert main(["score", "--model", d, "--user", r["user_id"], f"--prompt={vec(r['prompt'])}", f"--response={vec(r['chosen'])}",
                 f"--response={vec(r['rejected'])}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rewards"]) == len(out["std"]) == 2 and all(s > 0 for s in out["std"])
    assert main(["inspect", "--model", d, "--json", "--plot", str(tmp_path / "users.png")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["k"] == 2 and set(info["users"]) == set(model.users)
    assert all(len(w) == 2 and abs(sum(w) - 1) < 1e-4 for w in info["users"].values())
    assert set(info["users_std"]) == set(model.users) and info["prior"]["strength"] == model.beliefs.strength
    assert (tmp_path / "users.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", "--model", d]) == 0
    assert "K = 2 prototypes" in capsys.readouterr().out
    assert main(["export", "--model", d, "--user", "new000", "--out", str(tmp_path / "rm")]) == 0
    capsys.readouterr()
    assert main(["inspect", "--model", str(tmp_path / "rm"), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["k"] == 2 and one["users"] == {} and one["weights"] == pytest.approx(model.user_weights("new000"), abs=1e-5)


def test_inspect_picture_for_three_prototypes_is_a_simplex_scatter(tmp_path):
    from pal_mm.inspection import plot_users

    info = {"k": 3, "model_type": "pal-b", "simplex_users": True,
            "users": {"a": [0.8, 0.1, 0.1], "b": [0.1, 0.8, 0.1], "c": [0.2, 0.2, 0.6]},
            "users_std": {"a": [0.1, 0.05, 0.05], "b": [0.05, 0.1, 0.05], "c": [0.1, 0.1, 0.1]}, "groups": {"a": "x", "b": "y"}}
    cov = torch.diag_embed(torch.tensor([info["users_std"][u] for u in "abc"]) ** 2)
    plot_users(info, tmp_path / "s.png", cov)
    plot_users({**info, "k": 3, "simplex_users": False}, tmp_path / "bars.png", cov)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


def test_tied_log_density_is_the_gaussian_log_density():
    """The EM's log density (one Cholesky factor for every component) against torch.distributions and
    against the 1-d formula by hand."""
    from pal_mm.prior import _tied_log_density

    g = torch.Generator().manual_seed(0)
    z, means = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(3, dtype=torch.float64)
    want = torch.distributions.MultivariateNormal(means, covariance_matrix=cov.expand(4, 3, 3)).log_prob(z[:, None, :])
    assert torch.allclose(_tied_log_density(z, means, cov), want, atol=1e-10)
    # 1-d: x = 1, mean 0, variance 4 -> -1/8 - log 2 - log(2 pi) / 2
    got = _tied_log_density(torch.tensor([[1.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                            torch.tensor([[4.0]], dtype=torch.float64))
    assert float(got) == pytest.approx(-1 / 8 - math.log(2) - 0.5 * math.log(2 * math.pi))


@pytest.mark.parametrize("model_type", ["pal-a", "pal-b"])
def test_closed_form_margin_gradients_equal_autograd(model_type):
    """The heads' closed-form per-pair gradients (used for new users' Jacobians at any number of pairs)
    equal the autograd default, and the Jacobian path through them equals the backward-pass path."""
    from pal_mm.heads import create_head
    from pal_mm.heads.base import PreferenceHead

    head = create_head(PALConfig(model_type=model_type, k=3, prompt_dim=4, item_dim=5, dim=6, init_seed=1), 0).eval()
    g = torch.Generator().manual_seed(0)
    n, users = 90, 7
    p, c, r = (torch.randn(n, w, generator=g) for w in (4, 5, 5))
    rows = torch.arange(n) % users
    logits = torch.randn(users, 3, generator=g)
    pairs = UserPairs.of(head, p, c, r, rows, users)
    m1, g1 = head.margin_gradients_from_features(pairs.features, logits, rows)
    m2, g2 = PreferenceHead.margin_gradients_from_features(head, pairs.features, logits, rows)
    assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(g1, g2, atol=1e-5)
    assert float(g1.abs().max()) > 1e-3  # not a vacuous comparison
    basis = user_basis(3)
    z = logits @ basis
    m_fast, j_fast = pairs.jacobian(z, basis)  # n > PER_PAIR_MAX: the closed form
    head.closed_form_margin_gradients = False
    m_slow, j_slow = pairs.jacobian(z, basis)  # 1 + S backward passes
    assert torch.allclose(m_fast, m_slow, atol=1e-5) and torch.allclose(j_fast, j_slow, atol=1e-4)
