"""Online updates of one user from one new comparison (:meth:`pal_mm.model.PALModel.update_user`).

A session (kept in memory, not saved) starts from what the model believes about the user: the prior
for a new user (its C components), the user's stored posterior (one Gaussian) for a known one. Its
objective per component c is ``(z - mu_c)^T P_c (z - mu_c) / 2 + sum_i softplus(-a m_i(z))`` over ALL
pairs added in the session (kept in the head's reduced form). Each update takes a Gauss-Newton step
per component from the current modes (the optima before this pair; with ``max_steps`` > 1, more
while a step moves a mode by more than :data:`REPEAT_ABOVE`), from every (pair, component)'s margin
gradient (the head's closed form when it has one), with a step length from a parabola along the step
(one more forward pass): the Gauss-Newton matrix can under- or over-estimate the curvature. The components are weighted by their Laplace
evidence and collapsed into the user's stored Gaussian, exactly as :func:`pal_mm.adaptation.adapt`
does, so the user tracks the refit on the same pairs; components whose weight falls below
:data:`PRUNE` leave the session. A surprising pair (a step longer than
``max_step``) gets a full solve; after :data:`OnlineUser.MAX_PAIRS` pairs the session restarts from
the current posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .beliefs import UserBeliefs, collapse, user_basis
from .posterior import UserPairs, _objective, covariance, fit_map, log_evidence, per_component


PRUNE = 1e-3  # a session drops components whose posterior weight falls below this
REPEAT_ABOVE = 0.2  # another step (up to max_steps) while a step moves a mode by more than this
LINE_SEARCH_ABOVE = 0.1  # steps longer than this get their length from a parabola (one more forward pass)


@dataclass
class OnlineUser:
    """A session: the starting components (``log_weights`` (C,), ``means`` (C, S), ``precisions``
    (C, S, S)), the current modes ``z`` (C, S) and the session's pairs."""

    log_weights: torch.Tensor
    means: torch.Tensor
    precisions: torch.Tensor
    z: torch.Tensor
    pairs: UserPairs | None = None

    MAX_PAIRS = 64

    @classmethod
    def single(cls, z: torch.Tensor, precision: torch.Tensor) -> "OnlineUser":
        """A session starting from one Gaussian N(z (S,), precision^-1)."""
        return cls(torch.zeros(1, dtype=z.dtype, device=z.device), z[None].clone(), precision[None].clone(), z[None].clone())

    @classmethod
    def from_prior(cls, beliefs: UserBeliefs, device) -> "OnlineUser":
        logw, means, prec = (t.to(device) for t in beliefs.prior())
        return cls(logw.clone(), means.clone(), prec.expand(len(means), -1, -1).clone(), means.clone())


def update_user(head, beliefs: UserBeliefs, user: int, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                state: OnlineUser | None = None, max_step: float = 3.0, max_steps: int = 1) -> OnlineUser:
    """Refine row ``user`` of the head's table and its stored posterior precision (in place) from one
    new pair (1, dp) / (1, di) / (1, di); return the session (module doc). ``state`` None starts a
    session from the user's stored posterior."""
    basis = user_basis(head.state_dim, head.simplex_users).to(head.user_logits)
    if state is None or (state.pairs is not None and len(state.pairs) >= OnlineUser.MAX_PAIRS):
        z0 = head.user_logits.detach()[user] @ basis
        state = OnlineUser.single(z0, beliefs.precision[user].to(z0))
    new = UserPairs.of(head, prompt, chosen, rejected, torch.zeros(prompt.shape[0], dtype=torch.long, device=prompt.device), 1)
    state.pairs = new if state.pairs is None else state.pairs.extend(new)
    a, c = beliefs.inv_temperature, len(state.means)
    virtual = state.pairs if c == 1 else per_component(state.pairs, c)
    for _ in range(max_steps):  # usually one: the modes before this pair are close to the new ones
        step, h, f0, slope = _gauss_newton(virtual, basis, a, state)
        if not bool(torch.isfinite(step).all()) or float(step.abs().max()) > max_step:
            # a surprising pair: solve every component to convergence
            state.z, h = fit_map(virtual, basis, a, state.means, state.precisions, start=state.z)
            with torch.no_grad():
                f = _objective(virtual.margins(state.z @ basis.T), virtual.rows, c, a, state.z, state.means, state.precisions)
            break
        if float(step.abs().max()) > LINE_SEARCH_ABOVE:
            t, f = _step_lengths(virtual, basis, a, state, step, f0, slope)
        else:  # a small step: the Gauss-Newton model, f(z - step) = f0 - slope / 2
            t, f = torch.ones_like(f0), f0 - slope / 2
        state.z = state.z - (t[:, None] * step).float()
        if float((t[:, None] * step).abs().max()) <= REPEAT_ABOVE:
            break
    if c == 1:
        mean, precision = state.z[0], h[0]
    else:
        logw = state.log_weights.double() + log_evidence(f, state.precisions, h)
        mean, cov = collapse(logw, state.z, covariance(h))
        precision = torch.linalg.inv(cov)
        keep = torch.log_softmax(logw, 0) > math.log(PRUNE)
        if not bool(keep.all()):  # components the pairs have ruled out no longer count: drop them
            state.log_weights, state.means = state.log_weights[keep], state.means[keep]
            state.precisions, state.z = state.precisions[keep], state.z[keep]
    with torch.no_grad():
        head.user_logits.data[user] = (mean.float() @ basis.T).to(head.user_logits.dtype)
    beliefs.precision[user] = precision.to(beliefs.precision.dtype).cpu()
    return state


def _gauss_newton(virtual: UserPairs, basis: torch.Tensor, a: float, state: OnlineUser):
    """Per component: the Gauss-Newton step (C, S), precision (C, S, S), objective (C,) and
    gradient . step (C,) at the current modes, from the head's per-pair margin gradients."""
    c = len(state.means)
    m, grad = virtual.head.margin_gradients_from_features(virtual.features, state.z @ basis.T, virtual.rows)
    m, jac = m.double(), (grad @ basis).double()
    loss = F.softplus(-a * m)
    s = torch.sigmoid(a * m)
    grad = (-a * (1 - s))[:, None] * jac  # d softplus(-a m) / dz
    p = state.precisions.double()
    d = (state.z - state.means).double()
    pd = (p @ d[..., None])[..., 0]
    weighted = (a * a * s * (1 - s))[:, None] * jac
    if c == 1:  # one component: plain sums
        g = grad.sum(0, keepdim=True) + pd
        h = p + (weighted.T @ jac)[None]
        f0 = loss.sum(0, keepdim=True) + 0.5 * (d * pd).sum(-1)
    else:
        rows = virtual.rows
        g = torch.zeros_like(d).index_add(0, rows, grad) + pd
        h = p + torch.zeros_like(p).index_add(0, rows, weighted[:, :, None] * jac[:, None, :])
        f0 = torch.zeros(c, dtype=torch.float64, device=d.device).index_add(0, rows, loss) + 0.5 * (d * pd).sum(-1)
    step = torch.linalg.solve(h, g[..., None])[..., 0]
    return step, h, f0, (g * step).sum(-1)


def _step_lengths(virtual: UserPairs, basis, a: float, state: OnlineUser, step, f0, slope):
    """Per component, the t of ``z - t step`` at the minimum of the parabola through f(0), f'(0) and
    f(1) (one forward pass), kept in [0.05, 1.5] (1 where the parabola has no minimum), and the
    parabola's value there (C,)."""
    trial = state.z - step.float()
    with torch.no_grad():
        f1 = _objective(virtual.margins(trial @ basis.T), virtual.rows, len(state.means), a, trial, state.means, state.precisions)
    curv = f1 - f0 + slope  # f(t) ~ f0 - slope t + curv t^2
    t = torch.where((curv > 0) & (slope > 0), slope / (2 * curv.clamp_min(1e-300)), torch.ones_like(f0)).clamp(0.05, 1.5)
    return t, torch.minimum(f0 - slope * t + curv * t * t, f0)
