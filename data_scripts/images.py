"""Image utilities shared by the text-to-image data builders.

* colour filters for Pick-a-Filter: :func:`cool_filter` (toward blue) and :func:`warm_filter`
  (toward red), plus :func:`blue_red_balance` to measure their effect;
* the degradations used to make candidate "generations" from a photo: :func:`crop_zoom`,
  :func:`gaussian_blur`, :func:`add_noise`, :func:`jpeg_degrade`, :func:`square_resize`;
* PNG encoding (:func:`png_bytes`), deterministic for the same pixels. Images are stored with
  :class:`pal_mm.image_store.ImageStore`.

All functions take and return ``PIL.Image.Image`` objects in RGB mode (8 bits per channel).
"""

from __future__ import annotations

import io
import os
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter


# --------------------------------------------------------------------------------------------
# colour filters (Pick-a-Filter)
# --------------------------------------------------------------------------------------------

#: tint colours the filters blend toward (RGB)
COOL_TINT = (40, 110, 255)
WARM_TINT = (255, 110, 40)
#: per-channel gains applied after the blend (R, G, B)
COOL_GAIN = (0.85, 1.0, 1.15)
WARM_GAIN = (1.15, 1.0, 0.85)
#: default blend weight of the tint
FILTER_STRENGTH = 0.25


def to_rgb(img: Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image (any mode) or an array (H, W), (H, W, 3) or (H, W, 4).
    Float arrays are taken to be in [0, 1]; an alpha channel is dropped."""
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")


def tint_filter(img: Image.Image, tint: tuple, gain: tuple, strength: float = FILTER_STRENGTH) -> Image.Image:
    """Colour filter: ``out = clip(((1 - strength) * img + strength * tint) * gain)``.

    The blend shifts every pixel toward the ``tint`` colour; the per-channel ``gain`` then
    strengthens one end of the red-blue axis and weakens the other, so the image keeps its
    content but its colour balance clearly moves toward the tint."""
    arr = np.asarray(to_rgb(img), dtype=np.float32)
    out = (1.0 - strength) * arr + strength * np.asarray(tint, dtype=np.float32)
    out = out * np.asarray(gain, dtype=np.float32)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def cool_filter(img: Image.Image, strength: float = FILTER_STRENGTH) -> Image.Image:
    """Blue / cool-tone filter: blend toward ``COOL_TINT`` and boost blue, damp red."""
    return tint_filter(img, COOL_TINT, COOL_GAIN, strength)


def warm_filter(img: Image.Image, strength: float = FILTER_STRENGTH) -> Image.Image:
    """Red / warm-tone filter: blend toward ``WARM_TINT`` and boost red, damp blue."""
    return tint_filter(img, WARM_TINT, WARM_GAIN, strength)


#: filter name -> function, as used in Pick-a-Filter and in file names
FILTERS: dict[str, Callable[[Image.Image], Image.Image]] = {"cool": cool_filter, "warm": warm_filter}


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Load an image file as RGB (fully read, file closed)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def blue_red_balance(img: Image.Image | str | os.PathLike) -> float:
    """Mean of (blue - red) over all pixels, in [-1, 1]: > 0 means bluer, < 0 redder."""
    if not isinstance(img, Image.Image):
        img = open_rgb(img)
    arr = np.asarray(to_rgb(img), dtype=np.float32) / 255.0
    return float((arr[..., 2] - arr[..., 0]).mean())


# --------------------------------------------------------------------------------------------
# transformations used to make candidate generations
# --------------------------------------------------------------------------------------------


def square_resize(img: Image.Image, size: int = 224) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (bicubic)."""
    img = to_rgb(img)
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def crop_zoom(img: Image.Image, frac: float, cx: float, cy: float, size: int = 224) -> Image.Image:
    """Zoom in: crop a square of side ``frac * min(W, H)`` whose centre sits at the relative
    position (``cx``, ``cy``) in [0, 1] of the range that keeps the crop inside the image, then
    resize it to ``size`` x ``size``. ``frac = 1`` is a plain centre square."""
    img = to_rgb(img)
    w, h = img.size
    s = max(1, int(round(frac * min(w, h))))
    left = int(round(cx * (w - s)))
    top = int(round(cy * (h - s)))
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


def gaussian_blur(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur with standard deviation ``radius`` pixels (0: unchanged)."""
    img = to_rgb(img)
    return img if radius <= 0 else img.filter(ImageFilter.GaussianBlur(radius))


def add_noise(img: Image.Image, sigma: float, seed: int | list) -> Image.Image:
    """Add i.i.d. Gaussian pixel noise of standard deviation ``sigma`` (in 0..255 units),
    drawn from ``numpy.random.default_rng(seed)`` so that it is reproducible."""
    img = to_rgb(img)
    if sigma <= 0:
        return img
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + noise + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def jpeg_degrade(img: Image.Image, quality: int) -> Image.Image:
    """Round-trip through JPEG at ``quality`` (1..95): blocking and ringing artefacts."""
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    """The PNG encoding of ``img`` (deterministic for the same pixels)."""
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
