"""Persona (the PAL paper's semi-synthetic preference groups) with K* = 2 to 6.

**Source.** The Hub dataset ``kitkatdafu/persona_in_pal`` (released by the PAL authors), configurations
``k-{K}_seen`` and ``k-{K}_unseen`` for K* = 2..6, or a local folder with one sub-folder per
configuration (``k-2_seen/train.jsonl``, ``k-2_seen/test.parquet``, ...; any of .jsonl / .json /
.parquet / .csv, file names starting with the split name). Rows are read in either layout:

* pal-mm's canonical columns (``user_id`` or ``uid``, ``prompt``, ``chosen``, ``rejected``), or
* the PAL reference code's (``uid``, ``prompt``, ``left``, ``right``, ``y``; ``y = -1``: left preferred),
  converted by :func:`pal_mm.convert.convert_pal_reference` (ties dropped and counted).

The configurations' column names could not be checked offline; a row in neither layout is a one-line
error naming its columns.

**Splits.** Seen configuration: its ``train`` split gives ``seen_train`` and ``seen_val`` (90/10 per user,
seed 42, unless it has a ``validation`` split), its ``test`` split ``seen_test`` (when there is none, 10 %
of every user's train rows, seed 43). Unseen configuration: every split goes to ``unseen.jsonl`` (the
new users of the few-shot protocol). ``--max-rows`` caps the rows read per configuration and split (the
configurations are large; the Hub is streamed).

**Output**: a data set with one variant per K* (:func:`pal_mm.splits.write_variants_meta`)::

    OUT/meta.json            {"name": "persona", "kind": "real", "variants": ["k2", ..., "k6"]}
    OUT/k2/ ... OUT/k6/      dataset directories; meta.json carries "k_true"

    python -m data_scripts.persona --out data/persona [--k 2 3 4 5 6] [--source kitkatdafu/persona_in_pal | DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

from pal_mm.convert import convert_pal_reference
from pal_mm.errors import DataError
from pal_mm.ingest import DATA_SUFFIXES, iter_rows, shown, source_kind, take
from pal_mm.splits import write_variants_meta

from .cli import run_builder
from .layout import split_train_val, write_splits

HUB_NAME = "kitkatdafu/persona_in_pal"
K_VALUES = (2, 3, 4, 5, 6)
HUB_SPLITS = ("train", "validation", "test")


def config_rows(source: str, config: str, max_rows: int | None) -> dict[str, tuple[str, list[dict]]]:
    """split -> (label, rows) of one configuration (splits that do not exist are absent)."""
    out = {}
    if source_kind(source) == "dir":
        folder = Path(source).expanduser() / config
        if not folder.is_dir():
            raise DataError(f"{source}: no folder {config}/")
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES):
            split = next((s for s in HUB_SPLITS if f.name.startswith(s)), None)
            if split is not None:
                rows, _, label = iter_rows(f)
                prev = out.get(split, (label, []))[1]
                out[split] = (label, prev + list(take(rows, None if max_rows is None else max_rows - len(prev))))
        if not out:
            raise DataError(f"{folder}: no train/validation/test data files")
        return out
    for split in HUB_SPLITS:
        try:
            rows, _, label = iter_rows(source, split, config=config)
            out[split] = (label, list(take(rows, max_rows)))
        except DataError:
            continue  # the configuration has no such split
    if "train" not in out:
        raise DataError(f"{source} (config {config}): could not read its train split")
    return out


def canonical(label: str, rows: list[dict]) -> tuple[list[dict], int]:
    """Rows of either layout -> canonical rows (and the number of ties dropped)."""
    if not rows:
        return [], 0
    first = rows[0]
    if not isinstance(first, dict):
        raise DataError(f"{label}: row 1: expected an object")
    if {"left", "right", "y"} <= set(first):
        converted, counts = convert_pal_reference(rows, source=label)
        return converted, int(counts.get("ties_dropped", 0))
    if {"prompt", "chosen", "rejected"} <= set(first) and ("user_id" in first or "uid" in first):
        out = []
        for i, r in enumerate(rows, 1):
            user = r.get("user_id", r.get("uid"))
            if user is None:
                raise DataError(f"{label}: row {i}: no user_id / uid")
            out.append({"user_id": str(user), "prompt": r.get("prompt"), "chosen": r.get("chosen"), "rejected": r.get("rejected")})
        return out, 0
    raise DataError(f"{label}: row 1: columns {shown(sorted(first))} are neither pal-mm's (user_id, prompt, chosen, "
                    "rejected) nor the PAL reference layout (uid, prompt, left, right, y)")


def build_k(source: str, out_dir: Path, k: int, max_rows: int | None) -> dict:
    seen = {s: canonical(label, rows) for s, (label, rows) in config_rows(source, f"k-{k}_seen", max_rows).items()}
    unseen = {s: canonical(label, rows) for s, (label, rows) in config_rows(source, f"k-{k}_unseen", max_rows).items()}
    train = seen["train"][0]
    if "validation" in seen:
        seen_train, seen_val = train, seen["validation"][0]
    else:
        seen_train, seen_val = split_train_val(train)
    if "test" in seen:
        seen_test = seen["test"][0]
    else:
        seen_train, seen_test = split_train_val(seen_train, seed=43)
    files = {"seen_train.jsonl": seen_train, "seen_val.jsonl": seen_val, "seen_test.jsonl": seen_test,
             "unseen.jsonl": [r for s in HUB_SPLITS if s in unseen for r in unseen[s][0]]}
    meta = {"name": f"persona_k{k}", "kind": "real", "source": source, "k_true": k, "max_rows": max_rows,
            "ties_dropped": sum(t for part in (seen, unseen) for _, t in part.values()),
            "source_splits": {"seen": sorted(seen), "unseen": sorted(unseen)}}
    return write_splits(out_dir / f"k{k}", files, meta)


def build(source: str, out_dir: str, ks=K_VALUES, max_rows: int | None = 200_000) -> dict:
    root = Path(out_dir)
    metas = {f"k{k}": build_k(source, root, k, max_rows) for k in ks}
    write_variants_meta(root, list(metas), {"name": "persona", "kind": "real", "source": source,
                                            "k_true": list(ks), "counts": {v: m["counts"] for v, m in metas.items()}})
    return metas


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_scripts.persona", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (one dataset directory per K*)")
    ap.add_argument("--source", default=HUB_NAME, help=f"Hub name or local folder (default {HUB_NAME})")
    ap.add_argument("--k", type=int, nargs="+", default=list(K_VALUES), help="K* values (default 2 3 4 5 6)")
    ap.add_argument("--max-rows", type=int, default=200_000, help="rows read per configuration and split (0: all)")
    args = ap.parse_args(argv)

    def body():
        metas = build(args.source, args.out, args.k, args.max_rows or None)
        for v, m in metas.items():
            print(f"wrote {args.out}/{v}: " + ", ".join(f"{k} {n}" for k, n in m["counts"].items()))

    return run_builder(body)


if __name__ == "__main__":
    sys.exit(main())
