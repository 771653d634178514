"""A content-addressed, on-disk embedding cache: each distinct input is encoded once, across
train / eval / adapt and repeated runs.

Layout (under ``$PAL_MM_CACHE`` or ``~/.cache/pal-mm``)::

    embeddings/<encoder fingerprint>/<tower>/shard-<time>-<id>.safetensors
    embeddings/<encoder fingerprint>/info.json            (what the fingerprint stands for)

* **Key** of an input: sha256 of its content - the UTF-8 bytes of a text, the *file bytes* of an
  image path (renaming or moving an image keeps its entry; editing it does not), or the float64
  bytes of a vector. The directory adds the encoder's fingerprint (weights, pooling, max length,
  dtype...) and the tower, so a key never crosses encoders or towers.
* **Shards** (``encoders.shards``): each write stores a batch of entries in one safetensors file
  with sha256 checksums, written to a temporary name, fsynced and renamed, so readers never see
  partial files; names are unique, so concurrent writers never clobber each other. When a tower
  has more than ``max_shards`` shards they are merged into one.
* **Untrusted input**: a shard that cannot be parsed, has wrong shapes or widths, fails its
  checksum or holds non-finite values is reported once (a warning + the ``corrupt`` counter),
  deleted, and its entries are recomputed - never used. A cache folder that cannot be read or
  written gives one warning and the run goes on without it.
* **Leftovers**: temporary files of killed runs (``.shard-*.tmp``) are removed when a tower is
  first opened, unless a live process may still be writing them (``encoders.atomic``).
* **Progress**: ``progress=True`` draws a bar over the inputs being encoded (None: the
  process-wide setting of ``encoders.progress``).
* **Speed**: the key index of a tower is read once per process (keys only); embeddings of a
  shard are read (and verified) only when one of its entries is needed.

No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .assets import cache_root
from .atomic import remove_stale_temps, write_bytes
from .base import Encoder
from .distributed import all_gather, barrier, broadcast, world
from .errors import EncoderError
from .progress import progress_bar
from .shards import KEY_BYTES, CorruptShard, TowerStore

__all__ = ["EmbeddingCache", "CorruptShard"]


def _safe_name(fingerprint: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", fingerprint)[:120]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


class EmbeddingCache:
    """On-disk embedding cache. ``encode(encoder, tower, values)`` returns (n, dim) float32 and
    encodes only the inputs it has not seen; ``hits`` / ``misses`` count distinct inputs found /
    encoded, ``corrupt`` the damaged shards detected (and repaired), ``leftovers`` the temporary
    files of killed runs removed."""

    def __init__(self, root: str | os.PathLike | None = None, chunk_size: int = 2048, max_shards: int = 32,
                 progress: bool | None = None):
        base = Path(root).expanduser() if root is not None else cache_root()
        self.root = base / "embeddings"
        self.chunk_size = int(chunk_size)  # misses are encoded and stored this many at a time
        self.max_shards = int(max_shards)
        self.progress = progress
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.leftovers = 0
        self._stores: dict[tuple[str, str], TowerStore] = {}
        self._file_digests: dict[tuple[str, int, int], bytes] = {}
        self._unwritable: str | None = None  # why writing failed: warned once, then skipped

    # ----- keys -----------------------------------------------------------------------------
    def key(self, value: Any, modality: str) -> bytes:
        """32-byte content key of one input for a tower of the given modality."""
        if modality == "image":
            if not isinstance(value, (str, os.PathLike)):
                raise EncoderError(f"image inputs must be file paths, got {type(value).__name__}")
            return self._file_key(value)
        if isinstance(value, str):
            return hashlib.sha256(b"text\0" + value.encode("utf-8", "surrogatepass")).digest()
        if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError, OverflowError) as e:
                raise EncoderError(f"cannot cache a vector input ({type(e).__name__}: {e})") from None
            return hashlib.sha256(b"vector\0" + str(arr.shape).encode() + b"\0" + arr.tobytes()).digest()
        raise EncoderError(f"cannot cache an input of type {type(value).__name__}")

    def _file_key(self, path: str | os.PathLike) -> bytes:
        try:
            st = os.stat(path)
            memo = (os.fspath(path), st.st_size, st.st_mtime_ns)
            if memo not in self._file_digests:
                h = hashlib.sha256(b"image\0")
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                self._file_digests[memo] = h.digest()
        except FileNotFoundError:
            raise EncoderError(f"image file not found: {path}") from None
        except (OSError, ValueError) as e:  # a directory, no permission, a NUL in the name...
            raise EncoderError(f"cannot read image file {path} ({type(e).__name__}: {e})") from None
        return self._file_digests[memo]

    # ----- stores ---------------------------------------------------------------------------
    def _store(self, encoder: Encoder, tower: str) -> tuple[TowerStore, str]:
        fingerprint = encoder.fingerprint()
        skey = (fingerprint, tower)
        if skey not in self._stores:
            fdir = self.root / _safe_name(fingerprint)
            store = TowerStore(fdir / tower, dim=encoder.tower_dim(tower))
            self._stores[skey] = store
            self.leftovers += remove_stale_temps(store.dir, ".shard-*.tmp") + remove_stale_temps(fdir, ".info.json.*.tmp")
            if not _exists(fdir / "info.json"):
                blob = {"fingerprint": fingerprint, "encoder": encoder.describe(), "parts": encoder.fingerprint_parts()}
                self._write(lambda: write_bytes(fdir / "info.json", (json.dumps(blob, indent=1, default=str) + "\n").encode()))
        return self._stores[skey], fingerprint

    def _write(self, fn) -> bool:
        """Run a cache write; an unusable cache folder is reported once and skipped afterwards."""
        if self._unwritable is not None:
            return False
        try:
            fn()
            return True
        except OSError as e:
            self._unwritable = f"{type(e).__name__}: {e}"
            warnings.warn(f"embedding cache: cannot write under {self.root} ({self._unwritable}); "
                          "going on without storing embeddings (choose another --cache-dir or --no-cache)")
            return False

    def _on_corrupt(self, store: TowerStore, name: str, why: str) -> None:
        """Report a damaged shard once, delete it (or skip it when it cannot be deleted)."""
        self.corrupt += 1
        path = store.dir / name
        try:
            path.unlink()
            action = "deleted it"
        except FileNotFoundError:
            action = "it is gone"
        except OSError as e:
            store.bad.add(name)
            action = f"could not delete it ({type(e).__name__}), it is skipped"
        warnings.warn(f"embedding cache: {path} is corrupt ({why}); {action}, its entries will be recomputed")

    def _lookup(self, store: TowerStore, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """Verified rows for the keys present in the cache."""
        store.refresh(lambda name, why: self._on_corrupt(store, name, why))
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
                self._on_corrupt(store, name, str(e))
                store.forget(name)
                continue
            rows = emb[[store.index[k][1] for k in ks]]
            found.update(zip(ks, rows))
        return found

    # ----- encoding -------------------------------------------------------------------------
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
        rank, size = world()
        if size > 1:  # several processes (accelerate launch): each encodes its share, all get every vector
            self._encode_distributed(encoder, tower, store, fingerprint, values, first, unique, missing, found, rank, size)
        elif missing:
            self._encode_missing(encoder, tower, store, fingerprint, [values[first[k]] for k in missing], missing, found)
        if len(store.shard_names()) > self.max_shards:
            self.compact(encoder, tower)
        widths = {found[k].shape[-1] for k in unique}
        if len(widths) > 1:
            raise EncoderError(f"embedding cache: vectors of widths {sorted(widths)} for encoder {encoder.name!r}; "
                               f"delete {store.dir} and run again")
        return torch.from_numpy(np.stack([found[k] for k in keys]))

    def _encode_distributed(self, encoder, tower, store, fingerprint, values, first, unique, missing, found, rank, size) -> None:
        """Rank 0's list of missing inputs is split across the ranks; the new vectors are gathered on
        every rank and stored once (by rank 0)."""
        missing = broadcast(missing)
        mine = missing[rank::size]
        local: dict = {}
        if mine:
            self._encode_missing(encoder, tower, store, fingerprint, [values[first[k]] for k in mine], mine, local, write=False)
        new = {k: v for part in all_gather(list(local.items())) for k, v in part}
        found.update(new)
        if rank == 0 and new:
            keys = list(new)
            emb = np.stack([new[k] for k in keys])
            if np.isfinite(emb).all():
                key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
                self._write(lambda: store.write(key_arr, emb, {"fingerprint": fingerprint, "tower": tower}))
        barrier()
        rest = [k for k in unique if k not in found]  # found by rank 0 but not here: read rank 0's shards
        if rest:
            found.update(self._lookup(store, rest))
        rest = [k for k in unique if k not in found]
        if rest:
            self._encode_missing(encoder, tower, store, fingerprint, [values[first[k]] for k in rest], rest, found, write=False)

    def _encode_missing(self, encoder: Encoder, tower: str, store: TowerStore, fingerprint: str,
                        inputs: list, keys: list[bytes], found: dict, write: bool = True) -> None:
        with progress_bar(total=len(keys), desc=f"encoding {tower}s ({encoder.name})", unit="input",
                          progress=self.progress) as bar, encoder.progress_hook(bar.update):
            for s in range(0, len(keys), self.chunk_size):
                chunk = keys[s : s + self.chunk_size]
                emb = encoder.encode(inputs[s : s + self.chunk_size], tower).float().numpy()
                bar.update(max(0, s + len(chunk) - bar.n))  # for encoders that do not report their batches
                if emb.ndim != 2 or emb.shape[0] != len(chunk):
                    raise EncoderError(f"encoder {encoder.name!r} returned shape {tuple(emb.shape)} for {len(chunk)} inputs")
                if store.dim is None:
                    store.dim = int(emb.shape[1])
                key_arr = np.frombuffer(b"".join(chunk), dtype=np.uint8).reshape(len(chunk), KEY_BYTES)
                finite = bool(np.isfinite(emb).all())
                if write and finite:
                    self._write(lambda: store.write(key_arr, emb, {"fingerprint": fingerprint, "tower": tower}))
                elif not finite:
                    warnings.warn(f"encoder {encoder.name!r} produced NaN or infinite vectors; they are not cached")
                found.update(zip(chunk, emb))

    def compact(self, encoder: Encoder, tower: str) -> None:
        """Merge all shards of a tower into one (verified rows only)."""
        store, fingerprint = self._store(encoder, tower)
        store.refresh(lambda name, why: self._on_corrupt(store, name, why))
        names = list(store.meta)
        keys = list(store.index)
        if len(names) < 2:
            return
        found = self._lookup(store, keys)
        keys = [k for k in keys if k in found]
        if keys:
            key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
            merged = np.stack([found[k] for k in keys])
            if not self._write(lambda: store.write(key_arr, merged, {"fingerprint": fingerprint, "tower": tower})):
                return  # keep the old shards: nothing was merged
        for name in names:
            store.forget(name)
            try:
                (store.dir / name).unlink()
            except OSError:
                pass

    # ----- reporting ------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt, "leftovers": self.leftovers}

    def summary(self) -> str:
        """One line for commands: ``encoded N, found M cached``."""
        text = f"encoded {self.misses}, found {self.hits} cached"
        if self.corrupt:
            text += f" ({self.corrupt} corrupt cache file(s) repaired)"
        if self.leftovers:
            text += f" ({self.leftovers} leftover temporary file(s) of killed runs removed)"
        return text

    def __repr__(self) -> str:
        return f"EmbeddingCache(root={str(self.root.parent)!r}, hits={self.hits}, misses={self.misses})"
