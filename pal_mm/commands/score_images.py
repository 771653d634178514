"""``pal-mm score-images``: rank image files for a prompt and one user."""

from __future__ import annotations

import json

from ..errors import PalMMError
from ..generation import image_rewards, ranked_table
from ..model import PALModel
from . import _common as c
from .score import parse_weights


def add_parser(sub):
    p = sub.add_parser("score-images", help="rank images for a prompt and a user (best first)")
    c.add_config_flag(p)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to score")
    p.add_argument("--model", help="model directory (an image-text encoder)")
    p.add_argument("--user", help="a known user id")
    p.add_argument("--weights", help="explicit mixture weights w1,...,wK instead of --user")
    p.add_argument("--prompt", help="the text prompt (caption) the images were made for")
    p.add_argument("--json", action="store_true", help="print a JSON list of {image, reward, rank}, best first")
    return p


def run(args) -> int:
    c.require(args, "model", "prompt")
    if not args.images:
        raise PalMMError("give at least one IMAGE file to score")
    if (args.user is None) == (args.weights is None):
        raise PalMMError("give exactly one of --user or --weights")
    model = PALModel.from_pretrained(args.model)
    weights = parse_weights(args.weights)
    rewards = image_rewards(model, args.prompt, args.images, [args.user] if args.user else (), weights=weights)
    table = ranked_table(args.images, next(iter(rewards.values())))
    if args.json:
        print(json.dumps(table))
    else:
        print(f"{'rank':>4}  {'reward':>10}  image")
        for row in table:
            print(f"{row['rank']:>4}  {row['reward']:>+10.5f}  {row['image']}")
    return 0
