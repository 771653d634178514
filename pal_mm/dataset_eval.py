"""Evaluate a model on a dataset directory (``pal-mm eval --data DIR``): the seen users on
``seen_test``, and the new users by the few-shot protocol on the files ``pal-mm split`` (and the data
builders) write: for every n, the model fits the new users on ``unseen_n{n}_train.jsonl`` (``adapt``,
only their K logits) and is scored on ``unseen_n{n}_test.jsonl``. The model is not changed."""

from __future__ import annotations

import re
from pathlib import Path

from .config import AdaptConfig
from .data import PreferenceData
from .evaluation import evaluate
from .fewshot import FewShotSplit, adapt_curve

FEWSHOT_FILE = re.compile(r"unseen_n(\d+)_train\.jsonl")


def fewshot_sizes(directory: str | Path) -> list[int]:
    """The n of every ``unseen_n{n}_train.jsonl`` that has its ``_test`` file, ascending."""
    d = Path(directory)
    ns = [int(m.group(1)) for f in d.iterdir() if (m := FEWSHOT_FILE.fullmatch(f.name))]
    return sorted(n for n in ns if (d / f"unseen_n{n}_test.jsonl").is_file())


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def concat(a: PreferenceData, b: PreferenceData) -> PreferenceData:
    """The rows of ``a`` then ``b`` (the same columns and kinds)."""
    groups = None if a.groups is None or b.groups is None else a.groups + b.groups
    return PreferenceData(a.user_ids + b.user_ids, a.prompts + b.prompts, a.chosen + b.chosen, a.rejected + b.rejected,
                          groups, dict(a.kinds), a.source)


def evaluate_dataset(model, directory: str | Path, adapt_config: AdaptConfig | None = None, cache=None,
                     load=PreferenceData.load) -> dict:
    """``{"seen": evaluate(seen_test) (without per-user rows), "new_users": {n: {accuracy, n_pairs,
    n_users, per_group}}}``. ``load(path)`` reads a split file (the CLI renders conversations there)."""
    d = Path(directory)
    seen = evaluate(model, load(d / "seen_test.jsonl"), cache=cache)
    out = {"seen": {**{k: v for k, v in seen.items() if k != "per_user"}, "n_users": len(seen["per_user"])},
           "new_users": {}}
    for n in fewshot_sizes(d):
        train_file, test_file = d / f"unseen_n{n}_train.jsonl", d / f"unseen_n{n}_test.jsonl"
        if not (_nonempty(train_file) and _nonempty(test_file)):
            continue
        train, test = load(train_file), load(test_file)
        rows = len(train) + len(test)
        split = FewShotSplit(seed=0, rows=rows, test_pairs=None, train={n: list(range(len(train)))},
                             test={n: list(range(len(train), rows))}, users={n: len(train.users)})
        (result,) = adapt_curve(model, concat(train, test), [split], adapt_config or AdaptConfig(), cache=cache)
        out["new_users"][str(n)] = {"accuracy": result.accuracy, "n_pairs": result.n_pairs, "n_ties": result.n_ties,
                                    "n_users": result.n_users, "per_group": result.per_group}
    return out


__all__ = ["concat", "evaluate_dataset", "fewshot_sizes"]
