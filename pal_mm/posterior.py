"""The maths of users' posteriors: MAP fits under a Gaussian (mixture) prior, Laplace posteriors,
predictive probabilities (:mod:`pal_mm.beliefs` holds what is saved; :mod:`pal_mm.online` updates one user
at a time).

A pair's margin ``m = r(chosen) - r(rejected)`` comes from the head's reduced form
(:class:`UserPairs`) and gives ``P(chosen preferred) = sigmoid(a m)``. :func:`fit_map` finds users'
MAP coordinates ``z`` under Gaussian priors ``N(mu, P^-1)`` (Gauss-Newton with a per-user
backtracking line search; users are independent, so many are fitted in one batched call) and the
Laplace precision at it, ``H = P + sum_i a^2 s_i (1 - s_i) J_i J_i^T`` (``s_i = sigmoid(a m_i)``,
``J_i = dm_i/dz``: the generalised Gauss-Newton matrix, positive definite). Under a mixture prior
(:func:`posterior_mixture`) each component gives a Laplace posterior and its evidence
``log pi_c - f_c + log det(P)/2 - log det(H_c)/2``; the components are weighted by their evidence and
collapsed into one Gaussian (same mean and covariance). :func:`predictive` averages the likelihood over
a posterior with the linearised margin ``m ~ N(m_hat, J H^-1 J^T)`` and the probit approximation
``P = sigmoid(a m_hat / sqrt(1 + pi a^2 v / 8))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .beliefs import UserBeliefs, collapse, user_basis


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

    def subset(self, keep: torch.Tensor) -> "UserPairs":
        """The pairs where the (n,) boolean ``keep`` is True (same users and rows)."""
        return UserPairs(self.head, {k: v[keep] for k, v in self.features.items()}, self.rows[keep], self.n_users)

    def extend(self, other: "UserPairs") -> "UserPairs":
        """These pairs followed by ``other``'s (the same users)."""
        feats = {k: torch.cat([v, other.features[k]]) for k, v in self.features.items()}
        return UserPairs(self.head, feats, torch.cat([self.rows, other.rows]), self.n_users)

    def jacobian(self, z: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Margins (n,) at coordinates ``z`` (n_users, S) and their Jacobian J (n, S),
        ``J_i = dm_i / dz_{rows_i}``: the head's per-pair gradients
        (:meth:`~pal_mm.heads.base.PreferenceHead.margin_gradients_from_features`) for few pairs or when
        the head has them in closed form, else 1 + S backward passes (forward-mode AD is slow on CPU)."""
        n, s = len(self), z.shape[1]
        if s == 0:
            with torch.no_grad():
                return self.margins(z @ basis.T), torch.zeros(n, 0, dtype=z.dtype, device=z.device)
        if n <= self.PER_PAIR_MAX or self.head.closed_form_margin_gradients:
            # each pair's gradient w.r.t. its user's logits, then into the coordinates
            m, grad = self.head.margin_gradients_from_features(self.features, z.detach() @ basis.T, self.rows)
            return m, grad @ basis
        with torch.enable_grad():
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
            start: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-5,
            ftol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP coordinates z (U, S) and Laplace precisions H (U, S, S) of the ``pairs.n_users`` users under
    the priors ``mean`` (U, S) / ``precision`` (U, S, S) and the calibrated likelihood of their pairs.
    Gauss-Newton steps, each halved per user until that user's objective decreases enough; a user
    stops when a step gains less than ``ftol`` (nats) or moves less than ``tol``. Gauss-Newton can creep
    along a flat valley of the simplex: ``max_iter`` 100, where 50 stopped 3e-4 nats short of the optimum on
    one user of the new-users tests (converged users leave early, so the bound costs only the slow ones)."""
    n_users = pairs.n_users
    z = (mean if start is None else start).detach().clone().float()
    if z.shape[1] == 0:
        return z, precision.double().clone()
    mean = mean.to(z)
    active = torch.ones(n_users, dtype=torch.bool, device=z.device)
    work = pairs  # the pairs of the users still active (finished users' pairs are dropped as they finish)
    for _ in range(max_iter):
        if len(work) and not bool(active[work.rows].all()):
            work = work.subset(active[work.rows])
        rows = work.rows
        m, jac = work.jacobian(z, basis)
        f0 = _objective(m, rows, n_users, a, z, mean, precision)  # right for active users only
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
                f1 = _objective(work.margins(trial @ basis.T), rows, n_users, a, trial, mean, precision)
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
    return z, _gradient_and_precision(m, jac, pairs.rows, n_users, a, z, mean, precision)[1]


def laplace_precision(pairs: UserPairs, z: torch.Tensor, basis: torch.Tensor, a: float,
                      precision: torch.Tensor) -> torch.Tensor:
    """(U, S, S) ``precision`` plus the Gauss-Newton terms of the pairs at coordinates z (U, S)."""
    m, jac = pairs.jacobian(z, basis)
    return _gradient_and_precision(m, jac, pairs.rows, pairs.n_users, a, z, z, precision)[1]


def per_component(pairs: UserPairs, n_components: int) -> UserPairs:
    """The pairs of every user once per prior component: virtual user ``u * C + c``."""
    n, c = len(pairs), n_components
    idx = torch.arange(n, device=pairs.rows.device).repeat(c)
    comp = torch.arange(c, device=pairs.rows.device).repeat_interleave(n)
    return UserPairs(pairs.head, {k: v[idx] for k, v in pairs.features.items()}, pairs.rows[idx] * c + comp, pairs.n_users * c)


def _logdet(m: torch.Tensor) -> torch.Tensor:
    """log det of (..., S, S) symmetric positive definite matrices (Cholesky)."""
    return 2 * torch.linalg.cholesky(m.double()).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def log_evidence(f: torch.Tensor, prior_precision: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Laplace log evidence ``-f + log det(P)/2 - log det(H)/2`` (without the component's log weight)."""
    return -f + 0.5 * _logdet(prior_precision) - 0.5 * _logdet(precision)


def posterior_mixture(pairs: UserPairs, basis: torch.Tensor, a: float, log_weights: torch.Tensor, means: torch.Tensor,
                      precision: torch.Tensor, start: torch.Tensor | None = None, **solver):
    """Every user's posterior under the mixture prior ``sum_c exp(log_weights_c) N(means_c, precision^-1)``
    as one Gaussian (module doc). ``log_weights`` (C,) or (U, C), ``means`` (C, S) or (U, C, S) (a
    prior per user), ``precision`` (S, S) shared; ``start`` (U, C, S): initial coordinates; ``solver``:
    :func:`fit_map`'s tolerances. Returns (mean (U, S), precision (U, S, S), every component's mode
    (U, C, S))."""
    u, c, s = pairs.n_users, means.shape[-2], means.shape[-1]
    dev = pairs.rows.device
    mu = means.to(dev).expand(u, c, s).reshape(u * c, s)
    prec = precision.to(dev).expand(u * c, s, s)
    virtual = per_component(pairs, c)
    z, h = fit_map(virtual, basis, a, mu, prec, start=None if start is None else start.reshape(u * c, s), **solver)
    if c == 1:
        return z, h, z.reshape(u, 1, s)
    with torch.no_grad():
        f = _objective(virtual.margins(z @ basis.T), virtual.rows, u * c, a, z, mu, prec)
    logw = log_weights.to(dev).double().expand(u, c) + log_evidence(f, prec, h).reshape(u, c)
    mean, cov = collapse(logw, z.reshape(u, c, s), covariance(h).reshape(u, c, s, s))
    return mean.float(), torch.linalg.inv(cov), z.reshape(u, c, s)


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
# known users: probabilities, reward uncertainty
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


