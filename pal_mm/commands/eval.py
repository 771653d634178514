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
  pal-mm eval --model rm_alice --data test.jsonl      # an exported model: its mixture for every user
  pal-mm eval --model runs/m --data data/             # a `pal-mm split` directory: seen and new users
"""


def add_parser(sub):
    p = c.add_command(sub, "eval", "evaluate a model on pairs of known users (accuracy, ECE, Brier)", EXAMPLES)
    p.add_argument("--model", help="model directory, exported reward model or Hub repo id")
    p.add_argument("--data", help="test pairs, or a dataset directory (`pal-mm split`): seen_test, then the new users "
                                  "adapted on unseen_n{N}_train and tested on unseen_n{N}_test")
    c.add_json_flag(p, "all metrics")
    p.add_argument("--plot", metavar="FILE.png", help="write a reliability diagram of P(chosen preferred) (10 bins; every "
                                                      "pair in both orders; with a data file)")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model", "data")
    from ..evaluation import evaluate
    from ..splits import is_dataset_dir

    if args.plot is not None:
        if Path(args.plot).suffix.lower() != ".png":
            raise PalMMError(f"--plot {args.plot}: the reliability diagram is a .png file")
        if is_dataset_dir(args.data):
            raise PalMMError("--plot takes a data file, not a dataset directory")
        c.check_writable_parent(Path(args.plot))
    if is_dataset_dir(args.data):  # a `pal-mm split` directory: seen users, then new users by few-shot adaptation
        from ._dataset import run_dataset

        return run_dataset(args)

    model = c.load_model(args)  # a PAL model, or an exported one: every user of the data gets its mixture
    data = c.load_data(args.data, model.encoder)
    model = c.as_pal(model, users=data.users)
    metrics = evaluate(model, data, cache=c.make_cache(args), probabilities=args.plot is not None)
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
