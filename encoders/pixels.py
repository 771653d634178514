"""Differentiable image preprocessing: the torch twins of the PIL steps in ``encoders.images``.

Image encoders implement ``encode_pixels(pixels)`` with these: ``pixels`` is a (B, 3, H, W)
float tensor in [0, 1] (what a diffusion pipeline decodes), and every step is a torch op, so a
reward's gradient reaches the pixels. Resizing is antialiased bicubic like PIL's; the result
matches ``encode_items`` on the same image up to resampling differences (~1e-3 in features).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .errors import EncoderError


def check_pixels(pixels) -> torch.Tensor:
    """(B, 3, H, W) or one (3, H, W) image, float -> (B, 3, H, W); anything else is an EncoderError."""
    if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
        raise EncoderError("pixels must be a float tensor (B, 3, H, W) with values in [0, 1]")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise EncoderError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
    return pixels


def pil_to_pixels(images) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W) float32 in [0, 1] (RGB)."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    if len({a.shape for a in arrays}) > 1:
        raise EncoderError("images of different sizes: resize them to one size first")
    return rearrange(torch.from_numpy(np.stack(arrays)), "b h w c -> b c h w")


def resize_shorter_side(x: torch.Tensor, target: int, mode: str = "bicubic") -> torch.Tensor:
    """(B, C, H, W) -> shorter side ``target`` (aspect kept, rounded like ``images``'s PIL
    path, antialiased), clamped to [0, 1] as PIL's 8-bit output is."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if w < h:
        nw, nh = target, max(target, int(round(h * target / w)))
    else:
        nw, nh = max(target, int(round(w * target / h))), target
    if (nh, nw) == (h, w):
        return x
    x = F.interpolate(x, size=(nh, nw), mode=mode, align_corners=False if mode != "nearest" else None,
                      antialias=mode in ("bilinear", "bicubic"))
    return x.clamp(0.0, 1.0)


def center_crop(x: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, height, width) from the centre (H, W must be at least that)."""
    width = height if width is None else width
    h, w = int(x.shape[-2]), int(x.shape[-1])
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def resize_center_crop_tensor(x: torch.Tensor, size: int, crop_pct: float = 1.0, mode: str = "bicubic") -> torch.Tensor:
    """The tensor twin of :func:`encoders.images.resize_center_crop`: shorter side to
    ``round(size / crop_pct)``, then a centre crop of ``size``."""
    return center_crop(resize_shorter_side(x, int(round(size / crop_pct)), mode), size)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` for (B, C, H, W)."""
    m = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
