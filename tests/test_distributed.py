"""Extraction across processes (what `accelerate launch` / torchrun give): two gloo processes share
the inputs of one cache.encode call, every process ends with every vector, equal to a single
process's, and the cache stores them once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from encoders.base import Encoder
from encoders.cache import EmbeddingCache


class CountingEncoder(Encoder):
    """text -> a deterministic 4-d vector; remembers which texts this process encoded."""

    prompt_modality = item_modality = "text"

    def __init__(self):
        super().__init__(batch_size=8, device="cpu")
        self.prompt_dim = self.item_dim = 4
        self.seen: list[str] = []

    def _encode_prompt_batch(self, texts):
        self.seen += list(texts)
        return torch.tensor([[len(t), sum(map(ord, t)) % 97, t.count("a"), 1.0] for t in texts])

    _encode_item_batch = _encode_prompt_batch


TEXTS = [f"text number {i} " + "a" * (i % 7) for i in range(40)] + ["text number 3 aaa"] * 3


def _worker(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        enc = CountingEncoder()
        enc.name = "counting"
        vectors = EmbeddingCache(root, progress=False).encode(enc, "prompt", TEXTS)
        Path(out, f"{rank}.json").write_text(json.dumps({"vectors": vectors.tolist(), "seen": enc.seen}))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_share_the_encoding(tmp_path):
    root, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(root), str(out)), nprocs=2, start_method="spawn")
    single = CountingEncoder()
    single.name = "counting"
    expected = EmbeddingCache(tmp_path / "single", progress=False).encode(single, "prompt", TEXTS)
    results = [json.loads((out / f"{r}.json").read_text()) for r in range(2)]
    for res in results:
        assert torch.equal(torch.tensor(res["vectors"]), expected)
    seen = [set(r["seen"]) for r in results]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])  # each distinct text encoded by one process only
    assert seen[0] | seen[1] == set(TEXTS)
    again = CountingEncoder()
    again.name = "counting"
    cache = EmbeddingCache(root, progress=False)
    assert torch.equal(cache.encode(again, "prompt", TEXTS), expected) and again.seen == []  # stored once, by rank 0
    assert cache.stats()["hits"] == len(set(TEXTS))
