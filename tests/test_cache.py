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


# ----- leftovers of killed runs ---------------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_temp_shards_of_killed_runs_are_removed(tmp_path):
    from encoders.atomic import temp_prefix

    enc = CountingEncoder()
    EmbeddingCache(tmp_path).encode(enc, "prompt", ["a"])
    tower = shards(EmbeddingCache(tmp_path))[0].parent
    host_pid_prefix = temp_prefix("shard-x.safetensors")  # .shard-x.safetensors.<host>.<pid>.
    host = host_pid_prefix.split(".")[-3]
    dead = tower / f".shard-1.safetensors.{host}.{_dead_pid()}.abc123.tmp"  # writer was killed
    live = tower / f".shard-2.safetensors.{host}.{os.getppid()}.abc123.tmp"  # a live writer (our parent)
    mine = tower / f"{temp_prefix('shard-3.safetensors')}abc123.tmp"  # this process
    other_host = tower / f".shard-4.safetensors.otherhost.{_dead_pid()}.abc123.tmp"  # cannot tell: age decides
    old = tower / ".shard-5.safetensors.k2j4h5g6.tmp"  # older pal-mm: no owner in the name
    fresh_unknown = tower / ".shard-6.safetensors.q8w7e6r5.tmp"
    for p in (dead, live, mine, other_host, old, fresh_unknown):
        p.write_bytes(b"partial shard")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    os.utime(live, (long_ago, long_ago))  # old but its writer is alive: kept
    cache = EmbeddingCache(tmp_path)
    assert torch.equal(cache.encode(enc, "prompt", ["a"])[0], enc._vec("a"))
    assert cache.leftovers == 2 and not dead.exists() and not old.exists()
    assert live.exists() and mine.exists() and other_host.exists() and fresh_unknown.exists()
    assert "2 leftover temporary file(s) of killed runs removed" in cache.summary()
    os.utime(other_host, (long_ago, long_ago))
    again = EmbeddingCache(tmp_path)
    again.encode(enc, "prompt", ["a"])
    assert again.leftovers == 1 and not other_host.exists()


def test_a_killed_writer_leaves_only_a_temp_file_that_the_next_run_removes(tmp_path):
    """A real process killed in the middle of writing a shard (after the temp file is created,
    before the rename)."""
    import signal
    import subprocess
    import sys

    script = (
        "import os, time, sys\n"
        "import encoders.atomic as atomic\n"
        "real = os.replace\n"
        "def stuck(src, dst):\n"
        "    if not os.path.basename(dst).startswith('shard-'):\n"
        "        return real(src, dst)\n"
        "    print('writing', flush=True); time.sleep(60)\n"
        "os.replace = stuck\n"
        "from tests.test_cache import CountingEncoder\n"
        "from encoders.cache import EmbeddingCache\n"
        f"EmbeddingCache({str(tmp_path)!r}).encode(CountingEncoder(), 'prompt', ['x', 'y'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == b"writing"  # the shard is written, not yet renamed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    temps = list(tmp_path.rglob(".shard-*.tmp"))
    assert len(temps) == 1 and not shards(EmbeddingCache(tmp_path))
    cache = EmbeddingCache(tmp_path)
    out = cache.encode(CountingEncoder(), "prompt", ["x", "y"])
    assert cache.leftovers == len(temps) and not list(tmp_path.rglob(".*.tmp"))
    assert torch.equal(out[1], CountingEncoder()._vec("y"))


# ----- hostile shards and unusable folders ----------------------------------------------------
def _forge_shard(path, keys, emb, **meta_changes):
    """A well-formed shard with correct checksums (what a hostile writer can produce)."""
    import numpy as np
    from safetensors.numpy import save

    from encoders.shards import FORMAT, checksum

    meta = {"format": FORMAT, "count": str(len(keys)), "dim": str(emb.shape[1]),
            "keys_sha256": checksum(keys), "emb_sha256": checksum(emb)}
    meta.update(meta_changes)
    path.write_bytes(save({"keys": np.ascontiguousarray(keys), "emb": np.ascontiguousarray(emb)}, metadata=meta))


@pytest.mark.parametrize("attack", ["nan", "wrong-width", "huge-count", "directory", "not-a-number"])
def test_hostile_shards_are_reported_once_and_recomputed(tmp_path, attack):
    import numpy as np

    enc = CountingEncoder()
    texts = ["t0", "t1", "t2"]
    good = EmbeddingCache(tmp_path).encode(enc, "prompt", texts)
    (shard,) = shards(EmbeddingCache(tmp_path))
    keys = np.stack([np.frombuffer(EmbeddingCache(tmp_path).key(t, "text"), dtype=np.uint8) for t in texts])
    shard.unlink()
    forged = shard.with_name("shard-99999999999999999999-forged00.safetensors")
    if attack == "nan":
        _forge_shard(forged, keys, np.full((3, 6), np.nan, dtype=np.float32))
    elif attack == "wrong-width":
        _forge_shard(forged, keys, np.ones((3, 5), dtype=np.float32))
    elif attack == "huge-count":
        _forge_shard(forged, keys, np.ones((3, 6), dtype=np.float32), count="9" * 40)
    elif attack == "not-a-number":
        _forge_shard(forged, keys, np.ones((3, 6), dtype=np.float32), dim="1e309")
    else:
        forged.mkdir()  # cannot be read, cannot be unlinked: skipped, reported once
    cache = EmbeddingCache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cache.encode(enc, "prompt", texts)
        second = cache.encode(enc, "prompt", texts + ["t3"])
    assert torch.equal(first, good) and torch.equal(second[:3], good)
    reports = [str(w.message) for w in caught if "corrupt" in str(w.message)]
    assert len(reports) == 1 and cache.corrupt == 1 and "\n" not in reports[0], reports
    assert forged.exists() == (attack == "directory")


def test_unwritable_cache_warns_once_and_still_encodes(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    enc = CountingEncoder()
    cache = EmbeddingCache(blocker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = cache.encode(enc, "prompt", ["a", "b"])
        b = cache.encode(enc, "item", ["c"])
    assert torch.equal(a[1], enc._vec("b")) and torch.equal(b[0], enc._vec("c"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "cannot write under" in messages[0] and "--no-cache" in messages[0]


def test_bad_inputs_give_encoder_errors(tmp_path):
    from encoders.errors import EncoderError

    cache = EmbeddingCache(tmp_path)
    with pytest.raises(EncoderError, match="cannot cache a vector"):
        cache.key([[1.0, 2.0], [3.0]], "vector")
    with pytest.raises(EncoderError, match="cannot read image file"):
        cache.key(str(tmp_path), "image")  # a directory
    with pytest.raises(EncoderError, match="image file not found"):
        cache.key(str(tmp_path / "nope.png"), "image")
    assert len(cache.key("lone \udc80 surrogate", "text")) == 32


# ----- progress -------------------------------------------------------------------------------
def test_progress_bar_counts_encoded_inputs(tmp_path, capsys, monkeypatch):
    import encoders.cache as cache_module

    bars = []
    real = cache_module.progress_bar
    monkeypatch.setattr(cache_module, "progress_bar", lambda **kw: bars.append((real(**kw), kw["progress"])) or bars[-1][0])
    enc = CountingEncoder()
    EmbeddingCache(tmp_path, progress=True, chunk_size=40).encode(enc, "prompt", [f"p{i}" for i in range(100)])
    assert [(b.n, b.total, shown) for b, shown in bars] == [(100, 100, True)]  # counted batch by batch
    assert "encoding prompts (counting)" in capsys.readouterr().err
    EmbeddingCache(tmp_path).encode(enc, "prompt", [f"p{i}" for i in range(100)])  # all cached: no bar
    assert len(bars) == 1
    EmbeddingCache(tmp_path / "quiet", progress=False).encode(enc, "prompt", ["q"])
    assert capsys.readouterr().err == ""
    seen = []
    with enc.progress_hook(seen.append):
        enc.encode_prompts([f"r{i}" for i in range(40)])  # batch size 16
    assert seen == [16, 16, 8]
