"""``hf-clip``: a transformers CLIP-style model (``CLIPModel`` and friends) with its processor;
prompt tower = text, item tower = image (paths). Hub id or local directory.

``encode_pixels`` replays the image processor's steps (resize, centre crop, rescale, normalise)
in torch, reading them from the processor's own settings.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import EncoderError

from .assets import directory_identity, hub_repo_id, quiet_transformers, require_module
from .base import Encoder
from .hf_text import find_layer_list
from .images import open_rgb
from .pixels import center_crop, check_pixels, normalize
from .registry import register_encoder
from .trust import check_local, loading, transformers_code

#: PIL resample codes of image processors -> torch interpolation modes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _field(obj, key):
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


@register_encoder("hf-clip")
class HFCLIPEncoder(Encoder):
    """Text and image features from ``get_text_features`` / ``get_image_features``."""

    prompt_modality = "text"
    item_modality = "image"
    weights_source = "transformers CLIPModel: Hub id or local directory (model_name_or_path=...)"
    dims = "projection_dim"

    def __init__(self, model_name_or_path: str | None = None, normalize: bool = True, batch_size: int = 32,
                 device: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        if not model_name_or_path:
            raise EncoderError("hf-clip needs model_name_or_path=<Hub id or local directory>")
        transformers = require_module("transformers")
        local = Path(str(model_name_or_path)).expanduser()
        self.is_local = local.is_dir()
        self.model_name_or_path = str(local.resolve()) if self.is_local else str(model_name_or_path)
        self.normalize = bool(normalize)
        trust_remote_code = bool(trust_remote_code)
        if self.is_local:
            check_local("hf-clip", self.model_name_or_path, transformers_code(self.model_name_or_path), trust_remote_code)
        with loading("hf-clip", self.model_name_or_path, trust_remote_code), quiet_transformers():
            self.model = transformers.AutoModel.from_pretrained(self.model_name_or_path, dtype=self.torch_dtype,
                                                                trust_remote_code=trust_remote_code)
            self.processor = transformers.AutoProcessor.from_pretrained(self.model_name_or_path,
                                                                        trust_remote_code=trust_remote_code)
        self.trust_remote_code = trust_remote_code  # a load-time choice: not part of config()
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
        return self._image_features(pixels)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (b, 3, h, w) processed -> (b, d)
        out = _features(self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.torch_dtype)))
        return F.normalize(out, dim=-1) if self.normalize else out

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, projection_dim), differentiable: the image processor's
        resize / centre crop / rescale / normalise, as torch ops."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        ip = self.processor.image_processor
        x = check_pixels(pixels)
        mode = InterpolationMode(_RESAMPLE.get(int(getattr(ip, "resample", 3) or 3), "bicubic"))
        if getattr(ip, "do_resize", True):
            size = ip.size
            short, h, w = _field(size, "shortest_edge"), _field(size, "height"), _field(size, "width")
            if short:
                x = TF.resize(x, int(short), interpolation=mode, antialias=True)
            elif h and w:
                x = TF.resize(x, [int(h), int(w)], interpolation=mode, antialias=True)
            x = x.clamp(0.0, 1.0)  # PIL output is 8-bit: no overshoot
        if getattr(ip, "do_center_crop", False):  # offsets rounded down, as the processor does
            cs = ip.crop_size
            x = center_crop(x, int(_field(cs, "height")), int(_field(cs, "width")))
        if getattr(ip, "do_rescale", True):  # the processor maps 0..255 with rescale_factor; pixels are x / 255
            factor = 255.0 * float(getattr(ip, "rescale_factor", 1 / 255))
            if not math.isclose(factor, 1.0, rel_tol=1e-9):
                x = x * factor
        else:
            x = x * 255.0
        if getattr(ip, "do_normalize", True):
            x = normalize(x, ip.image_mean, ip.image_std)
        return self._image_features(x)

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        return {"text": find_layer_list(self.model.text_model), "image": find_layer_list(self.model.vision_model)}

    def config(self) -> dict:
        return {"model_name_or_path": self.model_name_or_path, "normalize": self.normalize,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    @classmethod
    def base_model_from_config(cls, config: dict) -> str | None:
        return hub_repo_id(config.get("model_name_or_path"))

    def fingerprint_parts(self) -> dict:
        parts = super().fingerprint_parts()
        if self.is_local:
            parts["identity"] = directory_identity(self.model_name_or_path)
        else:
            blob = self.model.config.to_json_string()
            parts["identity"] = {"commit": getattr(self.model.config, "_commit_hash", None),
                                 "config_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}
        return parts
