"""``pal-mm score-images``: rank image files for a prompt and one user."""

from __future__ import annotations

from ..errors import PalMMError
from . import _common as c
from .score import parse_weights

EXAMPLES = """\
  pal-mm score-images --model runs/t2i --user alice --prompt "a cat on a sofa" a.png b.png c.png
  pal-mm score-images --model runs/t2i --weights 0.5,0.5 --prompt "a cat" *.png --json
  pal-mm score-images --model rm_alice --prompt "a cat" *.png      # an exported model: no --user
"""


def add_parser(sub):
    p = c.add_command(sub, "score-images", "rank images for a prompt and a user (best first)", EXAMPLES)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to score")
    p.add_argument("--model", help="model directory or exported reward model (an image-text encoder)")
    p.add_argument("--user", help="a known user id (not for an exported model)")
    p.add_argument("--weights", help="explicit mixture weights w1,...,wK instead of --user")
    p.add_argument("--prompt", help="the text prompt (caption) the images were made for")
    c.add_json_flag(p, "a list of {image, reward, rank}, best first,")
    c.add_runtime_flags(p)
    return p


def scoring_model(args, users: list[str], weights=None):
    """(model, users) for image scoring: a PAL model with the given users (or weights); an exported
    model takes neither and is scored under its own name (its user, or its mixture)."""
    from ..export import PersonalRewardModel, as_pal_model

    model = c.load_model(args)
    if not isinstance(model, PersonalRewardModel):
        return model, users
    if any(u != model.user for u in users) or weights is not None:
        raise PalMMError(f"{args.model}: a reward model exported for {model.describe()}; drop --user/--weights")
    label = model.user or model.describe()
    return as_pal_model(model, [label]), [label]


def run(args) -> int:
    c.require(args, "model", "prompt")
    if not args.images:
        raise PalMMError("give at least one IMAGE file to score")
    if args.user is not None and args.weights is not None:
        raise PalMMError("give --user or --weights, not both")
    weights = parse_weights(args.weights)
    from ..generation import image_rewards, ranked_table

    model, users = scoring_model(args, [args.user] if args.user else [], weights)
    if not users and weights is None:
        raise PalMMError("give exactly one of --user or --weights")
    rewards = image_rewards(model, args.prompt, args.images, users if weights is None else (), weights=weights)
    table = ranked_table(args.images, next(iter(rewards.values())))
    if args.json is not None:
        c.emit_json(args.json, table)
        if args.json == "-":
            return 0
    print(f"{'rank':>4}  {'reward':>10}  image")
    for row in table:
        print(f"{row['rank']:>4}  {row['reward']:>+10.5f}  {row['image']}")
    return 0
