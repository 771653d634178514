"""Accuracy overall, per user and per group. A pair whose two rewards are exactly equal is a
tie: counted (``n_ties``) and excluded from the accuracy."""

from __future__ import annotations

from collections import defaultdict

import torch

from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .model import PALModel
from .scoring import pair_margins


def _summary(margins: torch.Tensor) -> dict:
    ties = int((margins == 0).sum())
    correct = int((margins > 0).sum())
    decided = len(margins) - ties
    return {
        "accuracy": correct / decided if decided else float("nan"),
        "n_pairs": len(margins),
        "n_correct": correct,
        "n_ties": ties,
    }


def evaluate(model: PALModel, data: PreferenceData | EncodedPairs, cache=None, groups: dict | None = None) -> dict:
    """Metrics as a JSON-ready dict: ``accuracy``, ``n_pairs``, ``n_ties``, ``mean_margin``,
    ``per_user`` {user: {...}}, and ``per_group`` when groups are known (from a ``group``
    column, the ``groups`` argument, or the model's own user table)."""
    if isinstance(data, PreferenceData):
        groups = {**model.user_groups, **data.user_groups(), **(groups or {})}
        data = encode_data(model.encoder, data, cache)
    else:
        groups = {**model.user_groups, **(groups or {})}
    margins = pair_margins(model, data)
    out = _summary(margins)
    out["mean_margin"] = float(margins.mean()) if len(margins) else float("nan")
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(data.user_ids):
        by_user[u].append(i)
    out["per_user"] = {u: _summary(margins[idx]) for u, idx in by_user.items()}
    if groups:
        by_group: dict[str, list[int]] = defaultdict(list)
        for i, u in enumerate(data.user_ids):
            if u in groups:
                by_group[groups[u]].append(i)
        out["per_group"] = {g: _summary(margins[idx]) for g, idx in sorted(by_group.items())}
    return out
