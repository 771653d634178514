"""``pal-mm eval``: accuracy overall, per user and per group."""

from __future__ import annotations

from . import _common as c

EXAMPLES = """\
  pal-mm eval --model runs/m --data test.jsonl
  pal-mm eval --model runs/m --data test.jsonl --json metrics.json     # all metrics to a file
  pal-mm eval --model runs/m --data test.jsonl --json                  # ... or to stdout
  pal-mm eval --model rm_alice --data test.jsonl      # an exported model: its mixture for every user
  pal-mm eval --model runs/m --data data/             # a `pal-mm split` directory: seen and new users
"""


def add_parser(sub):
    p = c.add_command(sub, "eval", "evaluate a model on pairs of known users", EXAMPLES)
    p.add_argument("--model", help="model directory, exported reward model or Hub repo id")
    p.add_argument("--data", help="test pairs, or a dataset directory (`pal-mm split`): seen_test, then the new users "
                                  "adapted on unseen_n{N}_train and tested on unseen_n{N}_test")
    c.add_json_flag(p, "all metrics")
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    c.require(args, "model", "data")
    from ..evaluation import evaluate
    from ..splits import is_dataset_dir

    if is_dataset_dir(args.data):  # a `pal-mm split` directory: seen users, then new users by few-shot adaptation
        from ._dataset import run_dataset

        return run_dataset(args)

    model = c.load_model(args)  # a PAL model, or an exported one: every user of the data gets its mixture
    data = c.load_data(args.data, model.encoder)
    model = c.as_pal(model, users=data.users)
    metrics = evaluate(model, data, cache=c.make_cache(args))
    metrics["model"] = str(args.model)
    metrics["data"] = str(args.data)
    if args.json is not None:
        c.emit_json(args.json, metrics)
        if args.json == "-":
            return 0
    print(f"accuracy {c.fmt(metrics['accuracy'])} on {metrics['n_pairs']} pairs ({metrics['n_ties']} ties), "
          f"{len(metrics['per_user'])} users")
    for group, m in metrics.get("per_group", {}).items():
        print(f"  group {group}: accuracy {c.fmt(m['accuracy'])} ({m['n_pairs']} pairs)")
    return 0
