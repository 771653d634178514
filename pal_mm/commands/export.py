"""``pal-mm export``: fix one user's mixture weight and write a standard reward model."""

from __future__ import annotations

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm export --model runs/m --user alice --out rm_alice
  pal-mm export --model runs/m --weights 0.3,0.7 --out rm_mix
  pal-mm export --model runs/m --prototype 0 --out rm_proto0
"""


def add_parser(sub):
    p = c.add_command(sub, "export", "export one user's standard reward model (prompt, response) -> reward", EXAMPLES)
    p.add_argument("--model", help="PAL model directory (or Hub repo id)")
    who = p.add_argument_group("whose reward (exactly one; a single-rm model needs none)")
    who.add_argument("--user", help="a user id known to the model")
    who.add_argument("--weights", help="mixture weights w1,...,wK on the simplex (non-negative, sum 1)")
    who.add_argument("--logits", help="mixture logits l1,...,lK (weights = softmax(logits)); write --logits=-1,0,1 "
                                      "when the first one is negative")
    who.add_argument("--prototype", help="one prototype, 0-based index k in 0..K-1 (one-hot weights)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return p


def run(args) -> int:
    c.require(args, "model", "out")
    for flag in ("weights", "logits"):
        value = getattr(args, flag)
        if isinstance(value, (list, tuple)):  # from a YAML config
            setattr(args, flag, ",".join(str(x) for x in value))
    if args.user is not None and not str(args.user).strip():
        raise PalMMError("--user is empty")
    c.check_output(args.out, args.overwrite)
    from ..export import export_personal_model

    model = export_personal_model(args.model, user=None if args.user is None else str(args.user), weights=args.weights,
                                  logits=args.logits, prototype=args.prototype)
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        model.write_files(tmp)
    ref = model.export_config["encoder"]
    bundled = "fine-tuned weights bundled" if ref.get("fine_tuned") else "referenced, not bundled"
    weights = "" if model.mixture["source"] == "weights" else " (weights [" + ", ".join(f"{w:.4f}" for w in model.weights) + "])"
    print(f"exported {model.config.model_type} K={model.config.k} reward model for {model.describe()}{weights} "
          f"to {args.out}; encoder {ref['name']} ({bundled})")
    return 0
