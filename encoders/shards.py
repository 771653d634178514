"""Shards of the embedding cache: the on-disk format and the per-tower index.

A shard is a safetensors file ``shard-<time>-<id>.safetensors`` holding ``keys`` (n, 32) uint8
and ``emb`` (n, d) float32, whose metadata records the format, n, d and sha256 checksums of
both tensors. Shards are untrusted input: anything that does not parse, has other shapes or
widths, fails a checksum or holds non-finite values raises :class:`CorruptShard` (never a
traceback); the cache reports it and recomputes the entries.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as st_save

from .atomic import write_bytes

FORMAT = "pal-mm-embedding-shard-1"
KEY_BYTES = 32
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".safetensors"


class CorruptShard(Exception):
    """A shard that must not be used (the message says why)."""


def checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _count(meta: dict, key: str) -> int:
    value = meta.get(key)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 12:
        raise CorruptShard(f"metadata {key}={value!r} is not a count")
    return int(value)


class TowerStore:
    """The shards of one (fingerprint, tower) directory: a key -> (shard, row) index plus the
    verified embeddings of the shards read so far. ``dim``: the width every shard must have
    (None: not known yet)."""

    def __init__(self, directory: Path, dim: int | None = None):
        self.dir = directory
        self.dim = dim
        self.index: dict[bytes, tuple[str, int]] = {}
        self.meta: dict[str, dict] = {}  # shard name -> {"count", "dim", "emb_sha256"}
        self.emb: dict[str, np.ndarray] = {}  # shard name -> (n, d), verified
        self.bad: set[str] = set()  # reported corrupt but could not be deleted: skipped

    def shard_names(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except OSError:  # missing, not a folder, no permission: nothing to read (writes will say so)
            return []
        return sorted(n for n in names if n.startswith(SHARD_PREFIX) and n.endswith(SHARD_SUFFIX) and n not in self.bad)

    def refresh(self, on_corrupt) -> None:
        """Index shards written since the last call (by this or another process); ``on_corrupt(
        name, why)`` is called once for each damaged one."""
        names = self.shard_names()
        gone = set(self.meta) - set(names)
        if gone:  # merged or deleted elsewhere: rebuild the index
            self.index.clear()
            self.meta.clear()
            self.emb = {k: v for k, v in self.emb.items() if k not in gone}
        for name in names:
            if name in self.meta:
                continue
            try:
                meta, keys = self._read_keys(name)
            except FileNotFoundError:
                continue
            except CorruptShard as e:
                on_corrupt(name, str(e))
                continue
            self.meta[name] = meta
            for row, k in enumerate(keys):
                self.index[k.tobytes()] = (name, row)

    def _read_keys(self, name: str) -> tuple[dict, np.ndarray]:
        path = self.dir / name
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                keys = f.get_tensor("keys")
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated header, garbage, missing tensor, a directory, no permission
            raise CorruptShard(f"unreadable ({type(e).__name__}: {str(e)[:200]})") from None
        if meta.get("format") != FORMAT:
            raise CorruptShard(f"unknown format {str(meta.get('format'))[:80]!r}")
        count, dim = _count(meta, "count"), _count(meta, "dim")
        if self.dim is not None and dim != self.dim:
            raise CorruptShard(f"holds {dim}-d vectors, the encoder gives {self.dim}-d")
        if keys.dtype != np.uint8 or keys.shape != (count, KEY_BYTES):
            raise CorruptShard(f"keys have shape {keys.shape}, expected ({count}, {KEY_BYTES})")
        if checksum(keys) != meta.get("keys_sha256"):
            raise CorruptShard("keys checksum mismatch")
        return {"count": count, "dim": dim, "emb_sha256": meta.get("emb_sha256")}, keys

    def embeddings(self, name: str) -> np.ndarray:
        """The verified (n, d) embeddings of one shard (raises CorruptShard / FileNotFoundError)."""
        if name not in self.emb:
            meta = self.meta[name]
            try:
                with safe_open(str(self.dir / name), framework="numpy") as f:
                    emb = f.get_tensor("emb")
            except FileNotFoundError:
                raise
            except Exception as e:
                raise CorruptShard(f"unreadable embeddings ({type(e).__name__}: {str(e)[:200]})") from None
            if emb.dtype != np.float32 or emb.shape != (meta["count"], meta["dim"]):
                raise CorruptShard(f"embeddings have shape {emb.shape}, expected ({meta['count']}, {meta['dim']})")
            if checksum(emb) != meta["emb_sha256"]:
                raise CorruptShard("embeddings checksum mismatch")
            if not np.isfinite(emb).all():
                raise CorruptShard("embeddings hold NaN or infinite values")
            self.emb[name] = emb
        return self.emb[name]

    def forget(self, name: str) -> None:
        self.meta.pop(name, None)
        self.emb.pop(name, None)
        self.index = {k: v for k, v in self.index.items() if v[0] != name}

    def write(self, keys: np.ndarray, emb: np.ndarray, extra: dict) -> str:
        """Store (n, 32) keys and (n, d) float32 embeddings as a new shard (atomic, fsynced);
        returns its name. Raises OSError when the directory is not writable."""
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        meta = {"format": FORMAT, "count": str(len(keys)), "dim": str(emb.shape[1]),
                "keys_sha256": checksum(keys), "emb_sha256": checksum(emb), **{k: str(v) for k, v in extra.items()}}
        name = f"{SHARD_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        write_bytes(self.dir / name, st_save({"keys": keys, "emb": emb}, metadata=meta), fsync=True)
        self.meta[name] = {"count": len(keys), "dim": emb.shape[1], "emb_sha256": meta["emb_sha256"]}
        self.emb[name] = emb
        for row, k in enumerate(keys):
            self.index[k.tobytes()] = (name, row)
        return name
