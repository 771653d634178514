"""``pal-mm eval --data DIR`` on a dataset directory (``pal-mm split``): seen users, then new users."""

from __future__ import annotations

from pathlib import Path

from . import _common as c


def run_dataset(args) -> int:
    from ..dataset_eval import evaluate_dataset

    model = c.load_model(args)
    load = lambda path: c.load_data(str(path), model.encoder)  # noqa: E731  (conversations rendered at load)
    model = c.as_pal(model, users=load(Path(args.data) / "seen_test.jsonl").users)
    metrics = evaluate_dataset(model, args.data, cache=c.make_cache(args), load=load)
    metrics.update(model=str(args.model), data=str(args.data))
    if args.json is not None:
        c.emit_json(args.json, metrics)
        if args.json == "-":
            return 0
    seen = metrics["seen"]
    print(f"seen users: accuracy {c.fmt(seen['accuracy'])} on {seen['n_pairs']} test pairs of {seen['n_users']} users")
    for group, m in seen.get("per_group", {}).items():
        print(f"  group {group}: accuracy {c.fmt(m['accuracy'])} ({m['n_pairs']} pairs)")
    if metrics["new_users"]:
        print("new users (adapted on n pairs each, tested on the rest):")
    for n, m in metrics["new_users"].items():
        groups = "".join(f", {g} {c.fmt(a)}" for g, a in m["per_group"].items())
        print(f"  n={n}: accuracy {c.fmt(m['accuracy'])} on {m['n_pairs']} pairs of {m['n_users']} users{groups}")
    return 0
