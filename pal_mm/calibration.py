"""Calibration of preference probabilities: ECE, Brier score, reliability diagrams, temperature.

``p`` is the predicted probability that the CHOSEN response is preferred (so the outcome is always
"chosen"). To make bins on both sides of 0.5 meaningful, every pair counts in both orders: once as
(p, outcome 1) and once as (1 - p, outcome 0). With 10 equal-width bins over [0, 1]:

    ECE = sum_b (n_b / 2N) |mean outcome_b - mean p_b|

which equals the usual top-label ECE of the confidence ``max(p, 1 - p)`` with bins
[0.5, 0.6), ..., [0.9, 1.0] (the two halves of the diagram mirror each other). The Brier score is
``mean (1 - p)^2`` (the same in both orders). Pure numpy; the plot needs matplotlib.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import PalMMError

BINS = 10


def _symmetric(p: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size and not np.isfinite(p).all():
        raise PalMMError("probabilities must be finite")
    return np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])


def reliability(p: Sequence[float], bins: int = BINS) -> list[dict]:
    """Per bin (both orders, module doc): ``{"lo", "hi", "count", "mean_p", "frequency"}``
    (mean_p / frequency are None for an empty bin)."""
    q, y = _symmetric(p)
    idx = np.minimum((q * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                    "mean_p": float(q[sel].mean()) if n else None, "frequency": float(y[sel].mean()) if n else None})
    return out


def ece(p: Sequence[float], bins: int = BINS) -> float:
    """Expected calibration error of P(chosen preferred) (module doc); NaN for no pairs."""
    rel = reliability(p, bins)
    total = sum(r["count"] for r in rel)
    if not total:
        return math.nan
    return float(sum(r["count"] * abs(r["frequency"] - r["mean_p"]) for r in rel if r["count"]) / total)


def brier(p: Sequence[float]) -> float:
    """Mean squared error of P(chosen preferred) against the outcome 1; NaN for no pairs."""
    p = np.asarray(p, dtype=np.float64).ravel()
    return float(np.mean((1 - p) ** 2)) if p.size else math.nan


def fit_inv_temperature(margins: Sequence[float], lo: float = 1e-2, hi: float = 1e2) -> float:
    """The ``a`` in [lo, hi] minimising the log loss of ``P(chosen) = sigmoid(a m)`` on margins ``m``
    with Platt's targets: the outcome "chosen" counts as ``(N + 1) / (N + 2)`` (N: the decided pairs),
    so that perfectly separated validation pairs give a finite ``a`` instead of an infinite one. The
    loss is convex in a; its derivative ``-sum m (t - sigmoid(a m))`` is bisected on log a. 1.0 without
    decided pairs."""
    m = np.asarray(margins, dtype=np.float64).ravel()
    m = m[m != 0]
    if not m.size:
        return 1.0
    target = (m.size + 1) / (m.size + 2)

    def slope(a: float) -> float:
        return float(-np.sum(m * (target - 1 / (1 + np.exp(-np.clip(a * m, -500, 500))))))

    if slope(hi) <= 0:
        return hi
    if slope(lo) >= 0:
        return lo
    left, right = math.log(lo), math.log(hi)
    for _ in range(60):
        mid = (left + right) / 2
        if slope(math.exp(mid)) < 0:
            left = mid
        else:
            right = mid
    return float(math.exp((left + right) / 2))


def calibration_metrics(p: Sequence[float]) -> dict:
    """``{"ece", "brier"}`` of one set of pairs."""
    return {"ece": ece(p), "brier": brier(p)}


def plot_reliability(curves: dict[str, Sequence[float]], path, title: str = "Reliability of P(chosen preferred)") -> None:
    """A reliability diagram PNG: one line per name -> probabilities, with ECE in the legend and a
    histogram of the predicted probabilities below (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from encoders.atomic import write_bytes

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, p in curves.items():
        rel = [r for r in reliability(p) if r["count"]]
        ax.plot([r["mean_p"] for r in rel], [r["frequency"] for r in rel], marker="o", label=f"{name} (ECE {ece(p):.3f})")
        q, _ = _symmetric(p)
        hist.hist(q, bins=BINS, range=(0, 1), histtype="step", label=name)
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    hist.set_xlabel("predicted probability (each pair in both orders)")
    hist.set_ylabel("count")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())
