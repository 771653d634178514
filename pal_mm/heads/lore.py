"""LoRe-style baseline: a low-rank basis of linear reward functions with per-user simplex weights.

After Bose et al., *LoRe: Personalizing LLMs via Low-Rank Reward Modeling* (arXiv 2504.14439), from
the paper's description only. User ``u``'s reward is linear in frozen features of (prompt, response)::

    phi(p, x) = [norm(p) ; norm(x)]            (dp + di) standardised input embeddings
    r_u(p, x) = phi(p, x)^T V w_u               V: (dp + di, K) basis, w_u = softmax(W_u) on the K-simplex

so the K columns of ``V`` are K shared reward functions and a user is a convex mixture of them (rank-K
reward matrix). Trained with the Bradley-Terry loss on the margin. A new user fits only their K logits
(:func:`pal_mm.adaptation.adapt`); :meth:`LoReHead.user_objective` precomputes the K basis margins
``(phi_c - phi_r)^T V`` of every pair, so each step is one (n, K) x K product.

**Where pal-mm deviates from the paper** (all said in the README's benchmark section too):

* *Features.* LoRe's ``phi`` is the last-token state of an LLM reward model that reads prompt and
  response together. pal-mm's encoders pool prompt and item separately, so with a linear basis the
  prompt part of ``phi`` cancels in every margin: the basis scores items. It is still exactly a
  rank-K linear reward model on the frozen features it is given.
* *Optimisation.* The paper fits ``V`` and ``W`` by full-batch alternating minimisation (500 iterations,
  lr 0.5). Here both are trained jointly by the library's one training loop (mini-batch AdamW, per-group
  learning rates: ``V`` at the projector rate and weight decay, ``W`` at the users' rate, early
  stopping on the validation loss), so every head in the benchmark sees the same optimiser and the same
  selection rule. New users use the library's adapt settings, not the paper's lr 0.5 x 500 steps.
* *Not implemented:* K = 0 (the frozen reference RM: there is none here) and the optional cosine
  regulariser toward a base RM head. ``--projector`` and ``--dim`` are ignored: LoRe is linear.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..config import PALConfig
from .base import PreferenceHead
from .registry import register_head


@register_head("lore")
class LoReHead(PreferenceHead):
    """Groups: ``projector_basis`` (V: the projectors' learning rate and weight decay), ``W`` (user logits)."""

    default_loss = "bt"
    description = "LoRe-style: r = [prompt ; item]^T V w_u, a rank-K linear basis with simplex user weights"

    def build(self, c: PALConfig, gen: torch.Generator) -> None:
        features = c.prompt_dim + c.item_dim
        # columns of unit expected norm on standardised features: initial rewards are O(1)
        self.V = nn.Parameter(torch.randn(features, c.k, generator=gen) / math.sqrt(features))

    def features(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) raw embeddings -> (b, dp + di) standardised features phi."""
        return torch.cat([self.prompt_norm(prompt_emb), self.item_norm(item_emb)], dim=-1)

    def basis_rewards(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, K) rewards of the K basis functions, phi^T V."""
        return self.features(prompt_emb, item_emb) @ self.V

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        return (self.basis_rewards(prompt_emb, item_emb) * weights).sum(-1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector_basis": [self.V], "W": [self.user_logits]}

    def user_objective(self, prompt_emb, chosen_emb, rejected_emb, user_rows: torch.Tensor,
                       n_users: int) -> Callable[[torch.Tensor], torch.Tensor]:
        counts = torch.bincount(user_rows, minlength=n_users).clamp_min(1).float()
        with torch.no_grad():  # the K basis margins of every pair, computed once
            delta = self.basis_rewards(prompt_emb, chosen_emb) - self.basis_rewards(prompt_emb, rejected_emb)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            margin = (delta * self.weights_from_logits(logits)[user_rows]).sum(-1)
            return torch.zeros(n_users).index_add(0, user_rows, self.loss(margin, reduction="none")) / counts

        return objective
