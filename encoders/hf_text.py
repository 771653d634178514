"""``hf-text``: any transformers text model (Hub id or local directory), pooled to one vector.

The same backbone serves the prompt and the item tower. Inputs are tokenised once without
padding, sorted by length, and each batch is padded only to its own longest sequence
(dynamic padding); rows come back in input order. For causal LMs, position ids are derived from
the attention mask, so left- and right-padded batches give the same vectors.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import EncoderError

from .assets import directory_identity, hub_repo_id, quiet_transformers, require_module
from .base import Encoder
from .pooling import POOLINGS, pool, position_ids
from .registry import register_encoder
from .trust import check_local, loading, transformers_code


def _is_causal(config) -> bool:
    """Decoder-only LM? By saved architecture name, else by model type (causal-only types)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def find_layer_list(model: nn.Module) -> list[nn.Module]:
    """A transformers model's blocks, bottom to top: the largest ModuleList holding one entry
    per hidden layer (``layers``, ``encoder.layer``, ``h``... whatever the architecture calls it)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best, best_size = None, -1
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and (n is None or len(m) == n):
            size = sum(p.numel() for p in m.parameters())
            if size > best_size:
                best, best_size = m, size
    if best is None:
        raise EncoderError(f"could not find the layer stack of {type(model).__name__}; fine-tune it whole (no --train-layers)")
    return list(best)


@register_encoder("hf-text")
class HFTextEncoder(Encoder):
    """A transformers model as a text encoder for both towers.

    Args:
        model_name_or_path: Hub id (needs network the first time) or a local directory.
        pooling: ``last-token`` (causal LMs; the PAL paper's OPT setting), ``mean`` or ``cls``.
        max_length: truncation length in tokens (batches are padded dynamically, never to it).
        normalize: L2-normalise the pooled vectors.
        padding_side: ``right`` or ``left`` for causal LMs (both give the same vectors); encoder
            models are always padded on the right.
        append_eos: append the tokenizer's EOS token to every text (last-token reward models).
        trust_remote_code: let a model that ships its own Python code run it (never saved in
            ``config()``; pass it again when loading, see ``encoders.trust``).
    """

    weights_source = "any transformers model: Hub id or local directory (model_name_or_path=...)"
    dims = "hidden size"

    def __init__(self, model_name_or_path: str | os.PathLike | None = None, pooling: str | None = None,
                 max_length: int = 512, normalize: bool = False, padding_side: str = "right",
                 append_eos: bool = False, batch_size: int = 32, device: str | None = None,
                 dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        if not model_name_or_path:
            raise EncoderError("hf-text needs model_name_or_path=<Hub id or local directory> (--encoder-arg model_name_or_path=...)")
        if padding_side not in ("left", "right"):
            raise EncoderError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        transformers = require_module("transformers")
        self.model_name_or_path = str(model_name_or_path)
        local = Path(self.model_name_or_path).expanduser()
        self.is_local = local.is_dir()
        if self.is_local:
            self.model_name_or_path = str(local.resolve())
        elif os.sep in self.model_name_or_path and self.model_name_or_path.startswith((".", "/", "~")):
            raise EncoderError(f"hf-text: model directory not found: {self.model_name_or_path}")
        trust_remote_code = bool(trust_remote_code)
        if self.is_local:
            check_local("hf-text", self.model_name_or_path, transformers_code(self.model_name_or_path), trust_remote_code)
        with loading("hf-text", self.model_name_or_path, trust_remote_code), quiet_transformers():
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_name_or_path, trust_remote_code=trust_remote_code)
            self.model = transformers.AutoModel.from_pretrained(self.model_name_or_path, dtype=self.torch_dtype,
                                                                trust_remote_code=trust_remote_code)
        self.trust_remote_code = trust_remote_code  # a load-time choice: not part of config()
        self.causal = _is_causal(self.model.config)
        self.pooling = pooling or ("last-token" if self.causal else "mean")
        if self.pooling not in POOLINGS:
            raise EncoderError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        self.max_length = int(max_length)
        self.normalize = bool(normalize)
        self.padding_side = padding_side
        self.append_eos = bool(append_eos)
        self.pad_id = self._resolve_pad_id()
        # never feed more tokens than the model has positions for, whatever max_length says
        self._position_limit = int(getattr(self.model.config, "max_position_embeddings", None) or 1 << 30)
        # decoder LMs number positions 0..t-1 regardless of padding: give them mask-derived
        # positions so left padding changes nothing. Encoder models (BERT, RoBERTa...) compute
        # their own (RoBERTa offsets by its pad index) and are always padded on the right.
        self._takes_position_ids = self.causal and "position_ids" in inspect.signature(self.model.forward).parameters
        self.model.to(self.device_name)
        self.freeze()
        self.prompt_dim = self.item_dim = int(self.encode_prompts(["a"]).shape[1])

    # ----- tokenisation -------------------------------------------------------------------
    def _resolve_pad_id(self) -> int:
        """The tokenizer's pad id; without one, EOS (or UNK, or 0). Pad positions are always
        masked, so any id works; the tokenizer itself is left untouched."""
        tok = self.tokenizer
        for tid in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if tid is not None:
                return int(tid)
        return 0

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (EOS appended if requested)."""
        for t in texts:
            if not isinstance(t, str):
                raise EncoderError(f"encoder {self.name!r} takes text, got {type(t).__name__}")
        limit = min(self.max_length, self._position_limit) - (1 if self.append_eos else 0)
        ids = self.tokenizer(list(texts), truncation=True, max_length=limit, add_special_tokens=True)["input_ids"]
        if self.append_eos:
            eos = self.tokenizer.eos_token_id
            if eos is None:
                raise EncoderError(f"append_eos=True but the tokenizer of {self.model_name_or_path} has no EOS token")
            ids = [x + [eos] for x in ids]
        return [x if x else [self.pad_id] for x in ids]

    def pad(self, ids: Sequence[Sequence[int]], side: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad to the longest sequence: (b, t) input ids and (b, t) attention mask."""
        side = side or (self.padding_side if self.causal else "right")
        t = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), t), dtype=torch.long)
        for i, x in enumerate(ids):
            sl = slice(t - len(x), t) if side == "left" else slice(0, len(x))
            input_ids[i, sl] = torch.as_tensor(x, dtype=torch.long)
            mask[i, sl] = 1
        return input_ids, mask

    # ----- forward --------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(b, t) ids and mask -> (b, t, d) last hidden states (on the model's device)."""
        device = self.device
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if self._takes_position_ids:
            kwargs["position_ids"] = position_ids(mask).to(device)
        return self.model(**kwargs).last_hidden_state

    def _encode_ids(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        input_ids, mask = self.pad(ids)
        hidden = self.hidden_states(input_ids, mask)
        return pool(hidden, mask.to(hidden.device), self.pooling, self.normalize)

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:  # (b, d), differentiable
        return self._encode_ids(self.tokenize(texts))

    _encode_prompt_batch = _encode_text_batch
    _encode_item_batch = _encode_text_batch

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(n,) texts -> (n, d) float32 on CPU; batches sorted by length, order restored."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.prompt_dim or 0)
        ids = self.tokenize(texts)
        return self._batched_by_length(self._encode_ids, ids, [len(x) for x in ids])

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(prompts)

    def encode_items(self, items: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(items)

    # ----- fine-tuning hooks --------------------------------------------------------------
    def token_states(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded per-token states (n, t, d), attention mask (n, t) and ids (n, t)."""
        input_ids, mask = self.pad(self.tokenize(texts), side="right")
        hidden = self.hidden_states(input_ids, mask)
        return hidden, mask.to(hidden.device), input_ids.to(hidden.device)

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        return {"text": find_layer_list(self.model)}

    # ----- identity -------------------------------------------------------------------------
    def config(self) -> dict:
        return {"model_name_or_path": self.model_name_or_path, "pooling": self.pooling, "max_length": self.max_length,
                "normalize": self.normalize, "padding_side": self.padding_side, "append_eos": self.append_eos,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    @classmethod
    def base_model_from_config(cls, config: dict) -> str | None:
        return cls.hub_id or hub_repo_id(config.get("model_name_or_path"))

    def model_identity(self) -> dict:
        """Content identity of the weights: hashes of the local files, or the Hub commit."""
        if self.is_local:
            return directory_identity(self.model_name_or_path)
        commit = getattr(self.model.config, "_commit_hash", None)
        blob = self.model.config.to_json_string()
        return {"commit": commit, "config_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}

    def fingerprint_parts(self) -> dict:
        parts = super().fingerprint_parts()
        parts.pop("padding_side", None)  # left/right give the same vectors by construction
        parts["identity"] = self.model_identity()
        return parts
