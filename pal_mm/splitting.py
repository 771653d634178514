"""How a K >= 2 model starts, so that its prototypes split into the user groups instead of settling
on one population model.

A mixture started at random sits on a plateau: every prototype learns the population's taste, the
user weights get no signal (all prototypes agree) and a model with early stopping ends there, below
K = 1 (the text-to-image default with the previous defaults: 0 of 9 initialisations split at
beta <= 0.5). ``TrainConfig.k_init`` breaks the symmetry from the data itself:

* **Users clustered by what they prefer** (:func:`user_signatures`, :func:`cluster_users`), in every
  mode but ``random``. Each pair gives the difference ``x_c - x_r`` of the chosen and rejected item
  (standardised with the head's input statistics). The differences are whitened (their top ``r``
  principal directions, each scaled to unit variance, ``r = min(item width, pairs / 10, 512)``),
  averaged per user and centred over users: what a user prefers beyond the population, one Newton
  step of a per-user linear reward from zero. The users' top-K principal components are clustered
  with k-means (k-means++ starts, several seeded tries) and every user starts on the prototype of
  their cluster (logit :data:`CLUSTER_LOGIT`, the others 0). Whitening matters: on the text-to-image
  default the cool / warm users are recovered from beta = 0.25 on (without it: from beta = 0.5).
  Tastes that depend on the prompt average out of these means; the second restart (``restarts``
  defaults to 2 for clustered mixtures) adds the products of the top whitened item and prompt
  directions to the features, and validation keeps the better start (on the reward-function mixtures
  of the study this raises the users' cluster purity from about 0.7 to 0.9 at K* = 3; on the
  text-to-image default, whose groups do not depend on the caption, the plain signature is better).
* **A fitted K = 1 model as the fallback** (``cluster``, the default, and ``split``): K = 1 is fitted
  first on the same data; :func:`split_head` copies its prototype K times (and everything shared),
  which computes exactly the K = 1 rewards for any weights. That copy is epoch 0 of the K model's
  run, a candidate for the best epoch on validation, so the result is never worse than K = 1 on
  validation. ``cluster`` trains fresh prototypes (and shared maps) from the clustered users;
  ``split`` continues from the copy (the prototypes move apart as different users pull them).
  ``cluster`` is the default: on the text-to-image default the K = 1 maps have already discarded colour,
  which ``split`` would have to recover. (The defaults study compares ``cluster`` with ``random``
  starts, not with ``split``.)
"""

from __future__ import annotations

import math

import torch

from .heads import PreferenceHead, get_head_class

#: the logit a user starts with on the prototype of their cluster (the others 0): weight
#: e^4 / (e^4 + K - 1), 0.98 for K = 2 and 0.93 for K = 5, so each prototype first learns from its own
#: group (the text-to-image default splits more reliably at 4 than at 2; users still move, lr_users)
CLUSTER_LOGIT = 4.0
#: at most this many whitened directions of the pair differences
MAX_RANK = 512
#: prompt-dependent signatures: products of this many item directions with this many prompt directions
PROMPT_ITEM_RANK = 32
PROMPT_RANK = 8


def _whiten(x: torch.Tensor, rank: int) -> torch.Tensor:
    """(n, r) the top-``rank`` principal directions of x (n, w), centred and scaled to unit variance."""
    centred = x - x.mean(0)
    vals, vecs = torch.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))  # ascending
    return x @ vecs[:, -rank:] / vals[-rank:].clamp_min(1e-12).sqrt()


@torch.no_grad()
def user_signatures(head: PreferenceHead, prompt: torch.Tensor | None, chosen: torch.Tensor, rejected: torch.Tensor,
                    user_idx: torch.Tensor, n_users: int) -> torch.Tensor:
    """(n_users, r) per-user means of the whitened item differences, centred over users.

    ``chosen`` / ``rejected``: (n, di) raw item embeddings of the training pairs, ``user_idx`` (n,)
    their rows in the user table. With ``prompt`` (n, dp) the features also hold the products of the
    top :data:`PROMPT_ITEM_RANK` whitened item directions with the top :data:`PROMPT_RANK` whitened
    prompt directions: tastes that depend on the prompt (they average out of the plain differences).
    Users without pairs get a zero row."""
    diff = (head.item_norm(chosen.float()) - head.item_norm(rejected.float())).double()  # (n, di)
    n, width = diff.shape
    white = _whiten(diff, max(1, min(width, math.ceil(n / 10), MAX_RANK)))  # (n, r)
    if prompt is not None:
        p = _whiten(head.prompt_norm(prompt.float()).double(), min(prompt.shape[1], PROMPT_RANK))
        inter = white[:, -min(white.shape[1], PROMPT_ITEM_RANK):, None] * p[:, None, :]
        white = torch.cat([white, inter.reshape(n, -1)], 1)
    sums = torch.zeros(n_users, white.shape[1], dtype=white.dtype).index_add_(0, user_idx, white)
    counts = torch.bincount(user_idx, minlength=n_users).to(white.dtype)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    seen = counts > 0
    means[seen] -= means[seen].mean(0)
    means[~seen] = 0
    return means.float()


def _kmeans(x: torch.Tensor, k: int, gen: torch.Generator, tries: int = 8, iters: int = 100) -> torch.Tensor:
    """(n,) labels in [0, k) of the best of ``tries`` k-means runs (k-means++ starts) on x (n, r)."""
    n = x.shape[0]
    best, best_inertia = None, math.inf
    for _ in range(tries):
        centres = x[torch.randint(n, (1,), generator=gen)]
        for _ in range(1, k):  # k-means++: next centre with probability ~ squared distance
            d2 = torch.cdist(x, centres).pow(2).min(1).values
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
            centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=gen)]])
        labels = torch.cdist(x, centres).argmin(1)
        for _ in range(iters):
            new = torch.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
            new_labels = torch.cdist(x, new).argmin(1)
            centres = new
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float((x - centres[labels]).pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


@torch.no_grad()
def cluster_users(signatures: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, dict]:
    """(n_users,) cluster labels in [0, k) from (n_users, r) signatures, and a summary (cluster
    sizes; ``separation``: the users' first singular value over their (k+1)-th, about 1 without
    structure)."""
    n = signatures.shape[0]
    if n <= k:
        return torch.arange(n), {"sizes": [1] * n + [0] * (k - n), "separation": None}
    x = signatures.double()
    _, s, vt = torch.linalg.svd(x, full_matrices=False)
    comps = min(k, vt.shape[0])
    z = x @ vt[:comps].T  # (n, comps)
    labels = _kmeans(z, k, torch.Generator().manual_seed(seed))
    sep = float(s[0] / s[k]) if len(s) > k and s[k] > 0 else None
    sizes = torch.bincount(labels, minlength=k).tolist()
    return labels, {"sizes": sizes, "separation": None if sep is None else round(sep, 4)}


def cluster_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(n_users, k) logits: :data:`CLUSTER_LOGIT` on each user's cluster, 0 elsewhere."""
    logits = torch.zeros(len(labels), k)
    logits[torch.arange(len(labels)), labels] = CLUSTER_LOGIT
    return logits


def init_users_by_cluster(head: PreferenceHead, prompt: torch.Tensor | None, chosen: torch.Tensor,
                          rejected: torch.Tensor, user_idx: torch.Tensor, seed: int) -> dict:
    """Set ``head.user_logits`` from clusters of the users' signatures (in place; ``prompt``: see
    :func:`user_signatures`); returns the summary."""
    k = head.config.k
    sig = user_signatures(head, prompt, chosen, rejected, user_idx, head.num_users)
    labels, info = cluster_users(sig, k, seed)
    with torch.no_grad():
        head.user_logits.copy_(cluster_logits(labels, k).to(head.user_logits))
    return info


def can_split(head: PreferenceHead) -> bool:
    """True for heads that can start from a smaller model of their type (:meth:`PreferenceHead.load_split`)."""
    return bool(getattr(head, "splittable", False))


@torch.no_grad()
def split_head(target: PreferenceHead, source: PreferenceHead) -> None:
    """Start ``target`` (K prototypes) at ``source`` (K' < K of the same type): shared parts copied,
    prototype k a copy of source prototype k mod K'. The user logits are left as they are."""
    target.load_split(source)


def starts_from_k1(config, tc) -> bool:
    """True when a run of ``config`` (PALConfig) / ``tc`` (TrainConfig) starts its mixture from a fitted
    K = 1 model (:func:`pal_mm.training.fit`)."""
    return (config.k > 1 and tc.k_init in ("cluster", "split") and not tc.fine_tunes_encoder
            and get_head_class(config.model_type).splittable)


def mixture_outcome(metrics: dict | None) -> str | None:
    """One sentence on how a K >= 2 model's start from K = 1 ended (from ``model.metrics["k_init"]``), or None
    when the model did not start from K = 1 (K = 1, random start, no validation data)."""
    info = (metrics or {}).get("k_init") or {}
    if "kept_k1" not in info:
        return None
    source = (metrics or {}).get("split_source", {}).get("k", 1)
    gain = info.get("gain_over_k1_se")
    bar = info.get("split_evidence", 0.0)
    if not info["kept_k1"]:
        return (f"the mixture beat its K = {source} start on the validation loss by {gain:.1f} standard errors "
                f"(needed > {bar:g}) and was kept")
    why = "no epoch beat it on the validation loss" if gain is None else (
        f"its validation gain, {gain:.1f} standard errors, did not clear --split-evidence {bar:g}")
    return (f"the model is its K = {source} start ({why}): every user gets the K = {source} rewards; more pairs "
            "per user or more users may show the groups")
