"""Reddit TL;DR with the real workers and their own labels (LoRe's protocol): ``--labels workers``.

``python -m data_scripts.summary --labels workers --out DIR [--source ...]`` runs :func:`build`. The source
and its reading are :mod:`data_scripts.summary`'s (``openai/summarize_from_feedback``, configuration
``comparisons``, or a local copy in the Hub schema); so is the row filter, except that every policy
pair is kept (LoRe uses all comparisons): Reddit posts only (a row without ``info.post`` is a CNN/DM
news comparison and is dropped), non-null summaries. Nothing is relabelled: the chosen summary is the
worker's own ``choice``.

* **Workers**: those with rows in both the train split and the test split (``validation``), sorted by
  id and shuffled by ``random.Random(0)``; the first half are seen, the rest unseen. (LoRe applies the
  same rule to an unordered set, so its exact worker list cannot be reproduced; LoRe also drops the two
  smallest workers of each split, which this builder does not.)
* **Seen workers**: up to ``--max-train-pairs`` (default 150, LoRe's) of their train-split rows, a seeded
  random choice per worker, split 90/10 into ``seen_train`` / ``seen_val`` (seed 42); ``seen_test`` = all
  their test-split rows.
* **Unseen workers**: up to ``--max-unseen-pairs`` (default 50, LoRe's) train-split rows as the few-shot
  pool (``unseen_train.jsonl``) and all their test-split rows (``unseen_test.jsonl``); ``unseen.jsonl``
  holds both, pool first.

Rows: ``{"user_id", "prompt", "chosen", "rejected"}`` (no group: real workers have none).
"""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict

from .layout import split_train_val, write_splits
from .tldr_source import HUB_CONFIG, iter_split, parse_hub_rows

MAX_TRAIN_PAIRS = 150
MAX_UNSEEN_PAIRS = 50
SEED = 0


def labelled(c: dict) -> dict:
    chosen, rejected = (c["left"], c["right"]) if c["choice"] == 0 else (c["right"], c["left"])
    return {"user_id": c["worker"], "prompt": c["prompt"], "chosen": chosen, "rejected": rejected}


def _sample(rows: list[dict], k: int, worker: str) -> list[dict]:
    """At most ``k`` of a worker's rows, a choice seeded by the worker id (input order kept)."""
    if len(rows) <= k:
        return rows
    keep = set(random.Random(f"{SEED}:{worker}").sample(range(len(rows)), k))
    return [r for i, r in enumerate(rows) if i in keep]


def build(source: str, out_dir: str | os.PathLike, train_split: str = "train", test_split: str = "validation",
          max_train: int = MAX_TRAIN_PAIRS, max_unseen: int = MAX_UNSEEN_PAIRS) -> dict:
    dropped = {"train": Counter(), "test": Counter()}
    by_split = {}
    for name, split in (("train", train_split), ("test", test_split)):
        rows = parse_hub_rows(iter_split(source, split), dropped[name], sft_only=False, human_labels=True)
        per_worker = defaultdict(list)
        for c in rows:
            per_worker[c["worker"]].append(labelled(c))
        by_split[name] = per_worker
    common = sorted(set(by_split["train"]) & set(by_split["test"]))
    random.Random(SEED).shuffle(common)
    half = len(common) // 2
    seen, unseen = sorted(common[:half]), sorted(common[half:])
    train = [r for w in seen for r in _sample(by_split["train"][w], max_train, w)]
    seen_train, seen_val = split_train_val(train)
    pool = [r for w in unseen for r in _sample(by_split["train"][w], max_unseen, w)]
    test_unseen = [r for w in unseen for r in by_split["test"][w]]
    files = {"seen_train.jsonl": seen_train, "seen_val.jsonl": seen_val,
             "seen_test.jsonl": [r for w in seen for r in by_split["test"][w]],
             "unseen.jsonl": pool + test_unseen, "unseen_train.jsonl": pool, "unseen_test.jsonl": test_unseen}
    meta = {"name": "summarize_from_feedback_workers", "kind": "real", "source": source, "config": HUB_CONFIG,
            "labels": "workers",
            "protocol": {"rows": "Reddit posts only, every policy pair, the worker's own choice",
                         "workers": f"in both splits; sorted, shuffled by random.Random({SEED}); half seen, half unseen",
                         "seen": f"<= {max_train} train-split rows per worker (90/10 train/val), all test-split rows for test",
                         "unseen": f"<= {max_unseen} train-split rows per worker as the few-shot pool, all test-split rows as test"},
            "source_splits": {"train": train_split, "test": test_split},
            "dropped_rows": {k: dict(sorted(v.items())) for k, v in dropped.items()},
            "users": {"common": len(common), "seen": len(seen), "unseen": len(unseen)},
            "seen_users": seen, "unseen_users": unseen}
    return write_splits(out_dir, files, meta)
