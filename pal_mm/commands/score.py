"""``pal-mm score``: rewards of one or more responses to a prompt, for one user."""

from __future__ import annotations

import math

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm score --model runs/m --user alice --prompt "Summarise: ..." --response "short" --response "long"
  pal-mm score --model runs/m --weights 0.2,0.8 --prompt "..." --response "..." --json
  pal-mm score --model rm_alice --prompt "..." --response "..."        # an exported one-user model: no --user
  pal-mm score --model runs/vectors --user u0 --prompt=-0.1,0.3 --response=0.5,0.2   # precomputed vectors
  pal-mm score --model rm_alice --prompt '[{"role": "user", "content": "Hi?"}]' --response "Hello!"   # a conversation
"""


def add_parser(sub):
    p = c.add_command(sub, "score", "score responses to a prompt for a user", EXAMPLES)
    p.add_argument("--model", help="model directory, exported reward model or Hub repo id")
    p.add_argument("--user", help="a known user id")
    p.add_argument("--weights", help="explicit mixture weights w1,...,wK instead of --user")
    p.add_argument("--prompt", help="the prompt: text, a JSON list of {role, content} messages (a conversation, rendered as "
                                    "in training), or comma-separated floats for the precomputed encoder "
                                    "(write --prompt=-0.1,... when it starts with '-')")
    p.add_argument("--response", action="append", default=[], help="a response: text or a JSON conversation (its last "
                                                                    "assistant message is scored); repeatable")
    c.add_json_flag(p, '{"rewards": [...], "std": [...]} (std: posterior standard deviation of each reward; '
                       'null when the model keeps no posterior)')
    c.add_runtime_flags(p)
    return p


def parse_vector(text: str, flag: str) -> list[float]:
    from ..mixture import parse_floats

    try:
        return parse_floats(text, flag)
    except PalMMError:
        raise PalMMError(f"{flag}: the precomputed encoder takes comma-separated floats (finite), got {text[:40]!r}") from None


def parse_conversation(text):
    """A JSON list of ``{"role", "content"}`` messages is a conversation (rendered as in training);
    any other value is returned unchanged."""
    if not isinstance(text, str) or not text.lstrip().startswith("[{"):
        return text
    import json

    from ..conversation import is_conversation

    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if is_conversation(value) else text


def parse_weights(text) -> list[float] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):  # from a YAML config
        text = ",".join(str(x) for x in text)
    return parse_vector(str(text), "--weights")


def run(args) -> int:
    c.require(args, "model", "prompt")
    if not args.response:
        raise PalMMError("give at least one --response")
    weights = parse_weights(args.weights)
    from ..export import PersonalRewardModel

    model = c.load_model(args)
    prompt, responses = args.prompt, list(args.response)
    if model.encoder.prompt_modality == "vector":
        prompt = parse_vector(prompt, "--prompt")
    if model.encoder.item_modality == "vector":
        responses = [parse_vector(r, "--response") for r in responses]
    prompt, responses = parse_conversation(prompt), [parse_conversation(r) for r in responses]
    user = args.user
    if isinstance(model, PersonalRewardModel):
        if user is not None or weights is not None:
            raise PalMMError(f"{args.model}: a reward model exported for {model.describe()}; drop --user/--weights")
        rewards, std = model.reward(prompt, responses), None
    else:
        if user is None and weights is None and len(model.users) == 1:
            user = model.users[0]
        rewards = model.reward(prompt, responses, user=user, weights=weights)
        std = model.reward_std(prompt, responses, user=user, weights=weights) if args.json is not None else None
    if args.json is not None:
        c.emit_json(args.json, {"rewards": rewards, "std": std})
        if args.json == "-":
            return 0
    for text, r in zip(args.response, rewards):
        print(f"{r:+.6f}\t{text}" if math.isfinite(r) else f"n/a\t{text}")
    return 0
