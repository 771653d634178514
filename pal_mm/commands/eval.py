"""``pal-mm eval``: accuracy overall, per user and per group."""

from __future__ import annotations

from encoders.atomic import write_json

from ..evaluation import evaluate
from ..model import PALModel
from . import _common as c


def add_parser(sub):
    p = sub.add_parser("eval", help="evaluate a model on pairs of known users")
    c.add_config_flag(p)
    p.add_argument("--model", help="model directory")
    p.add_argument("--data", help="test pairs")
    p.add_argument("--json", help="write all metrics to this JSON file")
    c.add_cache_flag(p)
    return p


def run(args) -> int:
    c.require(args, "model", "data")
    model = PALModel.from_pretrained(args.model)
    metrics = evaluate(model, c.load_data(args.data, model.encoder), cache=c.make_cache(args))
    metrics["model"] = str(args.model)
    metrics["data"] = str(args.data)
    if args.json:
        write_json(args.json, metrics)
    print(f"accuracy {metrics['accuracy']:.4f} on {metrics['n_pairs']} pairs ({metrics['n_ties']} ties), {len(metrics['per_user'])} users")
    for group, m in metrics.get("per_group", {}).items():
        print(f"  group {group}: accuracy {m['accuracy']:.4f} ({m['n_pairs']} pairs)")
    return 0
