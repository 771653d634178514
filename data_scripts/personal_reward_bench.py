"""PersonalRewardBench (Ryan et al., *SynthesizeMe*, ACL 2025): Chatbot-Arena-P and PRISM-P.

**Source.** ``--subset chatbot_arena`` reads the Hub dataset ``MichaelR207/chatbot_arena_personalized_0125``,
``--subset prism`` reads ``MichaelR207/prism_personalized_0125``; or ``--source`` names a local file
(.jsonl / .json / .parquet) or a folder of such files. Rows: ``user_id``, ``context`` (the conversation
as ``{"role", "content"}`` messages), ``chosen`` and ``rejected`` (``{"role", "content"}`` replies) and
``split`` (``train`` / ``val`` / ``test``: the benchmark's own split of every user's rows); the judges'
columns are ignored. Every Hub split is read; the ``split`` column decides.

**Users.** The benchmark personalises to every user from their own train rows and scores their test
rows. pal-mm's layout also holds users out of training for the new-user protocol, so a seeded fraction
of the users (``--unseen-fraction``, default 0.2: the sorted ids shuffled by ``random.Random(0)``) are
*unseen*: all their rows go to ``unseen.jsonl`` (their train and val rows first), and
``unseen_train.jsonl`` / ``unseen_test.jsonl`` keep the benchmark's split (train + val / test). For the
other users: ``seen_train`` = train rows, ``seen_val`` = val rows, ``seen_test`` = test rows, so the
seen-user accuracy is the benchmark's protocol on those users (the papers' numbers use every user).

    python -m data_scripts.personal_reward_bench --subset chatbot_arena --out data/personal_reward_bench/chatbot_arena
    python -m data_scripts.personal_reward_bench --subset prism --out data/personal_reward_bench/prism
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Iterator

from pal_mm.errors import DataError
from pal_mm.ingest import DATA_SUFFIXES, iter_rows, source_kind

from .cli import run_builder
from .layout import message, text_of, write_splits

HUB_NAMES = {"chatbot_arena": "MichaelR207/chatbot_arena_personalized_0125", "prism": "MichaelR207/prism_personalized_0125"}
HUB_SPLITS = ("train", "validation", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: users in the benchmark (Ryan et al.): Chatbot Arena 131, PRISM 723
PAPER_USERS = {"chatbot_arena": 131, "prism": 723}


def iter_source(source: str) -> Iterator[tuple[str, dict]]:
    """(location, row) of every row of a file, a folder of files or every split of a Hub dataset."""
    kind = source_kind(source)
    if kind == "file":
        files = [Path(source).expanduser()]
    elif kind == "dir":
        files = sorted(p for p in Path(source).expanduser().rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no data files (.jsonl, .json, .parquet, .csv)")
    else:
        yield from _hub_rows(source)
        return
    for f in files:
        rows, _, label = iter_rows(f)
        for i, row in enumerate(rows, 1):
            yield f"{label}: row {i}", row


def _hub_rows(name: str) -> Iterator[tuple[str, dict]]:
    found, first_error = False, None
    for split in HUB_SPLITS:
        try:
            rows, _, label = iter_rows(name, split, streaming=False)
            rows = list(rows)
        except DataError as e:  # this split does not exist
            first_error = first_error or e
            continue
        found = True
        for i, row in enumerate(rows, 1):
            yield f"{label}: row {i}", row
    if not found:
        raise first_error


def parse_row(row: dict, where: str) -> tuple[str, dict]:
    """(benchmark split, canonical row) of one source row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    user, split, context = row.get("user_id"), row.get("split"), row.get("context")
    if not isinstance(user, str) or not user:
        raise DataError(f"{where}: field 'user_id': expected a non-empty string")
    if split not in SPLIT_NAMES:
        raise DataError(f"{where}: field 'split': expected train, val or test, got {split!r}")
    if not isinstance(context, (list, tuple)) or not context:
        raise DataError(f"{where}: field 'context': expected a non-empty list of messages")
    prompt = [message(m.get("role") if isinstance(m, dict) else None, m.get("content") if isinstance(m, dict) else None,
                      f"{where}: context[{j}]") for j, m in enumerate(context)]
    out = {"user_id": user, "prompt": prompt, "chosen": text_of(row.get("chosen"), where, "chosen"),
           "rejected": text_of(row.get("rejected"), where, "rejected")}
    if isinstance(row.get("conversation_id"), str):
        out["conversation_id"] = row["conversation_id"]
    return SPLIT_NAMES[split], out


def build(source: str, out_dir: str, subset: str, unseen_fraction: float = 0.2, seed: int = 0) -> dict:
    if not 0.0 < unseen_fraction < 1.0:
        raise DataError(f"--unseen-fraction must be in (0, 1), got {unseen_fraction}")
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for where, row in iter_source(source):
        split, r = parse_row(row, where)
        by_split[split].append(r)
    users = sorted({r["user_id"] for rows in by_split.values() for r in rows})
    order = list(users)
    random.Random(seed).shuffle(order)
    unseen = set(order[: max(1, round(unseen_fraction * len(order)))])
    part = lambda split, held: [r for r in by_split[split] if (r["user_id"] in unseen) == held]  # noqa: E731
    unseen_train = sorted(part("train", True) + part("val", True), key=lambda r: r["user_id"])
    unseen_test = part("test", True)
    files = {"seen_train.jsonl": part("train", False), "seen_val.jsonl": part("val", False), "seen_test.jsonl": part("test", False),
             "unseen.jsonl": unseen_train + unseen_test, "unseen_train.jsonl": unseen_train, "unseen_test.jsonl": unseen_test}
    meta = {"name": f"personal_reward_bench_{subset}", "kind": "real", "source": source, "subset": subset,
            "protocol": {"splits": "the benchmark's per-user train / val / test rows",
                         "unseen_users": f"{unseen_fraction:g} of the users (sorted ids shuffled by random.Random({seed})); "
                                         "their train+val rows are the few-shot pool, their test rows the test"},
            "users": {"all": len(users), "seen": len(users) - len(unseen), "unseen": len(unseen),
                      "paper": PAPER_USERS.get(subset)},
            "pairs": {s: len(r) for s, r in by_split.items()}}
    return write_splits(out_dir, files, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_scripts.personal_reward_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", required=True, choices=sorted(HUB_NAMES), help="chatbot_arena (Chatbot-Arena-P) or prism (PRISM-P)")
    ap.add_argument("--out", required=True, help="output dataset directory")
    ap.add_argument("--source", default=None, help="Hub name or local file/folder (default: the subset's Hub dataset)")
    ap.add_argument("--unseen-fraction", type=float, default=0.2, help="share of users held out as new users (default 0.2)")
    args = ap.parse_args(argv)

    def body():
        meta = build(args.source or HUB_NAMES[args.subset], args.out, args.subset, args.unseen_fraction)
        u = meta["users"]
        print(f"wrote {args.out}: {u['all']} users (paper: {u['paper']}), {u['seen']} seen / {u['unseen']} unseen; "
              + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))

    return run_builder(body)


if __name__ == "__main__":
    sys.exit(main())
