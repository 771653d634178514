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
