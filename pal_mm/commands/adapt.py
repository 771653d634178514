"""``pal-mm adapt``: fit new users' mixture weights from a few pairs each."""

from __future__ import annotations

from ..config import AdaptConfig
from . import _common as c

EXAMPLES = """\
  pal-mm adapt --model runs/m --data new_users.jsonl --out runs/m_plus_new
  pal-mm adapt --model runs/m --data more.jsonl --out runs/m --overwrite      # in place
  pal-mm adapt --model rm_alice --data new_users.jsonl --out runs/m2   # an exported model: new users on its prototypes
"""


def add_parser(sub):
    p = c.add_command(sub, "adapt", "add new users to a trained model from a few pairs each (only K numbers per user)", EXAMPLES)
    p.add_argument("--model", help="trained model directory, exported reward model (its prototypes) or Hub repo id")
    p.add_argument("--data", help="pairs of the new users")
    p.add_argument("--out", help="output model directory (may equal --model with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_runtime_flags(p)
    c.add_fields(p.add_argument_group("fitting"), AdaptConfig)
    return p


def run(args) -> int:
    c.require(args, "model", "data", "out")
    cfg = c.config_from_args(AdaptConfig, args)
    c.check_output(args.out, args.overwrite)
    from ..adaptation import adapt

    model = c.load_pal_model(args)
    data = c.load_data(args.data, model.encoder)
    before = len(model.users)
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        adapt(model, data, cfg, cache=c.make_cache(args))
        model.data_info["adapted_users"] = model.data_info.get("adapted_users", 0) + len(model.users) - before
        model.write_files(tmp)
        c.write_run_config(tmp, args)
    print(f"added {len(model.users) - before} users ({len(data)} pairs) -> {len(model.users)} users; saved to {args.out}")
    return 0
