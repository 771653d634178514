"""Pooling token states into one vector, driven only by the attention mask (so left and right
padding give the same result and no pad id is ever assumed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import reduce

POOLINGS = ("last-token", "mean", "cls")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(b, t) attention mask -> (b,) index of the last real token (left or right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).argmax(dim=1)


def first_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(b, t) attention mask -> (b,) index of the first real token."""
    return mask.long().argmax(dim=1)  # argmax returns the first maximum


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(b, t) attention mask -> (b, t) positions counting real tokens only (0 on left pads)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, normalize: bool = False) -> torch.Tensor:
    """(b, t, d) states and (b, t) mask -> (b, d) pooled states."""
    if how == "last-token":
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]
    elif how == "cls":
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), first_token_index(mask)]
    elif how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (b, t, 1)
        total = reduce(hidden * m, "b t d -> b d", "sum")
        out = total / reduce(m, "b t 1 -> b 1", "sum").clamp(min=1e-9)
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    return F.normalize(out, dim=-1) if normalize else out
