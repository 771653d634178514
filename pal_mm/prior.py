"""The model's beliefs about users (:class:`~pal_mm.beliefs.UserBeliefs`), fitted at the end of
training (:func:`fit_beliefs`, called by :func:`pal_mm.training.fit`) from the SEEN users' training
and validation pairs only.

1. **Calibration.** The inverse temperature ``a`` of ``P(chosen preferred) = sigmoid(a m)`` minimises
   the log loss of the seen users' validation margins, with Platt's targets (a finite ``a`` even when
   validation is perfectly separated; ``a = 1`` without validation data).
2. **Prior.** The seen users' coordinates ``z = B^T W`` (the K - 1 shift-free coordinates of the
   logits) are fitted by Gaussian mixtures with one shared covariance (EM from farthest-first
   starts; C = 1 .. 8 components): users often come in groups, and a single Gaussian between two
   groups would pull every new user to the middle. The covariance is shrunk 10 % toward
   its average variance and floored, so that it is invertible.
3. **Components and strength.** The number of components (1, the BIC's choice, and K, the
   number of prototypes, at most U / 3) and a strength multiplying the prior's precision (a grid) are chosen
   on few-shot splits of the seen users' validation pairs (:func:`pal_mm.fewshot.fewshot_split`: n in
   {1, 2, 5, 10} to fit, the rest of the user's validation pairs to score, two split seeds): every
   (user, n, seed) is fitted as a new user (its posterior under a prior whose component means and
   weights leave that user's own row out) and its posterior predictive is scored on its held-out
   pairs: the best accuracy averaged over n, near-ties broken by the Brier score. Test pairs are never
   used. Without validation data: the BIC's number of components at strength 1.
4. **Seen users' posteriors.** The Laplace precision at each seen user's trained row: the prior's
   precision plus the Gauss-Newton terms of the user's training pairs.

Steps 2-4 need simplex users (PAL-A, PAL-B, LoRe; K <= 17) and at least 3 seen users; other models get
the calibration only (heads whose users are latents, like VPL's, infer them in their own way).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .beliefs import UserBeliefs, user_basis
from .calibration import fit_inv_temperature
from .embedding import EncodedPairs
from .errors import PalMMError
from .fewshot import fewshot_split, mean_std
from .posterior import UserPairs, covariance, laplace_precision, margin_variance, posterior_mixture, predictive
from .scoring import pair_margins

STRENGTHS = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
SELECTION_SOLVER = {"tol": 1e-3, "ftol": 1e-4, "max_iter": 25}  # choosing needs less precision than adapt
SELECTION_NS = (1, 2, 5, 10)
SELECTION_SEEDS = (0, 1)
MAX_SELECTION_USERS = 200
MAX_TEST_PAIRS = 30  # per user and block
MAX_COMPONENTS = 8
SHRINK, FLOOR = 0.1, 1e-2
MIN_USERS = 3
MAX_COORDINATES = 16
SCORES = ("brier", "log_loss", "accuracy")


# ------------------------------------------------------------------------------------------
# the mixture of the seen users' rows
# ------------------------------------------------------------------------------------------
def _shrunk(cov: torch.Tensor) -> torch.Tensor:
    s = cov.shape[-1]
    eye = torch.eye(s, dtype=cov.dtype)
    avg = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return (1 - SHRINK) * cov + SHRINK * avg * eye + FLOOR * eye


def _farthest_first(z: torch.Tensor, c: int) -> torch.Tensor:
    """c starting means: the row farthest from the centre, then each time the row farthest from those chosen."""
    chosen = [int(((z - z.mean(0)) ** 2).sum(1).argmax())]
    for _ in range(c - 1):
        d = torch.cdist(z, z[chosen]).min(1).values
        chosen.append(int(d.argmax()))
    return z[chosen].clone()


def _tied_log_density(z: torch.Tensor, means: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """(U, C) log N(z_u; means_c, cov) for z (U, S), means (C, S) and one covariance (S, S): one
    Cholesky factor for all components."""
    chol = torch.linalg.cholesky(cov)
    d = (z[:, None, :] - means[None]).reshape(-1, z.shape[1])  # (U * C, S)
    maha = torch.linalg.solve_triangular(chol, d.T, upper=False).pow(2).sum(0).reshape(len(z), len(means))
    half_logdet = chol.diagonal().log().sum()
    return -0.5 * maha - half_logdet - 0.5 * z.shape[1] * math.log(2 * math.pi)


def _em(z: torch.Tensor, c: int, iters: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Tied-covariance Gaussian mixture of z (U, S): (log weights (C,), means (C, S), covariance (S, S),
    responsibilities (U, C), log likelihood)."""
    u, s = z.shape
    means = _farthest_first(z, c)
    logw = torch.full((c,), -math.log(c), dtype=z.dtype)
    cov = _shrunk(torch.cov(z.T, correction=0).reshape(s, s))
    last = -math.inf
    for _ in range(iters):
        joint = logw + _tied_log_density(z, means, cov)  # (U, C)
        ll = float(torch.logsumexp(joint, 1).sum())
        resp = torch.softmax(joint, 1)
        counts = resp.sum(0).clamp_min(1e-9)
        logw = (counts / u).log()
        means = (resp.T @ z) / counts[:, None]
        d = z[:, None, :] - means[None]
        cov = _shrunk(torch.einsum("uc,ucs,uct->st", resp, d, d) / u)
        if ll - last < 1e-9 * max(1.0, abs(ll)):
            break
        last = ll
    return logw, means, cov, resp, ll


def fit_mixtures(z: torch.Tensor, max_components: int = MAX_COMPONENTS) -> dict[int, dict]:
    """Tied-covariance mixtures of users' coordinates z (U, S) for C = 1 .. min(max_components, U / 3):
    ``{C: {"log_weights", "means", "precision" (unit strength), "responsibilities", "bic"}}``."""
    z = z.double()
    u, s = z.shape
    fits = {}
    for c in range(1, max(1, min(max_components, u // 3)) + 1):
        logw, means, cov, resp, ll = _em(z, c)
        params = (c - 1) + c * s + s * (s + 1) / 2
        fits[c] = {"log_weights": logw.float(), "means": means.float(), "precision": torch.linalg.inv(cov).float(),
                   "responsibilities": resp, "bic": -2 * ll + params * math.log(u)}
    return fits


def fit_mixture(z: torch.Tensor, max_components: int = MAX_COMPONENTS) -> dict:
    """The mixture with the lowest BIC (:func:`fit_mixtures`), with the BIC of every C under ``"bic"``."""
    fits = fit_mixtures(z, max_components)
    best = min(fits, key=lambda c: (fits[c]["bic"], c))
    return {**fits[best], "bic": {str(c): round(f["bic"], 3) for c, f in fits.items()}}


def leave_one_out(z: torch.Tensor, mixture: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per user u: the mixture's log weights (U, C) and means (U, C, S) without u's row (its share of
    each component removed; the shared covariance is kept)."""
    z, resp = z.double(), mixture["responsibilities"]
    u = len(z)
    counts = resp.sum(0)
    means = mixture["means"].double()
    rest = (counts[None, :] - resp).clamp_min(1e-6)  # (U, C)
    loo_means = (counts[None, :, None] * means[None] - resp[:, :, None] * z[:, None, :]) / rest[:, :, None]
    loo_means = torch.where((counts[None, :] - resp > 1e-3)[:, :, None], loo_means, means[None].expand_as(loo_means))
    return (rest / max(u - 1, 1)).log().float(), loo_means.float()


# ------------------------------------------------------------------------------------------
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
    # a prior and posteriors for users that are points on the simplex (K - 1 <= MAX_COORDINATES coordinates);
    # other heads (e.g. VPL's amortised latents) get the calibration only
    if head.has_user_state and head.simplex_users and 0 < basis.shape[1] <= MAX_COORDINATES and len(model.users) >= MIN_USERS:
        z = head.user_logits.detach().cpu().float() @ basis
        fits = fit_mixtures(z)
        by_bic = min(fits, key=lambda c: (fits[c]["bic"], c))
        report["prior_bic"] = {str(c): round(f["bic"], 3) for c, f in fits.items()}
        candidates = sorted({1, by_bic, min(head.state_dim, max(fits))}) if val is not None and len(val) else [by_bic]
        chosen, strength = by_bic, 1.0
        if val is not None and len(val):
            chosen, strength, report["prior_selection"] = choose_prior(model, beliefs, z, {c: fits[c] for c in candidates}, val)
        mixture = fits[chosen]
        beliefs.prior_log_weights, beliefs.prior_means = mixture["log_weights"], mixture["means"]
        beliefs.prior_precision, beliefs.strength = mixture["precision"], strength
        report["prior_components"] = chosen
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
    prec = beliefs.prior()[2].double().to(dev).expand(len(model.users), -1, -1).clone()
    idx = model.user_index(train.user_ids).to(dev)
    z = head.user_logits.detach() @ basis
    for s in range(0, len(train), batch_size):
        sl = slice(s, s + batch_size)
        pairs = UserPairs.of(head, train.prompt[sl].to(dev), train.chosen[sl].to(dev), train.rejected[sl].to(dev), idx[sl],
                             len(model.users))
        prec = laplace_precision(pairs, z, basis, beliefs.inv_temperature, prec)
    return prec.float().cpu()


def _selection_blocks(val: EncodedPairs, ns: list[int]) -> tuple[list, list, list, list, list]:
    """Virtual users (user, n, seed): (train rows, their virtual ids, test rows, their ids, [(user, n)] per virtual user)."""
    tr_rows, tr_v, te_rows, te_v, virtual = [], [], [], [], []
    for seed in SELECTION_SEEDS:
        split = fewshot_split(val.user_ids, ns, seed)
        for n in ns:
            train_of, test_of = defaultdict(list), defaultdict(list)
            for i in split.train[n]:
                train_of[val.user_ids[i]].append(i)
            for i in split.test[n]:
                test_of[val.user_ids[i]].append(i)
            for u in sorted(test_of):
                v = len(virtual)
                virtual.append((u, n))
                tr_rows += train_of[u]
                tr_v += [v] * len(train_of[u])
                te = test_of[u][:MAX_TEST_PAIRS]
                te_rows += te
                te_v += [v] * len(te)
    return tr_rows, tr_v, te_rows, te_v, virtual


def choose_prior(model, beliefs: UserBeliefs, z: torch.Tensor, fits: dict[int, dict], val: EncodedPairs) -> tuple[int, float, dict]:
    """The number of components (among ``fits``) and the strength (:data:`STRENGTHS`) whose new-user
    posteriors predict the seen users' held-out validation pairs best on few-shot splits (module doc):
    the highest accuracy averaged over n, ties (within 0.1 point) broken by the lower Brier score, then
    the fewer components and the stronger prior. Returns (C, strength, report)."""
    head = model.head
    dev = head.user_logits.device
    users = set(sorted(set(val.user_ids))[:MAX_SELECTION_USERS])
    val = val.subset([i for i, u in enumerate(val.user_ids) if u in users])
    counts = defaultdict(int)
    for u in val.user_ids:
        counts[u] += 1
    ns = [n for n in SELECTION_NS if any(c > n for c in counts.values())]
    if not ns:
        return min(fits), beliefs.strength, {"skipped": "no seen user has 2 or more validation pairs"}
    tr_rows, tr_v, te_rows, te_v, virtual = _selection_blocks(val, ns)
    position = {u: i for i, u in enumerate(model.users)}
    real = torch.as_tensor([position[u] for u, _ in virtual])
    basis = user_basis(head.state_dim, head.simplex_users).to(dev)
    tr_v, te_v = torch.as_tensor(tr_v, dtype=torch.long, device=dev), torch.as_tensor(te_v, dtype=torch.long, device=dev)
    tr, te = val.subset(tr_rows), val.subset(te_rows)
    fit_pairs = UserPairs.of(head, tr.prompt.to(dev), tr.chosen.to(dev), tr.rejected.to(dev), tr_v, len(virtual))
    test_pairs = UserPairs.of(head, te.prompt.to(dev), te.chosen.to(dev), te.rejected.to(dev), te_v, len(virtual))
    a = beliefs.inv_temperature
    blocks = torch.as_tensor([n for _, n in virtual], device=dev)[te_v]
    rows = []
    for c, mixture in fits.items():
        loo_logw, loo_means = leave_one_out(z, mixture)
        logw, means, start = loo_logw[real].to(dev), loo_means[real].to(dev), None
        for strength in sorted(STRENGTHS, reverse=True):  # strong to weak priors, each fit warm-started at the last
            mean, prec, start = posterior_mixture(fit_pairs, basis, a, logw, means, mixture["precision"].to(dev) * strength, start,
                                                  **SELECTION_SOLVER)
            m, jac = test_pairs.jacobian(mean, basis)
            p = predictive(m, margin_variance(jac, covariance(prec)[te_v]), a).clamp(1e-12, 1)
            by_n = {n: {"brier": float(((1 - p[blocks == n]) ** 2).mean()), "log_loss": float(-p[blocks == n].log().mean()),
                        "accuracy": float((m[blocks == n] > 0).double().mean())} for n in ns}
            rows.append({"components": c, "strength": strength, **{k: mean_std(r[k] for r in by_n.values())[0] for k in SCORES}})
    if not all(math.isfinite(r["brier"]) for r in rows):
        raise PalMMError("choosing the prior failed (non-finite validation scores)")
    top = max(r["accuracy"] for r in rows)
    best = min((r for r in rows if r["accuracy"] >= top - 1e-3), key=lambda r: (round(r["brier"], 9), r["components"], -r["strength"]))
    report = {"criterion": "accuracy, then brier", "ns": ns, "seeds": list(SELECTION_SEEDS), "virtual_users": len(virtual),
              **{key: {f"C={r['components']},s={r['strength']}": round(r[key], 6) for r in rows} for key in SCORES}}
    return best["components"], best["strength"], report
