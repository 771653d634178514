"""``pal-mm generate``: best-of-N per user with a diffusers pipeline (sample, score, contact sheet)."""

from __future__ import annotations

from ..generation import DTYPES, best_of_n
from ..model import PALModel
from . import _common as c


def add_parser(sub):
    p = sub.add_parser("generate", help="sample N images with a diffusers pipeline and pick each user's best")
    c.add_config_flag(p)
    p.add_argument("--pipeline", help="diffusers pipeline: Hub id (e.g. stabilityai/sd-turbo) or local directory")
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--num-images", type=int, default=4, help="images to sample (N)")
    p.add_argument("--model", help="PAL model directory (an image-text encoder)")
    p.add_argument("--user", action="append", default=[], help="a known user id (repeatable)")
    p.add_argument("--out", help="output directory: images/*.png, scores.json, contact_sheet.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default: the pipeline's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the pipeline's)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=None, help="images per pipeline call (default: all N)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: float16 on CUDA, float32 otherwise")
    return p


def run(args) -> int:
    c.require(args, "pipeline", "prompt", "model", "out")
    model = PALModel.from_pretrained(args.model)
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        result = best_of_n(args.pipeline, args.prompt, args.num_images, model, args.user, tmp, steps=args.steps,
                           seed=args.seed, guidance_scale=args.guidance_scale, height=args.height, width=args.width,
                           batch_size=args.batch_size, device=args.device, dtype=args.dtype)
        c.write_run_config(tmp, args)
    print(f"sampled {len(result.images)} images in {result.timings_s['sample']:.1f}s -> {args.out}")
    for user, idx in result.best.items():
        print(f"  {user}: best {result.images[idx]} (reward {result.rewards[user][idx]:+.4f})")
    return 0
