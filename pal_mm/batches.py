"""The batches of a training run: index lists from a DataLoader, turned into slices of the embedding
tensors already in memory (frozen encoder) or into raw inputs (fine-tuned encoder)."""

from __future__ import annotations

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

    @staticmethod
    def collate(batch):
        return batch  # __getitems__ already made the batch

    def unpack(self, batch, device) -> tuple:
        if self.raw is None:
            return batch
        d = self.raw
        return ([d.prompts[i] for i in batch], [d.chosen[i] for i in batch], [d.rejected[i] for i in batch],
                self.user_idx[batch].to(device))
