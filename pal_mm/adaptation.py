"""Fitting new users from a few comparisons (``adapt``).

Only the new users' K logits are learned; encoder, projectors, prototypes, logit scale and
the seen users' logits stay frozen, so adding users never changes anyone else's rewards.
All new users are fitted together in one batched, full-batch optimisation: users' problems are
independent, so fitting them together equals fitting them one by one. The head supplies the
pairs' margins as a function of the users' rows (``head.user_margins``): its frozen parts are
evaluated once up front and each step works on a reduced form (PAL-B: K inner products and a K x K
Gram matrix per pair; PAL-A: expanded distances), equal to the direct form up to float rounding
(tested). Two fits, neither with model selection (no held-out or test data is touched):

* **with the prior** (the default, for models trained with one: :mod:`pal_mm.prior`): the MAP
  under the prior learned from the seen users (a Gaussian mixture over users' rows), with the
  calibrated Bradley-Terry likelihood, by Gauss-Newton steps to convergence: one Laplace posterior
  per prior component, weighted by its evidence and collapsed into one Gaussian, whose mean is the
  user's row (:mod:`pal_mm.posterior`). With no pairs the answer is the prior's mean (the population's
  typical user); the prior's strength was chosen on the seen users' validation pairs.
* **plain** (``AdaptConfig(prior=False)``, or a model without a prior): a fixed number of Adam steps
  on each user's mean training loss (``head.user_objective``), from zero (uniform) or random logits.
"""

from __future__ import annotations

import torch

from .config import AdaptConfig
from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .errors import PalMMError
from .heads.base import PreferenceHead
from .model import PALModel
from .beliefs import user_basis
from .posterior import UserPairs, laplace_precision, posterior_mixture
from .threads import STEP_PAIRS, for_head, head_step_work


def adapt(model: PALModel, data: PreferenceData | EncodedPairs, config: AdaptConfig | None = None,
          cache=None, user_groups: dict | None = None) -> PALModel:
    """Add the users in ``data`` to ``model`` (in place) and return it."""
    cfg = config or AdaptConfig()
    if isinstance(data, PreferenceData):
        user_groups = user_groups or data.user_groups()
        data = encode_data(model.encoder, data, cache)
    if len(data) == 0:
        raise PalMMError("no pairs to adapt on")
    new_users = list(dict.fromkeys(data.user_ids))
    clash = sorted(set(new_users) & set(model.users))
    if clash:
        raise PalMMError(f"user(s) already in the model: {', '.join(clash[:5])} (adapt is for new users)")
    amortised = type(model.head).infer_users is not PreferenceHead.infer_users
    c = model.config  # many small batched steps: the thread policy of training this head (pal_mm.threads)
    with for_head(head_step_work(STEP_PAIRS, c.prompt_dim, c.item_dim, c.width, c.k)):
        if cfg.prior and model.has_posterior and not amortised:
            logits, precision = fit_user_posterior(model, data, new_users, cfg)
        else:
            logits = fit_user_logits(model, data, new_users, cfg)
            precision = prior_laplace_precision(model, data, new_users, logits) if model.has_posterior else None
    model.add_users(new_users, logits, {u: g for u, g in (user_groups or {}).items() if u in set(new_users)}, precision)
    return model


def _rows(data: EncodedPairs, users: list[str], device) -> torch.Tensor:
    index = {u: i for i, u in enumerate(users)}
    return torch.as_tensor([index[u] for u in data.user_ids], dtype=torch.long, device=device)


def fit_user_posterior(model: PALModel, data: EncodedPairs, users: list[str],
                       cfg: AdaptConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_users, K) logits and (n_users, S, S) precisions of the new users' posteriors under the model's
    prior (one Laplace posterior per prior component, weighted by its evidence, collapsed)."""
    head = model.head
    head.eval()
    dev = head.user_logits.device
    basis = user_basis(head.state_dim, head.simplex_users).to(dev)
    logw, means, prec = model.beliefs.prior(cfg.prior_strength)
    pairs = UserPairs.of(head, data.prompt.to(dev), data.chosen.to(dev), data.rejected.to(dev), _rows(data, users, dev),
                         len(users))
    z, h, _ = posterior_mixture(pairs, basis, model.beliefs.inv_temperature, logw, means, prec)
    return (z @ basis.T).detach().cpu(), h.float().cpu()


def prior_laplace_precision(model: PALModel, data: EncodedPairs, users: list[str], logits: torch.Tensor) -> torch.Tensor:
    """(n_users, S, S) posterior precisions at given logits: the prior's plus the pairs' Gauss-Newton terms."""
    head = model.head
    dev = head.user_logits.device
    basis = user_basis(head.state_dim, head.simplex_users).to(dev)
    pairs = UserPairs.of(head, data.prompt.to(dev), data.chosen.to(dev), data.rejected.to(dev), _rows(data, users, dev),
                         len(users))
    prior = model.beliefs.collapsed_prior()[1].to(dev).expand(len(users), -1, -1)
    return laplace_precision(pairs, logits.to(dev) @ basis, basis, model.beliefs.inv_temperature, prior).cpu()


def fit_user_logits(model: PALModel, data: EncodedPairs, users: list[str], cfg: AdaptConfig) -> torch.Tensor:
    """(n_users, K) logits minimising each user's mean loss on their pairs (the plain fit)."""
    head = model.head
    head.eval()
    k = head.state_dim
    uidx = _rows(data, users, "cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    init = torch.randn(len(users), k, generator=gen) if cfg.init == "random" else torch.zeros(len(users), k)
    logits = init.clone().requires_grad_(True)
    if not head.has_user_state:
        return logits.detach()  # no user state to fit (the single reward model)
    with torch.no_grad():
        inferred = head.infer_users(data.prompt, data.chosen, data.rejected, uidx, len(users))
    if inferred is not None:  # amortised inference: no gradient steps
        return inferred.detach().float()
    frozen = [p for p in head.parameters() if p.requires_grad]
    for p in frozen:  # really frozen: no gradients flow into the shared parts
        p.requires_grad_(False)
    try:
        per_user_loss = head.user_objective(data.prompt, data.chosen, data.rejected, uidx, len(users))
        opt = torch.optim.Adam([logits], lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = per_user_loss(logits).sum() + cfg.l2 * logits.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return logits.detach()
