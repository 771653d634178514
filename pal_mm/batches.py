"""The batches of a training run: index lists from a DataLoader, turned into slices of the embedding
tensors already in memory (frozen encoder) or into raw inputs (fine-tuned encoder)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset

from .data import PreferenceData
from .embedding import EncodedPairs


class PairBatches(Dataset):
    """How a run's batches are made: slices of embedding tensors, or raw inputs for the encoder.

    A map-style dataset whose ``__getitems__`` takes a whole batch of indices, so the DataLoader
    (shuffling, and sharding over processes once accelerate prepares it) hands over index lists and a
    frozen-encoder batch is four tensor gathers, with no per-row fetch or collate."""

    def __init__(self, frozen: EncodedPairs, raw: PreferenceData | None, user_idx: torch.Tensor):
        self.raw = raw
        self.user_idx = user_idx
        self.tensors = (frozen.prompt, frozen.chosen, frozen.rejected, user_idx)

    def __len__(self) -> int:
        return len(self.user_idx)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        if self.raw is None:  # gathered by slicing whole tensors
            rows = torch.tensor(idx, dtype=torch.long)
            return tuple(t.index_select(0, rows) for t in self.tensors)
        return list(idx)

    def epoch_slices(self, generator: torch.Generator, batch_size: int, device) -> Iterator[tuple]:
        """One epoch of a single-process run with a frozen encoder: the pairs shuffled once (one
        ``randperm`` drawn from ``generator``), then consecutive slices of ``batch_size`` (the last one
        may be shorter), each moved to ``device``. Cheaper per step than a DataLoader, which the
        multi-process and fine-tuning paths keep (accelerate shards it over processes)."""
        perm = torch.randperm(len(self), generator=generator)
        shuffled = [t.index_select(0, perm) for t in self.tensors]
        for s in range(0, len(perm), batch_size):
            yield tuple(t[s:s + batch_size].to(device, non_blocking=True) for t in shuffled)

    @staticmethod
    def collate(batch):
        return batch  # __getitems__ already made the batch

    def unpack(self, batch, device) -> tuple:
        if self.raw is None:
            return batch
        d = self.raw
        return ([d.prompts[i] for i in batch], [d.chosen[i] for i in batch], [d.rejected[i] for i in batch],
                self.user_idx[batch].to(device))
