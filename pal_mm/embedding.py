"""Turn preference data into tensors with an encoder, encoding each distinct input once.

``encode_values`` is the single path from inputs to vectors (training, adaptation, evaluation,
``pal-mm embed``, ``score``, the reward APIs and the TRL reward function all use it): it renders
conversations with :mod:`pal_mm.conversation`'s one rule (the encoder's chat template for prompts,
the reply's text for responses), so the same conversation gives the same vector everywhere, and
takes PIL images wherever image paths are accepted (not through the cache: it keys image files by
their bytes). When a cache is given (see ``encoders.cache``), every distinct input is looked up there
first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from encoders.base import Encoder

from .conversation import chat_tokenizer, is_conversation, is_message, needs_rendering, render_value
from .data import PreferenceData
from .errors import PalMMError

log = logging.getLogger(__name__)


@dataclass
class EncodedPairs:
    """Embeddings of a :class:`PreferenceData`: prompt (n, dp), chosen/rejected (n, di)."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    user_ids: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, idx: Sequence[int]) -> "EncodedPairs":
        t = torch.as_tensor(list(idx), dtype=torch.long)
        return EncodedPairs(self.prompt[t], self.chosen[t], self.rejected[t], [self.user_ids[i] for i in idx])


def _key(value: Any):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    try:
        hash(value)
    except TypeError:  # a PIL image, an array: the same object is encoded once
        return ("object", id(value))
    return value


def is_pil_image(value: Any) -> bool:
    """True for a ``PIL.Image.Image`` (without importing PIL)."""
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(value).__mro__)


def render_values(encoder: Encoder, values: Sequence[Any], tower: str) -> list:
    """``values`` with every conversation rendered for ``tower`` (see :mod:`pal_mm.conversation`)."""
    values = list(values)
    if not any(needs_rendering(v) for v in values):
        return values
    tok = chat_tokenizer(encoder) if tower == "prompt" else None
    return [render_value(v, tower, tok) for v in values]


def render_data(encoder: Encoder, data: PreferenceData) -> PreferenceData:
    """``data`` with its conversations rendered as ``encoder`` sees them (itself when it has none)."""
    if not any(needs_rendering(v) for col in (data.prompts, data.chosen, data.rejected) for v in col):
        return data
    out = data.subset(range(len(data)))
    out.prompts = render_values(encoder, data.prompts, "prompt")
    out.chosen = render_values(encoder, data.chosen, "item")
    out.rejected = render_values(encoder, data.rejected, "item")
    return out


def encode_values(encoder: Encoder, values: Sequence[Any], tower: str, cache=None) -> torch.Tensor:
    """Encode ``values`` with the ``"prompt"`` or ``"item"`` tower; conversations are rendered
    first (:func:`render_values`) and duplicates are encoded once. Returns (len(values), dim) float32."""
    values = render_values(encoder, values, tower)
    index: dict[Any, int] = {}
    unique: list[Any] = []
    rows = []
    for v in values:
        k = _key(v)
        if k not in index:
            index[k] = len(unique)
            unique.append(v)
        rows.append(index[k])
    log.debug("%s tower of %s: %d inputs, %d distinct%s", tower, encoder.name, len(values), len(unique),
              " (through the cache)" if cache is not None and encoder.uses_cache else "")
    if cache is not None and encoder.uses_cache and not any(is_pil_image(v) for v in unique):
        emb = cache.encode(encoder, tower, unique)
    else:
        emb = encoder.encode_prompts(unique) if tower == "prompt" else encoder.encode_items(unique)
    return emb[torch.as_tensor(rows, dtype=torch.long)]


def check_modalities(encoder: Encoder, data: PreferenceData) -> None:
    """The data's column kinds must match what the encoder's towers take."""
    for col, modality in (("prompt", encoder.prompt_modality), ("chosen", encoder.item_modality)):
        kind = data.kinds[col]
        if kind != modality:
            raise PalMMError(
                f"{data.source}: column '{col}' holds {kind} values but encoder {encoder.name!r} "
                f"expects {modality} (choose an encoder for {kind} inputs; see `pal-mm encoders`)"
            )


def encode_data(encoder: Encoder, data: PreferenceData, cache=None) -> EncodedPairs:
    """Encode prompts and both items of every comparison."""
    check_modalities(encoder, data)
    prompt = encode_values(encoder, data.prompts, "prompt", cache)
    items = encode_values(encoder, list(data.chosen) + list(data.rejected), "item", cache)
    n = len(data)
    encoder.bind_dims(prompt.shape[1], items.shape[1])
    if prompt.shape[1] != encoder.prompt_dim or items.shape[1] != encoder.item_dim:
        raise PalMMError(
            f"{data.source}: embeddings have widths prompt={prompt.shape[1]}, item={items.shape[1]} "
            f"but the model expects prompt={encoder.prompt_dim}, item={encoder.item_dim}"
        )
    return EncodedPairs(prompt, items[:n], items[n:], list(data.user_ids))


def _single(value: Any) -> bool:
    """One input (not a list of inputs): text, a path, a PIL image, a conversation or one message."""
    return isinstance(value, (str, os.PathLike)) or is_pil_image(value) or is_conversation(value) or is_message(value)


def broadcast_inputs(prompts: Any, responses: Any) -> tuple[list, list]:
    """Pair prompts with responses for scoring: a single prompt (text, path, vector or
    conversation) is repeated for every response; otherwise one prompt per response. A single
    response (text, path, PIL image, conversation) is a list of one."""
    if _single(responses):
        responses = [responses]
    responses = list(responses)
    if _single(prompts) or (prompts and isinstance(prompts, (list, tuple))
                            and not isinstance(prompts[0], (str, list, tuple, os.PathLike))):
        prompts = [prompts] * len(responses)
    prompts = list(prompts)
    if len(prompts) == 1 and len(responses) > 1:
        prompts = prompts * len(responses)
    if len(prompts) != len(responses):
        raise PalMMError(f"got {len(prompts)} prompts for {len(responses)} responses")
    return prompts, responses
