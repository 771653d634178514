"""Synthetic preferences from a ground-truth PAL-A model (the paper's synthetic study).

K* true prototype points p_1..p_K* on the unit sphere in R^d; user u has simplex weights w_u
(Dirichlet); the user's ideal point is a_u = sum_k w_uk p_k. A comparison shows two random items
x, x' on the unit sphere (and a random prompt vector that carries no signal); the user prefers the
item closer to a_u, with Bradley-Terry noise: P(x preferred) = sigmoid(beta * (|x' - a_u| - |x - a_u|)).
Items lie on a sphere so that no direction is preferred by everybody: all the signal is in the
users' ideal points, which is what separates K = 1 from K = K*.

Rows are written in pal-mm's canonical format with vectors as lists of floats; ``main`` writes a
dataset directory (:mod:`pal_mm.splits` layout, ``"kind": "custom"``). The user with row
``u`` of ``weights`` gets the id :func:`user_id` ``(u, prefix)``; :func:`ideal_points_by_id` and
:func:`bayes_correct` give the ground truth (the Bayes/oracle rule: prefer the item closer to the
true ideal point) for any encoded pairs, e.g. as a ceiling on the accuracy of a learned model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_population(k_true: int, dim: int, num_users: int, seed: int, alpha: float = 0.3):
    """True prototypes (K*, d) and user weights (num_users, K*)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(k_true, dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    weights = rng.dirichlet([alpha] * k_true, size=num_users)
    return protos, weights


def user_id(u: int, prefix: str = "user") -> str:
    return f"{prefix}{u:03d}"


def ideal_points_by_id(protos, weights, user_prefix: str = "user") -> dict:
    """user id -> true ideal point a_u = w_u^T P (d,)."""
    return {user_id(u, user_prefix): w @ protos for u, w in enumerate(weights)}


def bayes_correct(ideal_by_id: dict, user_ids, chosen, rejected, beta: float | None = None):
    """(n,) per-pair correctness of the oracle rule (chosen closer to the user's true ideal point
    than rejected), for label arrays chosen/rejected (n, d). With ``beta``, also return the
    expected accuracy of that rule under the generator's noise, mean(max(p, 1 - p))."""
    chosen, rejected = np.asarray(chosen, dtype=np.float64), np.asarray(rejected, dtype=np.float64)
    ideal = np.stack([ideal_by_id[u] for u in user_ids])
    d_c = np.linalg.norm(chosen - ideal, axis=1)
    d_r = np.linalg.norm(rejected - ideal, axis=1)
    correct = d_c < d_r
    if beta is None:
        return correct
    p = 1 / (1 + np.exp(-beta * np.abs(d_r - d_c)))
    return correct, float(p.mean())


def make_pairs(protos, weights, pairs_per_user: int, seed: int, prompt_dim: int = 8, beta: float = 20.0,
               user_prefix: str = "user") -> list[dict]:
    """``pairs_per_user`` comparisons for every user, labelled by the noisy ideal-point rule."""
    rng = np.random.default_rng(seed)
    dim = protos.shape[1]
    rows = []
    for u, w in enumerate(weights):
        ideal = w @ protos
        x = rng.normal(size=(pairs_per_user, 2, dim))
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        dist = np.linalg.norm(x - ideal, axis=-1)  # (n, 2)
        p_first = 1 / (1 + np.exp(-beta * (dist[:, 1] - dist[:, 0])))
        first_wins = rng.random(pairs_per_user) < p_first
        prompts = rng.normal(size=(pairs_per_user, prompt_dim))
        for i in range(pairs_per_user):
            a, b = (x[i, 0], x[i, 1]) if first_wins[i] else (x[i, 1], x[i, 0])
            rows.append({"user_id": user_id(u, user_prefix), "prompt": _r(prompts[i]), "chosen": _r(a), "rejected": _r(b),
                         "group": f"proto{int(np.argmax(w))}"})
    return rows


def _r(v) -> list[float]:
    return [round(float(t), 5) for t in v]


def main(argv=None) -> int:
    from pal_mm.splits import write_dataset

    from .cli import run_builder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output dataset directory (pal_mm.splits layout)")
    ap.add_argument("--k-true", type=int, default=3)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--seen-users", type=int, default=50)
    ap.add_argument("--unseen-users", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=100, help="pairs per seen user (train); val/test get a quarter each")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    def body():
        protos, w = make_population(a.k_true, a.dim, a.seen_users + a.unseen_users, a.seed)
        seen, unseen = w[: a.seen_users], w[a.seen_users :]
        splits = {
            "seen_train": make_pairs(protos, seen, a.pairs, a.seed + 1),
            "seen_val": make_pairs(protos, seen, a.pairs // 4, a.seed + 2),
            "seen_test": make_pairs(protos, seen, a.pairs // 4, a.seed + 3),
            "unseen": make_pairs(protos, unseen, a.pairs, a.seed + 4, user_prefix="new"),
        }
        meta = {"name": "synthetic", "kind": "custom", "k_true": a.k_true, "dim": a.dim, "seed": a.seed,
                "users_seen": a.seen_users, "users_unseen": a.unseen_users}
        write_dataset(Path(a.out), splits, meta)
        print(f"wrote {a.out}")

    return run_builder(body)


if __name__ == "__main__":
    import sys

    sys.exit(main())
