"""Atomic writes: every file and folder is written under a temporary name in the same folder and
then renamed over its target, so a reader never sees half a file and a failure (or a kill)
leaves the previous version, or nothing, in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
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
    ``target`` (see :func:`replace_dir`: an existing target is swapped out, never missing), on any
    error it is removed and ``target`` is left as it was. Leftovers of killed runs writing the same
    target (``.NAME.tmp-PID-*`` of dead processes) are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the folder ``src`` to ``target``. An existing ``target`` is swapped with ``src`` in one
    atomic step (Linux ``renameat2(RENAME_EXCHANGE)``) and then deleted, so at every moment either
    the old or the new folder is at ``target``. Elsewhere the old folder is first renamed to
    ``.NAME.old-PID`` (a kill in between leaves it there; :func:`remove_dead_dirs` puts it back)."""
    src, target = Path(src), Path(target)
    if not target.exists():
        os.replace(src, target)
        return
    if _exchange(src, target):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(src, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def remove_dead_dirs(target: str | os.PathLike) -> None:
    """Clean up after killed writers of ``target``: their ``.NAME.tmp-PID-*`` folders are removed, and
    an ``.NAME.old-PID`` folder left by an interrupted swap is put back when ``target`` is missing."""
    target = Path(target)
    try:
        siblings = list(target.parent.glob(f".{target.name}.*"))
    except OSError:
        return
    for p in siblings:
        m = re.fullmatch(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)(-.*)?", p.name)
        if not m or not p.is_dir() or _alive(int(m[2])):
            continue
        if m[1] == "old" and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
