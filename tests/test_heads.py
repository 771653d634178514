"""PAL-A / PAL-B math against hand-computed values, projectors, normalisers, simplex weights."""

import math

import pytest
import torch

from pal_mm.errors import PalMMError
from pal_mm.config import PALConfig
from pal_mm.heads import InputNormalizer, MLPProjector, build_projector, create_head


def _set_users(head, logits):
    with torch.no_grad():
        head.user_logits.copy_(torch.tensor(logits))


def test_pal_b_reward_by_hand():
    cfg = PALConfig(model_type="pal-b", k=2, prompt_dim=2, item_dim=2, dim=2, projector="identity",
                    prototype_projector="linear", normalize_inputs=False)
    head = create_head(cfg, num_users=1)
    with torch.no_grad():
        head.g[0].weight.copy_(torch.eye(2)); head.g[0].bias.zero_()
        head.g[1].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]])); head.g[1].bias.zero_()
    _set_users(head, [[0.0, math.log(3.0)]])  # w = (0.25, 0.75)
    w = head.user_weights(torch.tensor([0]))
    assert torch.allclose(w, torch.tensor([[0.25, 0.75]]))
    p = torch.tensor([[1.0, 0.0]])  # g1 = (1, 0), g2 = (0, 1)  ->  u = (0.25, 0.75)
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    scale = 1 / 0.07
    # cos(u, x) = 1 / (|u| sqrt 2), cos(u, y) = 0.25 / |u|, |u| = sqrt(0.625)
    assert head.reward(p, x, w).item() == pytest.approx(scale * 1 / (math.sqrt(0.625) * math.sqrt(2)), rel=1e-5)
    assert head.reward(p, y, w).item() == pytest.approx(scale * 0.25 / math.sqrt(0.625), rel=1e-5)
    m = head.margin(p, x, y, w)
    assert m.item() == pytest.approx(scale * (0.894427191 - 0.316227766), rel=1e-5)
    eps = head.label_noise  # PAL-B's default Bradley-Terry loss allows for flipped labels
    assert eps == 0.2
    assert head.loss(m).item() == pytest.approx(-math.log(eps + (1 - 2 * eps) / (1 + math.exp(-m.item()))), rel=1e-4)


def test_pal_a_reward_by_hand():
    cfg = PALConfig(model_type="pal-a", k=2, prompt_dim=3, item_dim=2, dim=2, projector="identity",
                    pal_a_use_prompt=False, normalize_inputs=False)
    head = create_head(cfg, num_users=1)
    with torch.no_grad():
        head.P.copy_(torch.eye(2))
    _set_users(head, [[0.0, math.log(3.0)]])  # ideal point a = 0.25 e1 + 0.75 e2
    w = head.user_weights(torch.tensor([0]))
    p = torch.zeros(1, 3)
    x, y = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert head.reward(p, x, w).item() == pytest.approx(-math.sqrt(0.75**2 + 0.25**2), rel=1e-6)
    assert head.reward(p, y, w).item() == pytest.approx(-math.sqrt(0.25**2 + 0.25**2), rel=1e-6)
    m = head.margin(p, x, y, w)  # x is farther: negative margin, hinge = 1 - m
    assert m.item() == pytest.approx(-0.790569415 + 0.353553391, rel=1e-6)
    assert head.loss(m).item() == pytest.approx(1 + 0.790569415 - 0.353553391, rel=1e-6)


def test_logit_scale_is_clamped():
    cfg = PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=2, projector="identity", normalize_inputs=False)
    head = create_head(cfg, num_users=1)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert head.scale().item() == pytest.approx(100.0)


def test_user_weights_on_simplex():
    cfg = PALConfig(model_type="pal-b", k=5, prompt_dim=4, item_dim=4)
    head = create_head(cfg, num_users=7)
    w = head.user_weights(torch.arange(7))
    assert w.shape == (7, 5)
    assert (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(7))


def test_projector_specs():
    p = build_projector("mlp2-relu-dropout5-residual", 8, 8)
    assert isinstance(p, MLPProjector) and p.residual
    linears = [m for m in p.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3  # two hidden blocks + output
    assert sum(q.numel() for q in p.parameters()) == 3 * (8 * 8 + 8)
    assert [m.p for m in p.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert build_projector("mlp1-gelu-dropout75", 4, 6).net[1].p == 0.75
    assert isinstance(build_projector("linear", 4, 6), torch.nn.Linear)
    with pytest.raises(PalMMError, match="residual"):
        build_projector("mlp2-relu-residual", 4, 6)
    with pytest.raises(PalMMError, match="bad projector spec"):
        build_projector("mlp2-swish", 4, 4)


def test_input_normalizer_by_hand():
    n = InputNormalizer(2)
    n.fit(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    assert torch.allclose(n.mean, torch.tensor([1.0, 2.0]))
    assert n.scale.item() == pytest.approx(math.sqrt(2.5))  # mean squared norm 5 over 2 dims
    assert torch.allclose(n(torch.tensor([[1.0, 2.0]])), torch.zeros(1, 2))


def test_append_users_keeps_existing_rows():
    head = create_head(PALConfig(k=3, prompt_dim=4, item_dim=4), num_users=2)
    before = head.user_logits.detach().clone()
    head.append_users(torch.ones(4, 3))
    assert head.num_users == 6 and torch.equal(head.user_logits[:2], before)


def test_parameter_counts():
    d = 16
    b = create_head(PALConfig(model_type="pal-b", k=2, prompt_dim=d, item_dim=d, projector="mlp2-gelu"), num_users=10)
    mlp = 3 * (d * d + d)
    assert b.num_learned_parameters(include_users=False) == 3 * mlp + 1  # f, g1, g2, logit scale
    assert b.num_learned_parameters() == 3 * mlp + 1 + 20
    a = create_head(PALConfig(model_type="pal-a", k=2, prompt_dim=d, item_dim=d, projector="mlp2-gelu", pal_a_use_prompt=False), num_users=10)
    assert a.num_learned_parameters() == mlp + 2 * d + 20


def test_bad_config():
    with pytest.raises(PalMMError, match="pal-c"):  # the head types are known to the heads, not to the config
        create_head(PALConfig(model_type="pal-c", prompt_dim=2, item_dim=2))
    with pytest.raises(PalMMError):
        PALConfig(k=0)


def test_bradley_terry_with_label_noise_by_hand():
    """-log(eps + (1 - 2 eps) sigmoid(m)): eps = 0 is softplus(-m); with eps a contradicting pair costs
    at most -log(eps), and the loss stays finite and differentiable at extreme margins."""
    m = torch.tensor([-1000.0, -2.0, 0.0, 1.5, 1000.0], requires_grad=True)
    sig = [0.0, 1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-1.5)), 1.0]
    for eps in (0.1, 0.2):
        cfg = PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=2, label_noise=eps)
        head = create_head(cfg, num_users=1)
        got = head.loss(m, reduction="none")
        want = [-math.log(eps + (1 - 2 * eps) * s) for s in sig]
        assert got.tolist() == pytest.approx(want, rel=1e-5)
        assert head.loss(m).item() == pytest.approx(sum(want) / 5, rel=1e-5)
        (grad,) = torch.autograd.grad(got.sum(), m)
        assert torch.isfinite(grad).all() and grad[0].abs() < 1e-6  # a hopeless pair no longer pulls
    plain = create_head(PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=2, label_noise=0.0), num_users=1)
    assert plain.loss(m, reduction="none")[:4].tolist() == pytest.approx([1000.0, math.log1p(math.exp(2.0)), math.log(2.0),
                                                                         math.log1p(math.exp(-1.5))], rel=1e-6)
    hinge = create_head(PALConfig(model_type="pal-a", k=1, prompt_dim=2, item_dim=2, label_noise=0.2), num_users=1)
    assert hinge.loss(torch.tensor([0.25])).item() == pytest.approx(0.75)  # the hinge loss ignores label_noise


@pytest.mark.parametrize("bad", [-0.1, 0.5, 0.7, True, "0.1"])
def test_label_noise_must_be_below_one_half(bad):
    with pytest.raises(PalMMError, match="label_noise"):
        PALConfig(label_noise=bad)


def test_label_noise_defaults_by_head_type_and_old_configs_load_plain():
    from pal_mm.heads import get_head_class

    assert create_head(PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=2), 1).label_noise \
        == get_head_class("pal-b").default_label_noise
    assert create_head(PALConfig(model_type="pal-a", k=1, prompt_dim=2, item_dim=2), 1).label_noise == 0.0
    assert create_head(PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=2, label_noise=0.0), 1).label_noise == 0.0
    # a config saved before the field existed: its model was trained with the plain Bradley-Terry loss
    assert PALConfig.from_dict({"model_type": "pal-b", "k": 2}).label_noise == 0.0
    assert PALConfig.from_dict({"model_type": "pal-b", "k": 2, "label_noise": 0.1}).label_noise == 0.1
