"""``hf-clip``: a transformers CLIP-style model (``CLIPModel`` and friends) with its processor;
prompt tower = text, item tower = image (paths). Hub id or local directory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EncoderError

from .assets import directory_identity, quiet_transformers, require_module
from .base import Encoder
from .hf_text import find_layer_list
from .images import open_rgb
from .registry import register_encoder


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@register_encoder("hf-clip")
class HFCLIPEncoder(Encoder):
    """Text and image features from ``get_text_features`` / ``get_image_features``."""

    prompt_modality = "text"
    item_modality = "image"
    weights_source = "transformers CLIPModel: Hub id or local directory (model_name_or_path=...)"
    dims = "projection_dim"

    def __init__(self, model_name_or_path: str | None = None, normalize: bool = True, batch_size: int = 32,
                 device: str | None = None, dtype: str = "float32"):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        if not model_name_or_path:
            raise EncoderError("hf-clip needs model_name_or_path=<Hub id or local directory>")
        transformers = require_module("transformers")
        local = Path(str(model_name_or_path)).expanduser()
        self.is_local = local.is_dir()
        self.model_name_or_path = str(local.resolve()) if self.is_local else str(model_name_or_path)
        self.normalize = bool(normalize)
        try:
            with quiet_transformers():
                self.model = transformers.AutoModel.from_pretrained(self.model_name_or_path, dtype=self.torch_dtype)
                self.processor = transformers.AutoProcessor.from_pretrained(self.model_name_or_path)
        except OSError as e:
            raise EncoderError(f"hf-clip: could not load {self.model_name_or_path!r} ({str(e).splitlines()[0]}); "
                             "give a local model directory, or a Hub id with network access") from None
        if not hasattr(self.model, "get_image_features"):
            raise EncoderError(f"hf-clip: {self.model_name_or_path} is a {type(self.model).__name__}, not a CLIP-style image-text model")
        tc = getattr(self.model.config, "text_config", None)
        self.max_length = int(getattr(tc, "max_position_embeddings", 77))
        self.model.to(self.device_name)
        self.freeze()
        self.prompt_dim = self.item_dim = int(self.encode_prompts(["a"]).shape[1])

    def _encode_prompt_batch(self, prompts: Sequence[str]) -> torch.Tensor:  # (b, projection_dim)
        enc = self.processor.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = _features(self.model.get_text_features(**{k: v.to(self.device) for k, v in enc.items()}))
        return F.normalize(out, dim=-1) if self.normalize else out

    def _encode_item_batch(self, items: Sequence[str]) -> torch.Tensor:  # (b, projection_dim)
        pixels = self.processor.image_processor(images=[open_rgb(p) for p in items], return_tensors="pt")["pixel_values"]
        out = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.torch_dtype)))
        return F.normalize(out, dim=-1) if self.normalize else out

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        return {"text": find_layer_list(self.model.text_model), "image": find_layer_list(self.model.vision_model)}

    def config(self) -> dict:
        return {"model_name_or_path": self.model_name_or_path, "normalize": self.normalize,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    def fingerprint_parts(self) -> dict:
        parts = super().fingerprint_parts()
        if self.is_local:
            parts["identity"] = directory_identity(self.model_name_or_path)
        else:
            blob = self.model.config.to_json_string()
            parts["identity"] = {"commit": getattr(self.model.config, "_commit_hash", None),
                                 "config_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}
        return parts
