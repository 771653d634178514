"""Encoder fine-tuning pieces ("PAL-B-Large"): the token-level loss and its token windows.

Training itself is :func:`pal_mm.training.fit` with ``TrainConfig(finetune_encoder=True)`` (or
``train_layers=N`` / ``token_level=True``): the same epoch loop as for frozen encoders, with batches
encoded on the fly with gradients and the encoder at its own learning rate (``lr_encoder``).

Two losses:

* **pooled** (default, any encoder): the usual pair loss on pooled embeddings computed with gradients.
* **token-level** (causal LMs, PAL-B; the paper's ``b-cumulative``): prompt, chosen and rejected are
  encoded separately and right-padded to one length ``t``; prompt position ``i`` is paired with
  response position ``i``. Per position the margin ``m_i = r_i(chosen) - r_i(rejected)`` gives a loss
  ``l_i``; positions are weighted over the window from the first token where the two responses differ
  (``div``) to the end of the longer one (``end``) - with ``cumulative`` weights ``j / (L (L + 1) / 2)``,
  ``j = 1..L``, ``L = end - div`` - so later tokens count more. The window comes from the attention
  masks and token ids (pad positions are masked out, whatever the pad id), not from a hard-coded pad
  id. Identical responses get a one-position window at the last token.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from .errors import PalMMError

WEIGHTINGS = ("cumulative", "mean", "last")

# ------------------------------------------------------------------------------------------
# Token window and weights
# ------------------------------------------------------------------------------------------
def response_window(ids_a: torch.Tensor, mask_a: torch.Tensor, ids_b: torch.Tensor, mask_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Window ``[div, end)`` of two right-padded responses (b, t): ``div`` is the first position
    where they differ (a real token against a pad counts as a difference), ``end`` the length of
    the longer one. Identical responses: ``div = end - 1``. Returns (b,) ``div`` and ``end``."""
    a = ids_a.masked_fill(mask_a == 0, -1)  # pad positions compare equal to each other only
    b = ids_b.masked_fill(mask_b == 0, -1)
    differ = a != b  # (b, t)
    end = torch.maximum(mask_a.sum(1), mask_b.sum(1)).long()
    div = differ.long().argmax(1)  # first True; 0 when none
    div = torch.where(differ.any(1), div, (end - 1).clamp(min=0))
    return div, end


def window_weights(div: torch.Tensor, end: torch.Tensor, length: int, how: str = "cumulative") -> torch.Tensor:
    """(b,) window bounds -> (b, length) position weights, each row summing to 1.

    ``cumulative``: ``j / (L (L + 1) / 2)`` at window position ``j = 1..L``; ``mean``: ``1 / L``;
    ``last``: 1 at ``end - 1``."""
    if how not in WEIGHTINGS:
        raise PalMMError(f"token weighting must be one of {WEIGHTINGS}, got {how!r}")
    pos = torch.arange(length, device=div.device)[None]  # (1, t)
    inside = (pos >= div[:, None]) & (pos < end[:, None])
    span = (end - div).clamp(min=1).to(torch.float32)[:, None]  # (b, 1)
    if how == "cumulative":
        j = (pos - div[:, None] + 1).to(torch.float32)
        w = j / (span * (span + 1) / 2)
    elif how == "mean":
        w = 1.0 / span.expand(-1, length)
    else:
        w = (pos == (end[:, None] - 1)).to(torch.float32)
    return torch.where(inside, w, torch.zeros_like(w))


def token_level_loss(head, encoder, prompts, chosen, rejected, weights: torch.Tensor, how: str = "cumulative") -> torch.Tensor:
    """PAL-B's token-level loss on one batch of raw texts: (b,) prompts, chosen, rejected and (b, K)
    user weights -> the window-weighted pair loss, averaged over the batch."""
    b = len(prompts)
    states, mask, ids = encoder.token_states(list(prompts) + list(chosen) + list(rejected))  # (3b, t, d)
    states = states.float()
    s_p, s_c, s_r = rearrange(states, "(three b) t d -> three b t d", three=3)
    m = rearrange(mask, "(three b) t -> three b t", three=3)
    i = rearrange(ids, "(three b) t -> three b t", three=3)
    div, end = response_window(i[1], m[1], i[2], m[2])
    pos_weights = window_weights(div, end, states.shape[1], how)  # (b, t)
    sel = pos_weights > 0  # only window positions go through the head
    w_pos = repeat(weights, "b k -> b t k", t=states.shape[1])[sel]
    per_pos = head.loss(head.margin(s_p[sel], s_c[sel], s_r[sel], w_pos), reduction="none")
    return (pos_weights[sel].to(per_pos.dtype) * per_pos).sum() / b
