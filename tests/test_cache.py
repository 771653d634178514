"""Embedding cache: content addressing, hit/miss counts, corruption detection and repair."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings

import pytest
import torch

from encoders.base import Encoder
from encoders.cache import EmbeddingCache


class CountingEncoder(Encoder):
    """Deterministic fake encoder: a vector from the sha256 of the input; counts inputs seen."""

    name = "counting"
    prompt_modality = "text"
    item_modality = "text"

    def __init__(self, dim: int = 6, salt: str = "", item_modality: str = "text"):
        super().__init__(batch_size=16, device="cpu")
        self.prompt_dim = self.item_dim = dim
        self.salt = salt
        self.item_modality = item_modality
        self.seen = 0

    def _vec(self, value) -> torch.Tensor:
        data = open(value, "rb").read() if self.item_modality == "image" and os.path.exists(str(value)) else str(value).encode()
        h = hashlib.sha256(self.salt.encode() + data).digest()
        return torch.tensor((list(h) * (self.prompt_dim // 32 + 1))[: self.prompt_dim], dtype=torch.float32) / 255.0

    def _encode_prompt_batch(self, prompts):
        self.seen += len(prompts)
        return torch.stack([self._vec(p) for p in prompts])

    _encode_item_batch = _encode_prompt_batch

    def config(self):
        return {"salt": self.salt, "dim": self.prompt_dim}


def shards(cache: EmbeddingCache) -> list:
    return sorted(cache.root.rglob("shard-*.safetensors"))


def test_second_encode_is_all_cached(tmp_path):
    enc = CountingEncoder()
    texts = [f"text number {i}" for i in range(50)]
    first = EmbeddingCache(tmp_path)
    a = first.encode(enc, "prompt", texts)
    assert a.shape == (50, 6) and a.dtype == torch.float32
    assert (first.hits, first.misses) == (0, 50) and enc.seen == 50
    assert first.summary() == "encoded 50, found 0 cached"

    second = EmbeddingCache(tmp_path)  # a new process: only the disk is shared
    b = second.encode(enc, "prompt", texts[::-1] + ["a new one"])
    assert (second.hits, second.misses) == (50, 1) and enc.seen == 51
    assert torch.equal(b[:50], a.flip(0))
    assert torch.equal(b[50], enc._vec("a new one"))
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_duplicates_encoded_once_and_order_kept(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    out = cache.encode(enc, "item", ["b", "a", "b", "c", "a"])
    assert enc.seen == 3 and cache.misses == 3
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[4])
    assert torch.equal(out[3], enc._vec("c"))


def test_keys_separate_encoders_and_towers(tmp_path):
    cache = EmbeddingCache(tmp_path)
    a, b = CountingEncoder(salt="x"), CountingEncoder(salt="y")
    assert a.fingerprint() != b.fingerprint()
    va = cache.encode(a, "prompt", ["same text"])
    vb = cache.encode(b, "prompt", ["same text"])
    assert not torch.equal(va, vb) and cache.misses == 2
    cache.encode(a, "item", ["same text"])  # another tower: its own entries
    assert cache.misses == 3
    cache.encode(a, "prompt", ["same text"])
    assert cache.hits == 1


def test_image_keys_follow_file_bytes(tmp_path):
    enc = CountingEncoder(item_modality="image")
    img = tmp_path / "img"
    img.mkdir()
    (img / "a.png").write_bytes(b"\x89PNG fake image a")
    (img / "b.png").write_bytes(b"\x89PNG fake image b")
    cache = EmbeddingCache(tmp_path / "cache")
    cache.encode(enc, "item", [str(img / "a.png"), str(img / "b.png")])
    shutil.copy(img / "a.png", img / "moved.png")  # same bytes, another path: a hit
    cache.encode(enc, "item", [str(img / "moved.png")])
    assert (cache.hits, cache.misses) == (1, 2)
    time.sleep(0.01)
    (img / "b.png").write_bytes(b"\x89PNG edited image b")  # same path, new bytes: a miss
    cache.encode(enc, "item", [str(img / "b.png")])
    assert (cache.hits, cache.misses) == (1, 3)


def test_vector_inputs(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    cache.encode(enc, "prompt", [[0.1, 0.2], [0.3, 0.4]])
    cache.encode(enc, "prompt", [[0.1, 0.2]])
    assert (cache.hits, cache.misses) == (1, 2)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_shard_is_detected_and_repaired(tmp_path, damage):
    enc = CountingEncoder()
    texts = [f"t{i}" for i in range(20)]
    good = EmbeddingCache(tmp_path).encode(enc, "prompt", texts)
    (shard,) = shards(EmbeddingCache(tmp_path))
    blob = bytearray(shard.read_bytes())
    if damage == "flip":  # one flipped bit in the embeddings: only the checksum can tell
        blob[-5] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) - 40]
    else:
        blob = bytearray(b"not a safetensors file at all")
    shard.write_bytes(bytes(blob))

    cache = EmbeddingCache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = cache.encode(enc, "prompt", texts)
    assert cache.corrupt == 1 and cache.misses == 20 and cache.hits == 0
    assert any("corrupt" in str(w.message) for w in caught)
    assert torch.equal(again, good)  # recomputed, never the damaged values
    assert not shard.exists()  # the damaged file is gone, a fresh one replaces it
    healed = EmbeddingCache(tmp_path)
    healed.encode(enc, "prompt", texts)
    assert (healed.hits, healed.misses, healed.corrupt) == (20, 0, 0)


def test_misses_are_written_in_chunks_and_compacted(tmp_path):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path, chunk_size=10, max_shards=4)
    cache.encode(enc, "prompt", [f"x{i}" for i in range(35)])  # 4 shards of <= 10
    assert len(shards(cache)) == 4
    cache.encode(enc, "prompt", [f"y{i}" for i in range(5)])  # a 5th shard -> merged into one
    assert len(shards(cache)) == 1
    fresh = EmbeddingCache(tmp_path)
    out = fresh.encode(enc, "prompt", [f"x{i}" for i in range(35)] + [f"y{i}" for i in range(5)])
    assert (fresh.hits, fresh.misses) == (40, 0)
    assert torch.equal(out[0], enc._vec("x0"))


def test_warm_lookup_of_5000_inputs_is_fast(tmp_path):
    enc = CountingEncoder(dim=384)
    texts = [f"a short summary number {i} of some reddit post" for i in range(5000)]
    EmbeddingCache(tmp_path).encode(enc, "item", texts)
    t0 = time.perf_counter()
    cache = EmbeddingCache(tmp_path)
    out = cache.encode(enc, "item", texts)
    warm = time.perf_counter() - t0
    assert cache.hits == 5000 and out.shape == (5000, 384)
    assert warm < 2.0, f"warm lookup took {warm:.2f}s"


def test_encode_data_goes_through_the_cache(tmp_path):
    from pal_mm.data import PreferenceData
    from pal_mm.embedding import encode_data

    rows = [{"user_id": "u1", "prompt": "p1", "chosen": "good", "rejected": "bad"},
            {"user_id": "u2", "prompt": "p1", "chosen": "bad", "rejected": "other"}]
    data = PreferenceData.from_rows(rows)
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    first = encode_data(enc, data, cache)
    assert cache.misses == 1 + 3  # one distinct prompt, three distinct items
    second = encode_data(enc, data, EmbeddingCache(tmp_path))
    assert torch.equal(first.chosen, second.chosen) and torch.equal(first.prompt, second.prompt)


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PAL_MM_CACHE", str(tmp_path / "envcache"))
    assert EmbeddingCache().root == tmp_path / "envcache" / "embeddings"
