"""The thread policy for small heads (pal_mm.threads) and the training batches (pal_mm.batches)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from encoders import create_encoder
from pal_mm.adaptation import adapt
from pal_mm.batches import PairBatches
from pal_mm.config import AdaptConfig, PALConfig, TrainConfig
from pal_mm.embedding import EncodedPairs
from pal_mm.errors import PalMMError
from pal_mm.threads import ENV, WORK_LIMIT, for_head, head_step_work, head_threads, torch_threads
from pal_mm.training import fit


def _pairs(n, users, dim, seed, prefix="u"):
    g = torch.Generator().manual_seed(seed)
    return EncodedPairs(torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g),
                        [f"{prefix}{i % users}" for i in range(n)])


def test_policy_small_heads_one_thread_large_unchanged(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert head_threads(head_step_work(64, 1024, 1024, 1024, 2)) == 1
    assert head_threads(WORK_LIMIT) is None and head_threads(None) is None
    monkeypatch.setenv(ENV, "3")
    assert head_threads(10) == 3
    monkeypatch.setenv(ENV, "0")
    assert head_threads(10) is None
    monkeypatch.setenv(ENV, "two")
    with pytest.raises(PalMMError, match=ENV):
        head_threads(10)


def test_threads_restored_after_block_and_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with for_head(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_fit_and_adapt_leave_torch_threads_as_they_were(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        enc = create_encoder("precomputed")
        model = fit(_pairs(200, 4, 8, 0), _pairs(40, 4, 8, 1), enc, PALConfig(k=2),
                    TrainConfig(epochs=1, progress=False, cpu=True))
        assert torch.get_num_threads() == 2
        adapt(model, _pairs(40, 2, 8, 2, prefix="new"), AdaptConfig(prior=False, steps=5))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_batches_are_the_pairs_of_the_former_per_sample_loader():
    data = _pairs(203, 5, 3, 0)
    uidx = torch.arange(203) % 5
    batches = PairBatches(data, None, uidx)
    tensors = (data.prompt, data.chosen, data.rejected, uidx)
    before = DataLoader(range(203), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7),
                        collate_fn=lambda idx: tuple(t[torch.as_tensor(idx)] for t in tensors))
    now = DataLoader(batches, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(7),
                     collate_fn=batches.collate)
    old, new = list(before), list(now)
    assert len(old) == len(new) == 13
    for a, b in zip(old, new):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("model_type", ["pal-b", "pal-a"])
def test_adapt_batched_equals_per_user(model_type):
    """All new users in one call = one call per user, up to float rounding (batched reductions and
    thread counts change the summation order, so never bit-equality)."""
    enc = create_encoder("precomputed")
    model = fit(_pairs(300, 6, 8, 0), _pairs(60, 6, 8, 1), enc, PALConfig(model_type=model_type, k=2),
                TrainConfig(epochs=2, progress=False, cpu=True))
    new = _pairs(60, 3, 8, 5, prefix="new")
    for cfg in (AdaptConfig(), AdaptConfig(prior=False, steps=50)):
        together = adapt(copy.deepcopy(model), new, cfg)
        for u in sorted(set(new.user_ids)):
            keep = [i for i, v in enumerate(new.user_ids) if v == u]
            one = EncodedPairs(new.prompt[keep], new.chosen[keep], new.rejected[keep], [u] * len(keep))
            alone = adapt(copy.deepcopy(model), one, cfg)
            assert together.user_weights(u) == pytest.approx(alone.user_weights(u), abs=2e-3)
