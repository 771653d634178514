"""Preference data: load, validate, index users.

One row is one comparison by one user::

    user_id, prompt, chosen, rejected[, group]

(TRL's ``prompt``/``chosen``/``rejected`` columns plus a user id.) Each of prompt/chosen/rejected
is, for the whole column, one of:

* ``text``   - a string,
* ``image``  - a path to an image file (relative paths are resolved against the data file),
* ``vector`` - a list of floats (a precomputed embedding).

Sources: ``.jsonl``/``.json``, ``.parquet``, ``.csv``, a ``datasets`` directory saved with
``save_to_disk``, or a Hub dataset name (``name`` or ``name:split``). Everything is validated up
front; a problem raises :class:`DataError` naming the file, the row (1-based data row) and the
column.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .convert import flatten_conversation, is_conversation
from .errors import DataError

REQUIRED_COLUMNS = ("user_id", "prompt", "chosen", "rejected")
CONTENT_COLUMNS = ("prompt", "chosen", "rejected")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class PreferenceData:
    """A validated list of comparisons. ``kinds`` maps prompt/chosen/rejected to
    ``"text" | "image" | "vector"``; ``chosen`` and ``rejected`` always share one kind."""

    user_ids: list[str]
    prompts: list[Any]
    chosen: list[Any]
    rejected: list[Any]
    groups: list[str] | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    # ---------------------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Sequence[dict], source: str = "<memory>", base_dir: str | Path | None = None,
                  chat_tokenizer=None):
        """Validate a list of row dicts (the canonical columns, optional ``group``)."""
        return _validate_rows(list(rows), source, Path(base_dir) if base_dir else None, chat_tokenizer)

    @classmethod
    def load(cls, source: str | os.PathLike, chat_tokenizer=None) -> "PreferenceData":
        """Load and validate a file, a ``save_to_disk`` directory or a Hub dataset name.

        Conversational values (TRL's lists of ``{role, content}`` messages) are flattened to
        text with ``chat_tokenizer``'s chat template when given, else as ``role: content`` lines."""
        rows, base_dir, label = read_rows(source)
        return _validate_rows(rows, label, base_dir, chat_tokenizer)

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def users(self) -> list[str]:
        """Distinct user ids in first-seen order."""
        return list(dict.fromkeys(self.user_ids))

    @property
    def item_kind(self) -> str:
        return self.kinds["chosen"]

    def user_groups(self) -> dict[str, str]:
        """user id -> group (empty when the data has no ``group`` column)."""
        if self.groups is None:
            return {}
        return {u: g for u, g in zip(self.user_ids, self.groups)}

    def subset(self, indices: Iterable[int]) -> "PreferenceData":
        idx = list(indices)
        return PreferenceData(
            user_ids=[self.user_ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            chosen=[self.chosen[i] for i in idx],
            rejected=[self.rejected[i] for i in idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            kinds=dict(self.kinds),
            source=self.source,
        )

    def to_rows(self) -> list[dict]:
        rows = []
        for i in range(len(self)):
            row = {"user_id": self.user_ids[i], "prompt": self.prompts[i], "chosen": self.chosen[i], "rejected": self.rejected[i]}
            if self.groups is not None:
                row["group"] = self.groups[i]
            rows.append(row)
        return rows

    def split_per_user(self, n: int, seed: int = 0) -> tuple["PreferenceData", "PreferenceData"]:
        """Few-shot split: n comparisons per user to the first part, the rest to the second.
        Users with ``<= n`` comparisons are left out of both (they would have no test pairs)."""
        train_idx, test_idx = split_indices_per_user(self.user_ids, n, seed)
        return self.subset(train_idx), self.subset(test_idx)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
def read_rows(source: str | os.PathLike) -> tuple[list[dict], Path | None, str]:
    """Return (rows, directory for relative image paths, label used in error messages)."""
    path = Path(source)
    if path.is_dir():
        return _read_saved_dataset(path), path, str(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return _read_json(path), path.parent, str(path)
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh)), path.parent, str(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), path.parent, str(path)
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or text.endswith((".jsonl", ".json", ".csv", ".parquet"))
    if looks_local:
        raise DataError(f"{text}: no such file or directory")
    return _read_hub(text), None, text


def _read_json(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        if path.suffix.lower() == ".json":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: a .json file must hold a list of rows")
            rows = data
        else:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
    return rows


def _read_saved_dataset(path: Path) -> list[dict]:
    try:
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
    except Exception as e:  # not a datasets directory, or corrupt
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({type(e).__name__}: {e})") from None
    if hasattr(ds, "keys"):  # a DatasetDict: take the train split, else the only one
        splits = list(ds.keys())
        ds = ds["train"] if "train" in splits else ds[splits[0]]
    return ds.to_list()


def _read_hub(name: str) -> list[dict]:
    split = "train"
    if ":" in name:
        name, split = name.split(":", 1)
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as e:
        raise DataError(f"{name}: could not load Hub dataset split {split!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return ds.to_list()


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------
def _kind_of(value: Any, base_dir: Path | None) -> str | None:
    """'text' | 'image' | 'vector', or None for an empty/null value."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return "vector" if len(value) else None
    if isinstance(value, str):
        if not value.strip():
            return None
        if value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value and len(value) < 1024:
            return "image"
        return "text"
    if isinstance(value, float) and math.isnan(value):
        return None
    return "other"


def _validate_rows(rows: list[dict], source: str, base_dir: Path | None, chat_tokenizer=None) -> PreferenceData:
    if not rows:
        raise DataError(f"{source}: no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    has_group = "group" in rows[0]
    kinds: dict[str, str] = {}
    dims: dict[str, int] = {}
    out = {c: [] for c in ("user_id", *CONTENT_COLUMNS, "group")}
    for r, row in enumerate(rows, 1):
        where = f"{source}: row {r}"
        for col in REQUIRED_COLUMNS:
            if col not in row:
                raise DataError(f"{where}: column '{col}': missing")
        uid = row["user_id"]
        if uid is None or (isinstance(uid, float) and math.isnan(uid)) or str(uid).strip() == "":
            raise DataError(f"{where}: column 'user_id': empty or null")
        out["user_id"].append(str(uid))
        for col in CONTENT_COLUMNS:
            value = row[col]
            if is_conversation(value):
                value = flatten_conversation(value, chat_tokenizer, add_generation_prompt=col == "prompt")
            kind = _kind_of(value, base_dir)
            if kind is None:
                raise DataError(f"{where}: column '{col}': empty or null value")
            if kind == "other":
                raise DataError(f"{where}: column '{col}': expected text, an image path or a list of floats, got {type(value).__name__}")
            # chosen and rejected must share a kind (they go through the same item tower)
            key = "item" if col in ("chosen", "rejected") else col
            if key not in kinds:
                kinds[key] = kind
            elif kinds[key] != kind:
                raise DataError(f"{where}: column '{col}': mixed types ({kind} here, {kinds[key]} in earlier rows)")
            if kind == "vector":
                value = _check_vector(value, where, col)
                if key not in dims:
                    dims[key] = len(value)
                elif dims[key] != len(value):
                    raise DataError(f"{where}: column '{col}': vector of length {len(value)}, expected {dims[key]}")
            elif kind == "image":
                value = _resolve_image(value, base_dir, where, col)
            out[col].append(value)
        if has_group:
            g = row.get("group")
            if g is None or str(g).strip() == "":
                raise DataError(f"{where}: column 'group': empty or null")
            out["group"].append(str(g))
    return PreferenceData(
        user_ids=out["user_id"],
        prompts=out["prompt"],
        chosen=out["chosen"],
        rejected=out["rejected"],
        groups=out["group"] if has_group else None,
        kinds={"prompt": kinds["prompt"], "chosen": kinds["item"], "rejected": kinds["item"]},
        source=source,
    )


def _check_vector(value: Sequence, where: str, col: str) -> list[float]:
    try:
        vec = [float(v) for v in value]
    except (TypeError, ValueError):
        raise DataError(f"{where}: column '{col}': vector holds a non-number") from None
    if not all(math.isfinite(v) for v in vec):
        raise DataError(f"{where}: column '{col}': vector holds NaN or inf")
    return vec


def _resolve_image(value: str, base_dir: Path | None, where: str, col: str) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise DataError(f"{where}: column '{col}': image file not found: {path}")
    return str(path.resolve())


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def split_indices_per_user(user_ids: Sequence[str], n: int, seed: int) -> tuple[list[int], list[int]]:
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(user_ids):
        by_user[u].append(i)
    rng = random.Random(seed)
    train, test = [], []
    for u in sorted(by_user):
        idx = by_user[u]
        if len(idx) <= n:
            continue
        idx = idx[:]
        rng.shuffle(idx)
        train += idx[:n]
        test += idx[n:]
    return sorted(train), sorted(test)


def split_rows_per_user(rows: list[dict], n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Row-dict version of :meth:`PreferenceData.split_per_user` (used by the data builders)."""
    train_idx, test_idx = split_indices_per_user([str(r["user_id"]) for r in rows], n, seed)
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]


def user_counts(data: PreferenceData) -> Counter:
    return Counter(data.user_ids)
