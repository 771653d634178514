"""``pal-mm generate``: best-of-N per user with a diffusers pipeline (sample, score, contact sheet)."""

from __future__ import annotations

from . import _common as c

EXAMPLES = """\
  pal-mm generate --pipeline stabilityai/sd-turbo --prompt "a cat on a sofa" --num-images 8 \\
      --model runs/t2i --user alice --user bob --out samples/ --steps 1 --guidance-scale 0
  pal-mm generate --pipeline stabilityai/sd-turbo --prompt "a cat" --model rm_alice --out samples/   # exported model
"""


def add_parser(sub):
    p = c.add_command(sub, "generate", "sample N images with a diffusers pipeline and pick each user's best", EXAMPLES)
    p.add_argument("--pipeline", help="diffusers pipeline: Hub id (e.g. stabilityai/sd-turbo) or local directory")
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--num-images", type=c.number_type(int), default=4, help="images to sample, N (default: 4)")
    p.add_argument("--model", help="PAL model directory or exported reward model (an image-text encoder)")
    p.add_argument("--user", action="append", default=[], help="a known user id (repeatable; none for an exported model)")
    p.add_argument("--out", help="output directory: images/*.png, scores.json, contact_sheet.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--steps", type=c.number_type(int), default=None, help="inference steps (default: the pipeline's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the pipeline's)")
    p.add_argument("--height", type=c.number_type(int), default=None, help="image height (default: the pipeline's)")
    p.add_argument("--width", type=c.number_type(int), default=None, help="image width (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: 0)")
    p.add_argument("--batch-size", type=c.number_type(int), default=None, help="images per pipeline call (default: all N)")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "pipeline", "prompt", "model", "out")
    c.check_output(args.out, args.overwrite)
    from ..generation import best_of_n
    from .score_images import scoring_model

    model, users = scoring_model(args, list(args.user))
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        result = best_of_n(args.pipeline, args.prompt, args.num_images, model, users, tmp, steps=args.steps,
                           seed=args.seed, guidance_scale=args.guidance_scale, height=args.height, width=args.width,
                           batch_size=args.batch_size, device=args.device, dtype=args.dtype)
        c.write_run_config(tmp, args)
    print(f"sampled {len(result.images)} images in {result.timings_s['sample']:.1f}s -> {args.out}")
    for user, idx in result.best.items():
        print(f"  {user}: best {result.images[idx]} (reward {result.rewards[user][idx]:+.4f})")
    return 0
