"""The unseen-user (few-shot) protocol, written once: per-user splits, nested n-shot training
sets, the adapt curve and its mean +- std.

**Split.** For one ``seed``, every user's rows (in data order) are put in a seeded random order:
the users are visited in sorted order and each one's rows are shuffled in turn by a single
``random.Random(seed)`` (:func:`pal_mm.data.user_orders`, which :func:`pal_mm.data.split_indices_per_user` uses too, so
seed 42 gives the few-shot files the data builders write). The order does not depend on n, so the n-shot
training set is the first n rows of it and the sets are **nested**: for the same seed the
5-shot set contains the 2-shot set. The test pairs are either

* ``test_pairs=None``: the rest of the user's rows (the paper's protocol; the test set shrinks as
  n grows; a user with ``<= n`` rows is left out at that n), or
* ``test_pairs=T``: the **last** T rows of the order, the same for every n (a user with fewer
  than ``n + T`` rows is left out at that n).

Either way a user's training rows and test rows are disjoint, and the n-shot training sets are the
same in both modes.

**Curve.** :func:`adapt_curve`: for every (n, seed) block, a copy of the seen-user model fits the
new users on their n training pairs with :func:`pal_mm.adaptation.adapt` and is scored on their
test pairs with :func:`pal_mm.evaluation.evaluate`. All blocks are fitted in ONE ``adapt`` call on
one copy, each (user, n, seed) entered as its own new user: ``adapt`` fits new users independently
(each user's loss is the mean over their own pairs, Adam is per coordinate), so this equals one
call per block (with ``init="random"`` each block's users draw other, equally seeded, initial
logits). The data are encoded once. A head without user state (the single reward model) only
registers the users, so its number is its population accuracy on the same test pairs. Only the
public model API is used (``adapt``, ``evaluate``, ``copy.deepcopy``): any head type works.

**Mean +- std.** :func:`mean_std` is the one convention of the project: the mean and the SAMPLE
standard deviation (``ddof = 1``, the spread to expect between runs) over runs (seeds, draws);
NaNs are dropped, one value has std 0.0.

    splits = fewshot_splits(new_users.user_ids, ns=[1, 5, 20], seeds=[0, 1, 2], test_pairs=30)
    results = adapt_curve(model, new_users, splits, AdaptConfig(steps=300))
    curve_summary(results)["accuracy"]        # {"1": [mean, std], "5": [...], "20": [...]}
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .config import AdaptConfig
from .data import PreferenceData, user_orders
from .errors import PalMMError

__all__ = ["FewShotSplit", "ShotResult", "user_orders", "fewshot_split", "fewshot_splits", "fewshot_sets",
           "fewshot_rows", "adapt_curve", "curve_summary", "mean_std"]


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FewShotSplit:
    """One seed's split of new users' rows: ``train[n]`` and ``test[n]`` (sorted indices into the
    ``rows`` rows it was made from, disjoint per n); a user's ``train[m]`` rows are among its
    ``train[n]`` rows for m < n; ``users[n]`` counts the users kept at n."""

    seed: int
    rows: int
    test_pairs: int | None
    train: dict[int, list[int]]
    test: dict[int, list[int]]
    users: dict[int, int] = field(default_factory=dict)

    @property
    def ns(self) -> list[int]:
        return sorted(self.train)


def _check_ns(ns: Iterable[int], test_pairs: int | None) -> list[int]:
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise PalMMError(f"few-shot sizes n must be positive integers, got {ns}")
    if test_pairs is not None and int(test_pairs) < 1:
        raise PalMMError(f"test_pairs must be a positive integer, got {test_pairs}")
    return ns


def fewshot_split(user_ids: Sequence[str], ns: Iterable[int], seed: int, test_pairs: int | None = None) -> FewShotSplit:
    """The protocol's split of ``user_ids`` (one per row) for every n in ``ns`` (see the module doc)."""
    ns = _check_ns(ns, test_pairs)
    orders = user_orders(user_ids, seed)
    train, test, users = {}, {}, {}
    for n in ns:
        tr, te, kept = [], [], 0
        for rows in orders.values():
            if test_pairs is None:
                if len(rows) <= n:
                    continue
                tr += rows[:n]
                te += rows[n:]
            else:
                if len(rows) < n + test_pairs:
                    continue
                tr += rows[:n]
                te += rows[len(rows) - test_pairs:]
            kept += 1
        train[n], test[n], users[n] = sorted(tr), sorted(te), kept
    return FewShotSplit(int(seed), len(user_ids), None if test_pairs is None else int(test_pairs), train, test, users)


def fewshot_splits(user_ids: Sequence[str], ns: Iterable[int], seeds: Iterable[int],
                   test_pairs: int | None = None) -> list[FewShotSplit]:
    """One :func:`fewshot_split` per seed."""
    return [fewshot_split(user_ids, ns, s, test_pairs) for s in seeds]


def fewshot_sets(data: PreferenceData, ns: Iterable[int], seed: int,
                 test_pairs: int | None = None) -> dict[int, tuple[PreferenceData, PreferenceData]]:
    """``{n: (train, test)}`` subsets of ``data`` for one seed (nested training sets)."""
    split = fewshot_split(data.user_ids, ns, seed, test_pairs)
    return {n: (data.subset(split.train[n]), data.subset(split.test[n])) for n in split.ns}


def fewshot_rows(rows: Sequence[dict], ns: Iterable[int], seed: int,
                 test_pairs: int | None = None) -> dict[int, tuple[list[dict], list[dict]]]:
    """Row-dict version of :func:`fewshot_sets` (for data builders and ``pal-mm split``)."""
    split = fewshot_split([str(r["user_id"]) for r in rows], ns, seed, test_pairs)
    return {n: ([rows[i] for i in split.train[n]], [rows[i] for i in split.test[n]]) for n in split.ns}


# --------------------------------------------------------------------------------------------
# the adapt curve
# --------------------------------------------------------------------------------------------
@dataclass
class ShotResult:
    """One (n, seed) block: accuracy over its test pairs (ties excluded, like ``evaluate``),
    per user and per group; ``weights`` (user -> K floats) when asked for."""

    n: int
    seed: int
    accuracy: float
    n_pairs: int
    n_ties: int
    n_users: int
    per_user: dict[str, float]
    per_group: dict[str, float]
    weights: dict[str, list[float]] | None = None


def _tag(user: str, n: int, seed: int) -> str:
    return f"{user} [few-shot n={n} seed={seed}]"


def _take(pairs, rows: list[int], user_ids: list[str]):
    """EncodedPairs ``rows`` of ``pairs`` with new user ids (one per row)."""
    import torch

    from .embedding import EncodedPairs

    t = torch.as_tensor(rows, dtype=torch.long)
    return EncodedPairs(pairs.prompt[t], pairs.chosen[t], pairs.rejected[t], user_ids)


def adapt_curve(model, data, splits: Sequence[FewShotSplit], config: AdaptConfig | None = None, *,
                groups: dict[str, str] | None = None, cache=None, weights: bool = False) -> list[ShotResult]:
    """Few-shot accuracy of ``model`` on new users, one :class:`ShotResult` per (n, split).

    ``data``: the new users' pairs (``PreferenceData``, encoded once here with the model's encoder
    and ``cache``, or ``EncodedPairs``); ``splits`` index its rows. ``model`` is not changed.
    ``groups``: user -> group for per-group accuracy (default: the data's ``group`` column).
    Blocks whose training set is empty (no user has enough rows) are left out."""
    from .adaptation import adapt
    from .embedding import EncodedPairs, encode_data
    from .evaluation import evaluate

    if isinstance(data, PreferenceData):
        groups = {**data.user_groups(), **(groups or {})}
        data = encode_data(model.encoder, data, cache)
    elif not isinstance(data, EncodedPairs):
        raise PalMMError(f"adapt_curve needs PreferenceData or EncodedPairs, got {type(data).__name__}")
    groups = {str(u): str(g) for u, g in (groups or {}).items()}
    wrong = sorted({s.rows for s in splits} - {len(data)})
    if wrong:
        raise PalMMError(f"adapt_curve: the splits were made for {wrong[0]} rows but the data has {len(data)}")
    seeds = [s.seed for s in splits]
    if len(set(seeds)) != len(seeds):
        raise PalMMError(f"adapt_curve: split seeds must differ (got {seeds}); one (user, n, seed) is one new user")
    ids = [str(u) for u in data.user_ids]
    blocks = [(n, s) for n in sorted({n for s in splits for n in s.ns}) for s in splits if s.train.get(n)]
    if not blocks:
        return []
    rows = [i for n, s in blocks for i in s.train[n]]
    tags = [_tag(ids[i], n, s.seed) for n, s in blocks for i in s.train[n]]
    encoder = getattr(model, "encoder", None)  # adapt never changes the encoder: share it instead of copying it
    work = copy.deepcopy(model, {id(encoder): encoder} if encoder is not None else None)
    adapt(work, _take(data, rows, tags), config or AdaptConfig())
    results = []
    for n, s in blocks:
        test = s.test[n]
        m = evaluate(work, _take(data, test, [_tag(ids[i], n, s.seed) for i in test]))
        per_user, by_group = {}, defaultdict(lambda: [0, 0])
        for tagged, r in m["per_user"].items():
            user = tagged[: tagged.rindex(" [few-shot ")]
            per_user[user] = r["accuracy"]
            if user in groups:
                by_group[groups[user]][0] += r["n_correct"]
                by_group[groups[user]][1] += r["n_pairs"] - r["n_ties"]
        w = None
        if weights:
            users = list(dict.fromkeys(ids[i] for i in s.train[n]))
            w = {u: work.user_weights(_tag(u, n, s.seed)) for u in users}
        results.append(ShotResult(
            n=n, seed=s.seed, accuracy=m["accuracy"], n_pairs=m["n_pairs"], n_ties=m["n_ties"], n_users=len(per_user),
            per_user=per_user, per_group={g: c / d if d else math.nan for g, (c, d) in sorted(by_group.items())}, weights=w))
    return results


# --------------------------------------------------------------------------------------------
# mean +- std
# --------------------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> list[float]:
    """``[mean, std]`` with the SAMPLE standard deviation (ddof = 1); NaNs dropped; one value has
    std 0.0; no value gives ``[nan, nan]``."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        return [math.nan, math.nan]
    return [statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0]


def curve_summary(results: Iterable[ShotResult]) -> dict:
    """Mean +- std over seeds (and models) of ``results``, by n (string keys, for JSON):
    ``{"accuracy": {n: [mean, std]}, "per_group": {group: {n: [mean, std]}},
    "per_seed": {n: [accuracy, ...]}, "users": {n: [users per block, ...]}}``."""
    by_n: dict[int, list[ShotResult]] = defaultdict(list)
    for r in results:
        by_n[r.n].append(r)
    out = {"accuracy": {}, "per_group": defaultdict(dict), "per_seed": {}, "users": {}}
    for n in sorted(by_n):
        rs = by_n[n]
        out["accuracy"][str(n)] = mean_std(r.accuracy for r in rs)
        out["per_seed"][str(n)] = [r.accuracy for r in rs]
        out["users"][str(n)] = [r.n_users for r in rs]
        for g in sorted({g for r in rs for g in r.per_group}):
            out["per_group"][g][str(n)] = mean_std(r.per_group[g] for r in rs if g in r.per_group)
    out["per_group"] = dict(out["per_group"])
    return out
