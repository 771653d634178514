"""What a model believes about its users, as saved with it: a calibrated likelihood, a prior over
users and every known user's posterior (fitted by :mod:`pal_mm.prior`, used by :mod:`pal_mm.posterior`).

**Coordinates.** A simplex user's K logits matter only up to a common shift (softmax is shift
invariant), so beliefs live in the S = K - 1 coordinates ``z = B^T W`` of the sum-zero subspace
(``B``, (K, S): an orthonormal Helmert basis, :func:`user_basis`); ``W = B z`` gives the logits back.
Heads whose users are not mixtures (``simplex_users`` False) use S = state_dim and ``B = I``.

**Likelihood.** ``P(chosen preferred) = sigmoid(a m)`` for a pair's margin ``m``, ``a`` the inverse
temperature fitted on the seen users' validation pairs.

**Prior.** A mixture of C Gaussians with one shared precision: ``p(z) = sum_c pi_c N(z; mu_c,
(lambda P)^-1)`` (users often come in groups; C = 1 is a single Gaussian), ``lambda`` the strength.

**Posteriors.** One Gaussian per known user, ``N(z_u, H_u^-1)``: ``z_u`` is the user's row of the
model's logits, the precisions ``H_u`` are stored here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .errors import PalMMError


@functools.lru_cache(maxsize=64)
def _basis(k: int, simplex: bool) -> torch.Tensor:
    if not simplex:
        return torch.eye(k)
    basis = torch.zeros(k, max(k - 1, 0))
    for j in range(1, k):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= math.sqrt(j * (j + 1))
    return basis


def user_basis(k: int, simplex: bool = True) -> torch.Tensor:
    """(K, S) orthonormal basis of the coordinates a user's row is believed in (module doc):
    Helmert columns ``(1, .., 1, -j, 0, ..) / sqrt(j (j + 1))`` for simplex users, else the identity
    (a shared tensor: do not modify it)."""
    return _basis(int(k), bool(simplex))


def collapse(log_weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The single Gaussian with the mean and covariance of a mixture: log weights (..., C), means
    (..., C, S), covariances (..., C, S, S) -> mean (..., S), covariance (..., S, S)."""
    r = torch.softmax(log_weights.double(), dim=-1)
    mean = (r[..., None] * means.double()).sum(-2)
    d = means.double() - mean[..., None, :]
    cov = (r[..., None, None] * (covariances.double() + d[..., :, None] * d[..., None, :])).sum(-3)
    return mean, cov


@dataclass
class UserBeliefs:
    """The model's beliefs (module doc). ``inv_temperature``: ``a``; ``prior_means`` (C, S),
    ``prior_log_weights`` (C,), ``prior_precision`` (S, S): the prior at unit strength; ``strength``:
    lambda; ``precision`` (n_users, S, S): every known user's posterior precision, in the order of the
    model's user table. Without user state (or K = 1) only ``inv_temperature`` is set."""

    inv_temperature: float = 1.0
    prior_means: torch.Tensor | None = None
    prior_log_weights: torch.Tensor | None = None
    prior_precision: torch.Tensor | None = None
    strength: float = 1.0
    precision: torch.Tensor | None = None

    @property
    def has_prior(self) -> bool:
        return self.prior_means is not None

    def prior(self, strength: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log weights (C,), means (C, S), shared precision (S, S)) at ``strength`` (default: the chosen one)."""
        if not self.has_prior:
            raise PalMMError("this model has no prior over users (trained before pal-mm had one, or without user state)")
        lam = float(self.strength if strength is None else strength)
        return self.prior_log_weights, self.prior_means, self.prior_precision * lam

    def collapsed_prior(self, strength: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (S,), precision (S, S)) of the one Gaussian matching the prior's mean and covariance:
        what the model believes about a user it has seen nothing of."""
        logw, means, prec = self.prior(strength)
        cov = torch.linalg.inv(prec.double()).expand(len(means), -1, -1)
        mean, cov = collapse(logw, means, cov)
        return mean.float(), torch.linalg.inv(cov).float()

    # ----- storage: tensors in model.safetensors, a summary in config.json ----------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"beliefs.inv_temperature": torch.tensor([float(self.inv_temperature)], dtype=torch.float64),
               "beliefs.strength": torch.tensor([float(self.strength)], dtype=torch.float64)}  # exact scalars
        if self.has_prior:
            out.update({k: v.detach().float() for k, v in (("beliefs.prior_means", self.prior_means),
                                                           ("beliefs.prior_log_weights", self.prior_log_weights),
                                                           ("beliefs.prior_precision", self.prior_precision),
                                                           ("beliefs.precision", self.precision))})
        return {k: v.cpu().contiguous() for k, v in out.items()}

    def summary(self) -> dict:
        """What config.json records (the tensors are the source of truth)."""
        return {"inv_temperature": float(self.inv_temperature), "prior": self.has_prior, "strength": float(self.strength),
                "state_coordinates": int(self.prior_means.shape[1]) if self.has_prior else 0,
                "prior_components": int(self.prior_means.shape[0]) if self.has_prior else 0}

    @staticmethod
    def expected(summary: dict, n_users: int) -> dict[str, torch.Tensor]:
        """Empty tensors with the names, shapes and dtypes a saved ``summary`` implies (for load checks)."""
        out = {"beliefs.inv_temperature": torch.zeros(1, dtype=torch.float64),
               "beliefs.strength": torch.zeros(1, dtype=torch.float64)}
        if summary.get("prior"):
            s, c = _count(summary, "state_coordinates"), _count(summary, "prior_components")
            out.update({"beliefs.prior_means": torch.zeros(c, s), "beliefs.prior_log_weights": torch.zeros(c),
                        "beliefs.prior_precision": torch.zeros(s, s), "beliefs.precision": torch.zeros(n_users, s, s)})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], where: str) -> "UserBeliefs":
        a, lam = float(t["beliefs.inv_temperature"][0]), float(t["beliefs.strength"][0])
        if a <= 0 or lam <= 0:
            raise PalMMError(f"{where}: corrupt beliefs (inverse temperature and prior strength must be > 0)")
        if "beliefs.prior_means" not in t:
            return cls(inv_temperature=a, strength=lam)
        prec = t["beliefs.precision"]
        for name, m in (("prior precision", t["beliefs.prior_precision"][None]), ("posterior precision", prec)):
            if len(m) and torch.linalg.cholesky_ex(m.double())[1].any():
                raise PalMMError(f"{where}: corrupt beliefs ({name} is not symmetric positive definite)")
        if len(t["beliefs.prior_log_weights"]) == 0:
            raise PalMMError(f"{where}: corrupt beliefs (a prior without components)")
        return cls(a, t["beliefs.prior_means"], t["beliefs.prior_log_weights"], t["beliefs.prior_precision"], lam, prec)


def _count(summary: dict, key: str) -> int:
    value = summary.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4096:
        raise PalMMError(f"corrupt beliefs summary in config.json ({key!r} must be a small non-negative integer)")
    return value
