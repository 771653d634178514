"""What the model believes about each user: a Gaussian over the user's row, a calibrated likelihood,
and the maths built on them (MAP fits, Laplace posteriors, predictive probabilities, online updates).

**Coordinates.** A simplex user's K logits matter only up to a common shift (softmax is shift
invariant), so beliefs live in the S = K - 1 coordinates ``z = B^T W`` of the sum-zero subspace
(``B``, (K, S): an orthonormal Helmert basis, :func:`user_basis`); ``W = B z`` gives the logits back.
Heads whose users are not mixtures (``simplex_users`` False) use S = state_dim and ``B = I``.

**Likelihood.** A pair's margin ``m = r(chosen) - r(rejected)`` (``head.user_margins``, the head's
reduced form) gives ``P(chosen preferred) = sigmoid(a m)``, ``a`` an inverse temperature fitted on the
seen users' validation pairs at training time (:mod:`pal_mm.prior`). For a Bradley-Terry head with
``a = 1`` this is exactly its training loss; for a hinge head (PAL-A) it turns margins into
probabilities.

**Prior and posterior.** ``z ~ N(mu, P^-1)`` (P: precision), learned from the seen users' rows
(:mod:`pal_mm.prior`). :func:`fit_map` finds each user's MAP ``z`` (Gauss-Newton with a per-user
backtracking line search; users are independent, so many are fitted in one batched call) and the
Laplace precision at it, ``H = P + sum_i a^2 s_i (1 - s_i) J_i J_i^T`` (``s_i = sigmoid(a m_i)``,
``J_i = dm_i/dz``: the generalised Gauss-Newton matrix, positive definite). :func:`predictive`
averages the likelihood over the posterior with the linearised margin
``m ~ N(m_hat, J H^-1 J^T)`` and the probit approximation
``P = sigmoid(a m_hat / sqrt(1 + pi a^2 v / 8))``. An online update (:func:`fit_map` with the
current posterior as the prior and the one new pair) is the same maths.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


@dataclass
class UserBeliefs:
    """The model's calibrated likelihood and Gaussian beliefs (module doc), saved with the model.

    ``inv_temperature``: ``a``; ``prior_mean`` (S,), ``prior_precision`` (S, S): the prior at unit
    strength (the inverse covariance of the seen users' rows); ``strength``: its multiplier (chosen
    on validation pairs); ``precision`` (n_users, S, S): every known user's posterior precision, in
    the order of the model's user table. Without user state (or K = 1) only ``inv_temperature`` is set."""

    inv_temperature: float = 1.0
    prior_mean: torch.Tensor | None = None
    prior_precision: torch.Tensor | None = None
    strength: float = 1.0
    precision: torch.Tensor | None = None

    @property
    def has_prior(self) -> bool:
        return self.prior_mean is not None

    def prior(self, strength: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (S,), precision (S, S)) of the prior at ``strength`` (default: the chosen one)."""
        if not self.has_prior:
            raise PalMMError("this model has no prior over users (trained before pal-mm had one, or without user state)")
        return self.prior_mean, self.prior_precision * float(self.strength if strength is None else strength)

    # ----- storage: tensors in model.safetensors, a summary in config.json ----------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"beliefs.inv_temperature": torch.tensor([float(self.inv_temperature)], dtype=torch.float64),
               "beliefs.strength": torch.tensor([float(self.strength)], dtype=torch.float64)}  # exact scalars
        if self.has_prior:
            out.update({k: v.detach().float() for k, v in (("beliefs.prior_mean", self.prior_mean),
                                                           ("beliefs.prior_precision", self.prior_precision),
                                                           ("beliefs.precision", self.precision))})
        return {k: v.cpu().contiguous() for k, v in out.items()}

    def summary(self) -> dict:
        """What config.json records (the tensors are the source of truth)."""
        return {"inv_temperature": float(self.inv_temperature), "prior": self.has_prior, "strength": float(self.strength),
                "state_coordinates": int(self.prior_mean.numel()) if self.has_prior else 0}

    @staticmethod
    def expected(summary: dict, n_users: int) -> dict[str, torch.Tensor]:
        """Empty tensors with the names and shapes a saved ``summary`` implies (for load checks)."""
        out = {"beliefs.inv_temperature": torch.zeros(1, dtype=torch.float64), "beliefs.strength": torch.zeros(1, dtype=torch.float64)}
        if summary.get("prior"):
            s = int(summary.get("state_coordinates", 0))
            out.update({"beliefs.prior_mean": torch.zeros(s), "beliefs.prior_precision": torch.zeros(s, s),
                        "beliefs.precision": torch.zeros(n_users, s, s)})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], where: str) -> "UserBeliefs":
        a, lam = float(t["beliefs.inv_temperature"][0]), float(t["beliefs.strength"][0])
        if a <= 0 or lam <= 0:
            raise PalMMError(f"{where}: corrupt beliefs (inverse temperature and prior strength must be > 0)")
        if "beliefs.prior_mean" not in t:
            return cls(inv_temperature=a, strength=lam)
        prec = t["beliefs.precision"]
        for name, m in (("prior precision", t["beliefs.prior_precision"][None]), ("posterior precision", prec)):
            if len(m) and torch.linalg.cholesky_ex(m.double())[1].any():
                raise PalMMError(f"{where}: corrupt beliefs ({name} is not symmetric positive definite)")
        return cls(a, t["beliefs.prior_mean"], t["beliefs.prior_precision"], lam, prec)


# ------------------------------------------------------------------------------------------
# users' pairs in the head's reduced form, margins and their Jacobians
# ------------------------------------------------------------------------------------------
class UserPairs:
    """Pairs of ``n_users`` users in the head's reduced form: ``features`` (each tensor (n, ...),
    :meth:`~pal_mm.heads.base.PreferenceHead.user_pair_features`, computed once) and ``rows`` (n,):
    pair i belongs to user ``rows[i]``."""

    PER_PAIR_MAX = 64  # up to this many pairs, Jacobians come from one backward pass with a row per pair

    def __init__(self, head, features: dict[str, torch.Tensor], rows: torch.Tensor, n_users: int):
        self.head, self.features, self.rows, self.n_users = head, features, rows, n_users

    @classmethod
    def of(cls, head, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, rows: torch.Tensor,
           n_users: int) -> "UserPairs":
        with torch.no_grad():
            return cls(head, head.user_pair_features(prompt, chosen, rejected), rows, n_users)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def margins(self, logits: torch.Tensor) -> torch.Tensor:
        """(n,) margins for the users' rows ``logits`` (n_users, state_dim)."""
        return self.head.margins_from_features(self.features, logits, self.rows)

    def extend(self, other: "UserPairs") -> "UserPairs":
        """These pairs followed by ``other``'s (the same users)."""
        feats = {k: torch.cat([v, other.features[k]]) for k, v in self.features.items()}
        return UserPairs(self.head, feats, torch.cat([self.rows, other.rows]), self.n_users)

    def jacobian(self, z: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Margins (n,) at coordinates ``z`` (n_users, S) and their Jacobian J (n, S),
        ``J_i = dm_i / dz_{rows_i}``: one backward pass through a row per pair (few pairs), else
        1 + S backward passes (forward-mode AD is slow on CPU)."""
        n, s = len(self), z.shape[1]
        if s == 0:
            with torch.no_grad():
                return self.margins(z @ basis.T), torch.zeros(n, 0, dtype=z.dtype, device=z.device)
        with torch.enable_grad():
            if n <= self.PER_PAIR_MAX:
                zz = z.detach()[self.rows].clone().requires_grad_(True)
                m = self.head.margins_from_features(self.features, zz @ basis.T, torch.arange(n, device=z.device))
                (jac,) = torch.autograd.grad(m.sum(), zz)
                return m.detach(), jac
            zz = z.detach().clone().requires_grad_(True)
            m = self.margins(zz @ basis.T)
            weights = torch.zeros_like(m, requires_grad=True)
            (g,) = torch.autograd.grad(m, zz, grad_outputs=weights, create_graph=True)  # (U, S): sum_i weights_i J_i
            cols = []
            for j in range(s):  # d/dweights of g . e_j = the pairs' J e_j
                direction = torch.zeros_like(z)
                direction[:, j] = 1.0
                cols.append(torch.autograd.grad(g, weights, grad_outputs=direction, retain_graph=j < s - 1)[0])
        return m.detach(), torch.stack(cols, dim=-1)


def _objective(m: torch.Tensor, rows: torch.Tensor, n_users: int, a: float, z, mean, precision) -> torch.Tensor:
    """(U,) negative log posterior: sum_i softplus(-a m_i) + (z - mu)^T P (z - mu) / 2."""
    nll = torch.zeros(n_users, dtype=torch.float64, device=m.device).index_add(0, rows, F.softplus(-a * m.double()))
    d = (z - mean).double()
    return nll + 0.5 * torch.einsum("us,ust,ut->u", d, precision.double(), d)


def _gradient_and_precision(m, jac, rows, n_users, a, z, mean, precision):
    """Gradient (U, S) and generalised Gauss-Newton precision (U, S, S) of :func:`_objective`."""
    s = torch.sigmoid(a * m.double())
    jac = jac.double()
    g = torch.zeros(n_users, jac.shape[1], dtype=torch.float64, device=m.device).index_add(0, rows, -a * (1 - s)[:, None] * jac)
    h = torch.zeros(n_users, jac.shape[1], jac.shape[1], dtype=torch.float64, device=m.device)
    h = h.index_add(0, rows, (a * a * s * (1 - s))[:, None, None] * jac[:, :, None] * jac[:, None, :])
    p = precision.double()
    return g + torch.einsum("ust,ut->us", p, (z - mean).double()), h + p


def fit_map(pairs: UserPairs, basis: torch.Tensor, a: float, mean: torch.Tensor, precision: torch.Tensor,
            start: torch.Tensor | None = None, max_iter: int = 50, tol: float = 1e-5,
            ftol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP coordinates z (U, S) and Laplace precisions H (U, S, S) of the ``pairs.n_users`` users under
    the priors ``mean`` (U, S) / ``precision`` (U, S, S) and the calibrated likelihood of their pairs.
    Gauss-Newton steps, each halved per user until that user's objective decreases enough; a user
    stops when a step gains less than ``ftol`` (nats) or moves less than ``tol``."""
    rows, n_users = pairs.rows, pairs.n_users
    z = (mean if start is None else start).detach().clone().float()
    if z.shape[1] == 0:
        return z, precision.double().clone()
    mean = mean.to(z)
    active = torch.ones(n_users, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        m, jac = pairs.jacobian(z, basis)
        f0 = _objective(m, rows, n_users, a, z, mean, precision)
        g, h = _gradient_and_precision(m, jac, rows, n_users, a, z, mean, precision)
        step = torch.linalg.solve(h, g[..., None])[..., 0]
        active &= step.abs().amax(-1) > tol
        if not bool(active.any()):
            break
        slope = (g * step).sum(-1)  # >= 0: a descent direction (h is positive definite)
        t = torch.ones(n_users, dtype=torch.float64, device=z.device)
        pending = active.clone()
        new, gain = z, torch.zeros_like(f0)
        for _ in range(30):
            trial = (z.double() - t[:, None] * step).float()
            with torch.no_grad():
                f1 = _objective(pairs.margins(trial @ basis.T), rows, n_users, a, trial, mean, precision)
            ok = pending & (f1 <= f0 - 1e-4 * t * slope)
            new = torch.where(ok[:, None], trial, new)
            gain = torch.where(ok, f0 - f1, gain)
            pending &= ~ok
            tiny = pending & ((t[:, None] * step).abs().amax(-1) < tol)  # no measurable progress: stop this user
            active &= ~tiny
            pending &= ~tiny
            if not bool(pending.any()):
                break
            t = torch.where(pending, t / 2, t)
        active &= ~pending & (gain > ftol)  # a failed line search, or a negligible gain: this user is done
        z = new
    m, jac = pairs.jacobian(z, basis)
    return z, _gradient_and_precision(m, jac, rows, n_users, a, z, mean, precision)[1]


def laplace_precision(pairs: UserPairs, z: torch.Tensor, basis: torch.Tensor, a: float,
                      precision: torch.Tensor) -> torch.Tensor:
    """(U, S, S) ``precision`` plus the Gauss-Newton terms of the pairs at coordinates z (U, S)."""
    m, jac = pairs.jacobian(z, basis)
    return _gradient_and_precision(m, jac, pairs.rows, pairs.n_users, a, z, z, precision)[1]


# ------------------------------------------------------------------------------------------
# predictions under the posterior
# ------------------------------------------------------------------------------------------
def margin_variance(jac: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """(n,) variance ``J_i C_i J_i^T`` of linearised margins; jac (n, S), covariance (n, S, S)."""
    if jac.shape[1] == 0:
        return torch.zeros(jac.shape[0], dtype=torch.float64, device=jac.device)
    j = jac.double()
    return torch.einsum("ns,nst,nt->n", j, covariance.double(), j).clamp_min(0)


def predictive(m: torch.Tensor, variance: torch.Tensor | None, a: float) -> torch.Tensor:
    """(n,) P(chosen preferred) = E[sigmoid(a m)] under m ~ N(m_hat, variance) (probit approximation)."""
    x = a * m.double()
    if variance is not None:
        x = x / torch.sqrt(1 + math.pi * a * a * variance.double() / 8)
    return torch.sigmoid(x)


def covariance(precision: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., S, S) symmetric positive definite precisions (float64)."""
    p = precision.double()
    if p.shape[-1] == 0:
        return p.clone()
    return torch.cholesky_inverse(torch.linalg.cholesky(p))


def weight_covariance(z: torch.Tensor, cov: torch.Tensor, basis: torch.Tensor, simplex: bool = True) -> torch.Tensor:
    """(U, K, K) covariance of the simplex weights w = softmax(B z) by the delta method
    (dw/dz = (diag(w) - w w^T) B); for non-simplex users the covariance of the row itself."""
    jac = basis.double().expand(z.shape[0], -1, -1)
    if simplex:
        w = torch.softmax(z.double() @ basis.double().T, dim=-1)
        jac = (torch.diag_embed(w) - w[:, :, None] * w[:, None, :]) @ jac
    return jac @ cov.double() @ jac.transpose(1, 2)


# ------------------------------------------------------------------------------------------
# known users: probabilities, reward uncertainty, online updates
# ------------------------------------------------------------------------------------------
def _local(user_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct users (U,), each row's position among them (n,))."""
    users, rows = torch.unique(user_idx, return_inverse=True)
    return users, rows


def pair_probabilities(head, beliefs: UserBeliefs | None, user_idx: torch.Tensor, prompt: torch.Tensor,
                       chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(n,) P(chosen preferred) for pairs of known users (rows ``user_idx`` of the head's table): the
    posterior predictive when the model has beliefs, else sigmoid(a * margin)."""
    a = beliefs.inv_temperature if beliefs is not None else 1.0
    users, rows = _local(user_idx)
    pairs = UserPairs.of(head, prompt, chosen, rejected, rows, len(users))
    logits = head.user_logits.detach()[users]
    if beliefs is None or not beliefs.has_prior or not head.has_user_state:
        with torch.no_grad():
            return predictive(pairs.margins(logits), None, a)
    basis = user_basis(head.state_dim, head.simplex_users).to(logits)
    m, jac = pairs.jacobian(logits @ basis, basis)
    cov = covariance(beliefs.precision[users.cpu()]).to(jac.device)
    return predictive(m, margin_variance(jac, cov[rows]), a)


def reward_std(head, beliefs: UserBeliefs, user: int, prompt: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """(b,) posterior standard deviation of user ``user``'s rewards of (b, dp) / (b, di) embeddings
    (linearised in the user's coordinates)."""
    if not beliefs.has_prior or not head.has_user_state:
        return torch.zeros(prompt.shape[0], dtype=torch.float64)
    basis = user_basis(head.state_dim, head.simplex_users).to(head.user_logits)
    z = head.user_logits.detach()[user][None] @ basis
    with torch.enable_grad():  # one row of coordinates per reward: one backward pass gives every gradient
        zz = z.expand(prompt.shape[0], -1).clone().requires_grad_(True)
        r = head.reward(prompt, item, head.weights_from_logits(zz @ basis.T))
        (jac,) = torch.autograd.grad(r.sum(), zz)
    cov = covariance(beliefs.precision[user]).to(jac.device)
    return margin_variance(jac, cov.expand(jac.shape[0], -1, -1)).sqrt()


@dataclass
class OnlineUser:
    """A user being updated online (kept in memory, not saved): the Gaussian the session started
    from (``mean`` (S,), ``precision`` (S, S)) and the pairs added since (reduced form)."""

    mean: torch.Tensor
    precision: torch.Tensor
    pairs: UserPairs | None = None

    MAX_PAIRS = 256  # beyond this, the current posterior becomes the start and the pairs are dropped


def update_user(head, beliefs: UserBeliefs, user: int, prompt: torch.Tensor, chosen: torch.Tensor,
                rejected: torch.Tensor, state: OnlineUser | None = None, max_step: float = 3.0) -> OnlineUser:
    """Refine known user ``user``'s row and posterior precision (in place) from one new pair (1, dp) /
    (1, di) / (1, di) and return the online state.

    The objective is the session's starting Gaussian (the user's posterior when the session began:
    the prior for a new user) plus ALL pairs added since, in the head's reduced form. One Gauss-Newton
    step from the current row (the optimum before this pair), from one forward / backward pass
    (:func:`_newton_step`), so the row tracks the MAP that :func:`~pal_mm.adaptation.adapt` finds on
    the same pairs; a step longer than ``max_step`` (a surprising pair) is replaced by a full solve
    (:func:`fit_map`)."""
    basis = user_basis(head.state_dim, head.simplex_users).to(head.user_logits)
    z0 = head.user_logits.detach()[user][None] @ basis
    if state is None or (state.pairs is not None and len(state.pairs) >= OnlineUser.MAX_PAIRS):
        state = OnlineUser(z0[0].clone(), beliefs.precision[user].to(z0).clone())
    new = UserPairs.of(head, prompt, chosen, rejected, torch.zeros(prompt.shape[0], dtype=torch.long, device=prompt.device), 1)
    state.pairs = new if state.pairs is None else state.pairs.extend(new)
    a = beliefs.inv_temperature
    mean, base = state.mean.to(z0), state.precision.to(z0)
    step, h, f0_slope = _newton_step(state.pairs, basis, a, mean, base, beliefs.precision[user].to(z0), z0)
    if bool(torch.isfinite(step).all()) and float(step.abs().max()) <= max_step:
        t = _step_length(state.pairs, basis, a, mean, base, z0, step, f0_slope) if float(step.abs().max()) > 0.05 else 1.0
        z = z0 - t * step.float()[None]
    else:
        z, h = fit_map(state.pairs, basis, a, state.mean[None].to(z0), state.precision[None].to(z0), start=z0)
        h = h[0]
    with torch.no_grad():
        head.user_logits.data[user] = (z @ basis.T)[0].to(head.user_logits.dtype)
    beliefs.precision[user] = h.to(beliefs.precision.dtype).cpu()
    return state


def _newton_step(pairs: UserPairs, basis: torch.Tensor, a: float, mean: torch.Tensor, base: torch.Tensor,
                 current: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """(step (S,), precision (S, S), (objective, gradient . step)) of one user at ``z`` (1, S) for the objective
    ``(z - mean)^T base (z - mean) / 2 + sum_i softplus(-a m_i)`` over all ``pairs`` (the newest last),
    from ONE forward / backward pass. Up to ``UserPairs.PER_PAIR_MAX`` pairs every pair gets its own row
    of coordinates, so the pass yields each pair's gradient, hence its Jacobian (dividing by
    d softplus(-a m)/dm = -a sigmoid(-a m), never 0): an exact Gauss-Newton step. With more pairs the
    older pairs share a row and their curvature is taken from ``current`` (the stored precision)."""
    n = len(pairs)
    exact = n <= UserPairs.PER_PAIR_MAX
    rows = torch.arange(n, device=z.device) if exact else (torch.arange(n, device=z.device) == n - 1).long()
    with torch.enable_grad():
        zz = z.detach().expand(n if exact else 2, -1).clone().requires_grad_(True)
        m = pairs.head.margins_from_features(pairs.features, zz @ basis.T, rows)
        (grad,) = torch.autograd.grad(F.softplus(-a * m).sum(), zz)
    grad, m = grad.double(), m.detach().double()
    s = torch.sigmoid(a * m)
    if exact:
        jac = grad / (-a * (1 - s))[:, None]
        h = base.double() + ((a * a * s * (1 - s))[:, None] * jac).T @ jac
    else:
        jac = grad[1] / (-a * (1 - s[-1]))
        h = current.double() + (a * a * s[-1] * (1 - s[-1])) * torch.outer(jac, jac)
    d = z[0].double() - mean.double()
    g = grad.sum(0) + base.double() @ d
    f0 = F.softplus(-a * m).sum() + 0.5 * d @ base.double() @ d
    step = torch.linalg.solve(h, g)
    return step, h, (float(f0), float(g @ step))


def _step_length(pairs: UserPairs, basis, a: float, mean, base, z, step, f0_slope) -> float:
    """The length t of the step ``z - t step`` at the minimum of the parabola through f(0), f'(0) and
    f(1) along it (one more forward pass), kept in [0.05, 1.5]. The Gauss-Newton matrix can under- or
    over-estimate the curvature (the margins are not linear in z): this keeps online steps from
    overshooting or lagging."""
    f0, slope = f0_slope  # f(z - t step) ~ f0 - slope t + c t^2
    trial = z - step.float()[None]
    with torch.no_grad():
        m1 = pairs.head.margins_from_features(pairs.features, trial @ basis.T, torch.zeros_like(pairs.rows)).double()
    d1 = trial[0].double() - mean.double()
    c = float(F.softplus(-a * m1).sum() + 0.5 * d1 @ base.double() @ d1) - f0 + slope
    return min(max(slope / (2 * c), 0.05), 1.5) if c > 0 and slope > 0 else 1.0
