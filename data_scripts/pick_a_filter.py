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

Output: a data set with one **variant** per beta (:mod:`pal_mm.splits`)::

    OUT/meta.json                {"name": "pick_a_filter", "kind": "real", "variants": ["beta_0.0", ...], ...}
    OUT/images/                  Pick-a-Pic images of the selected users and their filtered copies
    OUT/beta_0.5/                a dataset directory (rows refer to ../images/); meta.json has "beta": 0.5

Users, pairs and splits are those of :mod:`data_scripts.pickapic` (the same for every beta). The
offline default :mod:`data_scripts.t2i_default` writes the same layout with the same functions,
and the root ``meta.json`` of both has the same keys: ``name``, ``kind``, ``variants``, ``users``
(``seen``, ``unseen``, ``cool``, ``warm``), ``unique_images``, ``filtered_images`` and ``betas``
(per beta: ``pairs`` per split, ``modified_pairs``, ``filtered_images``).

    python -m data_scripts.pick_a_filter --out data/pick_a_filter --beta 0 0.25 0.5 0.75 1 \
        --source yuvalkirstain/pickapic_v2 --max-rows 200000
"""

from __future__ import annotations

import argparse
import json
import math
import posixpath
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from encoders.atomic import output_dir
from pal_mm.image_store import ImageStore
from pal_mm.splits import write_dataset, write_variants_meta

from . import pickapic
from .cli import run_builder
from .images import FILTERS, open_rgb, png_bytes

#: the mixture ratios built by default (the paper's Pick-a-Filter figure)
BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)

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
        store.ensure(posixpath.basename(dst), lambda src=src, filt=filt: png_bytes(FILTERS[filt](open_rgb(base_dir / src))))


# --------------------------------------------------------------------------------------------
# variants (shared with data_scripts.t2i_default)
# --------------------------------------------------------------------------------------------


def variant_name(beta: float) -> str:
    """The sub-folder of a beta: ``beta_0.25``."""
    return f"beta_{float(beta)}"


@dataclass
class BetaVariant:
    """One beta's rows (image paths relative to the root) and what the filter changed."""

    beta: float
    rows: list[dict]
    modified_pairs: int
    filtered_images: int


def filter_variants(rows: list[dict], betas, seed: int, groups: dict[str, str], store: ImageStore,
                  root: Path) -> tuple[list[BetaVariant], list[tuple[str, str, str]]]:
    """Filter ``rows`` for every beta and render every filtered image once. Returns the variants
    and the filter jobs (``(source, filter, filtered path)``, sorted)."""
    variants, all_jobs = [], set()
    for beta in betas:
        new_rows, jobs = apply_pick_a_filter(rows, beta, seed, groups)
        n_mod = sum(a["chosen"] != b["chosen"] or a["rejected"] != b["rejected"] for a, b in zip(rows, new_rows))
        variants.append(BetaVariant(float(beta), new_rows, n_mod, len(jobs)))
        all_jobs.update(jobs)
    render_filter_jobs(sorted(all_jobs), store, root)
    return variants, sorted(all_jobs)


def rebase(rows: list[dict], prefix: str) -> list[dict]:
    """Prefix the image paths (``images/x.png`` -> ``../images/x.png``)."""
    return [{**r, "chosen": prefix + r["chosen"], "rejected": prefix + r["rejected"]} for r in rows]


def write_variants(root: Path, variants: list[BetaVariant], seen: list[str], seed: int, meta: dict, encoder=None) -> dict:
    """Write each variant's dataset directory (:func:`data_scripts.pickapic.make_splits`; image
    paths ``../images/...``, or embeddings from ``encoder``) and then the root ``meta.json``
    (``meta`` plus ``variants`` and a per-beta summary ``betas``). Returns the root meta."""
    splits = {v.beta: pickapic.make_splits(v.rows, seen, seed) for v in variants}
    if encoder is not None:
        flat = pickapic.embed_rows({(b, s): rows for b, by in splits.items() for s, rows in by.items()}, root, encoder)
        splits = {b: {s: flat[(b, s)] for s in by} for b, by in splits.items()}
    else:
        splits = {b: {s: rebase(rows, "../") for s, rows in by.items()} for b, by in splits.items()}
    for v in variants:
        name = variant_name(v.beta)
        write_dataset(root / name, splits[v.beta], {"name": f"{meta['name']}/{name}", "kind": meta["kind"], "beta": v.beta,
                                                     "modified_pairs": v.modified_pairs, "filtered_images": v.filtered_images})
    meta = {**meta, "betas": {str(v.beta): {"pairs": {s: len(r) for s, r in splits[v.beta].items()},
                                            "modified_pairs": v.modified_pairs, "filtered_images": v.filtered_images}
                              for v in variants}}
    write_variants_meta(root, [variant_name(v.beta) for v in variants], meta)
    return {**meta, "variants": [variant_name(v.beta) for v in variants]}


def build(out: str | Path, betas=BETAS, source: str = pickapic.DEFAULT_SOURCE, split: str = "train",
          max_rows: int | None = None, num_seen: int = 100, num_unseen: int = 50, min_pairs: int = 20, seed: int = 0,
          encoder: str | None = None) -> dict:
    """Build Pick-a-Filter with one variant per beta into ``out`` (atomically); returns the root meta."""
    betas = sorted({float(b) for b in betas})
    for beta in betas:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
    with output_dir(Path(out)) as tmp:
        c = pickapic.collect(tmp, source, split, max_rows, num_seen, num_unseen, min_pairs)
        groups = assign_groups((r["user_id"] for r in c.rows), seed)
        variants, jobs = filter_variants(c.rows, betas, seed, groups, c.store, tmp)
        used = {Path(r[k]).name for v in variants for r in v.rows for k in ("chosen", "rejected")}
        if not encoder:
            c.store.prune(used)
            c.store.save_manifest()
        meta = {"name": "pick_a_filter", "kind": "real", **pickapic.source_meta(c, source, split, max_rows, min_pairs, seed, encoder),
                "unique_images": len(used), "filtered_images": len(jobs)}
        meta["users"].update(cool=sum(g == "cool" for g in groups.values()), warm=sum(g == "warm" for g in groups.values()))
        meta = write_variants(tmp, variants, c.seen, seed, meta, pickapic.make_encoder(encoder) if encoder else None)
        if encoder:
            shutil.rmtree(tmp / "images")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pickapic.add_build_args(p)
    p.add_argument("--beta", type=float, nargs="+", default=list(BETAS),
                   help="mixture ratios, one variant each (fraction of each user's pairs to modify, in [0, 1])")
    args = p.parse_args(argv)
    if not all(0.0 <= b <= 1.0 for b in args.beta):
        p.error(f"--beta values must be in [0, 1], got {args.beta}")
    return run_builder(lambda: print(json.dumps(build(betas=args.beta, **pickapic.build_kwargs(args)), indent=2)))


if __name__ == "__main__":
    sys.exit(main())
