"""Shared fixtures: small ground-truth preference data written as canonical jsonl files."""

from __future__ import annotations

import pytest
import torch

from data_scripts.synthetic import make_pairs, make_population
from encoders.atomic import write_jsonl


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own embedding cache and model cache folder."""
    monkeypatch.setenv("PAL_MM_CACHE", str(tmp_path_factory.mktemp("pal_mm_cache")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and OpenMP spin-waiting makes them up to ~40x
    slower when the CPU is shared with other processes. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """K* = 2 ground truth, 8-d items: 16 seen users (train/val/test) and 6 new users."""
    out = tmp_path_factory.mktemp("synthetic")
    protos, w = make_population(k_true=2, dim=8, num_users=22, seed=0, alpha=0.2)
    write_jsonl(out / "train.jsonl", make_pairs(protos, w[:16], 80, seed=1, prompt_dim=4))
    write_jsonl(out / "val.jsonl", make_pairs(protos, w[:16], 20, seed=2, prompt_dim=4))
    write_jsonl(out / "test.jsonl", make_pairs(protos, w[:16], 40, seed=3, prompt_dim=4))
    write_jsonl(out / "new.jsonl", make_pairs(protos, w[16:], 60, seed=4, prompt_dim=4, user_prefix="new"))
    return out
