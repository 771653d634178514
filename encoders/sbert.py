"""``sentence-transformers``: any sentence-transformers model (Hub id or local directory) for both
towers, with the model's *own* modules: its pooling (mean, CLS, last token...), dense layers and
normalisation, exactly as ``SentenceTransformer.encode`` applies them.

Needs the ``sentence-transformers`` package (``pip install 'pal-mm[sentence-transformers]'``).
Texts are batched longest first; a model whose modules live outside the sentence_transformers
package (custom code) loads only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .assets import directory_identity, hub_repo_id, quiet_transformers, require_module
from .base import Encoder
from .errors import EncoderError
from .hf_text import find_layer_list
from .registry import register_encoder
from .trust import check_local, loading, sentence_transformers_code

WHO = "sentence-transformers"


def _module_dirs(directory: Path) -> list[Path]:
    """The model directory and its module sub-directories (from modules.json)."""
    import json

    dirs = [directory]
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dirs
    for m in modules if isinstance(modules, list) else []:
        sub = m.get("path") if isinstance(m, dict) else None
        if isinstance(sub, str) and sub and (directory / sub).is_dir():
            dirs.append(directory / sub)
    return dirs


@register_encoder("sentence-transformers")
class SentenceTransformersEncoder(Encoder):
    """A sentence-transformers model for both towers (its own pooling and normalisation).

    Args:
        model_name_or_path: Hub id (needs network the first time) or a local directory saved by
            ``SentenceTransformer.save``.
        max_length: override the model's ``max_seq_length`` (None keeps the model's).
        trust_remote_code: let a model with custom modules run their code (never saved in ``config()``).
    """

    prompt_modality = "text"
    item_modality = "text"
    weights_source = "any sentence-transformers model: Hub id or local directory (model_name_or_path=...)"
    dims = "the model's"
    card_tags = ("sentence-transformers",)

    def __init__(self, model_name_or_path: str | os.PathLike | None = None, max_length: int | None = None,
                 batch_size: int = 32, device: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        if not model_name_or_path:
            raise EncoderError(f"{WHO} needs model_name_or_path=<Hub id or local directory> (--encoder-arg model_name_or_path=...)")
        st = require_module("sentence_transformers")
        source = str(model_name_or_path)
        local = Path(source).expanduser()
        self.is_local = local.is_dir()
        if self.is_local:
            source = str(local.resolve())
            if not (local / "modules.json").is_file():
                raise EncoderError(f"{WHO}: {source} is not a sentence-transformers model (no modules.json); "
                                   "use --encoder hf-text with pooling=mean|cls|last-token for a plain transformers model")
            check_local(WHO, source, sentence_transformers_code(local), bool(trust_remote_code))
        elif os.sep in source and source.startswith((".", "/", "~")):
            raise EncoderError(f"{WHO}: model directory not found: {source}")
        self.model_name_or_path = source
        self.trust_remote_code = bool(trust_remote_code)  # a load-time choice: not part of config()
        st_logger = logging.getLogger("sentence_transformers")
        level = st_logger.level
        st_logger.setLevel(logging.ERROR)
        try:
            with loading(WHO, source, self.trust_remote_code), quiet_transformers():
                self.model = st.SentenceTransformer(source, device=self.device_name, trust_remote_code=self.trust_remote_code)
        finally:
            st_logger.setLevel(level)
        if max_length is not None:
            self.model.max_seq_length = int(max_length)
        self.max_length = None if max_length is None else int(max_length)
        if self.torch_dtype != torch.float32:
            self.model.to(dtype=self.torch_dtype)
        self.freeze()
        self.prompt_dim = self.item_dim = int(self.encode_prompts(["a"]).shape[1])

    # ----- encoding ---------------------------------------------------------------------------
    def _features(self, texts: Sequence[str]) -> dict:
        for t in texts:
            if not isinstance(t, str):
                raise EncoderError(f"encoder {self.name!r} takes text, got {type(t).__name__}")
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize  # preprocess: sentence-transformers >= 6
        feats = prep(list(texts))
        device = self.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}

    def _encode_text_batch(self, texts: Sequence[str]) -> torch.Tensor:  # (b, d), differentiable
        return self.model(self._features(texts))["sentence_embedding"]

    _encode_prompt_batch = _encode_text_batch
    _encode_item_batch = _encode_text_batch

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(n,) texts -> (n, d) float32 on CPU, longest texts batched together, input order."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.prompt_dim or 0)
        return self._batched_by_length(self._encode_text_batch, texts, [len(t) for t in texts])

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(prompts)

    def encode_items(self, items: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(items)

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        first = self.model[0]
        backbone = getattr(first, "auto_model", None) or getattr(first, "model", None)
        if not isinstance(backbone, nn.Module):
            return super().layer_stacks()
        return {"text": find_layer_list(backbone)}

    # ----- identity ---------------------------------------------------------------------------
    def config(self) -> dict:
        return {"model_name_or_path": self.model_name_or_path, "max_length": self.max_length,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    @classmethod
    def base_model_from_config(cls, config: dict) -> str | None:
        return hub_repo_id(config.get("model_name_or_path"))

    def fingerprint_parts(self) -> dict:
        parts = super().fingerprint_parts()
        parts["max_seq_length"] = self.model.max_seq_length
        parts["modules"] = hashlib.sha256(repr(self.model).encode()).hexdigest()[:16]  # pooling, dense, normalize
        if self.is_local:
            root = Path(self.model_name_or_path)
            parts["identity"] = {str(d.relative_to(root)): directory_identity(d) for d in _module_dirs(root)}
        else:
            first = self.model[0]
            cfg = getattr(getattr(first, "auto_model", None) or getattr(first, "model", None), "config", None)
            parts["identity"] = {"commit": getattr(cfg, "_commit_hash", None)}
        return parts
