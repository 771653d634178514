"""``pal-mm score-images``: rank image files for a prompt and one user."""

from __future__ import annotations

from ..errors import PalMMError
from . import _common as c
from .score import parse_weights

EXAMPLES = """\
  pal-mm score-images --model runs/t2i --user alice --prompt "a cat on a sofa" a.png b.png c.png
  pal-mm score-images --model runs/t2i --weights 0.5,0.5 --prompt "a cat" *.png --json
"""


def add_parser(sub):
    p = c.add_command(sub, "score-images", "rank images for a prompt and a user (best first)", EXAMPLES)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to score")
    p.add_argument("--model", help="model directory (an image-text encoder)")
    p.add_argument("--user", help="a known user id")
    p.add_argument("--weights", help="explicit mixture weights w1,...,wK instead of --user")
    p.add_argument("--prompt", help="the text prompt (caption) the images were made for")
    c.add_json_flag(p, "a list of {image, reward, rank}, best first,")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model", "prompt")
    if not args.images:
        raise PalMMError("give at least one IMAGE file to score")
    if (args.user is None) == (args.weights is None):
        raise PalMMError("give exactly one of --user or --weights")
    weights = parse_weights(args.weights)
    from ..generation import image_rewards, ranked_table

    model = c.load_pal_model(args)
    rewards = image_rewards(model, args.prompt, args.images, [args.user] if args.user else (), weights=weights)
    table = ranked_table(args.images, next(iter(rewards.values())))
    if args.json is not None:
        c.emit_json(args.json, table)
        if args.json == "-":
            return 0
    print(f"{'rank':>4}  {'reward':>10}  image")
    for row in table:
        print(f"{row['rank']:>4}  {row['reward']:>+10.5f}  {row['image']}")
    return 0
