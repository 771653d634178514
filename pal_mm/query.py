"""Active querying: which unlabelled pairs to ask each user next (``pal-mm query``).

A **pool** holds unlabelled comparisons, one per row: ``user_id, prompt, response_a, response_b``
(text, image paths or vectors, like preference data; any other column is kept as is). For every
user in the pool, :func:`select_queries` picks the ``n`` pairs whose answers are expected to tell
the most about that user's weights:

* a user the model knows starts from their posterior, a new user from the prior (as one Gaussian
  with the prior's mean and covariance; :class:`~pal_mm.beliefs.UserBeliefs`);
* a pair's answer ``y`` has ``P(y = a) = sigmoid(a_T m(z))`` (calibrated margin); with the margin
  linearised in the user's coordinates, ``m ~ N(m_hat, v)``, ``v = J C J^T``. The **expected
  information gain** about the weights is ``I = h(E[sigmoid]) - E[h(sigmoid)]`` (``h``: binary
  entropy in bits; expectations by 32-point Gauss-Hermite quadrature): high when the model is unsure
  of the answer AND that uncertainty comes from not knowing the user (not from label noise);
* pairs are picked greedily: after each pick the user's precision gains the pair's expected Fisher
  information ``a_T^2 E[s (1 - s)] J J^T`` (it does not depend on the answer), so a batch does not ask
  the same question twice in other words.

``strategy="uncertainty"`` (the answer closest to a coin flip, a cheaper proxy) and ``"random"`` are
there to measure the gain against. Rows of ``exclude`` (same user, prompt and responses, in either
order; labelled ``chosen/rejected`` rows or pool rows) are never asked again, nor is a pair twice.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import PreferenceData, RowValidator
from .embedding import encode_data
from .errors import DataError, PalMMError
from .ingest import read_rows
from .beliefs import user_basis
from .posterior import UserPairs, covariance, margin_variance

POOL_COLUMNS = ("user_id", "prompt", "response_a", "response_b")
POOL_NAMES = {"chosen": "response_a", "rejected": "response_b"}
STRATEGIES = ("eig", "uncertainty", "random")
OUT_SUFFIXES = (".jsonl", ".json", ".csv")
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(32)  # probabilists' Hermite: E[f(x)], x ~ N(0, 1)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


@dataclass
class Pool:
    """Validated pool rows: ``rows`` as read (what is written back), ``data`` the same pairs as
    :class:`PreferenceData` (``chosen`` = response_a, ``rejected`` = response_b; no label implied)."""

    rows: list[dict]
    data: PreferenceData
    base_dir: Path | None
    source: str

    def __len__(self) -> int:
        return len(self.rows)


def _rows_as_pairs(rows: list[dict], label: str, base_dir, chat_tokenizer, pool: bool) -> PreferenceData:
    """Validate rows (pool rows, or labelled rows when ``pool`` is False and they have chosen/rejected)."""
    first = rows[0] if rows else {}
    labelled = isinstance(first, dict) and "chosen" in first and "response_a" not in first
    if pool and labelled:
        raise DataError(f"{label}: row 1: a pool has columns {', '.join(POOL_COLUMNS)} (no chosen/rejected labels)")
    validator = RowValidator(label, base_dir, chat_tokenizer, names=None if labelled else POOL_NAMES)
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{label}: row {n}: expected a mapping of column names to values, got {type(row).__name__}")
        if not labelled:
            missing = [c for c in POOL_COLUMNS if c not in row]
            if missing:
                raise DataError(f"{label}: row {n}: missing column(s) {', '.join(missing)} (need {', '.join(POOL_COLUMNS)})")
            row = {"user_id": row["user_id"], "prompt": row["prompt"], "chosen": row["response_a"], "rejected": row["response_b"]}
        else:
            row = {k: row[k] for k in ("user_id", "prompt", "chosen", "rejected") if k in row}
        validator.add(row, f"{label}: row {n}")
    return validator.result()


def read_pool(source: str | os.PathLike, chat_tokenizer=None) -> Pool:
    """Read and validate a pool file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, a saved dataset)."""
    rows, base_dir, label = read_rows(source)
    return Pool(rows, _rows_as_pairs(rows, label, base_dir, chat_tokenizer, pool=True), base_dir, label)


def read_exclude(source: str | os.PathLike, chat_tokenizer=None) -> set[tuple]:
    """Keys (:func:`pair_key`) of the rows of a labelled file or a pool file."""
    rows, base_dir, label = read_rows(source)
    if not rows:
        return set()
    data = _rows_as_pairs(rows, label, base_dir, chat_tokenizer, pool=False)
    return {pair_key(*r) for r in zip(data.user_ids, data.prompts, data.chosen, data.rejected)}


def _canonical(value: Any) -> Any:
    return tuple(float(x) for x in value) if isinstance(value, (list, tuple)) else value


def pair_key(user: str, prompt: Any, a: Any, b: Any) -> tuple:
    """The identity of a comparison: user, prompt and the two responses in either order (values as
    validated: image paths resolved, vectors as floats)."""
    x, y = _canonical(a), _canonical(b)
    return (str(user), _canonical(prompt), *sorted([x, y], key=repr))


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
def _entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def information_gain(m: np.ndarray, v: np.ndarray, a: float) -> np.ndarray:
    """Expected information gain (bits) of pairs with margin ~ N(m, v) and P(a) = sigmoid(a m)."""
    x = np.asarray(m)[:, None] + np.sqrt(np.maximum(v, 0))[:, None] * _NODES[None, :]
    s = 1 / (1 + np.exp(-np.clip(a * x, -60, 60)))
    return _entropy_bits(s @ _WEIGHTS) - _entropy_bits(s) @ _WEIGHTS


def _fisher_weight(m: float, v: float, a: float) -> float:
    """E[a^2 s (1 - s)] under m ~ N(m, v)."""
    s = 1 / (1 + np.exp(-np.clip(a * (m + math.sqrt(max(v, 0.0)) * _NODES), -60, 60)))
    return float(a * a * (s * (1 - s)) @ _WEIGHTS)


def _user_state(model, user: str):
    """(coordinates z (S,), covariance (S, S)) of a known user (posterior) or a new one (prior)."""
    basis = user_basis(model.head.state_dim, model.head.simplex_users)
    if user in model.users:
        i = int(model.user_index([user])[0])
        return model.head.user_logits.detach().cpu()[i] @ basis, covariance(model.beliefs.precision[i])
    mean, prec = model.beliefs.collapsed_prior()  # the prior's mean and covariance
    return mean.clone(), covariance(prec)


@torch.no_grad()
def select_queries(model, pool: Pool | PreferenceData, n: int, exclude: set[tuple] | None = None,
                   strategy: str = "eig", seed: int = 0, cache=None) -> dict[str, list[int]]:
    """``{user: [row, ...]}``: for every user of ``pool`` (first-seen order), up to ``n`` row indices,
    the most informative first (module doc). ``exclude``: keys of pairs never to ask."""
    if strategy not in STRATEGIES:
        raise PalMMError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PalMMError(f"n must be a positive integer, got {n!r}")
    if not model.has_posterior:
        raise PalMMError("query needs a model with a prior over users (simplex users: pal-a, pal-b, lore; trained with this pal-mm version)")
    data = pool.data if isinstance(pool, Pool) else pool
    seen, candidates = set(exclude or ()), {}
    for i, key in enumerate(pair_key(*r) for r in zip(data.user_ids, data.prompts, data.chosen, data.rejected)):
        if key not in seen:
            seen.add(key)
            candidates.setdefault(data.user_ids[i], []).append(i)
    out = {u: [] for u in dict.fromkeys(data.user_ids)}
    if strategy == "random":
        rng = random.Random(seed)
        for u, rows in candidates.items():
            out[u] = rng.sample(rows, min(n, len(rows)))
        return out
    rows_all = [i for rows in candidates.values() for i in rows]
    if not rows_all:
        return out
    enc = encode_data(model.encoder, data.subset(rows_all), cache)
    head = model.head.eval()
    dev = head.user_logits.device
    basis = user_basis(head.state_dim, head.simplex_users)
    a = model.beliefs.inv_temperature
    start = 0
    for u, rows in candidates.items():
        z, cov = _user_state(model, u)
        sl = slice(start, start + len(rows))
        start += len(rows)
        pairs = UserPairs.of(head, enc.prompt[sl].to(dev), enc.chosen[sl].to(dev), enc.rejected[sl].to(dev),
                             torch.zeros(len(rows), dtype=torch.long, device=dev), 1)
        m, jac = pairs.jacobian(z[None].to(dev), basis.to(dev))
        m, jac = m.double().cpu().numpy(), jac.double().cpu()
        prec = torch.linalg.inv(cov.double())
        left = list(range(len(rows)))
        for _ in range(min(n, len(rows))):
            v = margin_variance(jac[left], torch.linalg.inv(prec).expand(len(left), -1, -1)).numpy()
            if strategy == "eig":
                score = information_gain(m[left], v, a)
            else:  # uncertainty: the predicted answer closest to a coin flip
                score = -np.abs(a * m[left] / np.sqrt(1 + math.pi * a * a * v / 8))
            best = int(np.argmax(score))  # ties: the earliest row
            j = left.pop(best)
            out[u].append(rows[j])
            prec = prec + _fisher_weight(m[j], float(v[best]), a) * torch.outer(jac[j], jac[j])
    return out


# ------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------
def query_rows(pool: Pool, picked: dict[str, list[int]], out: str | os.PathLike) -> list[dict]:
    """The picked pool rows as read (per user, most informative first); relative image paths are
    rewritten relative to ``out``'s folder so they still point at the same files."""
    target_dir = Path(out).expanduser().absolute().parent
    image_cols = [col for col, kind in (("prompt", pool.data.kinds["prompt"]), ("response_a", pool.data.kinds["chosen"]),
                                        ("response_b", pool.data.kinds["chosen"])) if kind == "image"]
    resolved = {"prompt": pool.data.prompts, "response_a": pool.data.chosen, "response_b": pool.data.rejected}
    rows = []
    for u, idx in picked.items():
        for i in idx:
            row = dict(pool.rows[i])
            for col in image_cols:
                if not os.path.isabs(str(row[col])):
                    row[col] = os.path.relpath(resolved[col][i], target_dir)
            rows.append(row)
    return rows


def write_rows(rows: list[dict], out: str | os.PathLike) -> None:
    """Rows to ``out`` (.jsonl, .json or .csv by its suffix), atomically."""
    from encoders.atomic import write_jsonl, write_text

    suffix = Path(out).suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise PalMMError(f"{out}: write the queries as {', '.join(OUT_SUFFIXES)}")
    if suffix == ".jsonl":
        write_jsonl(out, rows)
    elif suffix == ".json":
        write_text(out, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    else:
        columns = list(dict.fromkeys(k for r in rows for k in r)) or list(POOL_COLUMNS)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") if isinstance(r.get(c, ""), str) else json.dumps(r[c]) for c in columns])
        write_text(out, buf.getvalue())
