"""PAL-A: prototype ideal points.

K prototype points ``P`` (K, d_in) live in the input space of the item map ``f``; user ``u``'s ideal
point is ``a_u = f(w_u^T P)`` and an item scores ``r(x) = -|| f(x) - a_u ||_2`` (closer is better).
Trained with a hinge loss on the margin. With ``pal_a_use_prompt`` (default) the item input is
``[prompt ; item]`` (the paper encodes prompt and response together).

New users (:meth:`PALAHead.user_pair_features`): ``|f(x) - a|^2 = |f(x)|^2 - 2 f(x).a + |a|^2`` with ``a``
computed once per user and ``f(x)`` once per item.
"""

from __future__ import annotations

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
    closed_form_margin_gradients = True
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

    def item_input(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) raw embeddings -> (b, f_in) the input of f: [prompt ; item] standardised (or the item)."""
        x = self.item_norm(item_emb)
        if self.config.pal_a_use_prompt:
            x = torch.cat([self.prompt_norm(prompt_emb), x], dim=-1)
        return x

    def item_embedding(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) raw embeddings -> (b, d) item points f([prompt ; item]) (or f(item))."""
        return self.f(self.item_input(prompt_emb, item_emb))

    @staticmethod
    def score(ideal: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(b, d) ideal points, (b, d) item points -> (b,) rewards (negative distances)."""
        return -torch.linalg.vector_norm(item - ideal, dim=-1)

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        return self.score(self.ideal_point(prompt_emb, weights), self.item_embedding(prompt_emb, item_emb))

    def pair_rewards(self, prompt_emb, chosen_emb, rejected_emb, weights):
        # one pass of f over the ideal-point inputs and both items: (3b, f_in) -> (3b, d)
        b = weights.shape[0]
        prompts = None if prompt_emb is None else torch.cat([prompt_emb, prompt_emb])
        items = self.item_input(prompts, torch.cat([chosen_emb, rejected_emb]))
        ideal, item_c, item_r = self.f(torch.cat([weights @ self.P, items])).split(b)
        return self.score(ideal, item_c), self.score(ideal, item_r)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector_f": list(self.f.parameters()), "W": [self.user_logits], "P": [self.P]}

    def load_split(self, source: "PALAHead") -> None:
        k_src = source.config.k

        def prototype(key, value, src):  # P[k] <- P[k mod K']
            return src["P"][torch.arange(self.config.k) % k_src] if key == "P" else None

        self._copy_split_state(source, prototype)

    # ----- new users ---------------------------------------------------------------------------
    def user_pair_features(self, prompt_emb, chosen_emb, rejected_emb) -> dict[str, torch.Tensor]:
        n = chosen_emb.shape[0]
        prompts = None if prompt_emb is None else torch.cat([prompt_emb, prompt_emb])
        item_c, item_r = self.item_embedding(prompts, torch.cat([chosen_emb, rejected_emb])).split(n)  # (n, d) each
        return {"item_c": item_c, "item_r": item_r, "sq_c": item_c.pow(2).sum(-1), "sq_r": item_r.pow(2).sum(-1)}

    @staticmethod
    def _distances(features, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) distances of the chosen and the rejected items to the (n, d) ideal points ``a``."""
        aa = a.pow(2).sum(-1)
        dist_c = (features["sq_c"] - 2 * einsum(features["item_c"], a, "n d, n d -> n") + aa).clamp_min(1e-12).sqrt()
        dist_r = (features["sq_r"] - 2 * einsum(features["item_r"], a, "n d, n d -> n") + aa).clamp_min(1e-12).sqrt()
        return dist_c, dist_r

    def margins_from_features(self, features, logits: torch.Tensor, user_rows: torch.Tensor) -> torch.Tensor:
        ideal = self.ideal_point(None, self.weights_from_logits(logits))  # (n_users, d): once per user
        dist_c, dist_r = self._distances(features, ideal[user_rows])
        return dist_r - dist_c  # margin = r(chosen) - r(rejected) = -d_c + d_r

    def margin_gradients_from_features(self, features, logits: torch.Tensor, user_rows: torch.Tensor):
        """Per-pair margins and gradients from one Jacobian per user: ``J_u = d a_u / d W_u`` (d, K) of the
        ideal point ``a_u = f(softmax(W_u) P)`` (torch.func over the users' rows, not over their pairs), then
        ``dm/da = (a - f(x_r)) / d_r - (a - f(x_c)) / d_c`` per pair and ``dm/dW = dm/da J_u``. (Ignores the
        1e-12 clamp, i.e. an item at the ideal point.)"""
        if type(self).weights_from_logits is not PreferenceHead.weights_from_logits:
            return super().margin_gradients_from_features(features, logits, user_rows)
        logits = logits.detach()
        with torch.no_grad():
            jac = torch.func.vmap(torch.func.jacfwd(lambda row: self.f(torch.softmax(row, -1) @ self.P)))(logits)  # (U, d, K)
            a = self.ideal_point(None, torch.softmax(logits, -1))[user_rows]  # (n, d)
            dist_c, dist_r = self._distances(features, a)
            dm_da = (a - features["item_r"]) / dist_r[:, None] - (a - features["item_c"]) / dist_c[:, None]  # (n, d)
            grad = einsum(dm_da, jac[user_rows], "n d, n d k -> n k")
        return dist_r - dist_c, grad
