"""The downstream check: per-user best-of-N with a method's rewards.

For every user and candidate set (a prompt and N candidates, :class:`~experiments.benchmark.data.
Candidates`), the method picks the candidate with the highest reward for that user; a pick is right
when it is the candidate that user's ground truth prefers (the data's own rule: the longest summary
for the TL;DR majority, the shortest for the minority; the image in the user's colour filter for
Pick-a-Filter users). Reward-model accuracy on pairs is known to predict personalised generation
poorly; this is the generation-side number. Chance is 1 / N. Exactly equal rewards pick the first
candidate (a model that cannot tell them apart scores at most chance there).

Seen users are scored on every set; new users after ``adapt`` on their first n few-shot pairs, on
every set whose prompt is not among those pairs.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch

from pal_mm import AdaptConfig, adapt
from pal_mm.fewshot import FewShotSplit

from .data import BenchData, Candidates


@torch.no_grad()
def best_of_n(model, cand: Candidates, users: list[str], groups: dict[str, str],
              exclude: dict[str, set[str]] | None = None) -> dict:
    """``{"accuracy", "per_group": {group: accuracy}, "picks", "sets", "candidates"}`` over the
    (user, set) picks of ``users`` (those with a group that has a ground truth)."""
    s, n = cand.items.shape[:2]
    prompts = cand.prompts.repeat_interleave(n, dim=0)  # (S * N, dp)
    items = cand.items.reshape(s * n, -1)
    right, count = defaultdict(int), defaultdict(int)
    for user in users:
        group = groups.get(user)
        if group not in cand.best:
            continue
        keep = torch.tensor([k not in (exclude or {}).get(user, ()) for k in cand.keys])
        rewards = model.reward_embeddings(prompts, items, user=user).reshape(s, n)
        hit = (rewards.argmax(1) == cand.best[group])[keep]
        right[group] += int(hit.sum())
        count[group] += int(keep.sum())
    total = sum(count.values())
    return {"accuracy": sum(right.values()) / total if total else float("nan"),
            "per_group": {g: right[g] / count[g] for g in sorted(count) if count[g]},
            "picks": total, "sets": s, "candidates": n}


def downstream(model, data: BenchData, split: FewShotSplit, n: int, adapt_config: AdaptConfig) -> dict:
    """Best-of-N for the seen users, and for the new users after adapting on their first ``n``
    few-shot pairs of ``split`` (``{"seen": {...}, "unseen": {...}}``)."""
    cand = data.candidates
    seen_users = sorted(set(data.splits["seen_train"].user_ids))
    out = {"seen": best_of_n(model, cand, seen_users, data.groups)}
    rows = split.train.get(n, [])
    if rows:
        unseen = data.splits["unseen"]
        encoder = getattr(model, "encoder", None)
        work = copy.deepcopy(model, {id(encoder): encoder} if encoder is not None else None)
        adapt(work, unseen.subset(rows), adapt_config)
        exclude: dict[str, set[str]] = defaultdict(set)
        keys = data.prompt_keys.get("unseen")
        for i in rows:
            if keys:
                exclude[unseen.user_ids[i]].add(keys[i])
        out["unseen"] = best_of_n(work, cand, sorted({unseen.user_ids[i] for i in rows}), data.groups, exclude)
        out["unseen"]["n"] = n
    return out
