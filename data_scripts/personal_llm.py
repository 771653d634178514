"""PersonalLLM (Zollo et al., ICLR 2025) with simulated users, as LoRe builds it.

**Source.** The Hub dataset ``namkoong-lab/PersonalLLM`` (splits ``train`` and ``test``) or a local folder
with ``train.*`` and ``test.*`` files (.jsonl / .json / .parquet / .csv). A row holds ``prompt``,
``response_1`` .. ``response_8`` and every response's score by ten reward models,
``response_{i}_{model}`` for ``model`` in :data:`MODEL_NAMES`. A prompt with a missing or non-numeric
score or an empty response is skipped (counted).

**Users** (LoRe's recipe): a user is a weight vector ``w ~ Dirichlet(0.1, ..., 0.1)`` over the ten
reward models (numpy ``default_rng(seed)``); their score of a response is ``w . scores`` and a pair for
a prompt is the user's best response (chosen) against their worst (rejected). A user's ``group`` is
the reward model with their largest weight.

**Splits.** ``--seen-users`` (default 1000, LoRe's) seen users each get distinct random train prompts:
``--train-fraction`` of them (default 0.005, LoRe's: about 47), split 90/10 into ``seen_train`` /
``seen_val`` (seed 42), and ``--test-pairs`` test prompts for ``seen_test`` (default 50; LoRe scores every
test prompt, which would be a million rows). ``--unseen-users`` (default 500) new users get
``--unseen-fraction`` of the train prompts (default 0.001, LoRe's: about 9) as their few-shot pool
(``unseen_train.jsonl``) and ``--test-pairs`` test prompts (``unseen_test.jsonl``); ``unseen.jsonl`` holds
both, pool first.

    python -m data_scripts.personal_llm --out data/personal_llm [--source namkoong-lab/PersonalLLM | DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from pal_mm.errors import DataError
from pal_mm.ingest import DATA_SUFFIXES, iter_rows, source_kind

from .cli import run_builder
from .layout import split_train_val, write_splits

HUB_NAME = "namkoong-lab/PersonalLLM"
MODEL_NAMES = ("gemma_2b", "gemma_7b", "mistral_raft", "llama3_sfairx", "oasst_deberta_v3", "beaver_7b",
               "oasst_pythia_7b", "oasst_pythia_1b", "mistral_ray", "mistral_weqweasdas")
N_RESPONSES = 8
ALPHA = 0.1


def read_split(source: str, split: str) -> tuple[list[str], list[list[str]], np.ndarray, int]:
    """(prompts, responses (P, 8), scores (P, 8, 10), prompts skipped) of one split."""
    if source_kind(source) == "dir":
        files = sorted(p for p in Path(source).expanduser().iterdir()
                       if p.is_file() and p.name.startswith(split) and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{source}: no {split}.* data file")
        sources = [iter_rows(f) for f in files]
    else:
        sources = [iter_rows(source, split, streaming=False)]
    prompts, responses, scores, skipped = [], [], [], 0
    for rows, _, label in sources:
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DataError(f"{label}: row {i}: field 'prompt': expected a string")
            texts = [row.get(f"response_{j}") for j in range(1, N_RESPONSES + 1)]
            grid = [[row.get(f"response_{j}_{m}") for m in MODEL_NAMES] for j in range(1, N_RESPONSES + 1)]
            ok = all(isinstance(t, str) and t.strip() for t in texts) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for r in grid for x in r)
            if not ok:
                skipped += 1
                continue
            prompts.append(row["prompt"])
            responses.append(texts)
            scores.append(grid)
    if not prompts:
        raise DataError(f"{source}: split {split}: no prompt with 8 responses and all {len(MODEL_NAMES)} scores")
    return prompts, responses, np.asarray(scores, dtype=np.float64), skipped


def user_pairs(user: str, group: str, w: np.ndarray, idx: np.ndarray, split_data) -> list[dict]:
    """The user's best-vs-worst pair on each prompt ``idx`` of ``split_data``."""
    prompts, responses, scores, _ = split_data
    rows = []
    for p in idx.tolist():
        s = scores[p] @ w  # (8,)
        best, worst = int(np.argmax(s)), int(np.argmin(s))
        if best != worst:
            rows.append({"user_id": user, "prompt": prompts[p], "chosen": responses[p][best], "rejected": responses[p][worst],
                         "group": group})
    return rows


def build(source: str, out_dir: str, seen_users: int = 1000, unseen_users: int = 500, train_fraction: float = 0.005,
          unseen_fraction: float = 0.001, test_pairs: int = 50, seed: int = 0) -> dict:
    train, test = read_split(source, "train"), read_split(source, "test")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet([ALPHA] * len(MODEL_NAMES), size=seen_users + unseen_users)
    n_train, n_test = len(train[0]), len(test[0])
    k_seen, k_new = max(1, int(train_fraction * n_train)), max(1, int(unseen_fraction * n_train))
    k_test = min(test_pairs, n_test)
    files = {"seen_train.jsonl": [], "seen_val.jsonl": [], "seen_test.jsonl": [], "unseen_train.jsonl": [], "unseen_test.jsonl": []}
    for u, w in enumerate(weights):
        is_seen = u < seen_users
        user = f"{'user' if is_seen else 'new'}{u if is_seen else u - seen_users:04d}"
        group = f"rm_{MODEL_NAMES[int(np.argmax(w))]}"
        tr = user_pairs(user, group, w, rng.choice(n_train, size=k_seen if is_seen else k_new, replace=False), train)
        te = user_pairs(user, group, w, rng.choice(n_test, size=k_test, replace=False), test)
        if is_seen:
            files["seen_train.jsonl"] += tr
            files["seen_test.jsonl"] += te
        else:
            files["unseen_train.jsonl"] += tr
            files["unseen_test.jsonl"] += te
    files["seen_train.jsonl"], files["seen_val.jsonl"] = split_train_val(files["seen_train.jsonl"])
    files["unseen.jsonl"] = files["unseen_train.jsonl"] + files["unseen_test.jsonl"]
    meta = {"name": "personal_llm", "kind": "real", "source": source, "seed": seed,
            "protocol": {"users": f"Dirichlet({ALPHA}) weights over {len(MODEL_NAMES)} reward models; best vs worst response",
                         "seen": f"{seen_users} users x {k_seen} train prompts (90/10 train/val) + {k_test} test prompts",
                         "unseen": f"{unseen_users} users x {k_new} train prompts (few-shot pool) + {k_test} test prompts"},
            "prompts": {"train": n_train, "test": n_test, "skipped": {"train": train[3], "test": test[3]}},
            "reward_models": list(MODEL_NAMES)}
    return write_splits(out_dir, files, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_scripts.personal_llm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output dataset directory")
    ap.add_argument("--source", default=HUB_NAME, help=f"Hub name or local folder with train.* / test.* (default {HUB_NAME})")
    ap.add_argument("--seen-users", type=int, default=1000)
    ap.add_argument("--unseen-users", type=int, default=500)
    ap.add_argument("--train-fraction", type=float, default=0.005, help="share of train prompts per seen user (LoRe: 0.005)")
    ap.add_argument("--unseen-fraction", type=float, default=0.001, help="share of train prompts per new user (LoRe: 0.001)")
    ap.add_argument("--test-pairs", type=int, default=50, help="test prompts per user")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    def body():
        meta = build(a.source, a.out, a.seen_users, a.unseen_users, a.train_fraction, a.unseen_fraction, a.test_pairs, a.seed)
        print(f"wrote {a.out}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))

    return run_builder(body)


if __name__ == "__main__":
    sys.exit(main())
