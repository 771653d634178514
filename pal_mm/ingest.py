"""The one ingestion path: rows from files, saved datasets and the Hub, and the rules that every
reader and data builder shares (local path or Hub name, strict parsing, the Pick-a-Pic tie rule).

**Sources** (:func:`iter_rows`, :func:`read_rows`):

* ``.jsonl`` (one JSON object per line, blank lines skipped), ``.json`` (a list of objects),
  ``.csv`` (a header row; every value is a string), ``.parquet``;
* a directory written by ``datasets``' ``save_to_disk`` (a ``DatasetDict``: the requested split,
  else ``train``, else its only split);
* a Hub dataset name, ``name``, ``owner/name`` or either with ``:split``.

**Local path or Hub name?** (:func:`source_kind`, the only place that decides): an existing file
or directory is local. Otherwise a string that starts with ``.``, ``/`` or ``~``, contains a
backslash, ends with a data suffix (``.jsonl .json .csv .parquet``) or has more than one ``/`` is
a local path that does not exist (an error); any other string must be a Hub id
(:func:`is_hub_name`).

**Strict reading.** Text files are UTF-8 (a leading byte-order mark is accepted). JSON is parsed
strictly: a repeated key in one object, an integer of more than 4,300 digits and nesting deeper
than Python's recursion limit are errors (``NaN``/``Infinity`` are read as floats; validation
rejects them). A CSV row must have as many fields as the header; fields up to 16 MiB are read.
Every problem is one :class:`~pal_mm.errors.DataError` line naming the file and the line or row
(``FILE: line N: ...``, ``FILE: row N: ...``); parquet, Arrow and ``datasets`` errors and OS
errors are turned into such lines too.

**Pick-a-Pic tie rule** (:func:`pickapic_winner`): ``label_0`` and ``label_1`` must be finite
numbers; the image with the higher label is chosen, and equal labels (compared exactly; Pick-a-Pic's
labels are 0, 0.5 and 1, all exact in binary floating point) are a tie, which is dropped.

Images in data sets (bytes, paths, the content-addressed store) are :mod:`pal_mm.image_store`'s job.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from .errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_INT_DIGITS = 4300
CSV_FIELD_LIMIT = 16 * 2**20
BATCH_ROWS = 256
_BOM = b"\xef\xbb\xbf"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class Rows(NamedTuple):
    """Rows of a source: an iterator of dicts, the folder that relative (image) paths are
    resolved against (None for the Hub) and the label used in error messages."""

    rows: Iterator[dict]
    base_dir: Path | None
    label: str


# ------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------
def shown(value: Any, limit: int = 120) -> str:
    """``value`` for an error message: one line (control characters escaped), at most
    ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """``TypeName: first line of the message`` of an exception (short, one line)."""
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)  # no repeated file name
    lines = text.splitlines()
    return f"{type(error).__name__}: {shown(lines[0] if lines else '', 200)}".rstrip(": ")


# ------------------------------------------------------------------------------------------
# Local path or Hub name
# ------------------------------------------------------------------------------------------
def is_hub_name(text: str) -> bool:
    """Is ``text`` a syntactically valid Hub dataset id (``name`` or ``owner/name``, optionally
    followed by ``:split``)? Says nothing about whether it exists."""
    name, _, split = str(text).partition(":")
    split_ok = split == "" or (split.isprintable() and " " not in split)
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name and split_ok and not name.lower().endswith(DATA_SUFFIXES)


def source_kind(source: str | os.PathLike) -> str:
    """``"file"``, ``"dir"`` or ``"hub"`` (the rule in the module docstring); a local-looking
    path that does not exist, or a string that is neither, raises :class:`DataError`."""
    try:
        path = Path(source).expanduser()
        if path.is_file():
            return "file"
        if path.is_dir():
            return "dir"
    except (OSError, ValueError, RuntimeError) as e:  # a name too long, a NUL byte, an unknown ~user
        raise DataError(f"{shown(str(source))}: cannot access ({first_line(e)})") from None
    text = str(source)
    looks_local = (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
                   or text.lower().endswith(DATA_SUFFIXES))
    if looks_local:
        raise DataError(f"{shown(text)}: no such file or directory")
    if not is_hub_name(text):
        raise DataError(f"{shown(text)}: neither a local file or directory nor a Hub dataset name (owner/name[:split])")
    return "hub"


def split_hub_name(text: str) -> tuple[str, str | None]:
    """``"owner/name:split"`` -> ``("owner/name", "split")``; no split -> ``(name, None)``."""
    name, _, split = str(text).partition(":")
    return name, split or None


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
def iter_rows(source: str | os.PathLike, split: str = "train", columns: Iterable[str] | None = None,
              config: str | None = None, streaming: bool = True) -> Rows:
    """Rows of a file, a ``save_to_disk`` directory or a Hub dataset (streamed when
    ``streaming``). ``columns``: read only these (cheap for parquet, saved datasets and the
    Hub's parquet files; the other formats drop the rest). ``config``: the Hub dataset's
    configuration. Errors are raised as :class:`DataError` when the rows are consumed."""
    cols = list(columns) if columns is not None else None
    kind = source_kind(source)
    if kind == "file":
        path = Path(source).expanduser()
        return Rows(_project(_iter_file(path, cols), cols), path.parent, str(path))
    if kind == "dir":
        path = Path(source).expanduser()
        return Rows(_iter_saved_dataset(path, split, cols), path, str(path))
    name, hub_split = split_hub_name(str(source))
    label = f"{name}:{hub_split or split}"
    return Rows(_iter_hub(name, hub_split or split, cols, config, streaming, label), None, label)


def read_rows(source: str | os.PathLike, split: str = "train", columns: Iterable[str] | None = None,
              config: str | None = None) -> tuple[list[dict], Path | None, str]:
    """:func:`iter_rows` as a list (the Hub is downloaded, not streamed): (rows, folder for
    relative paths, label for messages)."""
    rows, base_dir, label = iter_rows(source, split, columns, config, streaming=False)
    return list(rows), base_dir, label


def take(rows: Iterable[dict], max_rows: int | None) -> Iterator[dict]:
    """The first ``max_rows`` rows (all when None), without reading further."""
    for i, row in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            return
        yield row


def _project(rows: Iterator[dict], columns: list[str] | None) -> Iterator[dict]:
    if columns is None:
        yield from rows
        return
    for row in rows:
        yield {c: row[c] for c in columns if c in row}


def _iter_file(path: Path, columns: list[str] | None) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(path)
    if suffix == ".json":
        return _iter_json(path)
    if suffix == ".csv":
        return _iter_csv(path)
    if suffix == ".parquet":
        return _iter_parquet(path, columns)
    raise DataError(f"{path}: unsupported file type {shown(suffix)} (use {', '.join(DATA_SUFFIXES)})")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({first_line(e)})") from None
    return data[len(_BOM):] if data.startswith(_BOM) else data


def _decode(data: bytes, path: Path, line_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_offset + data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {shown(key, 60)!r}")
        out[key] = value
    return out


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def loads_strict(text: str) -> Any:
    """``json.loads`` with pal-mm's rules: repeated keys and integers of more than 4,300 digits
    are ``ValueError``, nesting too deep is ``RecursionError``."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int)


def _parse_json(text: str, path: Path, where: str) -> Any:
    try:
        return loads_strict(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: {where or f'line {e.lineno}'}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: {where or 'line 1'}: invalid JSON (nested too deeply)") from None
    except ValueError as e:  # our hooks: a repeated key, a huge integer
        raise DataError(f"{path}: {where or 'line 1'}: invalid JSON ({shown(str(e))})") from None


def _check_object(row: Any, path: Path, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
    return row


def _iter_jsonl(path: Path) -> Iterator[dict]:
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({first_line(e)})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            text = _decode(raw, path, lineno - 1)
            if text.strip():
                yield _check_object(_parse_json(text, path, f"line {lineno}"), path, f"line {lineno}")


def _iter_json(path: Path) -> Iterator[dict]:
    data = _parse_json(_decode(_read_bytes(path), path), path, "")
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of rows, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        yield _check_object(row, path, f"row {i}")


@contextlib.contextmanager
def _csv_field_limit(limit: int):
    old = csv.field_size_limit()
    csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _iter_csv(path: Path) -> Iterator[dict]:
    yield from _read_csv(path)  # parsed at once: the csv module's field limit is global state


def _read_csv(path: Path) -> list[dict]:
    text = _decode(_read_bytes(path), path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[dict] = []
    with _csv_field_limit(CSV_FIELD_LIMIT):
        try:
            header = next(reader, None)
            if header is None:
                return rows
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DataError(f"{path}: line 1: column {shown(repeated[0])!r} appears more than once in the header")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{path}: row {len(rows) + 1}: {len(fields)} fields, the header has {len(header)}")
                rows.append(dict(zip(header, fields)))
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: invalid CSV ({shown(str(e))})") from None
    return rows


def _arrow_rows(batches: Iterable, label: str, first_row: int = 1) -> Iterator[dict]:
    """Rows of Arrow record batches / tables; any Arrow or decoding error becomes a DataError."""
    r = first_row
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as e:  # Arrow, parquet, OS and decoding errors of an untrusted file
            raise DataError(f"{label}: row {r}: unreadable ({first_line(e)})") from None
        try:
            # offsets, lengths, UTF-8: without this a damaged (memory-mapped) file can crash the
            # process in to_pylist (SIGBUS / SIGSEGV) instead of raising
            batch.validate(full=True)
            rows = batch.to_pylist()
        except Exception as e:
            raise DataError(f"{label}: rows {r}-{r + batch.num_rows - 1}: unreadable ({first_line(e)})") from None
        yield from rows
        r += len(rows)


def _iter_parquet(path: Path, columns: list[str] | None) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        present = set(pf.schema_arrow.names)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({first_line(e)})") from None
    cols = None if columns is None else [c for c in columns if c in present]
    yield from _arrow_rows(pf.iter_batches(batch_size=BATCH_ROWS, columns=cols), str(path))


def _iter_saved_dataset(path: Path, split: str, columns: list[str] | None) -> Iterator[dict]:
    try:
        from datasets import load_from_disk

        ds = load_from_disk(str(path))  # memory-mapped; _arrow_rows validates each batch before use
        if hasattr(ds, "keys"):  # a DatasetDict
            names = list(ds.keys())
            if not names:
                raise DataError(f"{path}: a saved DatasetDict with no splits")
            ds = ds[split] if split in names else ds["train"] if "train" in names else ds[names[0]] if len(names) == 1 else None
            if ds is None:
                raise DataError(f"{path}: no split {shown(split)!r} (splits: {', '.join(map(shown, names))})")
        if columns is not None:
            ds = ds.select_columns([c for c in columns if c in ds.column_names])
        batches = ds.with_format("arrow").iter(batch_size=BATCH_ROWS)
    except DataError:
        raise
    except Exception as e:  # not a datasets directory, or corrupt
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({first_line(e)})") from None
    yield from _arrow_rows(batches, str(path))


def load_hub_dataset(name: str, split: str, config: str | None = None, streaming: bool = False, columns: list[str] | None = None):
    """``datasets.load_dataset(name, config, split=split)``; ``columns`` is passed on when the
    dataset's builder takes it (parquet). If loading fails (e.g. a refused loading script), the
    Hub's parquet conversion (``revision="refs/convert/parquet"``) is tried before giving up."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("the 'datasets' package is needed to read from the Hub (pip install datasets)") from None
    attempts = [{"columns": columns}] if columns else []
    attempts += [{}, {"revision": "refs/convert/parquet"}]
    first: Exception | None = None
    for extra in attempts:
        try:
            return load_dataset(name, config, split=split, streaming=streaming, **extra)
        except Exception as e:  # network, missing dataset, a builder without `columns`
            first = first or e
    where = f"{name}" + (f" (config {config!r})" if config else "")
    raise DataError(f"{where}: could not load Hub dataset split {shown(split)!r} ({first_line(first)})")


def _iter_hub(name: str, split: str, columns: list[str] | None, config: str | None, streaming: bool, label: str) -> Iterator[dict]:
    ds = load_hub_dataset(name, split, config, streaming, columns)
    if not streaming:
        if columns is not None:
            ds = ds.select_columns([c for c in columns if c in ds.column_names])
        yield from _arrow_rows(ds.with_format("arrow").iter(batch_size=BATCH_ROWS), label)
        return
    for col, feature in (getattr(ds, "features", None) or {}).items():
        if type(feature).__name__ == "Image" and getattr(feature, "decode", False):
            from datasets import Image

            ds = ds.cast_column(col, Image(decode=False))  # bytes, not PIL images: skipped rows cost nothing
    it, r = iter(ds), 1
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:  # a network error while streaming
            raise DataError(f"{label}: row {r}: could not read ({first_line(e)})") from None
        yield {c: row[c] for c in columns if c in row} if columns is not None else dict(row)
        r += 1


# ------------------------------------------------------------------------------------------
# Pick-a-Pic labels
# ------------------------------------------------------------------------------------------
def _label(value: Any, where: str, col: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: column '{col}': expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except (ValueError, OverflowError):
        raise DataError(f"{where}: column '{col}': expected a number, got {shown(value, 40)!r}") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: column '{col}': expected a finite number, got {shown(value, 40)}")
    return x


def pickapic_winner(label_0: Any, label_1: Any, where: str) -> int | None:
    """0 when ``jpg_0`` is preferred, 1 when ``jpg_1`` is, None for a tie (equal labels,
    compared exactly). Labels are numbers (or numeric strings, as CSV gives them)."""
    l0, l1 = _label(label_0, where, "label_0"), _label(label_1, where, "label_1")
    if l0 == l1:
        return None
    return 0 if l0 > l1 else 1
