"""``pal-mm adapt``: fit new users' mixture weights from a few pairs each."""

from __future__ import annotations

from ..adaptation import adapt
from ..config import AdaptConfig
from ..model import PALModel
from . import _common as c


def add_parser(sub):
    p = sub.add_parser("adapt", help="add new users to a trained model from a few pairs each")
    c.add_config_flag(p)
    p.add_argument("--model", help="trained model directory")
    p.add_argument("--data", help="pairs of the new users")
    p.add_argument("--out", help="output model directory (may equal --model with --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    c.add_cache_flag(p)
    d = AdaptConfig()
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (fixed; no model selection)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--l2", type=float, default=d.l2, help="pull logits toward the uniform mixture")
    p.add_argument("--init", default=d.init, choices=["zeros", "random"])
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def run(args) -> int:
    c.require(args, "model", "data", "out")
    model = PALModel.from_pretrained(args.model)
    data = c.load_data(args.data, model.encoder)
    before = len(model.users)
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        adapt(model, data, AdaptConfig(steps=args.steps, lr=args.lr, l2=args.l2, init=args.init, seed=args.seed), cache=c.make_cache(args))
        model.data_info["adapted_users"] = model.data_info.get("adapted_users", 0) + len(model.users) - before
        model.write_files(tmp)
        c.write_run_config(tmp, args)
    print(f"added {len(model.users) - before} users ({len(data)} pairs) -> {len(model.users)} users; saved to {args.out}")
    return 0
