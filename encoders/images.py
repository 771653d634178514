"""Image loading: paths -> one normalised batch tensor.

Decoding and resizing happen per image (sizes differ); conversion, scaling and normalisation
happen once for the whole batch.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

from .errors import EncoderError

from .assets import require_module

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(path):
    """A PIL image in RGB (palette, grey, RGBA and CMYK are converted) from a file path, or from a
    PIL image (an in-memory image is used as is, not decoded at reduced size)."""
    Image = require_module("PIL.Image")
    if isinstance(path, Image.Image):
        return path.convert("RGB")
    try:
        with Image.open(path) as im:
            im.draft("RGB", (512, 512))  # JPEG: decode at reduced size when it is much larger
            return im.convert("RGB")
    except FileNotFoundError:
        raise EncoderError(f"image file not found: {path}") from None
    except Exception as e:
        raise EncoderError(f"could not read image {path} ({type(e).__name__}: {e})") from None


def resize_center_crop(im, size: int, crop_pct: float = 1.0):
    """Resize the shorter side to ``size / crop_pct`` (bicubic), then centre-crop ``size``."""
    Image = require_module("PIL.Image")
    scale = int(round(size / crop_pct))
    w, h = im.size
    if w < h:
        nw, nh = scale, max(scale, int(round(h * scale / w)))
    else:
        nw, nh = max(scale, int(round(w * scale / h))), scale
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image_batch(paths: Sequence[str | os.PathLike], size: int = 224, crop_pct: float = 1.0,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(b,) image paths (or PIL images) -> (b, 3, size, size) float32, normalised with ``mean``/``std``."""
    arrays = [np.asarray(resize_center_crop(open_rgb(p), size, crop_pct)) for p in paths]
    x = torch.from_numpy(np.stack(arrays))  # (b, h, w, 3) uint8
    x = rearrange(x, "b h w c -> b c h w").float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)
