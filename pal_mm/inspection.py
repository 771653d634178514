"""What a trained model learned, for people (``pal-mm inspect``): K, every user's simplex weights with
their posterior uncertainty, prototype usage, the prior, calibration, data and training summary,
and a picture (a simplex scatter for K = 3, stacked bars otherwise, groups coloured when known).

:func:`describe` returns the JSON shape ``{"k": K, "users": {USER_ID: [w_1, ..., w_K]}, "users_std":
{USER_ID: [s_1, ..., s_K]}, ...}``; a model without posteriors has ``"users_std": null``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .beliefs import user_basis
from .posterior import covariance

TRAINING_KEYS = ("val_loss", "val_accuracy", "best_epoch", "epochs_run", "restarts", "selected_k")


def _r(xs, digits: int = 6) -> list[float]:
    return [round(float(x), digits) for x in xs]


@torch.no_grad()
def describe(model) -> dict[str, Any]:
    """A JSON-ready summary of a :class:`~pal_mm.model.PALModel` (module doc)."""
    head, cfg = model.head, model.config
    k = cfg.k
    out: dict[str, Any] = {"k": k, "model_type": cfg.model_type, "simplex_users": bool(head.simplex_users),
                           "num_users": len(model.users)}
    weights = head.user_weights(torch.arange(len(model.users), device=head.user_logits.device)).cpu() \
        if model.users and head.has_user_state else torch.zeros(len(model.users), k)
    std = model.user_weight_std() if model.users else None
    out["users"] = {u: _r(w) for u, w in zip(model.users, weights)}
    out["users_std"] = {u: _r(s) for u, s in zip(model.users, std)} if std is not None else None
    out["groups"] = {u: model.user_groups[u] for u in model.users if u in model.user_groups}
    if model.users and head.has_user_state and head.simplex_users:
        dominant = torch.bincount(weights.argmax(1), minlength=k)
        out["prototype_usage"] = {"mean_weight": _r(weights.mean(0)), "users_dominated": dominant.tolist()}
    else:
        out["prototype_usage"] = None
    b = model.beliefs
    out["calibration"] = {"inv_temperature": round(b.inv_temperature, 6)} if b is not None else None
    if b is not None and b.has_prior:
        basis = user_basis(head.state_dim, head.simplex_users)

        def weights(z):
            return head.weights_from_logits(z @ basis.T) if head.simplex_users else z @ basis.T

        logw, means, prec = b.prior()
        out["prior"] = {"strength": b.strength, "mean_weights": _r(weights(b.collapsed_prior()[0][None])[0]),
                        "components": [{"weight": round(float(lw.exp()), 6), "mean_weights": _r(w)}
                                       for lw, w in zip(logw, weights(means))],
                        "std_coordinates": _r(torch.diagonal(covariance(prec)).sqrt())}
    else:
        out["prior"] = None
    out["data"] = dict(model.data_info)
    out["training"] = {key: model.metrics[key] for key in TRAINING_KEYS if key in model.metrics}
    if "beliefs" in model.metrics:
        out["training"]["beliefs"] = model.metrics["beliefs"]
    return out


def text_report(info: dict, max_users: int = 50) -> str:
    """The summary as lines of text (at most ``max_users`` users listed)."""
    lines = [f"{info['model_type']} with K = {info['k']} prototypes, {info['num_users']} users"]
    usage = info.get("prototype_usage")
    if usage:
        lines.append("prototype usage (mean weight): " + "  ".join(f"{i}: {w:.3f}" for i, w in enumerate(usage["mean_weight"]))
                     + "; users mostly on each: " + ", ".join(map(str, usage["users_dominated"])))
    if info.get("prior"):
        p = info["prior"]
        lines.append(f"prior over new users: mean weights {p['mean_weights']}, strength {p['strength']}, "
                     f"{len(p['components'])} component(s): "
                     + "; ".join(f"{c['weight']:.2f} x {c['mean_weights']}" for c in p["components"]))
    if info.get("calibration"):
        lines.append(f"calibration: P(chosen preferred) = sigmoid({info['calibration']['inv_temperature']:.4f} x margin)")
    for key, value in info.get("data", {}).items():
        lines.append(f"data: {key} = {value}")
    for key, value in info.get("training", {}).items():
        if key != "beliefs":
            lines.append(f"training: {key} = {value}")
    stds = info.get("users_std") or {}
    lines.append("user weights" + (" +- posterior std" if stds else "") + ":")
    for u in list(info["users"])[:max_users]:
        w, s = info["users"][u], stds.get(u)
        cells = [f"{x:.3f}" + (f"+-{d:.3f}" if s else "") for x, d in zip(w, s or w)]
        group = f" [{info['groups'][u]}]" if u in info.get("groups", {}) else ""
        lines.append(f"  {u}{group}: " + "  ".join(cells))
    if len(info["users"]) > max_users:
        lines.append(f"  ... and {len(info['users']) - max_users} more (--json lists all)")
    return "\n".join(lines)


def plot_users(info: dict, path, covariances=None, max_bars: int = 200) -> None:
    """A PNG of the users' weights: K = 3 simplex scatter (error bars: the posterior std of each plane
    coordinate, from ``covariances`` (n, K, K) when given), stacked bars otherwise (error bars: the
    std of each cumulative boundary); colour = group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from encoders.atomic import write_bytes

    users = list(info["users"])
    w = np.array([info["users"][u] for u in users]).reshape(len(users), info["k"])
    groups = [info.get("groups", {}).get(u, "") for u in users]
    palette = {g: plt.cm.tab10(i % 10) for i, g in enumerate(sorted(set(groups)))}
    if info["k"] == 3 and info.get("simplex_users", True):
        fig, ax = plt.subplots(figsize=(6, 5.4))
        corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
        ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", lw=1)
        for i, name in enumerate(("prototype 0", "prototype 1", "prototype 2")):
            ax.annotate(name, corners[i], textcoords="offset points", xytext=(0, -12 if i < 2 else 6), ha="center")
        xy = w @ corners
        if covariances is not None:  # the plane coordinates are w @ corners: their covariance is C^T cov C
            cov2 = np.einsum("ka,nkl,lb->nab", corners, np.asarray(covariances, dtype=float), corners)
            spread = np.sqrt(np.clip(np.stack([cov2[:, 0, 0], cov2[:, 1, 1]], 1), 0, None))
        else:
            spread = np.zeros((len(users), 2))
        for g in sorted(set(groups)):
            sel = [i for i, x in enumerate(groups) if x == g]
            ax.errorbar(xy[sel, 0], xy[sel, 1], xerr=spread[sel, 0], yerr=spread[sel, 1], fmt="o", ms=4, alpha=0.8,
                        color=palette[g], label=g or None, elinewidth=0.8)
        ax.set_aspect("equal")
        ax.axis("off")
    else:
        order = sorted(range(len(users)), key=lambda i: (groups[i], users[i]))[:max_bars]
        fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(order) + 2), 4))
        x = np.arange(len(order))
        bottom = np.zeros(len(order))
        for kk in range(w.shape[1]):
            ax.bar(x, w[order, kk], bottom=bottom, width=0.9, label=f"prototype {kk}", color=plt.cm.Pastel1(kk % 9))
            bottom += w[order, kk]
            if kk < w.shape[1] - 1 and covariances is not None:  # std of the cumulative sum w_0 + .. + w_kk
                c = np.asarray(covariances, dtype=float)[order, : kk + 1, : kk + 1].sum((1, 2))
                ax.errorbar(x, bottom, yerr=np.sqrt(np.clip(c, 0, None)), fmt="none", ecolor="black", elinewidth=0.6)
        ax.set_xticks(x, [users[i] for i in order], rotation=90, fontsize=6)
        for tick, i in zip(ax.get_xticklabels(), order):
            if groups[i]:
                tick.set_color(palette[groups[i]])
        ax.set_ylim(0, 1)
        ax.set_ylabel("weight")
    ax.set_title(f"{info['model_type']}, K = {info['k']}: users' weights" + (" +- posterior std" if info.get("users_std") else ""))
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(Path(path), buf.getvalue())
