"""Fitting new users from a few comparisons (``adapt``).

Only the new users' K logits are learned; encoder, projectors, prototypes, logit scale and
the seen users' logits stay frozen, so adding users never changes anyone else's rewards.
All new users are fitted together in one batched, full-batch optimisation: each user's loss is
the mean over their own pairs, so the users' problems are independent (Adam is per-coordinate).
The frozen parts are evaluated once up front, and each step works on their reduced form:

* PAL-B: with ``u = sum_k w_k g_k(p)``, ``cos(u, f(x))`` needs only the K inner products
  ``<g_k(p), f(x)>``, the K x K Gram matrix ``<g_k(p), g_l(p)>`` and ``|f(x)|``: O(K^2) per pair
  and step instead of O(K d);
* PAL-A: ``|f(x) - a|^2 = |f(x)|^2 - 2 f(x).a + |a|^2`` with ``a = f(w^T P)`` once per user; users
  with the same number of pairs are stacked so ``f(x).a`` is one batched product per group.

The reduced objective equals the direct one (``head.margin`` on the same pairs) up to float
rounding (tested). There is no model selection: a fixed number of steps, so no held-out or test
data is touched.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

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
    k = model.config.k
    index = {u: i for i, u in enumerate(users)}
    uidx = torch.as_tensor([index[u] for u in data.user_ids], dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = torch.randn(len(users), k, generator=gen) if cfg.init == "random" else torch.zeros(len(users), k)
    logits = init.clone().requires_grad_(True)
    if model.config.model_type == "single-rm":
        return logits.detach()  # no user state to fit
    frozen = [p for p in head.parameters() if p.requires_grad]
    for p in frozen:  # really frozen: no gradients flow into the shared parts
        p.requires_grad_(False)
    try:
        per_user_loss = user_objective(head, data, uidx, len(users))
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


def user_objective(head, data: EncodedPairs, uidx: torch.Tensor, n_users: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(logits (n_users, K)) -> (n_users,)`` each user's mean loss over their pairs (rows of
    ``data``, user of row i is ``uidx[i]``), with the frozen parts of ``head`` computed here once."""
    kind = head.config.model_type
    with torch.no_grad():
        item_c = head.item_embedding(data.prompt, data.chosen)  # (n, d)
        item_r = head.item_embedding(data.prompt, data.rejected)
    if kind == "pal-b":
        counts = torch.bincount(uidx, minlength=n_users).float()
        with torch.no_grad():
            protos = head.prototypes(data.prompt)  # (n, K, d)
            dot_c = torch.einsum("nkd,nd->nk", protos, item_c)
            dot_r = torch.einsum("nkd,nd->nk", protos, item_r)
            gram = torch.einsum("nkd,nld->nkl", protos, protos)
            norm_c, norm_r = item_c.norm(dim=-1), item_r.norm(dim=-1)

        def pal_b_loss(logits: torch.Tensor) -> torch.Tensor:
            w = torch.softmax(logits, dim=-1)[uidx]  # (n, K)
            norm_u = torch.einsum("bk,bkl,bl->b", w, gram, w).clamp_min(0).sqrt()
            cos_c = (w * dot_c).sum(-1) / (norm_u * norm_c).clamp_min(1e-8)
            cos_r = (w * dot_r).sum(-1) / (norm_u * norm_r).clamp_min(1e-8)
            per_pair = head.loss(head.scale() * (cos_c - cos_r), reduction="none")
            return torch.zeros(n_users).index_add(0, uidx, per_pair) / counts

        return pal_b_loss
    if kind != "pal-a":
        raise PalMMError(f"no user objective for model type {kind!r}")
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, u in enumerate(uidx.tolist()):
        rows_of[u].append(row)
    users_with: dict[int, list[int]] = defaultdict(list)  # pairs per user -> users
    for u, rows in rows_of.items():
        users_with[len(rows)].append(u)
    groups = []
    for us in users_with.values():
        r = torch.as_tensor([rows_of[u] for u in us], dtype=torch.long)  # (users, c)
        xc, xr = item_c[r], item_r[r]
        groups.append((torch.as_tensor(us, dtype=torch.long), xc, xr, xc.pow(2).sum(-1), xr.pow(2).sum(-1)))

    def pal_a_loss(logits: torch.Tensor) -> torch.Tensor:
        ideal = head.ideal_point(None, torch.softmax(logits, dim=-1))  # (n_users, d): f(w^T P)
        out = torch.zeros(n_users)
        for us, xc, xr, sq_c, sq_r in groups:
            a = ideal[us]
            aa = a.pow(2).sum(-1, keepdim=True)
            dist_c = (sq_c - 2 * torch.einsum("ucd,ud->uc", xc, a) + aa).clamp_min(1e-12).sqrt()
            dist_r = (sq_r - 2 * torch.einsum("ucd,ud->uc", xr, a) + aa).clamp_min(1e-12).sqrt()
            per_pair = head.loss(dist_r - dist_c, reduction="none")  # margin = score_c - score_r = -d_c + d_r
            out = out.index_add(0, us, per_pair.mean(1))
        return out

    return pal_a_loss
