"""``precomputed``: the data already holds the embeddings (lists of floats)."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Encoder
from .registry import register_encoder


@register_encoder("precomputed")
class PrecomputedEncoder(Encoder):
    """Takes the vectors stored in the data as the embeddings. Prompt and item vectors may
    have different lengths; the dimensions are bound from the data on first use."""

    prompt_modality = "vector"
    item_modality = "vector"
    weights_source = "none: vectors come from the data"
    uses_cache = False  # reading the vectors is cheaper than looking them up

    def __init__(self, prompt_dim: int | None = None, item_dim: int | None = None, batch_size: int = 4096,
                 device: str | None = None, dtype: str = "float32"):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        self.prompt_dim = None if prompt_dim is None else int(prompt_dim)
        self.item_dim = None if item_dim is None else int(item_dim)

    def config(self) -> dict:
        return {"prompt_dim": self.prompt_dim, "item_dim": self.item_dim}

    def fingerprint_parts(self) -> dict:
        return {"name": self.name}

    def _encode_prompt_batch(self, prompts: Sequence[Sequence[float]]) -> torch.Tensor:
        return torch.as_tensor([list(p) for p in prompts], dtype=torch.float32)

    def _encode_item_batch(self, items: Sequence[Sequence[float]]) -> torch.Tensor:
        return torch.as_tensor([list(x) for x in items], dtype=torch.float32)
