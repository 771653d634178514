"""Best-of-N per user: sample N images with a diffusers pipeline, score them with a PAL model for
each user, keep each user's best, draw a contact sheet.

    from pal_mm import PALModel
    from pal_mm.generation import best_of_n

    model = PALModel.from_pretrained("runs/t2i-model")
    result = best_of_n("stabilityai/sd-turbo", "a cat on a sofa", 8, model, ["alice", "bob"],
                       out_dir="samples/cat", steps=1, guidance_scale=0.0)
    result.best          # {"alice": 3, "bob": 6}

Images are saved as PNG (lossless) *before* they are scored and are scored from those files, so
``pal-mm score-images`` on the saved files reproduces the rewards in ``scores.json``. Sampling
uses one CPU generator per image seeded ``seed + i``: image i is the same whatever the batch size.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .embedding import encode_values, is_pil_image
from .errors import PalMMError

SCORES_NAME = "scores.json"
SHEET_NAME = "contact_sheet.png"
IMAGES_DIR = "images"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BestOfN:
    """The outcome of :func:`best_of_n`; ``images`` are paths relative to ``out_dir``."""

    prompt: str
    images: list[str]
    rewards: dict[str, list[float]]  # user -> one reward per image
    best: dict[str, int]  # user -> index of the best image
    seeds: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        users = {u: {"rewards": r, "ranks": rank(r), "best": self.best[u], "best_image": self.images[self.best[u]]}
                 for u, r in self.rewards.items()}
        return {"prompt": self.prompt, "images": self.images, "seeds": self.seeds, "users": users,
                "contact_sheet": SHEET_NAME, "settings": self.settings, "timings_s": self.timings_s}


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------
def check_image_model(model) -> None:
    """The model must score images for a text prompt."""
    enc = model.encoder
    if enc.item_modality != "image" or enc.prompt_modality != "text":
        raise PalMMError(f"model encoder {enc.name!r} scores {enc.item_modality} items for {enc.prompt_modality} prompts; "
                         "scoring images needs an image-text encoder (e.g. effnet-minilm, open-clip, hf-clip)")


@torch.no_grad()
def image_rewards(model, prompt: str, images: Sequence[Any], users: Sequence[str] = (),
                  weights: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Rewards of images (file paths or PIL images) for one text prompt: ``{user: [reward per
    image]}``. The images and the prompt are encoded once for all users. With ``weights`` (explicit
    simplex weights) instead of users, the result has the single key ``"weights"``."""
    check_image_model(model)
    if not prompt or not str(prompt).strip():
        raise PalMMError("the prompt is empty")
    paths = [im if is_pil_image(im) else str(im) for im in images]
    if not paths:
        raise PalMMError("no images to score")
    missing = [p for p in paths if isinstance(p, str) and not Path(p).is_file()]
    if missing:
        raise PalMMError(f"image file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not users and weights is None:
        raise PalMMError("give at least one user (or explicit weights)")
    model.eval()
    p = encode_values(model.encoder, [str(prompt)], "prompt").expand(len(paths), -1)
    x = encode_values(model.encoder, paths, "item")
    keys = list(users) if users else ["weights"]
    out = {}
    for key in keys:
        r = model.reward_embeddings(p, x, user=key) if users else model.reward_embeddings(p, x, weights=weights)
        out[key] = [float(v) for v in r]
    return out


def rank(rewards: Sequence[float]) -> list[int]:
    """1-based rank of each reward (1 = highest); ties keep input order."""
    order = sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))
    ranks = [0] * len(rewards)
    for r, i in enumerate(order, 1):
        ranks[i] = r
    return ranks


def ranked_table(images: Sequence[str], rewards: Sequence[float]) -> list[dict]:
    """``[{image, reward, rank}]`` sorted best first."""
    rows = [{"image": str(im), "reward": float(r), "rank": k} for im, r, k in zip(images, rewards, rank(rewards))]
    return sorted(rows, key=lambda row: row["rank"])


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def bar_config(progress: bool | None = None) -> dict:
    """diffusers' ``set_progress_bar_config`` for ``progress`` (None: the process-wide setting of
    ``encoders.progress``, i.e. bars on a terminal unless ``--quiet``)."""
    from encoders.progress import progress_setting

    setting = progress_setting(progress)
    return {"disable": None if setting is None else not setting, "leave": False}


def load_pipeline(name_or_path: str, device: str | None = None, dtype: str | None = None,
                  safety_checker: bool | None = None, progress: bool | None = False):
    """``DiffusionPipeline.from_pretrained`` on a Hub id or a local directory, moved to ``device``.

    ``dtype``: float32 | float16 | bfloat16 (default float16 on CUDA, float32 otherwise).
    ``safety_checker``: None keeps the pipeline's own choice for Hub ids and switches it off for
    local directories (tiny test pipelines have none); False always switches it off.
    ``progress``: loading and denoising bars (False: none; None: the process-wide setting)."""
    from encoders.progress import progress_setting

    try:
        from diffusers import DiffusionPipeline
    except ImportError:
        raise PalMMError("sampling images needs diffusers: pip install 'pal-mm[diffusion]'") from None
    device = device or default_device()
    dtype = dtype or ("float16" if device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise PalMMError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    local = Path(name_or_path).expanduser()
    looks_local = str(name_or_path).startswith((".", "/", "~")) or local.exists()
    if looks_local and not (local / "model_index.json").is_file():
        raise PalMMError(f"{name_or_path}: not a diffusers pipeline directory (no model_index.json)")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if safety_checker is False or (safety_checker is None and looks_local):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with _quiet_loading(progress_setting(progress) is False):
            pipe = DiffusionPipeline.from_pretrained(str(local if looks_local else name_or_path), **kwargs)
    except Exception as e:  # missing repo, no network, corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PalMMError(f"could not load diffusers pipeline {name_or_path!r} ({type(e).__name__}: {first[:200]})") from None
    try:
        pipe = pipe.to(device)
    except Exception as e:
        raise PalMMError(f"could not move the pipeline to device {device!r} ({type(e).__name__}: {e})") from None
    pipe.set_progress_bar_config(**bar_config(progress))
    return pipe


@contextlib.contextmanager
def _quiet_loading(quiet: bool):
    """Hide diffusers' and transformers' loading bars and info logs (restored afterwards)."""
    if not quiet:
        yield
        return
    from diffusers.utils import logging as dl

    from encoders.assets import quiet_transformers

    bars, level = dl.is_progress_bar_enabled(), dl.get_verbosity()
    dl.disable_progress_bar()
    dl.set_verbosity_error()
    try:
        with quiet_transformers():
            yield
    finally:
        dl.set_verbosity(level)
        if bars:
            dl.enable_progress_bar()


def check_sampling_args(num_images: int, steps: int | None, batch_size: int | None) -> None:
    for flag, value in (("--num-images", num_images), ("--steps", steps), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise PalMMError(f"{flag} must be >= 1, got {value}")


def sample_images(pipe, prompt: str, num_images: int, steps: int | None = None, seed: int = 0,
                  guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                  batch_size: int | None = None) -> list:
    """``num_images`` PIL images for ``prompt``; image i is drawn with a CPU generator seeded
    ``seed + i``. ``None`` settings keep the pipeline's defaults."""
    check_sampling_args(num_images, steps, batch_size)
    batch_size = batch_size or num_images
    kwargs: dict[str, Any] = {"output_type": "pil"}
    for key, value in (("num_inference_steps", steps), ("guidance_scale", guidance_scale), ("height", height), ("width", width)):
        if value is not None:
            kwargs[key] = value
    images = []
    for start in range(0, num_images, batch_size):
        idx = range(start, min(start + batch_size, num_images))
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in idx]
        out = pipe(prompt, num_images_per_prompt=len(gens), generator=gens, **kwargs)
        images += list(out.images)
    return images


# --------------------------------------------------------------------------------------------
# contact sheet
# --------------------------------------------------------------------------------------------
def contact_sheet(images: Sequence, rewards: dict[str, Sequence[float]], prompt: str = "", thumb: int = 128,
                  columns: int | None = None):
    """One row per user: every image with that user's reward underneath; the user's best image is
    framed in green and marked BEST. ``images``: PIL images or paths. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    pics = [im if hasattr(im, "size") else Image.open(im) for im in images]
    thumbs = []
    for im in pics:
        im = im.convert("RGB")
        resample = Image.Resampling.NEAREST if max(im.size) < thumb else Image.Resampling.LANCZOS
        scale = thumb / max(im.size)
        thumbs.append(im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample))
    n = len(thumbs)
    columns = columns or n
    font = ImageFont.load_default(size=12)
    pad, label_w, text_h, head_h = 6, 110, 18, 26
    cell_w, cell_h = thumb + 2 * pad, thumb + text_h + 2 * pad
    rows_per_user = -(-n // columns)
    users = list(rewards)
    sheet = Image.new("RGB", (label_w + columns * cell_w, head_h + len(users) * rows_per_user * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), (prompt if len(prompt) <= 110 else prompt[:107] + "...") or " ", fill="black", font=font)
    for u_i, user in enumerate(users):
        r = list(rewards[user])
        best = max(range(n), key=lambda i: (r[i], -i))
        top = head_h + u_i * rows_per_user * cell_h
        draw.line([(0, top), (sheet.width, top)], fill=(200, 200, 200))
        draw.text((pad, top + cell_h // 2 - 8), str(user)[:16], fill="black", font=font)
        for i, th in enumerate(thumbs):
            x0 = label_w + (i % columns) * cell_w + pad
            y0 = top + (i // columns) * cell_h + pad
            sheet.paste(th, (x0 + (thumb - th.width) // 2, y0 + (thumb - th.height) // 2))
            if i == best:
                draw.rectangle([x0 - 4, y0 - 4, x0 + thumb + 3, y0 + thumb + 3], outline=(0, 170, 0), width=4)
                draw.rectangle([x0, y0, x0 + 36, y0 + 15], fill=(0, 170, 0))
                draw.text((x0 + 3, y0 + 1), "BEST", fill="white", font=font)
            draw.text((x0, y0 + thumb + 3), f"#{i} {r[i]:+.3f}", fill=(0, 120, 0) if i == best else "black", font=font)
    return sheet


# --------------------------------------------------------------------------------------------
# the whole thing
# --------------------------------------------------------------------------------------------
def best_of_n(pipeline, prompt: str, num_images: int, model, users: Sequence[str], out_dir: str | os.PathLike,
              steps: int | None = None, seed: int = 0, guidance_scale: float | None = None, height: int | None = None,
              width: int | None = None, batch_size: int | None = None, device: str | None = None,
              dtype: str | None = None, progress: bool | None = None) -> BestOfN:
    """Sample ``num_images`` images for ``prompt``, score them for each user, and write
    ``out_dir/images/*.png``, ``out_dir/scores.json`` and ``out_dir/contact_sheet.png``.

    ``pipeline``: a loaded diffusers pipeline, a Hub id or a local directory. ``model``: a
    :class:`~pal_mm.model.PALModel` with an image-text encoder. Users must be known to the model
    (fit new ones with ``adapt``). ``out_dir`` is written in place; the CLI wraps it in a
    temporary directory that replaces the target only on success. ``progress``: the pipeline's
    loading and denoising bars (None: the process-wide setting, ``encoders.progress``)."""
    check_image_model(model)
    users = list(dict.fromkeys(users))
    if not users:
        raise PalMMError("give at least one --user")
    model.user_index(users)  # unknown users fail before any sampling
    if not prompt or not prompt.strip():
        raise PalMMError("the prompt is empty")
    check_sampling_args(num_images, steps, batch_size)
    t0 = time.perf_counter()
    name = pipeline if isinstance(pipeline, (str, os.PathLike)) else type(pipeline).__name__
    if isinstance(pipeline, (str, os.PathLike)):
        pipe = load_pipeline(str(pipeline), device=device, dtype=dtype, progress=progress)
    else:
        pipe = pipeline
        pipe.set_progress_bar_config(**bar_config(progress))
    t1 = time.perf_counter()
    images = sample_images(pipe, prompt, num_images, steps, seed, guidance_scale, height, width, batch_size)
    t2 = time.perf_counter()
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    width_digits = max(3, len(str(num_images - 1)))
    rel = [f"{IMAGES_DIR}/{i:0{width_digits}d}.png" for i in range(len(images))]
    for im, r in zip(images, rel):
        im.save(out / r, format="PNG")
    rewards = image_rewards(model, prompt, [out / r for r in rel], users)
    t3 = time.perf_counter()
    best = {u: rank(r).index(1) for u, r in rewards.items()}
    contact_sheet([out / r for r in rel], rewards, prompt).save(out / SHEET_NAME, format="PNG")
    settings = {"pipeline": str(name), "steps": steps, "seed": seed, "guidance_scale": guidance_scale, "height": height,
                "width": width, "num_images": num_images, "image_size": list(images[0].size),
                "device": str(getattr(pipe, "device", device)), "dtype": str(getattr(pipe, "dtype", dtype))}
    result = BestOfN(prompt, rel, rewards, best, [seed + i for i in range(num_images)], settings,
                     {"load": round(t1 - t0, 3), "sample": round(t2 - t1, 3), "score": round(t3 - t2, 3),
                      "total": round(time.perf_counter() - t0, 3)})
    (out / SCORES_NAME).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


__all__ = ["BestOfN", "best_of_n", "contact_sheet", "image_rewards", "load_pipeline", "rank", "ranked_table", "sample_images"]
