"""The dataset directory: the one layout that data builders, ``pal-mm split`` and experiments share.

A dataset directory holds one JSON-lines file per split and a ``meta.json``::

    DIR/seen_train.jsonl   seen users' training pairs
    DIR/seen_val.jsonl     the same users' validation pairs (early stopping, model selection)
    DIR/seen_test.jsonl    the same users' test pairs
    DIR/unseen.jsonl       new users (held out of training; split per user by the few-shot protocol)
    DIR/meta.json          what the data is: {"name", "kind": "real" | "default" | "custom", "source", ...}

A data set with several variants (the text-to-image default's mixture ratios) is a folder of such
directories, named in ``meta["variants"]`` of the parent. Rows are pal-mm's canonical rows
(``user_id, prompt, chosen, rejected[, group]``); image paths are relative to the split file.
``meta.json`` is written last, so a directory that has one is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from encoders.atomic import write_json, write_jsonl

from .data import PreferenceData
from .errors import DataError

SPLITS = ("seen_train", "seen_val", "seen_test", "unseen")
META_NAME = "meta.json"


@dataclass
class Dataset:
    """The splits of one dataset directory, loaded and validated, and its ``meta.json``."""

    directory: Path
    splits: dict[str, PreferenceData]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> PreferenceData:
        return self.splits[split]

    @property
    def kind(self) -> str:
        """``real`` (a public data set), ``default`` (an offline stand-in) or ``custom``."""
        return str(self.meta.get("kind", "custom"))


def is_dataset_dir(directory: str | os.PathLike, splits: Iterable[str] = SPLITS) -> bool:
    d = Path(directory)
    return (d / META_NAME).is_file() and all((d / f"{s}.jsonl").is_file() for s in splits)


def read_meta(directory: str | os.PathLike) -> dict:
    """``meta.json`` of a dataset directory ({} when there is none)."""
    f = Path(directory) / META_NAME
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{f}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{f}: expected a JSON object")
    return meta


def load_dataset(directory: str | os.PathLike, splits: Iterable[str] = SPLITS, chat_tokenizer=None) -> Dataset:
    """Load and validate the splits of a dataset directory."""
    d = Path(directory)
    splits = tuple(splits)
    missing = [f"{s}.jsonl" for s in splits if not (d / f"{s}.jsonl").is_file()]
    if missing:
        raise DataError(f"{d}: not a dataset directory (missing {', '.join(missing)})")
    return Dataset(d, {s: PreferenceData.load(d / f"{s}.jsonl", chat_tokenizer=chat_tokenizer) for s in splits}, read_meta(d))


def write_dataset(directory: str | os.PathLike, rows_by_split: dict[str, list[dict]], meta: dict) -> Path:
    """Write ``<split>.jsonl`` for every split given, then ``meta.json`` (each file atomically)."""
    d = Path(directory)
    unknown = sorted(set(rows_by_split) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; a dataset directory holds {', '.join(SPLITS)}")
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        write_jsonl(d / f"{split}.jsonl", rows)
    write_json(d / META_NAME, {**meta, "splits": {s: len(r) for s, r in rows_by_split.items()}})
    return d
