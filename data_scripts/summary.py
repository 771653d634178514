"""Reddit TL;DR preference data with synthetic length-preferring users (P-RLHF protocol).

Builds the PAL paper's summarisation dataset from the Hub dataset ``openai/summarize_from_feedback``
(config ``comparisons``), following the reference implementation (method.md section 11.1):

* **Row filter:** Reddit posts only: a row without ``info.post`` (the CNN/DM news comparisons of the
  validation splits carry ``info.article`` instead) is dropped and counted (``non_reddit``). Then keep
  SFT-vs-SFT comparisons: both summaries' ``policy`` contains ``"sup"`` and neither contains ``"ppo"``;
  rows with a null/empty summary text are dropped too.
* **Seen users:** the 10 workers with the most filtered *train* rows, in descending-count order (ties
  broken by worker id). Positions 3, 4, 5 are the *minority* (prefer the SHORTER summary), the other
  seven the *majority* (prefer the LONGER summary).
* **Labels** are synthetic, from character length; the human choice is discarded. On equal lengths the
  second summary (``summaries[1]``, "right") is preferred by both groups.
* **Text:** prompt ``"Human: {post} Assistant:"``, responses ``" " + summary``.
* **Splits:** the seen users' train rows are split 90/10 into train/val, stratified by user (seed 42);
  seen test = their rows of the Hub ``validation`` split.
* **Unseen users:** workers of the validation split who are not seen users and have >= 100 rows.
  The reference hard-codes which of them are minority (9 of 31); we cannot reproduce that list, so
  the users are sorted by id and ~30 % of them, spread evenly ("every ~third"), are minority
  (:func:`unseen_groups`; 9 of 31 when there are 31).
* **Few-shot splits** of the unseen users: ``n`` rows per user for training, the rest for testing,
  for n in 1, 2, 5, 10, 20, 50, 100 (:func:`pal_mm.data.split_rows_per_user`, seed 42; users with
  ``<= n`` rows are dropped).

**Sizes.** ``meta.json`` records the split sizes next to the paper's (:data:`PAPER_SIZES`: 20,969 /
2,330 / 4,921 pairs, 31 unseen workers) and ``main`` prints both.

**Real worker labels.** ``--labels workers`` builds LoRe's protocol instead (human labels, real
workers, no relabelling): see :mod:`data_scripts.summary_workers`.

Output: a dataset directory (:mod:`pal_mm.splits`, written atomically: a temporary directory
renamed into place)::

    seen_train.jsonl  seen_val.jsonl  seen_test.jsonl  unseen.jsonl
    unseen_n{N}_train.jsonl  unseen_n{N}_test.jsonl   (N = 1, 2, 5, 10, 20, 50, 100)
    meta.json                                         ("kind": "real"; the offline builder's "default")

Each row is ``{"user_id", "prompt", "chosen", "rejected", "group"}``.

The protocol part (:func:`build_protocol_files`, :func:`build_and_write`) is shared with the offline
builder :mod:`data_scripts.summary_default`. Sources are read with :mod:`pal_mm.ingest` (its rule
decides "local path or Hub name?").

Usage::

    python -m data_scripts.summary --out DIR [--source HUB_NAME_OR_LOCAL_PATH] [--labels length|workers]

``--source`` is a Hub dataset name (loaded with ``datasets.load_dataset(name, "comparisons")``) or a
local copy in the Hub schema (rows with ``info`` {id, post, title, subreddit, article}, ``summaries``
[{text, policy, note}, {...}], ``choice``, ``worker``, ``batch``, ``split``, ``extra``):

* a directory holding one file per split: ``{split}.jsonl`` / ``{split}.json`` / ``{split}.parquet``,
  ``{split}-*.parquet``, ``{split}/*.parquet`` or ``comparisons/{split}/*.parquet``;
* a single .jsonl/.json/.parquet file holding all rows; the rows' ``split`` field picks the split
  (``validation`` also matches the Hub's ``valid1``/``valid2`` values).

``--train-split`` / ``--test-split`` (default ``train`` / ``validation``) name the two splits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from encoders.atomic import output_dir
from pal_mm.data import split_rows_per_user
from pal_mm.errors import DataError
from pal_mm.splits import SPLITS, write_dataset

from .cli import run_builder
from .layout import SEED, VAL_FRACTION, split_train_val
from .summary_workers import build as build_workers
from .tldr_source import HUB_CONFIG, HUB_NAME, is_sft_pair, iter_split, parse_hub_rows  # noqa: F401  (re-exported)

N_SEEN = 10
MINORITY_POSITIONS = (3, 4, 5)
UNSEEN_MIN_ROWS = 100
UNSEEN_MINORITY_FRACTION = 0.3
FEW_SHOT_NS = (1, 2, 5, 10, 20, 50, 100)
MAJORITY, MINORITY = "majority", "minority"

#: the PAL paper's sizes of this protocol
PAPER_SIZES = {"seen_train": 20969, "seen_val": 2330, "seen_test": 4921, "unseen_users": 31}

PROTOCOL = {
    "row_filter": "Reddit posts only (info.post present; CNN/DM rows dropped); both summaries' policy contains "
    "'sup', neither contains 'ppo'; non-null texts",
    "seen_users": f"top {N_SEEN} workers by filtered train rows (ties by id); positions "
    f"{list(MINORITY_POSITIONS)} minority, the rest majority",
    "labels": "majority prefers the longer summary, minority the shorter; equal lengths -> the "
    "second summary (summaries[1]) is preferred by both groups",
    "splits": f"seen train rows split {100 - int(VAL_FRACTION * 100)}/{int(VAL_FRACTION * 100)} "
    f"train/val stratified by user (seed {SEED}); seen test = seen users' test-split rows",
    "unseen_users": f"test-split workers not seen with >= {UNSEEN_MIN_ROWS} rows; sorted by id, "
    f"~{int(UNSEEN_MINORITY_FRACTION * 100)}% spread evenly are minority (the reference's hard-coded "
    "list is not reproducible)",
    "few_shot": f"pal_mm.data.split_rows_per_user(n, seed={SEED}) for n in {list(FEW_SHOT_NS)}",
}


# ------------------------------------------------------------------------------------------
# Shared protocol: groups, labels, splits, output files (also used by summary_default)
# ------------------------------------------------------------------------------------------
# A "comparison" is a dict {"worker", "prompt", "left", "right"}: one unlabelled pair as shown to
# one worker, left = summaries[0], right = summaries[1] (responses already prefixed with " ").


def preferred(left: str, right: str, group: str) -> tuple[str, str]:
    """Return (chosen, rejected) by the length rule. Majority prefers the longer response, minority
    the shorter; on equal lengths the right response wins for both groups."""
    if group == MINORITY:
        left_wins = len(left) < len(right)
    else:
        left_wins = len(left) > len(right)
    return (left, right) if left_wins else (right, left)


def top_workers(comparisons: list[dict], k: int = N_SEEN) -> list[str]:
    """The k workers with the most comparisons, most first; ties broken by worker id."""
    counts = Counter(c["worker"] for c in comparisons)
    return sorted(counts, key=lambda w: (-counts[w], w))[:k]


def seen_groups(seen: list[str]) -> dict[str, str]:
    """Group of each seen user from its position in the count order (3, 4, 5 = minority)."""
    return {w: MINORITY if i in MINORITY_POSITIONS else MAJORITY for i, w in enumerate(seen)}


def unseen_groups(users: Iterable[str]) -> dict[str, str]:
    """Spread ~30 % minority users evenly over the users sorted by id.

    With n users and m = round(0.3 n) minority users, user i (0-based, in id order) is minority when
    floor((i + 1) m / n) > floor(i m / n), i.e. every ~n/m-th user; for n = 31 this gives m = 9."""
    users = sorted(users)
    n = len(users)
    m = int(UNSEEN_MINORITY_FRACTION * n + 0.5)
    return {u: MINORITY if (i + 1) * m // n > i * m // n else MAJORITY for i, u in enumerate(users)}


def label_rows(comparisons: list[dict], groups: dict[str, str]) -> list[dict]:
    """Canonical rows for the comparisons of the workers in ``groups`` (input order kept)."""
    rows = []
    for c in comparisons:
        group = groups.get(c["worker"])
        if group is None:
            continue
        chosen, rejected = preferred(c["left"], c["right"], group)
        rows.append({"user_id": c["worker"], "prompt": c["prompt"], "chosen": chosen, "rejected": rejected, "group": group})
    return rows


def build_protocol_files(train: list[dict], test: list[dict]) -> tuple[dict[str, list[dict]], dict]:
    """Apply the protocol to train-split and test-split comparisons.

    Returns ``(files, users)``: file name -> rows, and the meta entries for seen/unseen users."""
    seen = top_workers(train)
    if len(seen) < N_SEEN:
        raise DataError(f"train split: only {len(seen)} workers after filtering, need {N_SEEN}")
    groups = seen_groups(seen)
    seen_train, seen_val = split_train_val(label_rows(train, groups))
    seen_test = label_rows(test, groups)

    test_counts = Counter(c["worker"] for c in test)
    unseen = sorted(w for w, k in test_counts.items() if w not in groups and k >= UNSEEN_MIN_ROWS)
    ugroups = unseen_groups(unseen)
    unseen_rows = label_rows(test, ugroups)

    files = {"seen_train.jsonl": seen_train, "seen_val.jsonl": seen_val, "seen_test.jsonl": seen_test, "unseen.jsonl": unseen_rows}
    for n in FEW_SHOT_NS:
        few_train, few_test = split_rows_per_user(unseen_rows, n, seed=SEED)
        files[f"unseen_n{n}_train.jsonl"] = few_train
        files[f"unseen_n{n}_test.jsonl"] = few_test

    train_counts = Counter(c["worker"] for c in train)
    users = {
        "seen_users": [
            {"user_id": w, "group": groups[w], "train_split_rows": train_counts[w], "test_split_rows": test_counts[w]} for w in seen
        ],
        "unseen_users": [{"user_id": w, "group": ugroups[w], "rows": test_counts[w]} for w in unseen],
    }
    return files, users


def build_and_write(train: list[dict], test: list[dict], out_dir: str | os.PathLike, meta_head: dict) -> dict:
    """Protocol + output: the dataset directory ``out_dir`` (replaced atomically: on an error the
    old one, or nothing, is left). ``meta_head`` carries ``name`` and ``kind``. Returns the meta
    dict written to ``meta.json``."""
    files, users = build_protocol_files(train, test)
    meta = dict(meta_head)
    meta["protocol"] = PROTOCOL
    meta["counts"] = {name: len(rows) for name, rows in files.items()}
    meta.update(users)
    meta["sizes_vs_paper"] = sizes_vs_paper(meta)  # {split: [ours, the paper's]}
    splits = {s: files[f"{s}.jsonl"] for s in SPLITS}
    extra = {name: rows for name, rows in files.items() if name.removesuffix(".jsonl") not in SPLITS}
    with output_dir(Path(out_dir)) as tmp:
        write_dataset(tmp, splits, meta, extra_files=extra)
    return meta


def build(source: str, out_dir: str | os.PathLike, train_split: str = "train", test_split: str = "validation") -> dict:
    """Build the TL;DR dataset from ``source`` into ``out_dir``; returns the meta dict."""
    dropped = {"train": Counter(), "test": Counter()}
    train = parse_hub_rows(iter_split(source, train_split), dropped["train"])
    test = parse_hub_rows(iter_split(source, test_split), dropped["test"])
    meta_head = {"name": "summarize_from_feedback", "kind": "real", "source": source, "config": HUB_CONFIG,
                 "source_splits": {"train": train_split, "test": test_split},
                 "filtered_comparisons": {"train": len(train), "test": len(test)},
                 "dropped_rows": {k: dict(sorted(v.items())) for k, v in dropped.items()}}
    return build_and_write(train, test, out_dir, meta_head)


def sizes_vs_paper(meta: dict) -> dict:
    """{split: [ours, the paper's]} for the three seen splits and the unseen workers."""
    ours = {s: meta["counts"][f"{s}.jsonl"] for s in ("seen_train", "seen_val", "seen_test")}
    ours["unseen_users"] = len(meta["unseen_users"])
    return {k: [ours[k], PAPER_SIZES[k]] for k in PAPER_SIZES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--source", default=HUB_NAME, help=f"Hub dataset name or local file/directory (default {HUB_NAME})")
    parser.add_argument("--train-split", default="train", help="split used for seen users' train/val (default train)")
    parser.add_argument("--test-split", default="validation", help="split used for seen test and unseen users (default validation)")
    parser.add_argument("--labels", default="length", choices=("length", "workers"),
                        help="length: the P-RLHF synthetic length users (default); workers: real worker ids and their "
                        "own labels (LoRe's protocol, data_scripts.summary_workers)")
    args = parser.parse_args(argv)

    def body():
        if args.labels == "workers":
            meta = build_workers(args.source, args.out, args.train_split, args.test_split)
            print(f"wrote {args.out}: {meta['users']['seen']} seen / {meta['users']['unseen']} unseen workers; "
                  + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))
            return
        meta = build(args.source, args.out, args.train_split, args.test_split)
        print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items() if "_n" not in k))
        print("sizes (ours vs the paper's): " + ", ".join(f"{k} {a:,} vs {b:,}" for k, (a, b) in sizes_vs_paper(meta).items()))

    return run_builder(body)

if __name__ == "__main__":
    sys.exit(main())
