"""Atomic writes: every file and folder is written under a temporary name in the same folder and
then renamed over its target, so a reader never sees half a file and a failure (or a kill)
leaves the previous version, or nothing, in place.

Temporary files are named ``.<name>.<host>.<pid>.<random>.tmp``, so a later run can tell the
leftovers of a killed writer (:func:`remove_stale_temps`) from a file a live process is writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


#: temporary files older than this are leftovers whoever wrote them (a write takes seconds)
STALE_AFTER_S = 15 * 60
#: ... and a file of a live process (a reused pid) after a day untouched
STALE_ALIVE_S = 24 * 3600
_TEMP_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9-]{1,40})\.(?P<pid>\d{1,10})\.[A-Za-z0-9_]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for ``name``: ``.<name>.<host>.<pid>.``"""
    return f".{name}.{_host()}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists under another user (or cannot tell): assume it is alive
    return True


def is_stale_temp(path: str | os.PathLike, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> bool:
    """A temporary file nobody is writing any more: its writer on this host has exited; or, when
    the writer cannot be checked (another host, an older name without owner), it has not been
    modified for ``max_age_s`` seconds. A file whose writer is alive counts as stale only after a
    day untouched (its pid was reused); this process's own files never do."""
    path = Path(path)
    m = _TEMP_OWNER.search(path.name)
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if m and m["host"] == _host():
        pid = int(m["pid"])
        if pid == os.getpid():
            return False
        return not pid_alive(pid) or age > STALE_ALIVE_S
    return age > max_age_s


def remove_stale_temps(directory: str | os.PathLike, pattern: str = ".*.tmp", max_age_s: float = STALE_AFTER_S) -> int:
    """Delete the stale temporary files (see :func:`is_stale_temp`) matching ``pattern`` in
    ``directory``; returns how many were removed. Files that vanish or cannot be removed are skipped."""
    directory = Path(directory)
    removed = 0
    try:
        candidates = [p for p in directory.glob(pattern) if p.is_file() or p.is_symlink()]
    except OSError:
        return 0
    for p in candidates:
        if is_stale_temp(p, max_age_s):
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` (parents created). ``fsync``: flush to disk before the rename
    (for caches that must survive a power loss, not only a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
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
        if not m or not p.is_dir() or pid_alive(int(m[2])):
            continue
        if m[1] == "old" and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
