"""Mixture weights on the K-simplex: where one user's (or a fixed mixture's) weights come from.

A weight vector ``w`` (K,) is a user's ``softmax(W_u)``, explicit weights checked against the
simplex (with a tolerance, never exact equality), ``softmax(logits)``, or a prototype's one-hot
``e_k``. Used by :class:`~pal_mm.model.PALModel` scoring and by export.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .errors import PalMMError
from .heads import PreferenceHead

#: tolerance of the simplex check on explicit weights (sum and negativity)
SIMPLEX_TOL = 1e-4


def parse_floats(value: str | Sequence[float], flag: str) -> list[float]:
    """``"0.2,0.8"`` or a sequence -> floats (finite), with a one-line error otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [float(x) for x in items]
    except (TypeError, ValueError):
        raise PalMMError(f"{flag}: expected comma-separated numbers, got {value!r}") from None
    if not out or not all(math.isfinite(x) for x in out):
        raise PalMMError(f"{flag}: expected finite numbers, got {value!r}")
    return out


def check_simplex(weights: Sequence[float], k: int, flag: str = "weights", tol: float = SIMPLEX_TOL) -> list[float]:
    """K non-negative weights summing to 1, both up to ``tol``."""
    w = parse_floats(weights, flag)
    if len(w) != k:
        raise PalMMError(f"{flag} must have K={k} entries (one per prototype), got {len(w)}")
    if min(w) < -tol or abs(sum(w) - 1.0) > tol:
        raise PalMMError(f"{flag} must lie on the simplex (non-negative, summing to 1 within {tol:g}), "
                         f"got {[round(x, 6) for x in w]} (sum {sum(w):.6g})")
    return w


def parse_prototype(value: int | str, k: int) -> int:
    """A 0-based prototype index in [0, K)."""
    if isinstance(value, bool):
        raise PalMMError(f"prototype must be an integer in 0..{k - 1}, got {value!r}")
    try:
        idx = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise PalMMError(f"prototype must be an integer in 0..{k - 1} (0-based), got {value!r}") from None
    if not 0 <= idx < k:
        raise PalMMError(f"prototype index {idx} is out of range: this model has K={k} prototypes (0..{k - 1}, 0-based)")
    return idx


def resolve_mixture(head: PreferenceHead, users: Sequence[str], user: str | None = None, weights=None, logits=None,
                    prototype=None) -> tuple[torch.Tensor, dict]:
    """The fixed (K,) float32 weights and a description of where they come from."""
    k = head.config.k
    given = {name: v for name, v in (("user", user), ("weights", weights), ("logits", logits), ("prototype", prototype))
             if v is not None}
    if len(given) > 1:
        raise PalMMError(f"give only one of user, weights, logits or prototype (got {', '.join(given)})")
    if not given:
        if not head.has_user_state:  # no users (the single RM): the weights are unused
            return torch.full((k,), 1.0 / k), {"source": "none"}
        raise PalMMError("choose whose reward model to export: give a user, weights (w1,...,wK), logits or a prototype index")
    if user is None and not head.simplex_users:
        raise PalMMError(f"a {head.name} model's users are latent vectors, not mixtures: export a known user (--user)")
    if user is not None:
        index = {u: i for i, u in enumerate(users)}
        if str(user) not in index:
            shown = ", ".join(list(users)[:5]) + (", ..." if len(users) > 5 else "")
            raise PalMMError(f"unknown user {user!r}: the model knows {len(users)} user(s) ({shown}); "
                             "fit new users first with `pal-mm adapt`, or give weights")
        i = index[str(user)]
        with torch.no_grad():  # the exact computation PALModel.reward(user=...) runs
            w = head.user_weights(torch.as_tensor([i], dtype=torch.long))[0].detach().clone()
        return w.float(), {"source": "user", "user": str(user), "logits": head.user_logits[i].detach().tolist()}
    if weights is not None:
        w = check_simplex(weights, k, "weights")
        return torch.tensor(w, dtype=torch.float32), {"source": "weights"}
    if logits is not None:
        lg = parse_floats(logits, "logits")
        if len(lg) != k:
            raise PalMMError(f"logits must have K={k} entries (one per prototype), got {len(lg)}")
        return torch.softmax(torch.tensor(lg, dtype=torch.float32), dim=-1), {"source": "logits", "logits": lg}
    idx = parse_prototype(prototype, k)
    w = torch.zeros(k)
    w[idx] = 1.0
    return w, {"source": "prototype", "prototype": idx}


def describe_mixture(mixture: dict) -> str:
    """``user alice`` / ``prototype 1`` / ``weights [0.2, 0.8]``."""
    src = mixture.get("source")
    if src == "user":
        return f"user {mixture['user']}"
    if src == "prototype":
        return f"prototype {mixture['prototype']}"
    if src == "none":
        return "the population (single-rm)"
    if src == "logits":
        return f"logits {[round(float(x), 4) for x in mixture['logits']]}"
    return f"weights {[round(float(x), 4) for x in mixture['weights']]}"
