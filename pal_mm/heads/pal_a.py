"""PAL-A: prototype ideal points.

K prototype points ``P`` (K, d_in) live in the input space of the item map ``f``; user ``u``'s ideal
point is ``a_u = f(w_u^T P)`` and an item scores ``r(x) = -|| f(x) - a_u ||_2`` (closer is better).
Trained with a hinge loss on the margin. With ``pal_a_use_prompt`` (default) the item input is
``[prompt ; item]`` (the paper encodes prompt and response together).

New users (:meth:`PALAHead.user_objective`): ``|f(x) - a|^2 = |f(x)|^2 - 2 f(x).a + |a|^2`` with ``a``
computed once per user; users with the same number of pairs are stacked so ``f(x).a`` is one
batched product per group.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from einops import einsum
from torch import nn

from ..config import PALConfig
from .base import PreferenceHead
from .projectors import build_projector
from .registry import register_head


@register_head("pal-a")
class PALAHead(PreferenceHead):
    """Groups: ``projector_f``, ``P`` (prototype points), ``W`` (user logits)."""

    default_loss = "hinge"
    splittable = True
    description = "PAL-A: K prototype ideal points, negative Euclidean distance, hinge"

    def build(self, c: PALConfig, gen: torch.Generator) -> None:
        f_in = c.item_dim + (c.prompt_dim if c.pal_a_use_prompt else 0)
        self.f = build_projector(c.projector, f_in, c.width)
        # prototypes live in f's input space, at the scale of standardised inputs
        self.P = nn.Parameter(torch.randn(c.k, f_in, generator=gen))

    # ----- the model --------------------------------------------------------------------------
    def ideal_point(self, prompt_emb: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
        """(b, K) weights -> (b, d) ideal points f(w^T P) (independent of the prompt)."""
        return self.f(weights @ self.P)

    def item_embedding(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) raw embeddings -> (b, d) item points f([prompt ; item]) (or f(item))."""
        x = self.item_norm(item_emb)
        if self.config.pal_a_use_prompt:
            x = torch.cat([self.prompt_norm(prompt_emb), x], dim=-1)
        return self.f(x)

    @staticmethod
    def score(ideal: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(b, d) ideal points, (b, d) item points -> (b,) rewards (negative distances)."""
        return -torch.linalg.vector_norm(item - ideal, dim=-1)

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        return self.score(self.ideal_point(prompt_emb, weights), self.item_embedding(prompt_emb, item_emb))

    def pair_rewards(self, prompt_emb, chosen_emb, rejected_emb, weights):
        ideal = self.ideal_point(prompt_emb, weights)
        return (self.score(ideal, self.item_embedding(prompt_emb, chosen_emb)),
                self.score(ideal, self.item_embedding(prompt_emb, rejected_emb)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector_f": list(self.f.parameters()), "W": [self.user_logits], "P": [self.P]}

    def load_split(self, source: "PALAHead") -> None:
        k_src = source.config.k

        def prototype(key, value, src):  # P[k] <- P[k mod K']
            return src["P"][torch.arange(self.config.k) % k_src] if key == "P" else None

        self._copy_split_state(source, prototype)

    # ----- new users ---------------------------------------------------------------------------
    def user_objective(self, prompt_emb, chosen_emb, rejected_emb, user_rows: torch.Tensor,
                       n_users: int) -> Callable[[torch.Tensor], torch.Tensor]:
        with torch.no_grad():
            item_c = self.item_embedding(prompt_emb, chosen_emb)  # (n, d)
            item_r = self.item_embedding(prompt_emb, rejected_emb)
        rows_of: dict[int, list[int]] = defaultdict(list)
        for row, u in enumerate(user_rows.tolist()):
            rows_of[u].append(row)
        users_with: dict[int, list[int]] = defaultdict(list)  # pairs per user -> users
        for u, rows in rows_of.items():
            users_with[len(rows)].append(u)
        groups = []
        for us in users_with.values():
            r = torch.as_tensor([rows_of[u] for u in us], dtype=torch.long)  # (users, c)
            xc, xr = item_c[r], item_r[r]
            groups.append((torch.as_tensor(us, dtype=torch.long), xc, xr, xc.pow(2).sum(-1), xr.pow(2).sum(-1)))

        def objective(logits: torch.Tensor) -> torch.Tensor:
            ideal = self.ideal_point(None, self.weights_from_logits(logits))  # (n_users, d)
            out = torch.zeros(n_users)
            for us, xc, xr, sq_c, sq_r in groups:
                a = ideal[us]
                aa = a.pow(2).sum(-1, keepdim=True)
                dist_c = (sq_c - 2 * einsum(xc, a, "u c d, u d -> u c") + aa).clamp_min(1e-12).sqrt()
                dist_r = (sq_r - 2 * einsum(xr, a, "u c d, u d -> u c") + aa).clamp_min(1e-12).sqrt()
                per_pair = self.loss(dist_r - dist_c, reduction="none")  # margin = -d_c + d_r
                out = out.index_add(0, us, per_pair.mean(1))
            return out

        return objective
