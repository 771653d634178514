"""Pick-a-Filter (PAL paper, Chen et al. 2025): semi-synthetic groups on top of Pick-a-Pic.

Users are split at random (seeded) into two groups of equal size (+-1):

* ``cool`` (G1) prefers blue / cool tones,
* ``warm`` (G2) prefers red / warm tones.

For each user, a fraction ``beta`` (the mixture ratio) of the pairs is modified; the labels are
kept. For half of the modified pairs the group's *preferred* filter is applied to the winning
(``chosen``) image only; for the other half the group's *disliked* filter (the other colour) is
applied to the losing (``rejected``) image only. The remaining ``1 - beta`` are unchanged. Which
pairs are modified is a per-user random order, so the modified sets are nested in ``beta`` and
filtered images are shared between datasets built with different ``beta``.

The filters are :func:`data_scripts.images.cool_filter` / :func:`~data_scripts.images.warm_filter`;
a filtered copy of ``images/X.ext`` is ``images/X_cool.png`` / ``images/X_warm.png``.

    python -m data_scripts.pick_a_filter --out data/pick_a_filter_0.5 --beta 0.5 \
        --source yuvalkirstain/pickapic_v2 --max-rows 200000
"""

from __future__ import annotations

import argparse
import json
import math
import posixpath
import random
from pathlib import Path

from .images import FILTERS, ImageStore, open_rgb
from . import pickapic

#: group -> (preferred filter, disliked filter)
GROUP_FILTERS = {"cool": ("cool", "warm"), "warm": ("warm", "cool")}


def assign_groups(user_ids, seed: int) -> dict[str, str]:
    """Random balanced split of the distinct users into ``cool`` (first half, rounded up) and
    ``warm``; depends only on the set of ids and the seed."""
    users = sorted(set(user_ids))
    random.Random(f"groups:{seed}").shuffle(users)
    half = (len(users) + 1) // 2
    return {u: ("cool" if i < half else "warm") for i, u in enumerate(users)}


def plan_modifications(rows: list[dict], beta: float, seed: int) -> list[str | None]:
    """Per row: ``"winner"``, ``"loser"`` or None (unchanged).

    Each user's rows are put in a seeded random order; the first ``round(beta * n)`` are modified,
    alternately winner / loser. The order does not depend on ``beta`` (nested sets)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    by_user: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_user.setdefault(r["user_id"], []).append(i)
    plan: list[str | None] = [None] * len(rows)
    for user, idx in by_user.items():
        order = idx[:]
        random.Random(f"filter:{seed}:{user}").shuffle(order)
        k = int(math.floor(beta * len(order) + 0.5))
        for rank, i in enumerate(order[:k]):
            plan[i] = "winner" if rank % 2 == 0 else "loser"
    return plan


def filtered_path(path: str, filter_name: str) -> str:
    """``images/X.jpg`` -> ``images/X_<filter>.png`` (same folder)."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f"{posixpath.splitext(name)[0]}_{filter_name}.png")


def apply_pick_a_filter(
    rows: list[dict], beta: float, seed: int, groups: dict[str, str] | None = None
) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Return (new rows, jobs). New rows carry a ``group`` column and point the modified side to
    the filtered file; ``jobs`` lists each needed ``(source path, filter name, filtered path)``
    once (sorted). No image is touched here: render the jobs with :func:`render_filter_jobs`."""
    groups = groups or assign_groups((r["user_id"] for r in rows), seed)
    plan = plan_modifications(rows, beta, seed)
    new_rows, jobs = [], set()
    for row, action in zip(rows, plan):
        group = groups[row["user_id"]]
        row = {**row, "group": group}
        if action is not None:
            liked, disliked = GROUP_FILTERS[group]
            side, filt = ("chosen", liked) if action == "winner" else ("rejected", disliked)
            dst = filtered_path(row[side], filt)
            jobs.add((row[side], filt, dst))
            row[side] = dst
        new_rows.append(row)
    return new_rows, sorted(jobs)


def render_filter_jobs(jobs: list[tuple[str, str, str]], store: ImageStore, base_dir: Path) -> None:
    """Create the filtered images in ``store`` (paths are relative to ``base_dir``; the
    filtered files must live in the store's folder). Intact existing files are reused."""
    for src, filt, dst in jobs:
        if (base_dir / dst).parent.resolve() != store.directory.resolve():
            raise ValueError(f"{dst} is not in the image store {store.directory}")
        store.ensure(posixpath.basename(dst), lambda src=src, filt=filt: FILTERS[filt](open_rgb(base_dir / src)))


def pick_a_filter_transform(beta: float, seed: int) -> pickapic.Transform:
    """The hook for :func:`data_scripts.pickapic.build`: filter the rows and render images."""

    def transform(rows: list[dict], base_dir: Path, store: ImageStore):
        groups = assign_groups((r["user_id"] for r in rows), seed)
        new_rows, jobs = apply_pick_a_filter(rows, beta, seed, groups)
        render_filter_jobs(jobs, store, base_dir)
        n_mod = sum(a["chosen"] != b["chosen"] or a["rejected"] != b["rejected"] for a, b in zip(rows, new_rows))
        meta = {
            "pick_a_filter": {
                "beta": beta,
                "modified_pairs": n_mod,
                "filtered_images": len(jobs),
                "users_cool": sum(g == "cool" for g in groups.values()),
                "users_warm": sum(g == "warm" for g in groups.values()),
            }
        }
        return new_rows, meta

    return transform


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pickapic.add_build_args(p)
    p.add_argument("--beta", type=float, required=True, help="fraction of each user's pairs to modify, in [0, 1]")
    args = p.parse_args(argv)
    meta = pickapic.build(**pickapic.build_kwargs(args), transform=pick_a_filter_transform(args.beta, args.seed))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
