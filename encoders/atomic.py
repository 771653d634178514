"""Atomic writes: every file and folder is written under a temporary name in the same folder and
then renamed over its target, so a reader never sees half a file and a failure (or a kill)
leaves the previous version, or nothing, in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` (parents created). ``fsync``: flush to disk before the rename
    (for caches that must survive a power loss, not only a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON (non-JSON values such as paths written with ``str``), newline-terminated."""
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept as is)."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def output_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``target``; when the block succeeds it replaces
    ``target`` (an existing one is moved aside first and deleted after), on any error it is
    removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
