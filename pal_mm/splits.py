"""The dataset directory: the one layout that data builders, ``pal-mm split`` and experiments share.

A dataset directory holds one JSON-lines file per split and a ``meta.json``::

    DIR/seen_train.jsonl   seen users' training pairs
    DIR/seen_val.jsonl     the same users' validation pairs (early stopping, model selection)
    DIR/seen_test.jsonl    the same users' test pairs
    DIR/unseen.jsonl       new users (held out of training; split per user by the few-shot protocol)
    DIR/meta.json          what the data is: {"name", "kind": "real" | "default" | "custom", "source", ...}

A data set with **variants** (Pick-a-Filter and the text-to-image default: one per mixture ratio
beta) is a root folder holding the variants' dataset directories and what they share::

    ROOT/meta.json         {"name", "kind", "variants": ["beta_0.0", "beta_0.25", ...], ...}
    ROOT/images/           shared images (rows refer to them as ../images/NAME)
    ROOT/beta_0.25/        a dataset directory; its meta.json carries {"beta": 0.25, ...}

:func:`dataset_variants` lists a root's variants (a plain dataset directory is its own single
variant). Rows are pal-mm's canonical rows (``user_id, prompt, chosen, rejected[, group]``);
image paths are relative to the split file. ``meta.json`` is written last (and an old one is
removed first), so a directory that has one is complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from encoders.atomic import write_json, write_jsonl

from .data import PreferenceData
from .errors import DataError
from .ingest import first_line, loads_strict, shown

SPLITS = ("seen_train", "seen_val", "seen_test", "unseen")
META_NAME = "meta.json"
KINDS = ("real", "default", "custom")


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
        meta = loads_strict(f.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, invalid JSON
        raise DataError(f"{f}: invalid JSON ({first_line(e)})") from None
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


def write_dataset(directory: str | os.PathLike, rows_by_split: dict[str, list[dict]], meta: dict,
                  extra_files: dict[str, list[dict]] | None = None) -> Path:
    """Write ``<split>.jsonl`` for every split given (and ``extra_files``, name -> rows, e.g. a
    builder's few-shot files), then ``meta.json`` (each file atomically; an existing
    ``meta.json`` is removed first). ``meta["kind"]`` defaults to ``custom``."""
    d = Path(directory)
    unknown = sorted(set(rows_by_split) - set(SPLITS))
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; a dataset directory holds {', '.join(SPLITS)}")
    meta = {"kind": "custom", **meta}
    if meta["kind"] not in KINDS:
        raise DataError(f"meta kind {shown(meta['kind'])!r}: expected one of {', '.join(KINDS)}")
    d.mkdir(parents=True, exist_ok=True)
    (d / META_NAME).unlink(missing_ok=True)
    for split, rows in rows_by_split.items():
        write_jsonl(d / f"{split}.jsonl", rows)
    for name, rows in (extra_files or {}).items():
        write_jsonl(d / name, rows)
    write_json(d / META_NAME, {**meta, "splits": {s: len(r) for s, r in rows_by_split.items()}})
    return d


# ------------------------------------------------------------------------------------------
# Variants
# ------------------------------------------------------------------------------------------
def dataset_variants(root: str | os.PathLike) -> dict[str, Path]:
    """Variant name -> dataset directory, in the order of the root's ``meta["variants"]``. A
    plain dataset directory is its own single variant, named after its folder."""
    r = Path(root)
    meta = read_meta(r)
    names = meta.get("variants")
    if names is None:
        if not is_dataset_dir(r):
            raise DataError(f"{r}: neither a dataset directory nor a folder of variants (no {META_NAME} with 'variants')")
        return {r.name: r}
    if not isinstance(names, list) or not all(isinstance(n, str) and n and Path(n).name == n and n not in (".", "..") for n in names):
        raise DataError(f"{r / META_NAME}: 'variants' must be a list of sub-folder names")
    missing = [n for n in names if not is_dataset_dir(r / n)]
    if missing:
        raise DataError(f"{r}: variant(s) {', '.join(map(shown, missing))} are not complete dataset directories")
    return {n: r / n for n in names}


def load_variants(root: str | os.PathLike, splits: Iterable[str] = SPLITS, chat_tokenizer=None) -> dict[str, Dataset]:
    """:func:`load_dataset` for every variant of :func:`dataset_variants`."""
    return {name: load_dataset(d, splits, chat_tokenizer) for name, d in dataset_variants(root).items()}


def write_variants_meta(root: str | os.PathLike, variants: Iterable[str], meta: dict) -> Path:
    """Write the root ``meta.json`` of a data set with variants (after the variants are complete)."""
    r = Path(root)
    names = list(variants)
    incomplete = [n for n in names if not is_dataset_dir(r / n)]
    if incomplete:
        raise DataError(f"{r}: variant(s) {', '.join(incomplete)} are not complete dataset directories")
    meta = {"kind": "custom", **meta, "variants": names}
    if meta["kind"] not in KINDS:
        raise DataError(f"meta kind {shown(meta['kind'])!r}: expected one of {', '.join(KINDS)}")
    write_json(r / META_NAME, meta)
    return r
