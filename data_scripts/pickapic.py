"""Build pal-mm data from Pick-a-Pic (real text-to-image preferences; needs the data).

Input rows follow the ``yuvalkirstain/pickapic_v2`` schema: ``caption``, ``jpg_0``, ``jpg_1``
(encoded image bytes, ``datasets`` image dicts or, in JSON lines, paths relative to the file),
``label_0``, ``label_1`` and ``user_id``. The source is anything :mod:`pal_mm.ingest` reads: a Hub
dataset name (streamed), a ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` file or a
``save_to_disk`` directory.

Steps:

1. **pass 1** reads only ``user_id``, ``label_0`` and ``label_1`` of the first ``--max-rows`` rows:
   labels and ids are checked, ties (:func:`pal_mm.ingest.pickapic_winner`: equal labels) are
   counted and dropped;
2. users with at least ``--min-pairs`` pairs, ordered by pair count (ties by id): the first
   ``--num-seen`` are *seen*, the next ``--num-unseen`` *unseen* (disjoint);
3. **pass 2** reads the same rows in full and stores only the selected users' images, under
   content-hash names (:class:`pal_mm.image_store.ImageStore`), so no image of another user is
   ever written; ``chosen`` is the image with the higher label;
4. (:mod:`data_scripts.pick_a_filter`) optionally, variants with colour filters;
5. seen users' pairs are split train/val/test per user (seeded), unseen users' go to ``unseen``;
6. with ``--encoder NAME`` the prompts and images are replaced by embeddings from that registered
   encoder (the images then only live in the temporary build folder).

Output: a dataset directory (:mod:`pal_mm.splits`): ``OUT/{seen_train,seen_val,seen_test,unseen}.jsonl``,
``OUT/images/`` and ``OUT/meta.json`` (``"kind": "real"``). It is built in a temporary folder
renamed into place at the end, so a failed build leaves nothing (and replaces nothing).

    python -m data_scripts.pickapic --out data/pickapic --source yuvalkirstain/pickapic_v2 \
        --split train --max-rows 200000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders.atomic import output_dir
from pal_mm.convert import PICKAPIC_COLUMNS, pickapic_pair
from pal_mm.data import IdColumn, RowValidator
from pal_mm.errors import DataError
from pal_mm.image_store import ImageStore
from pal_mm.ingest import iter_rows, pickapic_winner, take
from pal_mm.splits import write_dataset

from .cli import run_builder

DEFAULT_SOURCE = "yuvalkirstain/pickapic_v2"
SPLIT_NAMES = ("seen_train", "seen_val", "seen_test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
IMAGE_PREFIX = "images/"


# --------------------------------------------------------------------------------------------
# reading the source: labels first, images of the selected users only
# --------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """Pass 1: the user of every non-tie row (None for a tie) and the counts."""

    users: list[str | None] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    label: str = ""


def scan_labels(source: str, split: str = "train", max_rows: int | None = None) -> Scan:
    """Read ``user_id``, ``label_0``, ``label_1`` of the first ``max_rows`` rows (cheap: the
    image columns are not read from parquet, saved datasets or the Hub's parquet files)."""
    rows, _, label = iter_rows(source, split, columns=("user_id", "label_0", "label_1"))
    scan, ids = Scan(label=label), IdColumn("user_id")
    for r, row in enumerate(take(rows, max_rows), 1):
        where = f"{label}: row {r}"
        missing = [c for c in ("user_id", "label_0", "label_1") if c not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {', '.join(PICKAPIC_COLUMNS)})")
        user = ids(row["user_id"], where)
        scan.counts["rows_read"] += 1
        if pickapic_winner(row["label_0"], row["label_1"], where) is None:
            scan.counts["ties_dropped"] += 1
            scan.users.append(None)
        else:
            scan.users.append(user)
    scan.counts["pairs"] = scan.counts["rows_read"] - scan.counts["ties_dropped"]
    return scan


def select_users(user_pairs: Counter, num_seen: int, num_unseen: int, min_pairs: int) -> tuple[list[str], list[str]]:
    """Users with ``>= min_pairs`` pairs, most pairs first (ties by id): the first ``num_seen``
    are seen, the next ``num_unseen`` unseen."""
    ranked = sorted((u for u, c in user_pairs.items() if c >= min_pairs), key=lambda u: (-user_pairs[u], u))
    return ranked[:num_seen], ranked[num_seen : num_seen + num_unseen]


def read_pairs(source: str, split: str, keep: list[bool], store: ImageStore) -> list[dict]:
    """Pass 2 over the first ``len(keep)`` rows: canonical rows (``chosen`` = higher label) for
    the rows flagged in ``keep``, their images stored in ``store`` and referenced as
    ``images/NAME``. The other rows' images are never decoded or stored."""
    rows, base_dir, label = iter_rows(source, split)
    validator = RowValidator(label, None, names={"prompt": "caption"})
    out = []
    for r, row in enumerate(take(rows, len(keep)), 1):
        if keep[r - 1]:
            pair = pickapic_pair(row, f"{label}: row {r}", store, base_dir, validator, IMAGE_PREFIX)
            if pair is None:
                raise DataError(f"{label}: row {r}: a tie on the second read (the source changed while it was read)")
            out.append(pair)
    return out


@dataclass
class Collected:
    """The selected users' pairs (image paths relative to the build folder) and what was counted."""

    rows: list[dict]
    seen: list[str]
    unseen: list[str]
    counts: dict
    store: ImageStore


def collect(root: Path, source: str, split: str, max_rows: int | None, num_seen: int, num_unseen: int,
            min_pairs: int) -> Collected:
    """Passes 1 and 2 into ``root`` (images in ``root/images``)."""
    scan = scan_labels(source, split, max_rows)
    seen, unseen = select_users(Counter(u for u in scan.users if u is not None), num_seen, num_unseen, min_pairs)
    chosen_users = set(seen) | set(unseen)
    if not chosen_users:
        raise DataError(f"{scan.label}: no user has {min_pairs} or more pairs (--min-pairs) in the "
                        f"{scan.counts['rows_read']} rows read")
    keep = [u in chosen_users for u in scan.users]
    store = ImageStore(root / "images")
    rows = read_pairs(source, split, keep, store)
    return Collected(rows, seen, unseen, dict(scan.counts), store)


# --------------------------------------------------------------------------------------------
# users and splits
# --------------------------------------------------------------------------------------------


def split_fractions(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Sizes for splitting ``n`` items by ``fractions`` (rounded; the last part takes the rest)."""
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return sizes


def split_seen(rows: list[dict], seed: int, fractions: tuple[float, ...] = DEFAULT_FRACTIONS) -> dict[str, list[dict]]:
    """Split each user's rows train/val/test (shuffled with a per-user seed); row order within a
    split follows the input order."""
    by_user: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_user.setdefault(r["user_id"], []).append(i)
    assign = [0] * len(rows)
    for user, idx in by_user.items():
        idx = idx[:]
        random.Random(f"{seed}:{user}").shuffle(idx)
        start = 0
        for part, size in enumerate(split_fractions(len(idx), fractions)):
            for i in idx[start : start + size]:
                assign[i] = part
            start += size
    return {name: [r for r, a in zip(rows, assign) if a == part] for part, name in enumerate(SPLIT_NAMES)}


def make_splits(rows: list[dict], seen: list[str], seed: int) -> dict[str, list[dict]]:
    """The four splits: seen users' rows split per user, the other users' rows in ``unseen``."""
    seen_set = set(seen)
    splits = split_seen([r for r in rows if r["user_id"] in seen_set], seed)
    splits["unseen"] = [r for r in rows if r["user_id"] not in seen_set]
    return splits


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------


def _floats(vec) -> list[float]:
    return [round(float(v), 6) for v in vec]


def embed_rows(groups: dict[Any, list[dict]], base_dir: Path, encoder) -> dict[Any, list[dict]]:
    """Replace prompts and image paths (relative to ``base_dir``) by the encoder's embeddings,
    in every list of ``groups`` (each unique prompt and image is encoded once)."""
    all_rows = [r for rows in groups.values() for r in rows]
    prompts = sorted({r["prompt"] for r in all_rows})
    images = sorted({r[k] for r in all_rows for k in ("chosen", "rejected")})
    p_emb = dict(zip(prompts, map(_floats, encoder.encode_prompts(prompts).tolist()))) if prompts else {}
    i_emb = dict(zip(images, map(_floats, encoder.encode_items([str(base_dir / p) for p in images]).tolist()))) if images else {}
    return {key: [{**r, "prompt": p_emb[r["prompt"]], "chosen": i_emb[r["chosen"]], "rejected": i_emb[r["rejected"]]}
                  for r in rows] for key, rows in groups.items()}


def make_encoder(name: str):
    from encoders import create_encoder

    return create_encoder(name)


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def source_meta(c: Collected, source: str, split: str, max_rows: int | None, min_pairs: int, seed: int, encoder: str | None) -> dict:
    return {
        "source": str(source), "split": split, "max_rows": max_rows,
        "rows_read": c.counts.get("rows_read", 0), "ties_dropped": c.counts.get("ties_dropped", 0),
        "pairs_without_ties": c.counts.get("pairs", 0), "min_pairs": min_pairs, "seed": seed,
        "users": {"seen": len(c.seen), "unseen": len(c.unseen)}, "encoder": encoder,
    }


def build(out: str | Path, source: str = DEFAULT_SOURCE, split: str = "train", max_rows: int | None = None,
          num_seen: int = 100, num_unseen: int = 50, min_pairs: int = 20, seed: int = 0, encoder: str | None = None) -> dict:
    """Build the dataset directory ``out`` (see the module docstring); returns its meta dict."""
    with output_dir(Path(out)) as tmp:
        c = collect(tmp, source, split, max_rows, num_seen, num_unseen, min_pairs)
        splits = make_splits(c.rows, c.seen, seed)
        used = {Path(r[k]).name for r in c.rows for k in ("chosen", "rejected")}
        if encoder:
            splits = embed_rows(splits, tmp, make_encoder(encoder))
            shutil.rmtree(tmp / "images")
        else:
            c.store.prune(used)
            c.store.save_manifest()
        meta = {"name": "pickapic", "kind": "real", **source_meta(c, source, split, max_rows, min_pairs, seed, encoder),
                "unique_images": len(used)}
        write_dataset(tmp, splits, meta)
        meta = json.loads((tmp / "meta.json").read_text())
    return meta


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_build_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with :mod:`data_scripts.pick_a_filter`."""
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="Hub name, .parquet/.jsonl/.json/.csv file or save_to_disk folder")
    p.add_argument("--split", default="train")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--num-seen", type=int, default=100)
    p.add_argument("--num-unseen", type=int, default=50)
    p.add_argument("--min-pairs", type=int, default=20, help="minimum pairs (after ties) for a user to be kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", default=None, help="store embeddings from this registered encoder instead of images")


def build_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        out=args.out, source=args.source, split=args.split, max_rows=args.max_rows, num_seen=args.num_seen,
        num_unseen=args.num_unseen, min_pairs=args.min_pairs, seed=args.seed, encoder=args.encoder,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_build_args(p)
    args = p.parse_args(argv)
    return run_builder(lambda: print(json.dumps(build(**build_kwargs(args)), indent=2)))


if __name__ == "__main__":
    sys.exit(main())
