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
  ``create_encoder(name, **config())``. Saved in a PAL model's ``config.json``, so it must
  never hold an option that enables code execution (``trust_remote_code`` is passed
  explicitly at load time, see ``encoders.registry.encoder_from_config``).
* ``uses_cache``: False when encoding is reading the data (``precomputed``): callers skip the
  embedding cache.
* ``base_model`` (Hub repo id of the weights, or None) and ``card_data()``: what a model card
  says about the encoder; ``base_model_from_config(config)`` gives the same id without loading.

Image encoders (``item_modality = "image"``) also implement

* ``encode_pixels(pixels (B, 3, H, W) float in [0, 1]) -> (B, item_dim)``: the item tower on
  decoded pixels, differentiable (preprocessing in torch, see ``encoders.pixels``), on the
  encoder's device; the same vectors as ``encode_items`` on the same image up to resampling.

Optional, for encoder fine-tuning (``pal_mm.finetune``):

* ``embed(values, tower) -> Tensor (n, dim)``: the same vectors as ``encode_*`` but on the
  encoder's device and *with* autograd (no inference mode, no cache).
* ``layer_stacks() -> {tower: [block, ...]}``: the transformer/conv blocks of each backbone,
  bottom to top (one entry for a shared text backbone, two for CLIP-style models);
  :meth:`set_trainable` uses it to unfreeze only the top N blocks of each.
* ``token_states(texts) -> (states (n, t, d), mask (n, t), ids (n, t))``: per-token hidden
  states of a causal LM, right-padded, for PAL-B's token-level loss.

Encoders are *frozen* after construction: every parameter has ``requires_grad=False`` and the
module stays in eval mode even when a parent calls ``.train()`` (no dropout in a frozen
backbone). :meth:`set_trainable` is the only way to unfreeze parameters; frozen blocks of a
partly trainable encoder stay in eval mode as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import EncoderError


class Encoder(nn.Module):
    """Base class for all encoders. Subclasses set the class attributes and implement the two
    ``_encode_*`` methods on one batch; batching and dtype handling live here."""

    #: registry name, set by ``register_encoder``
    name: str = "base"
    prompt_modality: str = "text"
    item_modality: str = "text"
    #: one line shown by ``pal-mm encoders``: where the weights come from
    weights_source: str = ""
    #: shown by ``pal-mm encoders``: "prompt/item" widths, or "" when they depend on the weights
    dims: str = ""
    #: False when "encoding" is reading vectors from the data: nothing worth caching
    uses_cache: bool = True
    #: the Hub repo id of the weights when it is fixed (packaged models), else None
    hub_id: str | None = None
    #: extra model-card tags (e.g. "sentence-transformers")
    card_tags: tuple[str, ...] = ()

    def __init__(self, batch_size: int = 32, device: str | None = None, dtype: str = "float32"):
        super().__init__()
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            kind = torch.device(self.device_name).type
        except (RuntimeError, TypeError):
            raise EncoderError(f"device must be a torch device such as cpu, cuda or cuda:1, got {device!r}") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise EncoderError(f"device {device!r} asked for, but CUDA is not available here (use cpu)")
        kind = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if not isinstance(kind, torch.dtype) or not kind.is_floating_point:
            raise EncoderError(f"dtype must be a float type such as float32, bfloat16 or float16, got {dtype!r}")
        self.dtype_name = dtype
        self.prompt_dim: int | None = None
        self.item_dim: int | None = None
        self._weights_changed = False  # fine-tuned / loaded weights: fingerprint hashes them
        self._weights_digest: str | None = None

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

    # ----- model-card data ------------------------------------------------------------------
    @classmethod
    def base_model_from_config(cls, config: dict) -> str | None:
        """The Hub repo id of the weights an encoder built from ``config`` loads, or None (local
        files, no weights). Default: the class's ``hub_id``."""
        return cls.hub_id

    @property
    def base_model(self) -> str | None:
        """Hub repo id of this encoder's weights (a model card's ``base_model``), or None."""
        return type(self).base_model_from_config(self.config())

    def card_data(self) -> dict:
        """What a model card says about this encoder (JSON-serialisable)."""
        modality_tag = {"image": "text-to-image", "text": "text", "vector": "embeddings"}.get(self.item_modality)
        return {"encoder": self.name, "base_model": self.base_model, "weights": self.weights_source,
                "prompt_modality": self.prompt_modality, "item_modality": self.item_modality,
                "prompt_dim": self.prompt_dim, "item_dim": self.item_dim,
                "tags": [t for t in (modality_tag, *self.card_tags) if t]}

    # ----- progress ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def progress_hook(self, callback: Callable[[int], None] | None) -> Iterator[None]:
        """While active, ``callback(n)`` is called after each batch of ``n`` inputs is encoded
        (the embedding cache draws its progress bar with it)."""
        old = self.__dict__.get("_progress_callback")
        self.__dict__["_progress_callback"] = callback
        try:
            yield
        finally:
            self.__dict__["_progress_callback"] = old

    def _report_progress(self, n: int) -> None:
        callback = self.__dict__.get("_progress_callback")
        if callback is not None:
            callback(n)

    # ----- shared machinery -----------------------------------------------------------------
    def fingerprint(self) -> str:
        parts = dict(self.fingerprint_parts())
        if self.weights_changed:  # fine-tuned weights: the vectors are those of these weights
            if any(p.requires_grad for p in self.parameters()):
                self._weights_digest = None  # still trainable: the weights may have moved since
            parts["weights_sha256"] = self.weights_digest()
        blob = json.dumps(parts, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def weights_digest(self) -> str:
        """sha256 over all parameters and buffers (computed once per weight change)."""
        if self._weights_digest is None:
            h = hashlib.sha256()
            for k, v in sorted(self.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    @property
    def weights_changed(self) -> bool:
        """True once the weights differ from what ``create_encoder`` loads (fine-tuned, or loaded
        from a model's encoder.safetensors), or while any parameter is trainable."""
        return self._weights_changed or any(p.requires_grad for p in self.parameters())

    def mark_weights_changed(self) -> None:
        """Call after changing weights (fine-tuning); the fingerprint then hashes the weights."""
        self._weights_changed = True
        self._weights_digest = None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.mark_weights_changed()
        return result

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype_name)

    @property
    def device(self) -> torch.device:
        """Where the weights are now (accelerate may have moved them)."""
        for p in self.parameters():
            return p.device
        return torch.device(self.device_name)

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

    def encode(self, values: Sequence[Any], tower: str) -> torch.Tensor:
        """``encode_prompts`` for ``tower="prompt"``, ``encode_items`` for ``"item"``."""
        if tower not in ("prompt", "item"):
            raise ValueError(f"tower must be 'prompt' or 'item', got {tower!r}")
        return self.encode_prompts(values) if tower == "prompt" else self.encode_items(values)

    def tower_dim(self, tower: str) -> int | None:
        return self.prompt_dim if tower == "prompt" else self.item_dim

    @torch.inference_mode()
    def _batched(self, fn, values: Sequence[Any]) -> torch.Tensor:
        values = list(values)
        if not values:
            dim = self.prompt_dim if fn == self._encode_prompt_batch else self.item_dim
            return torch.zeros(0, dim or 0)
        was_training = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(values), self.batch_size):
                out.append(fn(values[i : i + self.batch_size]).float().cpu())
                self._report_progress(len(out[-1]))
        finally:
            self.train(was_training)
        return torch.cat(out)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float pixels in [0, 1] -> (B, item_dim) on the encoder's device, with
        gradients (image encoders only; see ``encoders.pixels``)."""
        if self.item_modality != "image":
            raise EncoderError(f"encoder {self.name!r} encodes {self.item_modality} items, not images")
        raise EncoderError(f"encoder {self.name!r} has no differentiable pixel path: give it an "
                           "encode_pixels(pixels) method ((B, 3, H, W) in [0, 1] -> (B, item_dim))")

    @torch.inference_mode()
    def _batched_by_length(self, fn, values: Sequence[Any], lengths: Sequence[int]) -> torch.Tensor:
        """``fn`` on batches of ``values`` taken longest first (little padding), (n, dim) float32
        on CPU in input order."""
        order = sorted(range(len(values)), key=lambda i: -lengths[i])
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for s in range(0, len(order), self.batch_size):
                batch = [values[i] for i in order[s : s + self.batch_size]]
                chunks.append(fn(batch).float().cpu())
                self._report_progress(len(batch))
        finally:
            self.train(was_training)
        out = torch.empty(len(values), chunks[0].shape[1])
        out[torch.as_tensor(order)] = torch.cat(chunks)
        return out

    # ----- fine-tuning hooks ----------------------------------------------------------------
    def embed(self, values: Sequence[Any], tower: str) -> torch.Tensor:
        """(n,) inputs -> (n, dim) on the encoder's device, differentiable (one batch, no cache)."""
        fn = self._encode_prompt_batch if tower == "prompt" else self._encode_item_batch
        return fn(list(values))

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        """Blocks of each backbone, bottom to top (for ``set_trainable(n)``)."""
        raise EncoderError(f"encoder {self.name!r} does not expose its layers; it can only be fine-tuned whole")

    def token_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded per-token states (n, t, d), attention mask (n, t) and ids (n, t)."""
        raise EncoderError(f"encoder {self.name!r} has no per-token states (the token-level loss needs a causal LM, e.g. hf-text or smollm2)")

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def freeze(self) -> "Encoder":
        """``requires_grad=False`` everywhere and eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def set_trainable(self, top_layers: int | None = None) -> int:
        """Unfreeze the whole encoder (``None``) or only the top ``top_layers`` blocks of each
        backbone (0 keeps it frozen); everything else gets ``requires_grad=False``.
        Returns the number of trainable parameters."""
        self.freeze()
        modules: list[nn.Module] = []
        if top_layers is None:
            modules = [self]
        elif top_layers:
            for tower, blocks in self.layer_stacks().items():
                if top_layers < 0 or top_layers > len(blocks):
                    raise EncoderError(f"--train-layers must be between 0 and {len(blocks)} for the {tower} backbone "
                                       f"of encoder {self.name!r}, got {top_layers}")
                modules += list(blocks)[len(blocks) - top_layers:]
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(True)
        return self.trainable_parameters()

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (no dropout), whatever its parent asks. When only
        some blocks are trainable, every fully frozen submodule stays in eval mode too (no
        dropout, no BatchNorm statistics updates): frozen parts behave exactly as at inference."""
        trainable = any(p.requires_grad for p in self.parameters())
        super().train(mode and trainable)
        if mode and trainable:
            for m in self.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def describe(self) -> dict:
        return {
            "name": self.name,
            "prompt_modality": self.prompt_modality,
            "item_modality": self.item_modality,
            "prompt_dim": self.prompt_dim,
            "item_dim": self.item_dim,
            "weights": self.weights_source,
        }
