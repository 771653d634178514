"""``pal-mm eval``: accuracy and calibration (ECE, Brier) overall, per user and per group."""

from __future__ import annotations

from pathlib import Path

from ..errors import PalMMError
from . import _common as c

EXAMPLES = """\
  pal-mm eval --model runs/m --data test.jsonl
  pal-mm eval --model runs/m --data test.jsonl --json metrics.json     # all metrics to a file
  pal-mm eval --model runs/m --data test.jsonl --json                  # ... or to stdout
  pal-mm eval --model runs/m --data test.jsonl --plot reliability.png  # reliability diagram of P(chosen preferred)
"""


def add_parser(sub):
    p = c.add_command(sub, "eval", "evaluate a model on pairs of known users (accuracy, ECE, Brier)", EXAMPLES)
    p.add_argument("--model", help="model directory (or Hub repo id)")
    p.add_argument("--data", help="test pairs")
    c.add_json_flag(p, "all metrics")
    p.add_argument("--plot", metavar="FILE.png", help="write a reliability diagram (10 bins; every pair in both orders)")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model", "data")
    if args.plot is not None:
        if Path(args.plot).suffix.lower() != ".png":
            raise PalMMError(f"--plot {args.plot}: the reliability diagram is a .png file")
        c.check_writable_parent(Path(args.plot))
    from ..evaluation import evaluate

    model = c.load_pal_model(args)
    metrics = evaluate(model, c.load_data(args.data, model.encoder), cache=c.make_cache(args), probabilities=args.plot is not None)
    probs = metrics.pop("probabilities", None)
    metrics["model"] = str(args.model)
    metrics["data"] = str(args.data)
    if args.plot is not None:
        from ..calibration import plot_reliability

        plot_reliability({"all pairs": probs}, args.plot, title=f"Reliability of P(chosen preferred): {Path(str(args.data)).name}")
    if args.json is not None:
        c.emit_json(args.json, metrics)
        if args.json == "-":
            return 0
    print(f"accuracy {c.fmt(metrics['accuracy'])} on {metrics['n_pairs']} pairs ({metrics['n_ties']} ties), "
          f"{len(metrics['per_user'])} users; ECE {c.fmt(metrics['ece'])}, Brier {c.fmt(metrics['brier'])}")
    for group, m in metrics.get("per_group", {}).items():
        print(f"  group {group}: accuracy {c.fmt(m['accuracy'])} ({m['n_pairs']} pairs), ECE {c.fmt(m['ece'])}")
    if args.plot is not None:
        print(f"reliability diagram: {args.plot}")
    return 0
