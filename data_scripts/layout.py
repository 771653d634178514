"""What the real-data builders share: chat messages, the 90/10 seen-user validation split and the
atomic write of a dataset directory (:mod:`pal_mm.splits` layout)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from encoders.atomic import output_dir
from pal_mm.errors import DataError
from pal_mm.ingest import shown
from pal_mm.splits import SPLITS, write_dataset

#: the seen users' validation share and its seed (every builder's 90/10 split)
SEED = 42
VAL_FRACTION = 0.1

#: role names of the sources -> chat roles
ROLE_NAMES = {"user": "user", "human": "user", "model": "assistant", "assistant": "assistant", "gpt": "assistant",
              "system": "system"}


def split_train_val(rows: list[dict], val_fraction: float = VAL_FRACTION, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Stratified train/val split: round(val_fraction * n_u) random rows of each user u go to val.
    Each user's shuffle uses its own RNG seeded by (seed, user id); input order is kept."""
    by_user: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_user.setdefault(row["user_id"], []).append(i)
    val_idx: set[int] = set()
    for user in sorted(by_user):
        idx = list(by_user[user])
        random.Random(f"{seed}:{user}").shuffle(idx)
        val_idx.update(idx[: int(val_fraction * len(idx) + 0.5)])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


def message(role, content, where: str) -> dict:
    """A ``{"role", "content"}`` chat message (roles ``user`` / ``assistant`` / ``system``)."""
    r = ROLE_NAMES.get(str(role).lower()) if isinstance(role, str) else None
    if r is None:
        raise DataError(f"{where}: field 'role': expected user or model/assistant, got {shown(role, 40)!r}")
    if not isinstance(content, str):
        raise DataError(f"{where}: field 'content': expected a string, got {type(content).__name__}")
    return {"role": r, "content": content}


def text_of(value, where: str, field: str) -> str:
    """A response given as a string or as a ``{"role", "content"}`` message -> its text."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{field}': expected a non-empty string (or a message with content)")
    return value


def write_splits(out_dir: str | os.PathLike, files: dict[str, list[dict]], meta: dict) -> dict:
    """Write ``files`` (``seen_train.jsonl`` ... ``unseen.jsonl`` and any extra ``*.jsonl``) and
    ``meta.json`` (with ``counts``) into ``out_dir``, replaced atomically. Returns the meta."""
    missing = [s for s in SPLITS if f"{s}.jsonl" not in files]
    if missing:
        raise DataError(f"internal: missing split(s) {missing}")
    empty = [s for s in SPLITS if not files[f"{s}.jsonl"]]
    if empty:
        raise DataError(f"no pairs for split(s) {', '.join(empty)} (is the source complete?)")
    meta = {**meta, "counts": {name: len(rows) for name, rows in files.items()}}
    splits = {s: files[f"{s}.jsonl"] for s in SPLITS}
    extra = {n: r for n, r in files.items() if n.removesuffix(".jsonl") not in SPLITS}
    with output_dir(Path(out_dir)) as tmp:
        write_dataset(tmp, splits, meta, extra_files=extra)
    return meta
