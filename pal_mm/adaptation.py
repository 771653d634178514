"""Fitting new users from a few comparisons (``adapt``).

Only the new users' K logits are learned; encoder, projectors, prototypes, logit scale and
the seen users' logits stay frozen, so adding users never changes anyone else's rewards.
All new users are fitted together in one batched, full-batch optimisation: each user's loss is
the mean over their own pairs, so the users' problems are independent (Adam is per-coordinate).
The objective comes from the head (``head.user_objective``): its frozen parts are evaluated once
up front and each step works on a reduced form (PAL-B: K inner products and a K x K Gram matrix per
pair; PAL-A: expanded distances), equal to the direct loss up to float rounding (tested). There is no model selection: a fixed number of steps, so no held-out or test
data is touched.
"""

from __future__ import annotations

import torch

from .config import AdaptConfig
from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .errors import PalMMError
from .model import PALModel


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
    logits = fit_user_logits(model, data, new_users, cfg)
    model.add_users(new_users, logits, {u: g for u, g in (user_groups or {}).items() if u in set(new_users)})
    return model


def fit_user_logits(model: PALModel, data: EncodedPairs, users: list[str], cfg: AdaptConfig) -> torch.Tensor:
    """(n_users, K) logits minimising each user's mean loss on their pairs."""
    head = model.head
    head.eval()
    k = head.state_dim
    index = {u: i for i, u in enumerate(users)}
    uidx = torch.as_tensor([index[u] for u in data.user_ids], dtype=torch.long)
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
