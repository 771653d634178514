"""The single reward model: the usual population baseline PAL is compared against.

``r = out(f([prompt ; item]))`` with the same projector family, no user state (every user gets the
same reward). Trained with a hinge loss on the margin (as PAL-A).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PALConfig
from .base import PreferenceHead
from .projectors import build_projector
from .registry import register_head


@register_head("single-rm")
class SingleRMHead(PreferenceHead):
    """Groups: ``projector_f`` (f and the output layer)."""

    default_loss = "hinge"
    has_user_state = False
    description = "one reward model for everyone (the baseline): r = out(f([prompt ; item]))"

    def build(self, c: PALConfig, gen: torch.Generator) -> None:
        self.f = build_projector(c.projector, c.prompt_dim + c.item_dim, c.width)
        self.out = nn.Linear(c.width, 1)

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        x = torch.cat([self.prompt_norm(prompt_emb), self.item_norm(item_emb)], dim=-1)
        return self.out(self.f(x)).squeeze(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector_f": list(self.f.parameters()) + list(self.out.parameters()), "W": []}
