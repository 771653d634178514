"""``open-clip``: an open_clip model; prompt tower = text, item tower = image (paths).

``model_name`` is an open_clip architecture (``ViT-B-32``) with a ``pretrained`` tag or
checkpoint file, ``hf-hub:org/repo``, or ``local-dir:/path`` (a directory holding
``open_clip_config.json`` and ``open_clip_model.safetensors``). A plain directory path is
treated as ``local-dir:``.

``encode_pixels`` runs the model's own preprocessing (open_clip's transform list: resize, centre
crop, normalise) on tensors; PIL-only steps (mode conversion, ToTensor) are skipped because the
pixels already are an RGB float tensor in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import EncoderError

from .assets import directory_identity, file_digest, hub_repo_id, require_module
from .base import Encoder
from .images import open_rgb
from .pixels import check_pixels
from .registry import register_encoder

LOCAL = "local-dir:"


@register_encoder("open-clip")
class OpenCLIPEncoder(Encoder):
    """CLIP-style text and image towers from open_clip, L2-normalised by default."""

    prompt_modality = "text"
    item_modality = "image"
    weights_source = "open_clip: model_name + pretrained tag/file, hf-hub:..., or local-dir:DIR (no packaged weights)"
    dims = "embed_dim"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None, normalize: bool = True,
                 batch_size: int = 32, device: str | None = None, dtype: str = "float32"):
        super().__init__(batch_size=batch_size, device=device, dtype=dtype)
        open_clip = require_module("open_clip")
        if Path(str(model_name)).expanduser().is_dir():
            model_name = LOCAL + str(Path(model_name).expanduser().resolve())
        if model_name.startswith(LOCAL):
            directory = Path(model_name[len(LOCAL):]).expanduser()
            if not directory.is_dir():
                raise EncoderError(f"open-clip: model directory not found: {directory}")
            model_name = LOCAL + str(directory.resolve())
        if pretrained and Path(pretrained).expanduser().is_file():
            pretrained = str(Path(pretrained).expanduser().resolve())
        self.model_name, self.pretrained, self.normalize = model_name, pretrained, bool(normalize)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
            raise EncoderError(f"open-clip: could not load {model_name!r} (pretrained={pretrained!r}): {str(e).splitlines()[0]}") from None
        self.model = model.to(device=self.device_name, dtype=self.torch_dtype)
        self.preprocess = preprocess
        self.freeze()
        self.prompt_dim = self.item_dim = int(self.encode_prompts(["a"]).shape[1])

    def _encode_prompt_batch(self, prompts: Sequence[str]) -> torch.Tensor:  # (b, embed_dim)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens, normalize=self.normalize)

    def _encode_item_batch(self, items: Sequence[str]) -> torch.Tensor:  # (b, embed_dim)
        pixels = torch.stack([self.preprocess(open_rgb(p)) for p in items])  # (b, 3, h, w)
        return self.model.encode_image(pixels.to(self.device, self.torch_dtype), normalize=self.normalize)

    def _pixel_steps(self) -> list:
        """The tensor-capable steps of ``self.preprocess`` (built once); torchvision v1 or v2."""
        if getattr(self, "_steps", None) is None:
            from torchvision import transforms as v1

            kinds = [v1]
            try:
                from torchvision.transforms import v2

                kinds.append(v2)
            except ImportError:
                pass
            resize = tuple(m.Resize for m in kinds)
            tensor_ops = tuple(c for m in kinds for c in (m.CenterCrop, m.Normalize))
            pil_only = tuple(getattr(m, n) for m in kinds for n in ("ToTensor", "PILToTensor", "ToImage", "ToDtype") if hasattr(m, n))
            steps = []
            for t in getattr(self.preprocess, "transforms", [self.preprocess]):
                if isinstance(t, resize):
                    steps.append(lambda x, t=t: t(x).clamp(0.0, 1.0))  # PIL output is 8-bit: no overshoot
                elif isinstance(t, tensor_ops):
                    steps.append(t)
                elif isinstance(t, pil_only) or type(t).__name__ in ("MaybeConvertMode", "function"):
                    continue  # PIL conversions: the pixels already are an RGB float tensor in [0, 1]
                else:
                    raise EncoderError(f"open-clip: no differentiable version of the preprocessing step {type(t).__name__}")
            self._steps = steps
        return self._steps

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, embed_dim), differentiable."""
        x = check_pixels(pixels)
        for step in self._pixel_steps():
            x = step(x)
        return self.model.encode_image(x.to(self.device, self.torch_dtype), normalize=self.normalize)

    def layer_stacks(self) -> dict[str, list[nn.Module]]:
        stacks = {}
        text = getattr(getattr(self.model, "transformer", None), "resblocks", None)
        vision = getattr(getattr(getattr(self.model, "visual", None), "transformer", None), "resblocks", None)
        if text is not None:
            stacks["text"] = list(text)
        if vision is not None:
            stacks["image"] = list(vision)
        return stacks or super().layer_stacks()

    def config(self) -> dict:
        return {"model_name": self.model_name, "pretrained": self.pretrained, "normalize": self.normalize,
                "batch_size": self.batch_size, "dtype": self.dtype_name}

    @classmethod
    def base_model_from_config(cls, config: dict) -> str | None:
        name = config.get("model_name")
        return hub_repo_id(name) if isinstance(name, str) and name.startswith("hf-hub:") else None

    def fingerprint_parts(self) -> dict:
        parts = super().fingerprint_parts()
        if self.model_name.startswith(LOCAL):
            parts["identity"] = directory_identity(self.model_name[len(LOCAL):])
        elif self.pretrained and Path(self.pretrained).is_file():
            parts["identity"] = file_digest(self.pretrained, sample=1 << 20)
        return parts
