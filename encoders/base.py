"""The encoder interface: everything that turns raw inputs into vectors for PAL's heads.

An encoder has two towers that may differ: one for prompts (text, or a vector) and one for
items (text, an image path, or a vector). PAL's heads only ever see the resulting tensors,
so the prompt and item dimensions are allowed to differ.

Contract (what pal_mm relies on):

* ``encode_prompts(prompts) -> Tensor (n, prompt_dim)`` and
  ``encode_items(items) -> Tensor (n, item_dim)``, float32 on CPU, row i for input i.
* ``prompt_dim`` / ``item_dim``: ints, known after construction (``None`` only for the
  ``precomputed`` encoder before it has seen data, see :meth:`Encoder.bind_dims`).
* ``prompt_modality`` / ``item_modality``: one of ``"text"``, ``"image"``, ``"vector"``.
* ``fingerprint()``: a stable string that changes whenever the vectors could change
  (name, weights identity, pooling, max length, dtype, ...). The embedding cache keys on it.
* ``config()``: the keyword arguments that recreate this encoder with
  ``create_encoder(name, **config())``. Saved in a PAL model's ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import torch
from torch import nn

MODALITIES = ("text", "image", "vector")


class Encoder(nn.Module):
    """Base class for all encoders. Subclasses set the class attributes and implement the two
    ``_encode_*`` methods on one batch; batching and dtype handling live here."""

    #: registry name, set by ``register_encoder``
    name: str = "base"
    prompt_modality: str = "text"
    item_modality: str = "text"
    #: shown by ``pal-mm encoders``: where the weights come from, and the widths ("384 / 1280")
    weights_source: str = ""
    dims: str = ""

    def __init__(self, batch_size: int = 32, device: str | None = None, dtype: str = "float32"):
        super().__init__()
        self.batch_size = int(batch_size)
        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype_name = dtype
        self.prompt_dim: int | None = None
        self.item_dim: int | None = None

    # ----- what subclasses implement -------------------------------------------------------
    def _encode_prompt_batch(self, prompts: Sequence[Any]) -> torch.Tensor:  # (batch, prompt_dim)
        raise NotImplementedError

    def _encode_item_batch(self, items: Sequence[Any]) -> torch.Tensor:  # (batch, item_dim)
        raise NotImplementedError

    def config(self) -> dict:
        """Keyword arguments that recreate this encoder (JSON-serialisable)."""
        return {"batch_size": self.batch_size, "dtype": self.dtype_name}

    def fingerprint_parts(self) -> dict:
        """What identifies the vectors this encoder produces; subclasses add weights identity,
        pooling, max length... Batch size and device are deliberately not part of it."""
        cfg = {k: v for k, v in self.config().items() if k not in ("batch_size", "device")}
        return {"name": self.name, **cfg}

    # ----- shared machinery -----------------------------------------------------------------
    def fingerprint(self) -> str:
        blob = json.dumps(self.fingerprint_parts(), sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    def bind_dims(self, prompt_dim: int, item_dim: int) -> None:
        """Called by pal_mm once the data's dimensions are known (only ``precomputed`` needs it)."""
        if self.prompt_dim is None:
            self.prompt_dim = int(prompt_dim)
        if self.item_dim is None:
            self.item_dim = int(item_dim)

    def encode_prompts(self, prompts: Sequence[Any]) -> torch.Tensor:
        """(n,) prompts -> (n, prompt_dim) float32 on CPU."""
        return self._batched(self._encode_prompt_batch, prompts)

    def encode_items(self, items: Sequence[Any]) -> torch.Tensor:
        """(n,) items -> (n, item_dim) float32 on CPU."""
        return self._batched(self._encode_item_batch, items)

    @torch.inference_mode()
    def _batched(self, fn, values: Sequence[Any]) -> torch.Tensor:
        values = list(values)
        if not values:
            dim = self.prompt_dim if fn == self._encode_prompt_batch else self.item_dim
            return torch.zeros(0, dim or 0)
        out = [fn(values[i : i + self.batch_size]).float().cpu() for i in range(0, len(values), self.batch_size)]
        return torch.cat(out)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "prompt_modality": self.prompt_modality,
            "item_modality": self.item_modality,
            "prompt_dim": self.prompt_dim,
            "item_dim": self.item_dim,
            "weights": self.weights_source,
        }
