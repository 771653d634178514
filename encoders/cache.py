"""A content-addressed, on-disk embedding cache: each distinct input is encoded once, across
train / eval / adapt and repeated runs.

Layout (under ``$PAL_MM_CACHE`` or ``~/.cache/pal-mm``)::

    embeddings/<encoder fingerprint>/<tower>/shard-<time>-<id>.safetensors
    embeddings/<encoder fingerprint>/info.json            (what the fingerprint stands for)

* **Key** of an input: sha256 of its content - the UTF-8 bytes of a text, the *file bytes* of an
  image path (renaming or moving an image keeps its entry; editing it does not), or the float64
  bytes of a vector. The directory adds the encoder's fingerprint (weights, pooling, max length,
  dtype...) and the tower, so a key never crosses encoders or towers.
* **Shards**: each write stores a batch of entries in one safetensors file (``keys`` (n, 32)
  uint8, ``emb`` (n, d) float32) whose metadata holds sha256 checksums of both tensors. Files
  are written to a temporary name, fsynced and renamed, so readers never see partial files;
  names are unique, so concurrent writers never clobber each other. When a tower has more than
  ``max_shards`` shards they are merged into one.
* **Integrity**: a shard that cannot be parsed, has wrong shapes, or fails its checksum is
  reported (warning + ``corrupt`` counter), deleted, and its entries are recomputed - never used.
* **Speed**: the key index of a tower is read once per process (keys only); embeddings of a
  shard are read (and verified) only when one of its entries is needed.

No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save as st_save

from .atomic import write_bytes
from .errors import EncoderError

from .assets import cache_root
from .base import Encoder

FORMAT = "pal-mm-embedding-shard-1"
KEY_BYTES = 32


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _safe_name(fingerprint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", fingerprint)[:120]


def _atomic_write(path: Path, data: bytes) -> None:
    write_bytes(path, data, fsync=True)


class CorruptShard(Exception):
    pass


class _TowerStore:
    """The shards of one (fingerprint, tower) directory: a key -> (shard, row) index plus the
    embeddings of the shards read so far."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.index: dict[bytes, tuple[str, int]] = {}
        self.meta: dict[str, dict] = {}  # shard name -> metadata
        self.emb: dict[str, np.ndarray] = {}  # shard name -> (n, d), verified

    def shard_names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(n for n in os.listdir(self.dir) if n.startswith("shard-") and n.endswith(".safetensors"))

    def refresh(self, on_corrupt) -> None:
        """Index shards written since the last call (by this or another process)."""
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
                on_corrupt(self.dir / name, str(e))
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
        except Exception as e:  # truncated header, garbage, missing tensor
            raise CorruptShard(f"unreadable ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT:
            raise CorruptShard(f"unknown format {meta.get('format')!r}")
        try:
            count, dim = int(meta["count"]), int(meta["dim"])
        except (KeyError, ValueError):
            raise CorruptShard("metadata lacks count/dim") from None
        if keys.dtype != np.uint8 or keys.shape != (count, KEY_BYTES):
            raise CorruptShard(f"keys have shape {keys.shape}, expected ({count}, {KEY_BYTES})")
        if _sha(keys) != meta.get("keys_sha256"):
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
                raise CorruptShard(f"unreadable embeddings ({type(e).__name__}: {e})") from None
            if emb.dtype != np.float32 or emb.shape != (meta["count"], meta["dim"]):
                raise CorruptShard(f"embeddings have shape {emb.shape}, expected ({meta['count']}, {meta['dim']})")
            if _sha(emb) != meta["emb_sha256"]:
                raise CorruptShard("embeddings checksum mismatch")
            self.emb[name] = emb
        return self.emb[name]

    def forget(self, name: str) -> None:
        self.meta.pop(name, None)
        self.emb.pop(name, None)
        self.index = {k: v for k, v in self.index.items() if v[0] != name}

    def write(self, keys: np.ndarray, emb: np.ndarray, extra: dict) -> str:
        """Store (n, 32) keys and (n, d) float32 embeddings as a new shard; returns its name."""
        keys = np.ascontiguousarray(keys, dtype=np.uint8)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        meta = {"format": FORMAT, "count": str(len(keys)), "dim": str(emb.shape[1]),
                "keys_sha256": _sha(keys), "emb_sha256": _sha(emb), **{k: str(v) for k, v in extra.items()}}
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
        _atomic_write(self.dir / name, st_save({"keys": keys, "emb": emb}, metadata=meta))
        self.meta[name] = {"count": len(keys), "dim": emb.shape[1], "emb_sha256": meta["emb_sha256"]}
        self.emb[name] = emb
        for row, k in enumerate(keys):
            self.index[k.tobytes()] = (name, row)
        return name


class EmbeddingCache:
    """On-disk embedding cache. ``encode(encoder, tower, values)`` returns (n, dim) float32 and
    encodes only the inputs it has not seen; ``hits`` / ``misses`` count distinct inputs found /
    encoded, ``corrupt`` the damaged shards detected (and repaired)."""

    def __init__(self, root: str | os.PathLike | None = None, chunk_size: int = 2048, max_shards: int = 32):
        base = Path(root).expanduser() if root is not None else cache_root()
        self.root = base / "embeddings"
        self.chunk_size = int(chunk_size)  # misses are encoded and stored this many at a time
        self.max_shards = int(max_shards)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self._stores: dict[tuple[str, str], _TowerStore] = {}
        self._file_digests: dict[tuple[str, int, int], bytes] = {}

    # ----- keys -----------------------------------------------------------------------------
    def key(self, value: Any, modality: str) -> bytes:
        """32-byte content key of one input for a tower of the given modality."""
        if modality == "image":
            if not isinstance(value, (str, os.PathLike)):
                raise EncoderError(f"image inputs must be file paths, got {type(value).__name__}")
            return self._file_key(value)
        if isinstance(value, str):
            return hashlib.sha256(b"text\0" + value.encode("utf-8")).digest()
        if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
            arr = np.asarray(value, dtype=np.float64)
            return hashlib.sha256(b"vector\0" + str(arr.shape).encode() + b"\0" + arr.tobytes()).digest()
        raise EncoderError(f"cannot cache an input of type {type(value).__name__}")

    def _file_key(self, path: str | os.PathLike) -> bytes:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise EncoderError(f"image file not found: {path}") from None
        memo = (os.fspath(path), st.st_size, st.st_mtime_ns)
        if memo not in self._file_digests:
            h = hashlib.sha256(b"image\0")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            self._file_digests[memo] = h.digest()
        return self._file_digests[memo]

    # ----- lookup / store -------------------------------------------------------------------
    def _store(self, encoder: Encoder, tower: str) -> tuple[_TowerStore, str]:
        fingerprint = encoder.fingerprint()
        skey = (fingerprint, tower)
        if skey not in self._stores:
            fdir = self.root / _safe_name(fingerprint)
            self._stores[skey] = _TowerStore(fdir / tower)
            info = fdir / "info.json"
            if not info.exists():
                fdir.mkdir(parents=True, exist_ok=True)
                blob = {"fingerprint": fingerprint, "encoder": encoder.describe(),
                        "parts": encoder.fingerprint_parts()}
                _atomic_write(info, (json.dumps(blob, indent=1, default=str) + "\n").encode())
        return self._stores[skey], fingerprint

    def _on_corrupt(self, path: Path, why: str) -> None:
        self.corrupt += 1
        warnings.warn(f"embedding cache: {path} is corrupt ({why}); deleting it, its entries will be recomputed")
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _lookup(self, store: _TowerStore, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """Verified rows for the keys present in the cache."""
        store.refresh(self._on_corrupt)
        by_shard: dict[str, list[bytes]] = {}
        for k in keys:
            loc = store.index.get(k)
            if loc is not None:
                by_shard.setdefault(loc[0], []).append(k)
        found: dict[bytes, np.ndarray] = {}
        for name, ks in by_shard.items():
            try:
                emb = store.embeddings(name)
            except FileNotFoundError:  # merged away by another process: those become misses
                store.forget(name)
                continue
            except CorruptShard as e:
                self._on_corrupt(store.dir / name, str(e))
                store.forget(name)
                continue
            rows = emb[[store.index[k][1] for k in ks]]
            found.update(zip(ks, rows))
        return found

    def encode(self, encoder: Encoder, tower: str, values: Sequence[Any]) -> torch.Tensor:
        """(n,) inputs -> (n, dim) float32: cached rows where present, the rest encoded (in
        chunks of ``chunk_size``, each stored as soon as it is done) and stored."""
        if tower not in ("prompt", "item"):
            raise ValueError(f"tower must be 'prompt' or 'item', got {tower!r}")
        values = list(values)
        if not values:
            return torch.zeros(0, encoder.tower_dim(tower) or 0)
        modality = encoder.prompt_modality if tower == "prompt" else encoder.item_modality
        keys = [self.key(v, modality) for v in values]
        store, fingerprint = self._store(encoder, tower)
        unique = list(dict.fromkeys(keys))
        found = self._lookup(store, unique)
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [k for k in unique if k not in found]
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        for s in range(0, len(missing), self.chunk_size):
            chunk = missing[s : s + self.chunk_size]
            emb = encoder.encode([values[first[k]] for k in chunk], tower).float().numpy()
            if emb.shape[0] != len(chunk):
                raise EncoderError(f"encoder {encoder.name!r} returned {emb.shape[0]} rows for {len(chunk)} inputs")
            key_arr = np.frombuffer(b"".join(chunk), dtype=np.uint8).reshape(len(chunk), KEY_BYTES)
            store.write(key_arr, emb, {"fingerprint": fingerprint, "tower": tower})
            found.update(zip(chunk, emb))
        if len(store.shard_names()) > self.max_shards:
            self.compact(encoder, tower)
        return torch.from_numpy(np.stack([found[k] for k in keys]))

    def compact(self, encoder: Encoder, tower: str) -> None:
        """Merge all shards of a tower into one (verified rows only)."""
        store, fingerprint = self._store(encoder, tower)
        store.refresh(self._on_corrupt)
        names = list(store.meta)
        keys = list(store.index)
        if len(names) < 2:
            return
        found = self._lookup(store, keys)
        keys = [k for k in keys if k in found]
        if keys:
            key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
            store.write(key_arr, np.stack([found[k] for k in keys]), {"fingerprint": fingerprint, "tower": tower})
        for name in names:
            store.forget(name)
            try:
                (store.dir / name).unlink()
            except FileNotFoundError:
                pass

    # ----- reporting ------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}

    def reset_counters(self) -> None:
        self.hits = self.misses = self.corrupt = 0

    def summary(self) -> str:
        """One line for commands: ``encoded N, found M cached``."""
        text = f"encoded {self.misses}, found {self.hits} cached"
        return text + (f" ({self.corrupt} corrupt cache file(s) repaired)" if self.corrupt else "")

    def __repr__(self) -> str:
        return f"EmbeddingCache(root={str(self.root.parent)!r}, hits={self.hits}, misses={self.misses})"
