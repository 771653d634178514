"""Preference data in and out of the ecosystem: conversions to pal-mm's canonical rows
``{user_id, prompt, chosen, rejected}`` (one comparison by one user per row).

* :func:`convert_pal_reference` - rows in the PAL reference code's layout ``uid, prompt, left,
  right, y`` with ``y = -1`` meaning the LEFT response is preferred and ``y = +1`` the RIGHT one
  (``y = 0`` is a tie: dropped and counted).
* :func:`convert_pickapic` - Pick-a-Pic rows (``caption``, ``jpg_0`` / ``jpg_1`` as encoded bytes,
  ``datasets`` image dicts or file paths, ``label_0`` / ``label_1`` in {0, 0.5, 1}, ``user_id``);
  the image with the higher label is ``chosen``, ties (equal labels) are dropped and counted, and
  the images are written under content-hash names to a folder next to the output file.
* :func:`flatten_conversation` - TRL's conversational values (lists of ``{role, content}``
  messages) to one string, with the tokenizer's chat template when it has one.
* :func:`convert_file` - what ``pal-mm convert`` runs: read, convert, write atomically.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from encoders.atomic import write_bytes, write_jsonl

from .errors import DataError, PalMMError

FORMATS = ("pal-reference", "pickapic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------
# Conversations
# ------------------------------------------------------------------------------------------
def content_text(content: Any) -> str:
    """A message's content as text: a string as is; a list of parts (``{"type": "text",
    "text": ...}`` or plain strings) joined with newlines, non-text parts skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise PalMMError(f"message content must be text or a list of parts, got {type(content).__name__}")


def is_conversation(value: Any) -> bool:
    """True for a list of ``{role, content}`` dicts (TRL's conversational format)."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def flatten_conversation(messages: Any, tokenizer: Any = None, add_generation_prompt: bool = False) -> str:
    """One string from a list of ``{"role": ..., "content": ...}`` messages.

    With a tokenizer that has a chat template, the template renders the messages
    (``apply_chat_template(..., tokenize=False)``); otherwise they are joined as
    ``"role: content"`` lines. A plain string is returned unchanged, so the function can be
    applied to every value of a column that mixes the two formats.
    """
    if isinstance(messages, str):
        return messages
    if not is_conversation(messages):
        raise PalMMError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages, "
                         f"got {type(messages).__name__}")
    msgs = [{"role": str(m["role"]), "content": content_text(m["content"])} for m in messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # a template that rejects these roles (e.g. no system role)
            raise PalMMError(f"the tokenizer's chat template failed on this conversation ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def last_assistant_text(messages: Any) -> str:
    """A completion as text: a string as is; for a conversation, the content of the last
    ``assistant`` message (the last message when no role is ``assistant``)."""
    if isinstance(messages, str):
        return messages
    if isinstance(messages, dict) and "content" in messages:  # a single message
        return content_text(messages["content"])
    if not is_conversation(messages):
        raise PalMMError(f"a completion must be a string or a list of messages, got {type(messages).__name__}")
    for m in reversed(messages):
        if m.get("role") == "assistant":
            return content_text(m["content"])
    return content_text(messages[-1]["content"])


# ------------------------------------------------------------------------------------------
# PAL reference layout
# ------------------------------------------------------------------------------------------
def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (list, tuple)) and not value:
        return True
    return False


def _label_y(value: Any, where: str) -> int:
    """The reference label: -1 (left preferred), +1 (right preferred) or 0 (tie)."""
    try:
        y = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column 'y': expected -1 (left preferred) or +1 (right preferred), got {value!r}") from None
    for target in (-1, 0, 1):
        if math.isclose(y, target, abs_tol=1e-6):
            return target
    raise DataError(f"{where}: column 'y': expected -1 (left preferred) or +1 (right preferred), got {value!r}")


def _looks_like_image_path(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES) and "\n" not in value and len(value) < 1024


def _rebase(value: Any, base_dir: Path | None, out_dir: Path | None) -> Any:
    """Keep a relative image path valid when the converted file lives in another folder."""
    if base_dir is None or out_dir is None or not _looks_like_image_path(value):
        return value
    path = Path(value).expanduser()
    if path.is_absolute() or not (base_dir / path).is_file():
        return value
    return os.path.relpath((base_dir / path).resolve(), out_dir.resolve())


def convert_pal_reference(rows: Iterable[dict], source: str = "<rows>", base_dir: str | Path | None = None,
                          out_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """PAL reference rows (``uid`` or ``user_id``, ``prompt``, ``left``, ``right``, ``y``) ->
    canonical rows. ``y = -1``: left is chosen; ``y = +1``: right is chosen; ``y = 0``: a tie,
    dropped. Relative image paths (resolved against ``base_dir``) are rewritten relative to
    ``out_dir``. Returns (rows, counts)."""
    base = Path(base_dir) if base_dir is not None else None
    out = Path(out_dir) if out_dir is not None else None
    result: list[dict] = []
    counts: Counter = Counter()
    for r, row in enumerate(rows, 1):
        where = f"{source}: row {r}"
        counts["rows_read"] += 1
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a mapping, got {type(row).__name__}")
        uid_col = "uid" if "uid" in row else "user_id" if "user_id" in row else None
        missing = [c for c in ("prompt", "left", "right", "y") if c not in row] + ([] if uid_col else ["uid"])
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)} (need uid, prompt, left, right, y)")
        for col in (uid_col, "prompt", "left", "right"):
            if _empty(row[col]):
                raise DataError(f"{where}: column '{col}': empty or null value")
        y = _label_y(row["y"], where)
        if y == 0:
            counts["ties_dropped"] += 1
            continue
        left, right = (_rebase(row[c], base, out) for c in ("left", "right"))
        chosen, rejected = (left, right) if y == -1 else (right, left)
        result.append({"user_id": str(row[uid_col]), "prompt": _rebase(row["prompt"], base, out),
                       "chosen": chosen, "rejected": rejected})
    counts["pairs"] = len(result)
    return result, dict(counts)


# ------------------------------------------------------------------------------------------
# Pick-a-Pic
# ------------------------------------------------------------------------------------------
def image_bytes(value: Any, base_dir: str | Path | None = None) -> bytes:
    """Encoded image bytes from raw ``bytes``, a ``datasets`` image dict (``{"bytes", "path"}``),
    a PIL image (encoded as PNG) or a file path (relative to ``base_dir``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return image_bytes(value["path"], base_dir)
        raise PalMMError("image dict has neither 'bytes' nor 'path'")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise PalMMError(f"image file not found: {path}") from None
    if hasattr(value, "save"):  # PIL image
        buf = io.BytesIO()
        value.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    raise PalMMError(f"cannot read an image from a {type(value).__name__}")


def image_suffix(data: bytes) -> str | None:
    """``.jpg`` / ``.png`` / ``.webp`` / ``.gif`` / ``.bmp`` from the magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    return None


def _store_image(data: bytes, directory: Path, where: str) -> str:
    """Write ``data`` under ``<sha256[:24]><ext>`` in ``directory`` (deduplicated); returns the
    file name. Bytes that are not a known image format must at least decode with PIL."""
    suffix = image_suffix(data)
    if suffix is None:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
            data, suffix = buf.getvalue(), ".png"
        except Exception as e:
            raise DataError(f"{where}: not a readable image ({type(e).__name__})") from None
    name = hashlib.sha256(data).hexdigest()[:24] + suffix
    path = directory / name
    if not path.exists():
        write_bytes(path, data)
    return name


def convert_pickapic(rows: Iterable[dict], image_dir: str | Path, image_prefix: str = "", source: str = "<rows>",
                     base_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """Pick-a-Pic rows -> canonical rows; images are written to ``image_dir`` and referenced as
    ``image_prefix + file name``. The image with the higher label is ``chosen``; equal labels
    (ties, 0.5/0.5) are dropped and counted. Returns (rows, counts)."""
    directory = Path(image_dir)
    directory.mkdir(parents=True, exist_ok=True)
    result: list[dict] = []
    counts: Counter = Counter()
    for r, row in enumerate(rows, 1):
        where = f"{source}: row {r}"
        counts["rows_read"] += 1
        missing = [c for c in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "user_id") if c not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)} "
                            "(need caption, jpg_0, jpg_1, label_0, label_1, user_id)")
        try:
            l0, l1 = float(row["label_0"]), float(row["label_1"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: label_0/label_1 must be numbers, got {row['label_0']!r}/{row['label_1']!r}") from None
        if not (math.isfinite(l0) and math.isfinite(l1)):
            raise DataError(f"{where}: label_0/label_1 must be finite, got {l0}/{l1}")
        if math.isclose(l0, l1, abs_tol=1e-6):
            counts["ties_dropped"] += 1
            continue
        for col in ("caption", "user_id"):
            if _empty(row[col]):
                raise DataError(f"{where}: column '{col}': empty or null value")
        win, lose = ("jpg_0", "jpg_1") if l0 > l1 else ("jpg_1", "jpg_0")
        row_base = row.get("_base_dir", base_dir)
        names = []
        for col in (win, lose):
            try:
                data = image_bytes(row[col], row_base)
            except PalMMError as e:
                raise DataError(f"{where}: column '{col}': {e}") from None
            names.append(_store_image(data, directory, f"{where}: column '{col}'"))
        result.append({"user_id": str(row["user_id"]), "prompt": str(row["caption"]),
                       "chosen": image_prefix + names[0], "rejected": image_prefix + names[1]})
    counts["pairs"] = len(result)
    counts["images"] = len({n for row in result for n in (row["chosen"], row["rejected"])})
    return result, dict(counts)


# ------------------------------------------------------------------------------------------
# Reading sources
# ------------------------------------------------------------------------------------------
def iter_source_rows(source: str | os.PathLike, split: str = "train") -> tuple[Iterator[dict], Path | None, str]:
    """Stream rows from ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` files, a ``save_to_disk``
    directory or a Hub dataset name (``name`` or ``name:split``, streamed). Returns (rows,
    folder for relative paths, label for messages)."""
    path = Path(source).expanduser()
    if path.is_dir():
        from .data import _read_saved_dataset

        return iter(_read_saved_dataset(path)), path, str(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _iter_parquet(path), path.parent, str(path)
        if suffix in (".jsonl", ".json", ".csv"):
            from .data import read_rows

            rows, base, label = read_rows(path)
            return iter(rows), base, label
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")
    text = str(source)
    if text.startswith((".", "/", "~")) or text.endswith((".jsonl", ".json", ".csv", ".parquet")):
        raise DataError(f"{text}: no such file or directory")
    name, _, hub_split = text.partition(":")
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=hub_split or split, streaming=True)
    except Exception as e:
        raise DataError(f"{text}: could not load Hub dataset ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return iter(ds), None, text


def _iter_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    for batch in pf.iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _take(rows: Iterator[dict], max_rows: int | None) -> Iterator[dict]:
    for i, row in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            return
        yield row


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def default_image_dir(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT_images/`` next to it."""
    out = Path(out)
    return out.with_name(out.stem + "_images")


def convert_file(fmt: str, data: str | os.PathLike, out: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 max_rows: int | None = None, split: str = "train", overwrite: bool = False) -> dict:
    """Convert ``data`` (format ``fmt``) to canonical JSON lines at ``out``, atomically: on any
    error nothing is left behind (Pick-a-Pic images are collected in a temporary folder that
    is moved into place only after every row converted). Returns the counts."""
    if fmt not in FORMATS:
        raise PalMMError(f"--from must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".jsonl":
        raise PalMMError(f"{out}: the output must be a .jsonl file")
    if out.exists() and not overwrite:
        raise PalMMError(f"{out}: output file exists (pass --overwrite to replace it)")
    if max_rows is not None and max_rows < 1:
        raise PalMMError(f"--max-rows must be >= 1, got {max_rows}")
    rows_iter, base_dir, label = iter_source_rows(data, split)
    rows_iter = _take(rows_iter, max_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pal-reference":
        rows, counts = convert_pal_reference(rows_iter, label, base_dir, out.parent)
        _check_nonempty(rows, counts, label)
        write_jsonl(out, rows)
        return counts
    images = Path(image_dir).expanduser() if image_dir else default_image_dir(out)
    try:
        prefix = Path(os.path.relpath(images.resolve(), out.parent.resolve())).as_posix() + "/"
    except ValueError:  # another drive (Windows): absolute paths
        prefix = images.resolve().as_posix() + "/"
    images.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{images.name}.tmp-", dir=images.parent))
    try:
        rows, counts = convert_pickapic(rows_iter, tmp, prefix, label, base_dir)
        _check_nonempty(rows, counts, label)
        if images.exists():  # content-addressed names: merging never overwrites a different image
            for f in tmp.iterdir():
                if not (images / f.name).exists():
                    os.replace(f, images / f.name)
        else:
            os.replace(tmp, images)
        write_jsonl(out, rows)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    counts["image_dir"] = str(images)
    return counts


def _check_nonempty(rows: list[dict], counts: dict, label: str) -> None:
    if not rows:
        ties = counts.get("ties_dropped", 0)
        raise DataError(f"{label}: no comparisons left to write ({counts.get('rows_read', 0)} rows read, {ties} ties dropped)")
