"""Accuracy and calibration overall, per user and per group. A pair whose two rewards are exactly
equal is a tie: counted (``n_ties``) and excluded from the accuracy (its probability, 0.5, stays in
the calibration metrics). Calibration (:mod:`pal_mm.calibration`): ``ece`` (10 equal-width bins of
P(chosen preferred), every pair in both orders) and ``brier``, from the model's calibrated
probabilities, averaged over each user's posterior (:meth:`~pal_mm.model.PALModel.pair_probabilities`)."""

from __future__ import annotations

from collections import defaultdict

import torch

from .calibration import brier, ece, reliability
from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .model import PALModel
from .scoring import pair_margins


def _summary(margins: torch.Tensor, probs: torch.Tensor) -> dict:
    ties = int((margins == 0).sum())
    correct = int((margins > 0).sum())
    decided = len(margins) - ties
    p = probs.numpy()
    return {
        "accuracy": correct / decided if decided else float("nan"),
        "n_pairs": len(margins),
        "n_correct": correct,
        "n_ties": ties,
        "ece": ece(p),
        "brier": brier(p),
    }


def evaluate(model: PALModel, data: PreferenceData | EncodedPairs, cache=None, groups: dict | None = None,
             probabilities: bool = False) -> dict:
    """Metrics as a JSON-ready dict: ``accuracy``, ``n_pairs``, ``n_ties``, ``ece``, ``brier``,
    ``mean_margin``, ``reliability`` (the 10 bins), ``per_user`` {user: {...}}, and ``per_group`` when
    groups are known (from a ``group`` column, the ``groups`` argument, or the model's own user table).
    ``probabilities=True`` adds ``"probabilities"``: every pair's P(chosen preferred), in data order."""
    if isinstance(data, PreferenceData):
        groups = {**model.user_groups, **data.user_groups(), **(groups or {})}
        data = encode_data(model.encoder, data, cache)
    else:
        groups = {**model.user_groups, **(groups or {})}
    margins = pair_margins(model, data)
    probs = model.pair_probabilities(data).double()
    out = _summary(margins, probs)
    out["mean_margin"] = float(margins.mean()) if len(margins) else float("nan")
    out["reliability"] = reliability(probs.numpy())
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(data.user_ids):
        by_user[u].append(i)
    out["per_user"] = {u: _summary(margins[idx], probs[idx]) for u, idx in by_user.items()}
    if groups:
        by_group: dict[str, list[int]] = defaultdict(list)
        for i, u in enumerate(data.user_ids):
            if u in groups:
                by_group[groups[u]].append(i)
        out["per_group"] = {g: _summary(margins[idx], probs[idx]) for g, idx in sorted(by_group.items())}
    if probabilities:
        out["probabilities"] = probs.tolist()
    return out
