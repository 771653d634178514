"""Preference data: load, validate, index users.

One row is one comparison by one user::

    user_id, prompt, chosen, rejected[, group]

(TRL's ``prompt``/``chosen``/``rejected`` columns plus a user id.) Each of prompt/chosen/rejected
is, for the whole column, one of:

* ``text``   - a string, or TRL's conversational list of ``{role, content}`` messages (kept as
  messages and rendered when encoded, by :mod:`pal_mm.conversation`'s one rule),
* ``image``  - a path to an image file (relative paths are resolved against the data file),
* ``vector`` - a list of numbers (a precomputed embedding), finite and inside float32's range.

``user_id`` and ``group`` are strings, or integers when the whole column holds integers (they
become strings; a column mixing the two is an error, so ids ``0`` and ``"0"`` never merge).
``group`` is in every row or in none. Rows are read by :mod:`pal_mm.ingest` (files,
``save_to_disk`` directories, Hub names) and validated up front by :class:`RowValidator`; a
problem raises :class:`DataError` naming the file, the row (1-based data row) and the column.
"""

from __future__ import annotations

import math
import numbers
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .conversation import is_conversation, normalize_conversation, render_value
from .errors import DataError, PalMMError
from .image_store import IMAGE_SUFFIXES
from .ingest import first_line, iter_rows, shown

REQUIRED_COLUMNS = ("user_id", "prompt", "chosen", "rejected")
CONTENT_COLUMNS = ("prompt", "chosen", "rejected")
READ_COLUMNS = (*REQUIRED_COLUMNS, "group")
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
        return validate_rows(rows, source, base_dir, chat_tokenizer)

    @classmethod
    def load(cls, source: str | os.PathLike, chat_tokenizer=None) -> "PreferenceData":
        """Load and validate a file, a ``save_to_disk`` directory or a Hub dataset name.

        Conversational values (TRL's lists of ``{role, content}`` messages) are kept as messages and
        rendered when encoded, with the encoder's chat template (:mod:`pal_mm.conversation`); with
        ``chat_tokenizer`` they are rendered here with that tokenizer instead (the same text)."""
        rows, base_dir, label = iter_rows(source, streaming=False)
        return validate_rows(rows, label, base_dir, chat_tokenizer)

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
# Validation
# ------------------------------------------------------------------------------------------
def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _kind_of(value: Any) -> str | None:
    """'text' | 'image' | 'vector', 'other', or None for an empty/null value."""
    if isinstance(value, (list, tuple)):
        return "vector" if len(value) else None
    if _empty(value):
        return None
    if isinstance(value, str):
        if value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value and len(value) < 1024:
            return "image"
        return "text"
    return "other"


def validate_rows(rows: Iterable[dict], source: str = "<memory>", base_dir: str | os.PathLike | None = None,
                  chat_tokenizer=None) -> PreferenceData:
    """Validate rows (see :class:`RowValidator`) into a :class:`PreferenceData`."""
    validator = RowValidator(source, base_dir, chat_tokenizer)
    for row in rows:
        validator.add(row)
    return validator.result()


class IdColumn:
    """Checks one identifier column (``user_id``, ``group``) value by value: a string, or an
    integer when the whole column holds integers (returned as a string), so ids ``0`` and
    ``"0"`` never merge; bools, floats, lists and dicts are errors."""

    def __init__(self, name: str):
        self.name = name
        self.kind: str | None = None

    def __call__(self, value: Any, where: str) -> str:
        if _empty(value):
            raise DataError(f"{where}: column '{self.name}': empty or null")
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
            raise DataError(f"{where}: column '{self.name}': expected a string or an integer, got {type(value).__name__}")
        kind = "string" if isinstance(value, str) else "integer"
        self.kind = self.kind or kind
        if kind != self.kind:
            raise DataError(f"{where}: column '{self.name}': mixed types ({kind} here, {self.kind} in earlier rows)")
        if kind == "string":
            return value
        try:
            return str(int(value))
        except ValueError:  # more than 4,300 digits
            raise DataError(f"{where}: column '{self.name}': integer too long") from None


class RowValidator:
    """Validates rows one at a time and collects a :class:`PreferenceData`.

    It remembers what the earlier rows held: the kind of each column (``chosen`` and ``rejected``
    share one), vector lengths, whether ids are strings or integers, and whether the first row had
    a ``group`` column. ``names`` renames columns in messages (``pal-mm convert`` validates
    converted rows under the input's column names)."""

    def __init__(self, source: str = "<memory>", base_dir: str | os.PathLike | None = None, chat_tokenizer=None,
                 names: dict[str, str] | None = None):
        self.source = source
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.chat_tokenizer = chat_tokenizer
        self.names = {**{c: c for c in READ_COLUMNS}, **(names or {})}
        self.has_group: bool | None = None
        self.kinds: dict[str, str] = {}
        self.dims: dict[str, int] = {}
        self.ids = {"user_id": IdColumn(self.names["user_id"]), "group": IdColumn(self.names["group"])}
        self.out: dict[str, list] = {c: [] for c in READ_COLUMNS}

    def add(self, row: Any, where: str | None = None) -> None:
        """Validate one row (``where`` names it in messages, default ``SOURCE: row N``)."""
        n = len(self.out["user_id"]) + 1
        where = where or f"{self.source}: row {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a mapping of column names to values, got {type(row).__name__}")
        if self.has_group is None:
            missing = [self.names[c] for c in REQUIRED_COLUMNS if c not in row]
            if missing:
                need = ", ".join(self.names[c] for c in REQUIRED_COLUMNS)
                raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need {need})")
            self.has_group = "group" in row
        for col in REQUIRED_COLUMNS:
            if col not in row:
                raise DataError(f"{where}: column '{self.names[col]}': missing")
        if ("group" in row) != self.has_group:
            state = "missing here but present" if self.has_group else "present here but missing"
            raise DataError(f"{where}: column '{self.names['group']}': {state} in row 1 (a column must be in every row or in none)")
        user = self.ids["user_id"](row["user_id"], where)
        values = [self._content(row[col], where, col) for col in CONTENT_COLUMNS]
        group = self.ids["group"](row["group"], where) if self.has_group else None
        self.out["user_id"].append(user)
        for col, value in zip(CONTENT_COLUMNS, values):
            self.out[col].append(value)
        self.out["group"].append(group)

    def result(self) -> PreferenceData:
        if not self.out["user_id"]:
            raise DataError(f"{self.source}: no rows")
        return PreferenceData(
            user_ids=self.out["user_id"], prompts=self.out["prompt"], chosen=self.out["chosen"], rejected=self.out["rejected"],
            groups=self.out["group"] if self.has_group else None,
            kinds={"prompt": self.kinds["prompt"], "chosen": self.kinds["item"], "rejected": self.kinds["item"]},
            source=self.source,
        )

    # ---------------------------------------------------------------------------------------
    def _content(self, value: Any, where: str, col: str) -> Any:
        name = self.names[col]
        conversation = None
        if is_conversation(value):  # kept as messages (rendered when encoded) unless a chat tokenizer is given
            tower = "prompt" if col == "prompt" else "item"
            try:
                conversation = normalize_conversation(value)
                value = render_value(conversation, tower, self.chat_tokenizer)
            except (PalMMError, RecursionError) as e:
                raise DataError(f"{where}: column '{name}': {shown(str(e) or type(e).__name__, 300)}") from None
        kind = _kind_of(value)
        if conversation is not None and kind == "image":
            kind = "text"  # a reply that happens to end in .png is still text
        if kind is None:
            raise DataError(f"{where}: column '{name}': empty or null value")
        if kind == "other":
            raise DataError(f"{where}: column '{name}': expected text, an image path or a list of floats, got {type(value).__name__}")
        key = "item" if col in ("chosen", "rejected") else col  # chosen and rejected share the item tower
        earlier = self.kinds.setdefault(key, kind)
        if earlier != kind:
            raise DataError(f"{where}: column '{name}': mixed types ({kind} here, {earlier} in earlier rows)")
        if kind == "vector":
            value = check_vector(value, f"{where}: column '{name}'")
            if self.dims.setdefault(key, len(value)) != len(value):
                raise DataError(f"{where}: column '{name}': vector of length {len(value)}, expected {self.dims[key]}")
        elif kind == "image":
            value = _resolve_image(value, self.base_dir, f"{where}: column '{name}'")
        return conversation if conversation is not None and self.chat_tokenizer is None else value


def check_vector(value: Sequence, where: str) -> list[float]:
    """A list of Python floats from a list of numbers: every entry an int or a float (not a
    bool, not a string), finite and inside float32's range (|x| <= 3.4028235e38)."""
    if set(map(type, value)) <= {int, float}:
        try:
            arr = np.array(value, dtype=np.float64)
        except OverflowError:
            raise DataError(f"{where}: vector holds a value beyond float32 range (|x| <= {FLOAT32_MAX:.8g})") from None
    else:
        for v in value:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
                raise DataError(f"{where}: vector holds a non-number ({type(v).__name__})")
        try:
            arr = np.array([float(v) for v in value], dtype=np.float64)
        except OverflowError:
            raise DataError(f"{where}: vector holds a value beyond float32 range (|x| <= {FLOAT32_MAX:.8g})") from None
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: vector holds NaN or inf")
    big = np.abs(arr) > FLOAT32_MAX
    if big.any():
        raise DataError(f"{where}: vector holds {float(arr[big][0]):.6g}, beyond float32 range (|x| <= {FLOAT32_MAX:.8g})")
    return arr.tolist()


def _resolve_image(value: str, base_dir: Path | None, where: str) -> str:
    try:
        path = Path(value).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        found = path.is_file()
        resolved = str(path.resolve()) if found else ""
    except (OSError, ValueError, RuntimeError) as e:  # a name too long, a NUL byte, an unknown ~user
        raise DataError(f"{where}: cannot access image file {shown(value)} ({first_line(e)})") from None
    if not found:
        raise DataError(f"{where}: image file not found: {shown(str(path), 300)}")
    return resolved


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def user_orders(user_ids: Sequence[str], seed: int) -> dict[str, list[int]]:
    """Each user's row indices in the seeded random order of the protocol (users sorted; one
    ``random.Random(seed)`` shuffles each user's rows in turn)."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(user_ids):
        by_user[str(u)].append(i)
    rng = random.Random(seed)
    orders = {}
    for u in sorted(by_user):
        rows = by_user[u][:]
        rng.shuffle(rows)
        orders[u] = rows
    return orders


def split_indices_per_user(user_ids: Sequence[str], n: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) row indices: each user's first n rows in :func:`user_orders` to train, the rest
    to test; users with ``<= n`` rows are left out (the n-shot split of :mod:`pal_mm.fewshot`)."""
    train, test = [], []
    for rows in user_orders(user_ids, seed).values():
        if len(rows) > n:
            train += rows[:n]
            test += rows[n:]
    return sorted(train), sorted(test)


def split_rows_per_user(rows: list[dict], n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Row-dict version of :meth:`PreferenceData.split_per_user` (used by the data builders)."""
    train_idx, test_idx = split_indices_per_user([str(r["user_id"]) for r in rows], n, seed)
    return [rows[i] for i in train_idx], [rows[i] for i in test_idx]
