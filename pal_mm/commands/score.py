"""``pal-mm score``: rewards of one or more responses to a prompt, for one user."""

from __future__ import annotations

import json

from ..errors import PalMMError
from ..model import PALModel
from . import _common as c


def add_parser(sub):
    p = sub.add_parser("score", help="score responses to a prompt for a user")
    c.add_config_flag(p)
    p.add_argument("--model", help="model directory")
    p.add_argument("--user", help="a known user id")
    p.add_argument("--weights", help="explicit mixture weights w1,...,wK instead of --user")
    p.add_argument("--prompt", help="the prompt (comma-separated floats for the precomputed encoder; write --prompt=-0.1,... when it starts with '-')")
    p.add_argument("--response", action="append", default=[], help="a response (repeatable)")
    p.add_argument("--json", action="store_true", help='print {"rewards": [...]}')
    return p


def parse_vector(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise PalMMError(f"{flag}: the precomputed encoder takes comma-separated floats, got {text[:40]!r}") from None


def parse_weights(text: str | None) -> list[float] | None:
    return None if text is None else parse_vector(text, "--weights")


def run(args) -> int:
    c.require(args, "model", "prompt")
    if not args.response:
        raise PalMMError("give at least one --response")
    from ..export import PersonalRewardModel, is_personal_model_dir

    personal = is_personal_model_dir(args.model)  # an exported one-user model (`pal-mm export`)
    model = PersonalRewardModel.from_pretrained(args.model) if personal else PALModel.from_pretrained(args.model)
    prompt, responses = args.prompt, list(args.response)
    if model.encoder.prompt_modality == "vector":
        prompt = parse_vector(prompt, "--prompt")
    if model.encoder.item_modality == "vector":
        responses = [parse_vector(r, "--response") for r in responses]
    user = args.user
    weights = parse_weights(args.weights)
    if personal:
        if user is not None or weights is not None:
            raise PalMMError(f"{args.model}: a reward model exported for {model.describe()}; drop --user/--weights")
        rewards = model.reward(prompt, responses)
    else:
        if user is None and weights is None and len(model.users) == 1:
            user = model.users[0]
        rewards = model.reward(prompt, responses, user=user, weights=weights)
    if args.json:
        print(json.dumps({"rewards": rewards}))
    else:
        for text, r in zip(args.response, rewards):
            print(f"{r:+.6f}\t{text}")
    return 0
