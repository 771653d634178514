"""PAL's preference heads: tensors in, rewards out.

Notation (shapes in brackets): ``b`` batch, ``K`` prototypes, ``d`` preference-space width,
``dp``/``di`` prompt/item embedding widths.

* Every user ``u`` has K logits; its mixture weights are ``w_u = softmax(W_u)`` (tau = 1), a
  point on the (K-1)-simplex.
* **PAL-A** (ideal points): K prototype points ``P`` (K, d_in) live in the input space of the item
  map ``f``; the user's ideal point is ``a_u = f(w_u^T P)`` and an item scores
  ``r(x) = -|| f(x) - a_u ||_2`` (closer is better). Trained with a hinge loss on the margin.
  With ``pal_a_use_prompt`` the item input is ``[prompt ; item]`` (the paper encodes
  prompt + response together).
* **single-rm**: the usual population reward model ``r = out(f([prompt ; item]))`` with the
  same projector and loss as PAL-B, ignoring users; the baseline PAL is compared against.
* **PAL-B** (prototype reward functions): K maps ``g_k`` of the prompt; the user's ideal point is
  ``u = sum_k w_uk g_k(prompt)`` and an item scores ``r(x) = min(e^s, s_max) * cos(u, f(x))``.
  Trained with Bradley-Terry (logistic) loss; ``s`` is learned.

Inputs are first standardised by :class:`InputNormalizer` (a mean vector and one scale, fitted on
the training embeddings and saved with the model), so the same defaults work for unit-norm CLIP
vectors and for LLM hidden states with norms in the hundreds.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from .config import PALConfig
from .errors import PalMMError

# ------------------------------------------------------------------------------------------
# Projectors
# ------------------------------------------------------------------------------------------
_MLP_SPEC = re.compile(r"^mlp(\d+)-(relu|gelu|linear)(?:-dropout(\d+))?(-residual)?$")


class MLPProjector(nn.Module):
    """``L`` blocks of Linear -> Dropout -> activation (width ``out_dim``), then one output Linear;
    with ``residual``, returns ``x + mlp(x)``."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, activation: str, dropout: float, residual: bool):
        super().__init__()
        if residual and in_dim != out_dim:
            raise PalMMError(f"a residual projector needs equal input and output widths, got {in_dim} -> {out_dim}")
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "linear": nn.Identity}[activation]
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, out_dim), nn.Dropout(dropout), act()]
            width = out_dim
        blocks.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*blocks)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., out_dim)
        y = self.net(x)
        return x + y if self.residual else y


def build_projector(spec: str, in_dim: int, out_dim: int) -> nn.Module:
    """``identity`` | ``linear`` | ``mlp{L}-{relu|gelu|linear}[-dropout{D}][-residual]``.

    The dropout digits are a decimal fraction: ``dropout5`` = 0.5, ``dropout75`` = 0.75.
    """
    if spec == "identity":
        if in_dim != out_dim:
            raise PalMMError(f"identity projector needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    if spec == "linear":
        return nn.Linear(in_dim, out_dim)
    m = _MLP_SPEC.match(spec)
    if not m:
        raise PalMMError(f"bad projector spec {spec!r}; use identity, linear or mlp{{L}}-{{relu|gelu|linear}}[-dropout{{D}}][-residual]")
    layers, act, drop, residual = m.groups()
    dropout = float("0." + drop) if drop else 0.0
    return MLPProjector(in_dim, out_dim, int(layers), act, dropout, bool(residual))


class InputNormalizer(nn.Module):
    """``(x - mean) / scale`` with a mean vector and one scalar scale chosen so that the
    centred training embeddings have unit mean-square per dimension. Saved as buffers."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:  # x: (n, dim)
        x = x.float()
        self.mean.copy_(x.mean(0))
        ms = (x - self.mean).pow(2).sum(1).mean() / x.shape[1]
        self.scale.copy_(ms.sqrt().clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


# ------------------------------------------------------------------------------------------
# The head
# ------------------------------------------------------------------------------------------
class PALHead(nn.Module):
    """PAL-A or PAL-B head with a per-user table of simplex logits.

    Parameter groups (see :meth:`param_groups`): ``projector_f``, ``projectors_gk`` (PAL-B),
    ``P`` (PAL-A), ``W`` (user logits), ``logit_scale`` (PAL-B).
    """

    def __init__(self, config: PALConfig, num_users: int = 0):
        super().__init__()
        self.config = c = config
        if c.model_type not in ("pal-a", "pal-b", "single-rm"):
            raise PalMMError(f"model_type must be one of pal-a, pal-b, single-rm, got {c.model_type!r}")
        if c.prompt_dim <= 0 or c.item_dim <= 0:
            raise PalMMError("prompt_dim and item_dim must be set before building a head")
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(c.init_seed)
            self._build(c, num_users)

    def _build(self, c: PALConfig, num_users: int) -> None:
        gen = torch.Generator().manual_seed(c.init_seed)
        d = c.width
        self.prompt_norm = InputNormalizer(c.prompt_dim) if c.normalize_inputs else nn.Identity()
        self.item_norm = InputNormalizer(c.item_dim) if c.normalize_inputs else nn.Identity()
        if c.model_type == "pal-a":
            f_in = c.item_dim + (c.prompt_dim if c.pal_a_use_prompt else 0)
            self.f = build_projector(c.projector, f_in, d)
            # prototypes live in f's input space, at the scale of standardised inputs
            self.P = nn.Parameter(torch.randn(c.k, f_in, generator=gen))
        elif c.model_type == "single-rm":
            # the baseline: one Bradley-Terry reward model r = out(f([prompt ; item])), no users
            self.f = build_projector(c.projector, c.prompt_dim + c.item_dim, d)
            self.out = nn.Linear(d, 1)
        else:
            self.f = build_projector(c.projector, c.item_dim, d)
            spec = c.prototype_projector or c.projector
            self.g = nn.ModuleList(build_projector(spec, c.prompt_dim, d) for _ in range(c.k))
            self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        self.user_logits = nn.Parameter(torch.randn(num_users, c.k, generator=gen))

    # ----- users ----------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return self.user_logits.shape[0]

    def user_weights(self, user_idx: torch.Tensor) -> torch.Tensor:
        """(b,) user indices -> (b, K) simplex weights."""
        return torch.softmax(self.user_logits[user_idx], dim=-1)

    @torch.no_grad()
    def append_users(self, logits: torch.Tensor) -> None:
        """Add users with the given (n_new, K) logits; existing rows are untouched."""
        new = torch.cat([self.user_logits.data, logits.to(self.user_logits)], 0)
        self.user_logits = nn.Parameter(new, requires_grad=self.user_logits.requires_grad)

    # ----- the model ------------------------------------------------------------------------
    def prototypes(self, prompt_emb: torch.Tensor) -> torch.Tensor:
        """PAL-B: (b, dp) raw prompt embeddings -> (b, K, d) prototype points g_k(prompt)."""
        p = self.prompt_norm(prompt_emb)
        return torch.stack([g(p) for g in self.g], dim=1)

    def ideal_point(self, prompt_emb: torch.Tensor, weights: torch.Tensor, protos: torch.Tensor | None = None) -> torch.Tensor:
        """(b, dp) raw prompt embeddings, (b, K) weights -> (b, d) user ideal points.
        PAL-B callers may pass precomputed ``protos`` (b, K, d)."""
        if self.config.model_type == "pal-a":
            return self.f(weights @ self.P)  # a_u = f(w^T P), independent of the prompt
        if self.config.model_type == "single-rm":
            return weights.new_zeros(weights.shape[0], 0)  # no user state
        if protos is None:
            protos = self.prototypes(prompt_emb)
        return einsum(weights, protos, "b k, b k d -> b d")

    def item_embedding(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) raw embeddings -> (b, d) item points f(x)."""
        x = self.item_norm(item_emb)
        if self.config.model_type == "single-rm" or (self.config.model_type == "pal-a" and self.config.pal_a_use_prompt):
            x = torch.cat([self.prompt_norm(prompt_emb), x], dim=-1)
        return self.f(x)

    def scale(self) -> torch.Tensor:
        """PAL-B's inverse temperature min(e^s, s_max)."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def score(self, ideal: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(b, d) ideal points, (b, d) item points -> (b,) rewards."""
        if self.config.model_type == "pal-a":
            return -torch.linalg.vector_norm(item - ideal, dim=-1)
        if self.config.model_type == "single-rm":
            return self.out(item).squeeze(-1)
        return self.scale() * F.cosine_similarity(ideal, item, dim=-1)

    def reward(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di), (b, K) -> (b,) rewards for one item per row."""
        return self.score(self.ideal_point(prompt_emb, weights), self.item_embedding(prompt_emb, item_emb))

    def margin(self, prompt_emb, chosen_emb, rejected_emb, weights) -> torch.Tensor:
        """(b,) reward(chosen) - reward(rejected); the ideal point is computed once."""
        ideal = self.ideal_point(prompt_emb, weights)
        r_c = self.score(ideal, self.item_embedding(prompt_emb, chosen_emb))
        r_r = self.score(ideal, self.item_embedding(prompt_emb, rejected_emb))
        return r_c - r_r

    def loss(self, margin: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Bradley-Terry ``-log sigmoid(m)`` or hinge ``max(0, 1 - m)`` on (b,) margins."""
        per_pair = F.softplus(-margin) if self.config.loss == "bt" else F.relu(1 - margin)
        return per_pair.mean() if reduction == "mean" else per_pair

    # ----- training helpers -----------------------------------------------------------------
    def fit_normalizers(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        """Fit the input standardisation on training embeddings (n, dp) and (n, di)."""
        if self.config.normalize_inputs:
            self.prompt_norm.fit(prompt_emb)
            self.item_norm.fit(item_emb)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"projector_f": list(self.f.parameters()), "W": [self.user_logits]}
        if self.config.model_type == "pal-a":
            groups["P"] = [self.P]
        elif self.config.model_type == "single-rm":
            groups["projector_f"] += list(self.out.parameters())
            groups["W"] = []
        else:
            groups["projectors_gk"] = list(self.g.parameters())
            groups["logit_scale"] = [self.logit_scale]
        return groups

    def num_learned_parameters(self, include_users: bool = True) -> int:
        return sum(p.numel() for name, ps in self.param_groups().items() if include_users or name != "W" for p in ps)
