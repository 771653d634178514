"""The model's beliefs about users, fitted at the end of training (:func:`fit_beliefs`, called by
:func:`pal_mm.training.fit`); only training and validation pairs of the SEEN users are used.

1. **Calibration.** The inverse temperature ``a`` of ``P(chosen preferred) = sigmoid(a m)`` minimises
   the log loss of the seen users' validation margins (``a = 1`` without validation data).
2. **Prior.** A Gaussian over users' coordinates ``z = B^T W`` (:mod:`pal_mm.posterior`: the K - 1
   shift-free coordinates of the logits): the mean and the covariance of the seen users' rows, the
   covariance shrunk 10 % toward its average variance (and floored) so that it is invertible.
3. **Strength.** The prior's precision is multiplied by a strength chosen from a grid on few-shot
   splits of the seen users' validation pairs (:func:`pal_mm.fewshot.fewshot_split`: n in
   {1, 2, 5, 10} to fit, the rest of the user's validation pairs to score, two split seeds): every
   (user, n, seed) is fitted as a new user (MAP under a leave-one-out prior, without that user's own
   row) and scored by the Brier score of the posterior predictive on its held-out pairs, averaged over
   n. Test pairs are never used. Without validation data the strength is 1 (the empirical prior).
4. **Seen users' posteriors.** The Laplace precision at each seen user's trained row: the prior's
   precision plus the Gauss-Newton terms of the user's training pairs.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .calibration import fit_inv_temperature
from .embedding import EncodedPairs
from .errors import PalMMError
from .fewshot import fewshot_split, mean_std
from .posterior import UserBeliefs, UserPairs, covariance, fit_map, laplace_precision, margin_variance, predictive, user_basis
from .scoring import pair_margins

STRENGTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SELECTION_NS = (1, 2, 5, 10)
SELECTION_SEEDS = (0, 1)
MAX_SELECTION_USERS = 200
MAX_TEST_PAIRS = 30  # per user and block
SHRINK, FLOOR = 0.1, 1e-2
MIN_USERS = 3
SCORES = ("brier", "log_loss", "accuracy")


def gaussian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (S,) and unit-strength precision (S, S) of users' coordinates z (U, S), U >= 2
    (shrunk covariance, see the module doc)."""
    mean = z.double().mean(0)
    d = z.double() - mean
    cov = d.T @ d / max(len(z) - 1, 1)
    return mean.float(), _precision(cov).float()


def _precision(cov: torch.Tensor) -> torch.Tensor:
    """(..., S, S) shrunk and floored covariances -> precisions."""
    s = cov.shape[-1]
    eye = torch.eye(s, dtype=cov.dtype)
    avg = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    shrunk = (1 - SHRINK) * cov + SHRINK * avg * eye + FLOOR * eye
    return torch.linalg.inv(shrunk)


def leave_one_out(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per user: the prior (mean (U, S), unit precision (U, S, S)) fitted without that user's row."""
    z = z.double()
    u = len(z)
    total, outer = z.sum(0), z.T @ z
    means = (total - z) / (u - 1)
    scatter = outer - z[:, :, None] * z[:, None, :] - (u - 1) * means[:, :, None] * means[:, None, :]
    return means.float(), _precision(scatter / max(u - 2, 1)).float()


@torch.no_grad()
def fit_beliefs(model, train: EncodedPairs, val: EncodedPairs | None) -> UserBeliefs:
    """Fit and attach ``model.beliefs`` (module doc); a summary goes to ``model.metrics["beliefs"]``."""
    head = model.head
    head.eval()
    beliefs = UserBeliefs()
    report: dict = {}
    if val is not None and len(val):
        beliefs.inv_temperature = fit_inv_temperature(pair_margins(model, val).tolist())
    report["inv_temperature"] = round(beliefs.inv_temperature, 6)
    basis = user_basis(head.state_dim, head.simplex_users)
    if head.has_user_state and basis.shape[1] > 0 and len(model.users) >= MIN_USERS:
        z = head.user_logits.detach().cpu().float() @ basis
        beliefs.prior_mean, beliefs.prior_precision = gaussian(z)
        if val is not None and len(val):
            beliefs.strength, report["strength_selection"] = choose_strength(model, beliefs, z, val)
        beliefs.precision = seen_precision(model, beliefs, train)
        report["prior_strength"] = beliefs.strength
    model.beliefs = beliefs
    model.metrics["beliefs"] = report
    return beliefs


def seen_precision(model, beliefs: UserBeliefs, train: EncodedPairs, batch_size: int = 4096) -> torch.Tensor:
    """(n_users, S, S) Laplace precisions of the known users at their rows, from their training pairs."""
    head = model.head
    dev = head.user_logits.device
    basis = user_basis(head.state_dim, head.simplex_users).to(dev)
    prec = beliefs.prior()[1].double().to(dev).expand(len(model.users), -1, -1).clone()
    idx = model.user_index(train.user_ids).to(dev)
    z = head.user_logits.detach() @ basis
    for s in range(0, len(train), batch_size):
        sl = slice(s, s + batch_size)
        pairs = UserPairs.of(head, train.prompt[sl].to(dev), train.chosen[sl].to(dev), train.rejected[sl].to(dev), idx[sl],
                             len(model.users))
        prec = laplace_precision(pairs, z, basis, beliefs.inv_temperature, prec)
    return prec.float().cpu()


def choose_strength(model, beliefs: UserBeliefs, z: torch.Tensor, val: EncodedPairs) -> tuple[float, dict]:
    """The strength in :data:`STRENGTHS` with the lowest held-out log loss on few-shot splits of the
    seen users' validation pairs (module doc), and a report of every candidate."""
    head = model.head
    dev = head.user_logits.device
    users = sorted(set(val.user_ids))[:MAX_SELECTION_USERS]
    keep = [i for i, u in enumerate(val.user_ids) if u in set(users)]
    val = val.subset(keep)
    position = {u: i for i, u in enumerate(model.users)}
    loo_mean, loo_prec = leave_one_out(z)
    counts = defaultdict(int)
    for u in val.user_ids:
        counts[u] += 1
    ns = [n for n in SELECTION_NS if sum(c > n for c in counts.values()) >= 1]
    if not ns:
        return beliefs.strength, {"skipped": "no seen user has 2 or more validation pairs"}
    train_rows, train_v, test_rows, test_v, block_of, real_of = [], [], [], [], [], []
    for seed in SELECTION_SEEDS:
        split = fewshot_split(val.user_ids, ns, seed)
        for n in ns:
            by_user_test = defaultdict(list)
            for i in split.test[n]:
                by_user_test[val.user_ids[i]].append(i)
            for u in sorted(by_user_test):
                v = len(real_of)
                real_of.append(position[u])
                block_of.append(n)
                tr = [i for i in split.train[n] if val.user_ids[i] == u]
                train_rows += tr
                train_v += [v] * len(tr)
                te = by_user_test[u][:MAX_TEST_PAIRS]
                test_rows += te
                test_v += [v] * len(te)
    n_virtual = len(real_of)
    real = torch.as_tensor(real_of)
    basis = user_basis(head.state_dim, head.simplex_users).to(dev)
    tr_v, te_v = torch.as_tensor(train_v, device=dev), torch.as_tensor(test_v, device=dev)
    tr, te = val.subset(train_rows), val.subset(test_rows)
    fit_pairs = UserPairs.of(head, tr.prompt.to(dev), tr.chosen.to(dev), tr.rejected.to(dev), tr_v, n_virtual)
    test_pairs = UserPairs.of(head, te.prompt.to(dev), te.chosen.to(dev), te.rejected.to(dev), te_v, n_virtual)
    mean, unit = loo_mean[real].to(dev), loo_prec[real].to(dev)
    a = beliefs.inv_temperature
    blocks = torch.as_tensor(block_of, device=dev)[te_v]
    rows, zv = [], None
    for strength in sorted(STRENGTHS, reverse=True):  # strong to weak priors, each fit warm-started at the last
        zv, h = fit_map(fit_pairs, basis, a, mean, unit * strength, start=zv)
        m, jac = test_pairs.jacobian(zv, basis)
        p = predictive(m, margin_variance(jac, covariance(h)[te_v]), a).clamp(1e-12, 1)
        by_n = {str(n): {"brier": float(((1 - p[blocks == n]) ** 2).mean()), "log_loss": float(-p[blocks == n].log().mean()),
                         "accuracy": float((m[blocks == n] > 0).double().mean())} for n in ns}
        rows.append({"strength": strength, **{k: mean_std(r[k] for r in by_n.values())[0] for k in SCORES}})
    rows.sort(key=lambda r: r["strength"])
    best = min(rows, key=lambda r: (round(r["brier"], 9), r["strength"]))
    if not math.isfinite(best["brier"]):
        raise PalMMError("choosing the prior strength failed (non-finite validation scores)")
    with torch.no_grad():  # no pairs at all: every virtual user at its prior mean (the population's typical user)
        m0 = test_pairs.margins(mean @ basis.T)
    population = mean_std(float((m0[blocks == n] > 0).double().mean()) for n in ns)[0]
    report = {"criterion": "brier", "ns": ns, "seeds": list(SELECTION_SEEDS), "virtual_users": n_virtual,
              **{key: {str(r["strength"]): r[key] for r in rows} for key in SCORES}, "population_accuracy": population}
    return best["strength"], _rounded(report)


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 6)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj
