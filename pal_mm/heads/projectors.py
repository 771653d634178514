"""The maps heads are built from: projectors ``f`` / ``g_k`` and input standardisation.

* ``identity`` | ``linear`` | ``mlp{L}-{relu|gelu|linear}[-dropout{D}][-residual]`` (PAL's spec strings;
  ``dropout5`` = 0.5, ``dropout75`` = 0.75).
* :class:`InputNormalizer`: ``(x - mean) / scale`` with one scalar scale, fitted on training embeddings
  and saved with the model, so unit-norm CLIP vectors and LLM states with norms in the hundreds train
  with the same defaults.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import PalMMError

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
    """A projector from its spec string (see the module docstring)."""
    if spec == "identity":
        if in_dim != out_dim:
            raise PalMMError(f"identity projector needs equal widths, got {in_dim} -> {out_dim}")
        return nn.Identity()
    if spec == "linear":
        return nn.Linear(in_dim, out_dim)
    m = _MLP_SPEC.match(str(spec))
    if not m:
        raise PalMMError(f"bad projector spec {spec!r}; use identity, linear or mlp{{L}}-{{relu|gelu|linear}}[-dropout{{D}}][-residual]")
    layers, act, drop, residual = m.groups()
    dropout = float("0." + drop) if drop else 0.0
    return MLPProjector(in_dim, out_dim, int(layers), act, dropout, bool(residual))


class InputNormalizer(nn.Module):
    """``(x - mean) / scale`` with a mean vector and one scalar scale chosen so that the centred
    training embeddings have unit mean-square per dimension. Saved as buffers."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:  # x: (n, dim)
        x = x.float()
        self.mean.copy_(x.mean(0))
        ms = (x - self.mean).pow(2).sum(1).mean() / x.shape[1]
        if not (torch.isfinite(self.mean).all() and torch.isfinite(ms)):
            raise PalMMError(f"input embeddings too large for float32 training (max |x| = {float(x.abs().max()):.3g}): "
                             "rescale the vectors (e.g. divide by their typical norm)")
        self.scale.copy_(ms.sqrt().clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale
