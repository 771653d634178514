"""Training on ground-truth data, determinism, save/load, adapt, evaluation."""

import copy
import dataclasses
import json

import pytest
import torch

from encoders import create_encoder
from pal_mm import AdaptConfig, PALConfig, PALModel, PreferenceData, TrainConfig, adapt, evaluate, fit
from pal_mm.errors import PalMMError

FAST = TrainConfig(epochs=25, batch_size=64, progress=False, seed=0)


@pytest.fixture(scope="module")
def data(synthetic_dir):
    return {name: PreferenceData.load(synthetic_dir / f"{name}.jsonl") for name in ("train", "val", "test", "new")}


@pytest.fixture(scope="module")
def pal_b(data):
    return fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(model_type="pal-b", k=2), FAST)


def test_pal_b_learns_ground_truth(pal_b, data):
    acc = evaluate(pal_b, data["test"])["accuracy"]
    assert acc >= 0.80, acc  # Bayes accuracy of this generator is ~0.88
    assert pal_b.metrics["val_accuracy"] >= 0.80


def test_k2_beats_single_reward_model(pal_b, data):
    single = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(model_type="single-rm", k=1), FAST)
    assert evaluate(pal_b, data["test"])["accuracy"] > evaluate(single, data["test"])["accuracy"] + 0.05


def test_pal_a_learns(data):
    m = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(model_type="pal-a", k=2), FAST)
    assert evaluate(m, data["test"])["accuracy"] >= 0.70


def test_training_is_deterministic(data):
    tc = TrainConfig(epochs=2, progress=False, seed=3)
    a = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(k=2), tc)
    b = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(k=2), tc)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_metrics_file_and_best_epoch(tmp_path, data):
    path = tmp_path / "metrics.jsonl"
    m = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(k=2), TrainConfig(epochs=3, progress=False, restarts=1),
            metrics_path=path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    # K = 2 starts from clustered users with the fitted K = 1 model as epoch 0 (pal_mm.splitting): the K = 1
    # run's epochs come first, marked with their stage
    source = [r for r in records if r.get("stage") == "split-source"]
    own = [r for r in records if "stage" not in r]
    assert [r["epoch"] for r in source] == [1, 2, 3] and [r["epoch"] for r in own] == [0, 1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "logit_scale"} <= set(own[1])
    best = min(own, key=lambda r: r["val_loss"])
    # the best epoch by validation loss, unless it does not beat K = 1 (epoch 0) by SPLIT_EVIDENCE standard errors
    assert m.metrics["best_epoch"] in (best["epoch"], 0)
    assert m.metrics["val_loss"] == pytest.approx(own[m.metrics["best_epoch"]]["val_loss"], abs=1e-6)


def test_validation_users_must_be_seen(data):
    with pytest.raises(PalMMError, match="absent from training"):
        fit(data["train"], data["new"], create_encoder("precomputed"), PALConfig(k=2), TrainConfig(epochs=1, progress=False))


def test_save_load_round_trip(tmp_path, pal_b, data):
    pal_b.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors", "users.json"]
    loaded = PALModel.from_pretrained(tmp_path / "m")
    test = data["test"]
    for user in loaded.users[:3]:
        rows = [i for i, u in enumerate(test.user_ids) if u == user]
        args = ([test.prompts[i] for i in rows], [test.chosen[i] for i in rows])
        assert loaded.reward(*args, user=user) == pal_b.reward(*args, user=user)
    assert loaded.users == pal_b.users and loaded.metrics == pal_b.metrics
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pal-mm") and "val_accuracy" in card


def test_load_errors(tmp_path, pal_b):
    with pytest.raises(PalMMError, match="not a pal-mm model directory"):
        PALModel.from_pretrained(tmp_path)
    pal_b.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PalMMError, match="model.safetensors: checksum mismatch"):
        PALModel.from_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["files"]  # a directory without checksums (older pal-mm): the damage is still caught, later
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="without checksums"), pytest.raises(PalMMError, match="corrupt weights file"):
        PALModel.from_pretrained(tmp_path / "m")
    pal_b.save_pretrained(tmp_path / "m2")
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    cfg["head"]["k"] = 3
    (tmp_path / "m2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PalMMError, match="do not match the config"):
        PALModel.from_pretrained(tmp_path / "m2")
    (tmp_path / "m2" / "config.json").write_text("{")
    with pytest.raises(PalMMError, match="config.json: corrupt"):
        PALModel.from_pretrained(tmp_path / "m2")


def test_reward_api(pal_b, data):
    t = data["test"]
    r = pal_b.reward(t.prompts[0], [t.chosen[0], t.rejected[0]], user=t.user_ids[0])
    assert len(r) == 2
    w = pal_b.user_weights(t.user_ids[0])
    assert pal_b.reward(t.prompts[0], [t.chosen[0]], weights=w)[0] == pytest.approx(r[0], rel=1e-5)
    # explicit weights: the calibrated sigmoid(a * margin); a known user: averaged over the posterior,
    # so between 0.5 and the point estimate
    a = pal_b.beliefs.inv_temperature
    point = pal_b.predict_preference([t.prompts[0]], [t.chosen[0]], [t.rejected[0]], weights=w)[0]
    assert point == pytest.approx(torch.sigmoid(torch.tensor(a * (r[0] - r[1]))).item(), rel=1e-5)
    p = pal_b.predict_preference([t.prompts[0]], [t.chosen[0]], [t.rejected[0]], user=t.user_ids[0])[0]
    assert min(0.5, point) - 1e-9 <= p <= max(0.5, point) + 1e-9
    with pytest.raises(PalMMError, match="unknown user"):
        pal_b.reward(t.prompts[0], [t.chosen[0]], user="nobody")
    with pytest.raises(PalMMError, match="simplex"):
        pal_b.reward(t.prompts[0], [t.chosen[0]], weights=[0.7, 0.7])
    with pytest.raises(PalMMError, match="exactly one"):
        pal_b.reward(t.prompts[0], [t.chosen[0]])


def test_reward_embeddings_per_row_users(pal_b, data):
    """Scoring many users at once (per-row ids) equals scoring each user on its own."""
    from pal_mm.embedding import encode_data

    full = data["test"]
    first = {}
    for i, u in enumerate(full.user_ids):
        first.setdefault(u, []).append(i)
    t = full.subset([i for rows in list(first.values())[:4] for i in rows[:3]])  # 4 users x 3 rows
    enc = encode_data(pal_b.encoder, t)
    with torch.no_grad():
        together = pal_b.reward_embeddings(enc.prompt, enc.chosen, users=t.user_ids)
        alone = [pal_b.reward_embeddings(enc.prompt[i : i + 1], enc.chosen[i : i + 1], user=u)[0] for i, u in enumerate(t.user_ids)]
    # float32 rewards of up to ~10 (logit scale x cosine), computed in batches of 12 and of 1: equal up to rounding
    assert torch.allclose(together, torch.stack(alone), rtol=1e-4, atol=1e-4), (together - torch.stack(alone)).abs().max()
    assert len(set(t.user_ids)) > 1
    with pytest.raises(PalMMError, match="user ids for 12 rows"):
        pal_b.reward_embeddings(enc.prompt, enc.chosen, users=t.user_ids[:3])
    with pytest.raises(PalMMError, match="widths"):
        pal_b.reward_embeddings(enc.prompt, enc.chosen[:, :3], users=t.user_ids)


def test_restarts_keep_the_lowest_validation_loss(data):
    enc = create_encoder("precomputed")
    tc = TrainConfig(epochs=2, progress=False, seed=5)
    first = fit(data["train"], data["val"], enc, PALConfig(k=2), dataclasses.replace(tc, restarts=1))
    m = fit(data["train"], data["val"], enc, PALConfig(k=2), dataclasses.replace(tc, restarts=3))
    assert [r["seed"] for r in m.metrics["restarts"]] == [5, 6, 7]
    assert m.metrics["restarts"][0]["val_loss"] == first.metrics["val_loss"]  # restart 0 is the one-start run
    best = min(range(3), key=lambda i: m.metrics["restarts"][i]["val_loss"])
    assert m.metrics["val_loss"] == m.metrics["restarts"][best]["val_loss"]
    if best == 0:
        for (ka, va), (kb, vb) in zip(m.state_dict().items(), first.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka
    with pytest.raises(PalMMError, match="needs validation data"):
        fit(data["train"], None, enc, PALConfig(k=2), dataclasses.replace(tc, restarts=2))


def test_adapt_fits_new_users_without_moving_seen_users(pal_b, data):
    model = copy.deepcopy(pal_b)
    test = data["test"]
    seen_before = evaluate(model, test)
    train_new, test_new = data["new"].split_per_user(20, seed=0)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items() if k != "user_logits"}
    logits_before = model.head.user_logits.detach().clone()
    adapt(model, train_new, AdaptConfig())
    # shared parameters and seen users' rows are bit-for-bit unchanged
    for k, v in head_before.items():
        assert torch.equal(model.head.state_dict()[k], v), k
    assert torch.equal(model.head.user_logits[: len(logits_before)], logits_before)
    assert evaluate(model, test)["per_user"] == seen_before["per_user"]
    # new users: fitted, on the simplex, better than the uniform mixture
    assert len(model.users) == len(pal_b.users) + 6
    acc_new = evaluate(model, test_new)["accuracy"]
    uniform = copy.deepcopy(pal_b)
    adapt(uniform, train_new, AdaptConfig(prior=False, steps=0))  # the uniform mixture
    assert acc_new > evaluate(uniform, test_new)["accuracy"] + 0.05
    assert acc_new >= 0.75
    with pytest.raises(PalMMError, match="already in the model"):
        adapt(model, train_new)


def test_evaluate_counts_ties_and_groups(pal_b, data):
    t = data["test"]
    rows = t.to_rows()[:10]
    rows[0]["rejected"] = rows[0]["chosen"]  # identical items: a tie
    m = evaluate(pal_b, PreferenceData.from_rows(rows))
    assert m["n_pairs"] == 10 and m["n_ties"] == 1
    assert m["accuracy"] == pytest.approx(m["n_correct"] / 9)
    assert set(m["per_group"]) <= {"proto0", "proto1"}
    assert sum(u["n_pairs"] for u in m["per_user"].values()) == 10


@pytest.mark.parametrize("model_type", ["pal-a", "pal-b"])
def test_reduced_adapt_objective_equals_the_direct_one(data, model_type):
    """adapt's O(K^2)-per-pair objective == mean over each user's pairs of head.loss(head.margin)."""
    from pal_mm.embedding import encode_data

    model = fit(data["train"], data["val"], create_encoder("precomputed"), PALConfig(model_type=model_type, k=3),
                TrainConfig(epochs=2, progress=False))
    new = data["new"]
    # users with different numbers of pairs (PAL-A stacks users by count)
    keep, seen = [], {}
    for i, u in enumerate(new.user_ids):
        seen[u] = seen.get(u, 0) + 1
        if seen[u] <= 2 + len(seen) % 3:
            keep.append(i)
    pairs = encode_data(model.encoder, new.subset(keep))
    users = list(dict.fromkeys(pairs.user_ids))
    uidx = torch.as_tensor([users.index(u) for u in pairs.user_ids])
    logits = torch.randn(len(users), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reduced = model.head.user_objective(pairs.prompt, pairs.chosen, pairs.rejected, uidx, len(users))(logits)
        w = torch.softmax(logits, dim=-1)[uidx]
        per_pair = model.head.loss(model.head.margin(pairs.prompt, pairs.chosen, pairs.rejected, w), reduction="none")
        direct = torch.stack([per_pair[uidx == i].mean() for i in range(len(users))])
    assert len({int(c) for c in torch.bincount(uidx)}) > 1
    assert torch.allclose(reduced, direct, atol=1e-5, rtol=1e-5)
