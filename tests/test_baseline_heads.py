"""The LoRe-style and VPL-style baseline heads: hand-computed math, new users, save/load, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from encoders.precomputed import PrecomputedEncoder
from pal_mm import AdaptConfig, PALConfig, PALModel, TrainConfig, adapt, fit
from pal_mm.cli import main
from pal_mm.embedding import EncodedPairs
from pal_mm.errors import PalMMError
from pal_mm.heads import create_head, list_heads
from pal_mm.heads import vpl as vpl_module
from pal_mm.heads.base import PreferenceHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(model_type: str, prompt_dim: int, item_dim: int, **kw) -> PALModel:
    cfg = PALConfig(model_type=model_type, prompt_dim=prompt_dim, item_dim=item_dim, normalize_inputs=False, **kw)
    return PALModel(cfg, PrecomputedEncoder(prompt_dim=prompt_dim, item_dim=item_dim), users=[])


def two_group_pairs(users: list[str], n: int, seed: int, dim: int = 4) -> EncodedPairs:
    """Users whose index is even prefer a larger first item coordinate, odd ones a smaller one;
    prompts are noise."""
    gen = torch.Generator().manual_seed(seed)
    prompt, chosen, rejected, ids = [], [], [], []
    for i, u in enumerate(users):
        a, b = torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen)
        sign = 1.0 if i % 2 == 0 else -1.0
        first = (sign * (a[:, 0] - b[:, 0]) > 0)[:, None]
        chosen.append(torch.where(first, a, b))
        rejected.append(torch.where(first, b, a))
        prompt.append(torch.randn(n, 2, generator=gen))
        ids += [u] * n
    return EncodedPairs(torch.cat(prompt), torch.cat(chosen), torch.cat(rejected), ids)


def test_registered():
    assert {"lore", "vpl"} <= set(list_heads())


# ----- LoRe ----------------------------------------------------------------------------------
def test_lore_reward_by_hand():
    head = create_head(PALConfig(model_type="lore", k=2, prompt_dim=1, item_dim=2, normalize_inputs=False), num_users=1)
    with torch.no_grad():
        head.V.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))  # phi = (p, x1, x2)
        head.user_logits.copy_(torch.tensor([[0.0, math.log(3.0)]]))  # w = (0.25, 0.75)
    w = head.user_weights(torch.tensor([0]))
    p, x, y = torch.tensor([[5.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert head.reward(p, x, w).item() == pytest.approx(0.25 * 1 + 0.75 * 2)  # basis rewards (1, 2)
    assert head.reward(p, y, w).item() == pytest.approx(0.75 * 2)
    m = head.margin(p, x, y, w)
    assert m.item() == pytest.approx(0.25)
    assert head.loss(m).item() == pytest.approx(math.log1p(math.exp(-0.25)), rel=1e-6)
    assert head.num_learned_parameters() == 3 * 2 + 2  # V and one user's K logits


def test_lore_user_objective_equals_direct_loss():
    head = create_head(PALConfig(model_type="lore", k=3, prompt_dim=2, item_dim=4), num_users=0)
    pairs = two_group_pairs(["a", "b", "c"], 7, seed=1)
    rows = torch.tensor([i // 7 for i in range(21)])
    logits = torch.randn(3, 3)
    fast = head.user_objective(pairs.prompt, pairs.chosen, pairs.rejected, rows, 3)(logits)
    direct = PreferenceHead.user_objective(head, pairs.prompt, pairs.chosen, pairs.rejected, rows, 3)(logits)
    assert torch.allclose(fast, direct, rtol=1e-5, atol=1e-5)  # two summation orders, not bit-equal


def test_lore_new_user_fits_only_their_weights():
    model = _model("lore", 2, 4, k=2)
    with torch.no_grad():  # basis 0 likes item coordinate 0, basis 1 dislikes it
        model.head.V.zero_()
        model.head.V[2, 0], model.head.V[2, 1] = 3.0, -3.0
    before = model.head.V.detach().clone()
    adapt(model, two_group_pairs(["likes", "dislikes"], 20, seed=2), AdaptConfig(steps=200, lr=0.1))
    assert torch.equal(model.head.V, before)
    assert model.user_weights("likes")[0] > 0.9 and model.user_weights("dislikes")[1] > 0.9


# ----- VPL -----------------------------------------------------------------------------------
def _vpl_head(**kw) -> PreferenceHead:
    cfg = PALConfig(model_type="vpl", prompt_dim=1, item_dim=1, dim=2, normalize_inputs=False, **kw)
    return create_head(cfg, num_users=1)


def test_vpl_reward_by_hand():
    head = _vpl_head()
    assert head.state_dim == 2 and not head.simplex_users
    lin1, lin2, lin3 = (m for m in head.decoder if isinstance(m, torch.nn.Linear))
    with torch.no_grad():  # r = (p + z1) - (x + z2) while both sums are positive
        lin1.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])); lin1.bias.zero_()
        lin2.weight.copy_(torch.eye(2)); lin2.bias.zero_()
        lin3.weight.copy_(torch.tensor([[1.0, -1.0]])); lin3.bias.zero_()
    z = torch.tensor([[0.5, 1.0]])
    p = torch.tensor([[1.0]])
    assert head.reward(p, torch.tensor([[2.0]]), z).item() == pytest.approx(1.5 - 3.0)
    assert head.reward(p, torch.tensor([[0.5]]), z).item() == pytest.approx(0.0)
    # x = -3: the second unit is -2 -> LeakyReLU(0.2) twice -> -0.08
    assert head.reward(p, torch.tensor([[-3.0]]), z).item() == pytest.approx(1.5 + 0.08)
    r_c, r_r = head.pair_rewards(p, torch.tensor([[2.0]]), torch.tensor([[0.5]]), z)
    assert (r_c.item(), r_r.item()) == pytest.approx((-1.5, 0.0))


def test_vpl_posterior_is_a_masked_set_function():
    torch.manual_seed(0)
    head = _vpl_head()
    p, c, r = torch.randn(1, 3, 1), torch.randn(1, 3, 1), torch.randn(1, 3, 1)
    full = torch.ones(1, 3, dtype=torch.bool)
    mu, logvar = head.posterior(p, c, r, full)
    perm = torch.tensor([2, 0, 1])
    mu_p, _ = head.posterior(p[:, perm], c[:, perm], r[:, perm], full)
    assert torch.allclose(mu, mu_p, atol=1e-5)  # the order of the context does not matter
    pad = lambda t: torch.cat([t, 100 * torch.ones(1, 2, 1)], 1)  # noqa: E731
    mu_pad, _ = head.posterior(pad(p), pad(c), pad(r), torch.tensor([[True] * 3 + [False] * 2]))
    assert torch.allclose(mu, mu_pad, atol=1e-5)  # padding is ignored
    mu0, lv0 = head.posterior(p, c, r, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(mu0, head.to_mu.bias[None]) and torch.allclose(lv0, head.to_logvar.bias[None])


def test_vpl_loss_by_hand_and_context_excludes_targets():
    head = _vpl_head()
    with torch.no_grad():
        for m in (head.to_mu, head.to_logvar, head.decoder[-1]):
            m.weight.zero_()
        head.to_mu.bias.copy_(torch.tensor([1.0, -2.0]))
        head.to_logvar.bias.copy_(torch.tensor([0.5, 0.0]))
        head.decoder[-1].bias.zero_()  # every reward is 0: the margin is 0
    kl = 0.5 * ((1 + 4) + (math.exp(0.5) + 1) - 2 - 0.5)
    # user 0 has pairs 0, 1, 2; user 1 has pair 3 only
    prompt, chosen, rejected = torch.arange(4.0)[:, None], 10 + torch.arange(4.0)[:, None], -torch.arange(4.0)[:, None]
    users = torch.tensor([0, 0, 0, 1])
    head = head.train()
    head.prepare_training(prompt, chosen, rejected, users)
    seen = []
    posterior = head.posterior
    head.posterior = lambda p, c, r, mask: (seen.append((c, mask)), posterior(p, c, r, mask))[1]
    batch = torch.tensor([1, 3])
    loss = head.training_loss(prompt[batch], chosen[batch], rejected[batch], users[batch])
    assert loss.item() == pytest.approx(math.log(2) + vpl_module.KL_WEIGHT / vpl_module.KL_ANNEAL_STEPS * kl, rel=1e-6)
    ctx, mask = seen[0]
    assert set(ctx[0][mask[0]].flatten().tolist()) <= {10.0, 12.0}  # user 0: never the target pair 1
    assert not mask[1].any()  # user 1: their only pair is the target
    assert int(head.train_steps) == 1


def test_vpl_learns_groups_and_infers_new_users_without_gradient_steps():
    seen = [f"s{i:02d}" for i in range(24)]
    train, val = two_group_pairs(seen, 30, seed=3), two_group_pairs(seen, 10, seed=4)
    model = fit(train, val, PrecomputedEncoder(prompt_dim=2, item_dim=4), PALConfig(model_type="vpl", dim=32),
                TrainConfig(epochs=12, batch_size=32, progress=False, patience=0))
    assert model.head._pairs is None and model.head.user_logits.shape == (24, 32)
    shared = {k: v.clone() for k, v in model.head.state_dict().items() if k != "user_logits"}
    new = two_group_pairs(["new_even", "new_odd"], 40, seed=5)
    few = EncodedPairs(torch.cat([new.prompt[:10], new.prompt[40:50]]), torch.cat([new.chosen[:10], new.chosen[40:50]]),
                       torch.cat([new.rejected[:10], new.rejected[40:50]]), ["new_even"] * 10 + ["new_odd"] * 10)
    adapt(model, few, AdaptConfig(steps=0))
    for k, v in model.head.state_dict().items():
        if k != "user_logits":
            assert torch.equal(v, shared[k])
    expected = model.head.infer_users(few.prompt, few.chosen, few.rejected, torch.tensor([0] * 10 + [1] * 10), 2)
    assert torch.allclose(model.head.user_logits[-2:], expected)
    with torch.no_grad():
        for user, rows in (("new_even", slice(10, 40)), ("new_odd", slice(50, 80))):
            m = model.reward_embeddings(new.prompt[rows], new.chosen[rows], user=user) - \
                model.reward_embeddings(new.prompt[rows], new.rejected[rows], user=user)
            assert (m > 0).float().mean() > 0.8, user  # the latent carries the user's group


def test_vpl_weights_are_latents_not_mixtures():
    model = _model("vpl", 1, 1, dim=2)
    with pytest.raises(PalMMError, match="latent vectors"):
        model.reward_embeddings(torch.zeros(1, 1), torch.zeros(1, 1), weights=[0.5, 0.5])


# ----- save / load and the command line ------------------------------------------------------
@pytest.mark.parametrize("model_type", ["lore", "vpl"])
def test_save_load_round_trip(model_type, tmp_path):
    users = ["a", "b", "c", "d"]
    pairs = two_group_pairs(users, 12, seed=6)
    model = fit(pairs, None, PrecomputedEncoder(prompt_dim=2, item_dim=4), PALConfig(model_type=model_type, dim=8),
                TrainConfig(epochs=2, progress=False))
    model.save_pretrained(tmp_path / "m")
    back = PALModel.from_pretrained(tmp_path / "m")
    assert back.users == users and back.config.model_type == model_type
    assert torch.equal(back.head.user_logits, model.head.user_logits)
    with torch.no_grad():
        for u in users:
            assert torch.equal(back.reward_embeddings(pairs.prompt, pairs.chosen, user=u),
                               model.reward_embeddings(pairs.prompt, pairs.chosen, user=u))


@pytest.mark.parametrize("model_type", ["lore", "vpl"])
def test_cli_train_adapt_eval_score_export(model_type, synthetic_dir, tmp_path, capsys):
    m, m2, rm = tmp_path / "m", tmp_path / "m2", tmp_path / "rm"
    extra = ["--dim", "16"] if model_type == "vpl" else []
    assert main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
                 "--encoder", "precomputed", "--model", model_type, "--epochs", "2", "--quiet", "--out", str(m), *extra]) == 0
    new = synthetic_dir / "new.jsonl"
    assert main(["adapt", "--model", str(m), "--data", str(new), "--out", str(m2), "--quiet"]) == 0
    assert main(["eval", "--model", str(m2), "--data", str(new), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    assert len(json.loads((tmp_path / "e.json").read_text())["per_user"]) == 6
    row = json.loads(new.read_text().splitlines()[0])
    vec = lambda v: ",".join(str(x) for x in v)  # noqa: E731
    capsys.readouterr()
    args = [f"--prompt={vec(row['prompt'])}", f"--response={vec(row['chosen'])}", f"--response={vec(row['rejected'])}", "--json"]
    assert main(["score", "--model", str(m2), "--user", row["user_id"], *args]) == 0
    rewards = json.loads(capsys.readouterr().out)["rewards"]
    assert main(["export", "--model", str(m2), "--user", row["user_id"], "--out", str(rm), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", "--model", str(rm), *args]) == 0
    assert json.loads(capsys.readouterr().out)["rewards"] == pytest.approx(rewards, rel=1e-5)


def test_vpl_training_is_seeded():
    """Context sets and latent samples come from (init seed, step): two runs give the same model, and
    the step counter (saved with the model, so --resume draws the same contexts) counts the steps."""
    pairs = two_group_pairs(["a", "b", "c", "d"], 16, seed=7)
    runs = [fit(pairs, None, PrecomputedEncoder(prompt_dim=2, item_dim=4), PALConfig(model_type="vpl", dim=8),
                TrainConfig(epochs=2, batch_size=16, progress=False, seed=3)) for _ in range(2)]
    a, b = (r.head.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["train_steps"]) == 2 * 4  # 64 pairs / 16 per batch, 2 epochs
