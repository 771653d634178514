"""One preference file -> a dataset directory (:mod:`pal_mm.splits`): seen users' pairs split per user
into train / validation / test, and held-out **new users** with nested few-shot sets
(``pal-mm split``).

* **New users.** The users, sorted, are shuffled by ``random.Random(seed)``; the first
  ``new_users`` of them (a fraction of the users, rounded, or a count) are held out: none of their
  pairs is in the seen splits. At least one user stays seen.
* **Seen users.** Each seen user's rows, in the seeded order of :func:`pal_mm.data.user_orders`,
  go ``round(m * test)`` to ``seen_test``, ``round(m * val)`` to ``seen_val`` and the rest (at least
  one) to ``seen_train``; every seen user is in ``seen_train``.
* **Few-shot sets.** ``unseen.jsonl`` holds the new users' rows; for every n in ``shots``,
  ``unseen_n{n}_train.jsonl`` / ``unseen_n{n}_test.jsonl`` are :func:`pal_mm.fewshot.fewshot_rows`
  (the project's one protocol: nested training sets, the rest or the last ``test_pairs`` rows to test).

Rows keep their values as read (conversations stay conversations, so any encoder renders them
later); image paths are rewritten relative to the output folder. Every file keeps the input's row
order within a split.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .data import CONTENT_COLUMNS, PreferenceData, user_orders, validate_rows
from .errors import PalMMError
from .fewshot import fewshot_rows


@dataclass
class HoldoutConfig:
    """How ``pal-mm split`` divides a file (fractions are of each seen user's pairs)."""

    new_users: float = 0.2
    val: float = 0.1
    test: float = 0.2
    shots: Sequence[int] = (1, 5, 10)
    test_pairs: int | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("val", "test"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise PalMMError(f"--{name} must be a fraction in [0, 1), got {value!r}")
        if self.val + self.test >= 1:
            raise PalMMError(f"--val + --test must leave training pairs (sum < 1), got {self.val + self.test:g}")
        n = self.new_users
        if not isinstance(n, (int, float)) or n < 0 or (n >= 1 and float(n) != int(n)):
            raise PalMMError(f"--new-users must be a fraction in [0, 1) or a whole count, got {n!r}")
        if any(int(s) < 1 for s in self.shots):
            raise PalMMError(f"--shots must be positive integers, got {list(self.shots)}")
        if self.test_pairs is not None and self.test_pairs < 1:
            raise PalMMError(f"--test-pairs must be a positive integer, got {self.test_pairs}")


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def choose_new_users(users: Sequence[str], new_users: float, seed: int) -> list[str]:
    """The held-out users: ``round(new_users * U)`` (a fraction) or ``new_users`` (a count >= 1) of the
    sorted, seeded-shuffled users; at least one user stays seen."""
    pool = sorted(set(users))
    count = _round(new_users * len(pool)) if new_users < 1 else int(new_users)
    if count >= len(pool):
        raise PalMMError(f"--new-users {new_users:g} holds out {count} of {len(pool)} users: at least one must stay seen")
    random.Random(seed).shuffle(pool)
    return sorted(pool[:count])


def split_seen(user_ids: Sequence[str], val: float, test: float, seed: int) -> dict[str, list[int]]:
    """Row indices of ``seen_train`` / ``seen_val`` / ``seen_test``: each user's rows, in the seeded
    order, ``round(m * test)`` to test, ``round(m * val)`` to validation, the rest (>= 1) to train."""
    out: dict[str, list[int]] = {"seen_train": [], "seen_val": [], "seen_test": []}
    for rows in user_orders(user_ids, seed).values():
        m = len(rows)
        n_test = min(_round(m * test), m - 1)
        n_val = min(_round(m * val), m - 1 - n_test)
        out["seen_test"] += rows[:n_test]
        out["seen_val"] += rows[n_test : n_test + n_val]
        out["seen_train"] += rows[n_test + n_val :]
    return {k: sorted(v) for k, v in out.items()}


def canonical_rows(raw: Sequence[dict], data: PreferenceData, out_dir: Path) -> list[dict]:
    """Rows to write: validated ids and groups, the values as read (conversations kept), image
    paths relative to ``out_dir``."""
    rows = []
    base = Path(out_dir).resolve()
    for i, r in enumerate(raw):
        row: dict[str, Any] = {"user_id": data.user_ids[i]}
        for col, values in zip(CONTENT_COLUMNS, (data.prompts, data.chosen, data.rejected)):
            kind = data.kinds[col]
            row[col] = os.path.relpath(values[i], base) if kind == "image" else (values[i] if kind == "vector" else r[col])
        if data.groups is not None:
            row["group"] = data.groups[i]
        rows.append(row)
    return rows


def holdout_splits(raw: Sequence[dict], source: str, base_dir: str | os.PathLike | None, out_dir: str | os.PathLike,
                   config: HoldoutConfig) -> tuple[dict[str, list[dict]], dict[str, list[dict]], dict]:
    """(rows by split, few-shot files, meta) for :func:`pal_mm.splits.write_dataset`."""
    config.check()
    raw = list(raw)
    data = validate_rows(raw, source, base_dir)  # every row checked before anything is written
    rows = canonical_rows(raw, data, Path(out_dir))
    new = set(choose_new_users(data.users, config.new_users, config.seed))
    seen_idx = [i for i, u in enumerate(data.user_ids) if u not in new]
    unseen = [rows[i] for i, u in enumerate(data.user_ids) if u in new]
    seen = split_seen([data.user_ids[i] for i in seen_idx], config.val, config.test, config.seed)
    splits = {name: [rows[seen_idx[j]] for j in idx] for name, idx in seen.items()}
    splits["unseen"] = unseen
    shots = sorted({int(s) for s in config.shots})
    extra, kept = {}, {}
    if unseen:
        for n, (train, test) in fewshot_rows(unseen, shots, config.seed, config.test_pairs).items():
            extra[f"unseen_n{n}_train.jsonl"], extra[f"unseen_n{n}_test.jsonl"] = train, test
            kept[str(n)] = len({r["user_id"] for r in train})
    meta = {
        "name": Path(str(source)).stem, "kind": "custom", "source": str(source),
        "split": {"new_users": config.new_users, "val": config.val, "test": config.test, "seed": config.seed},
        "users": {"seen": len(data.users) - len(new), "new": sorted(new)},
        "few_shot": {"shots": shots, "seed": config.seed, "test_pairs": config.test_pairs, "users": kept,
                     "protocol": "pal_mm.fewshot.fewshot_rows (nested n-shot training sets)"},
    }
    return splits, extra, meta


__all__ = ["HoldoutConfig", "canonical_rows", "choose_new_users", "holdout_splits", "split_seen"]
