"""Fitting new users from a few comparisons (``adapt``).

Only the new users' K logits are learned; encoder, projectors, prototypes, logit scale and
the seen users' logits stay frozen, so adding users never changes anyone else's rewards.
All new users are fitted together in one batched, full-batch optimisation: each user's loss is
the mean over their own pairs, so the users' problems are independent (Adam is per-coordinate).
The frozen parts are evaluated once up front (item points, and PAL-B's prototype points), so
each step costs only a few small tensor operations. There is no model selection: a fixed
number of steps, so no held-out or test data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .errors import PalMMError
from .model import PALModel


@dataclass
class AdaptConfig:
    steps: int = 300
    lr: float = 0.05
    l2: float = 0.0  # pull the logits toward 0 (the uniform mixture); a prior for 1-2 pairs
    init: str = "zeros"  # "zeros" (uniform mixture) | "random" (N(0, 1), as in the paper's code)
    seed: int = 0


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
    k = model.config.k
    index = {u: i for i, u in enumerate(users)}
    uidx = torch.as_tensor([index[u] for u in data.user_ids], dtype=torch.long)
    counts = torch.bincount(uidx, minlength=len(users)).float()
    with torch.no_grad():  # frozen parts, computed once
        item_c = head.item_embedding(data.prompt, data.chosen)  # (n, d)
        item_r = head.item_embedding(data.prompt, data.rejected)
        protos = head.prototypes(data.prompt) if model.config.model_type == "pal-b" else None  # (n, K, d)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = torch.randn(len(users), k, generator=gen) if cfg.init == "random" else torch.zeros(len(users), k)
    logits = init.clone().requires_grad_(True)
    if model.config.model_type == "single-rm":
        return logits.detach()  # no user state to fit
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    frozen = [p for p in head.parameters() if p.requires_grad]
    for p in frozen:  # really frozen: no gradients flow into the shared parts
        p.requires_grad_(False)
    try:
        _optimise(head, logits, opt, uidx, counts, item_c, item_r, protos, model.config.model_type, cfg)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return logits.detach()


def _optimise(head, logits, opt, uidx, counts, item_c, item_r, protos, model_type, cfg) -> None:
    for _ in range(cfg.steps):
        w = torch.softmax(logits, dim=-1)
        if model_type == "pal-a":
            ideal = head.ideal_point(None, w)[uidx]  # f(w^T P) once per user
        else:
            ideal = head.ideal_point(None, w[uidx], protos=protos)
        margin = head.score(ideal, item_c) - head.score(ideal, item_r)
        per_pair = head.loss(margin, reduction="none")
        per_user = torch.zeros(len(counts)).index_add(0, uidx, per_pair) / counts
        loss = per_user.sum() + cfg.l2 * logits.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

