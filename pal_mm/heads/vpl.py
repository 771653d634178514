"""VPL-style baseline: a variational encoder infers a user latent from labelled context pairs.

After Poddar et al., *Personalizing RLHF with Variational Preference Learning* (NeurIPS 2024, arXiv
2408.10075), from the paper's description only. Notation: ``phi(p, x) = [norm(p) ; norm(x)]`` the
standardised frozen features of (prompt, response), ``D = dp + di``, ``L`` the latent width.

* **Encoder** ``q(z | C)`` of a context set ``C`` of one user's labelled pairs: every pair is embedded
  by an MLP of ``[phi(p, x_chosen) ; phi(p, x_rejected)]`` (2D -> L -> L -> L, LeakyReLU 0.2), the set
  goes through one self-attention layer (single head, masked), is mean-pooled, and two linear maps give
  the mean ``mu`` and log-variance of a diagonal Gaussian (L,).
* **Decoder** (the reward): ``r(p, x; z) = MLP([phi(p, x) ; z])`` (D + L -> L -> L -> 1).
* **Training** (:meth:`VPLHead.training_loss`): for every user in a batch a context set of ``c`` of
  their other training pairs is drawn (``c`` uniform in 1..:data:`MAX_CONTEXT` per step; the batch's
  own target pairs are never in it), ``z = mu + sigma * eps`` (one reparameterised sample) and the loss
  is the Bradley-Terry loss of the batch's target pairs plus ``beta_t * KL(q(z | C) || N(0, I))``,
  with the KL weight annealed linearly from 0 to :data:`KL_WEIGHT` over :data:`KL_ANNEAL_STEPS` steps.
  The sampling is seeded by (init seed, step), so a resumed run draws the same contexts.
* **Users.** A user's row of the user table is the posterior mean ``mu`` of their pairs (at most
  :data:`MAX_INFER_PAIRS`, chosen in a seeded order), so ``state_dim = L`` and ``simplex_users`` is
  False. Seen users get theirs from their training pairs (during training, validation infers them on
  the fly with the current encoder; :meth:`finish_training` stores them). **New users** are inferred by
  the encoder from their labelled pairs (:meth:`infer_users`): no gradient steps.

**Settings and deviations.** The KL weight 1e-4 with annealing is the paper's. Hidden and latent width:
``--dim``, default :data:`DEFAULT_WIDTH` = 128 (``--k`` and ``--projector`` are not used). The paper's
LLM runs use 512 on 4096-d features; on pal-mm's 24- to 1664-d features a 512-wide model trained 4x
slower on CPU and, in a synthetic check (K* = 2, 200 seen users), its latents told new users apart no
better with 10 pairs than with 1, while widths 64-128 did; a width of 24 collapsed (the decoder ignored
``z``, the posterior collapse SPL reports for VPL). ``--dim 512`` gives the paper's width. The paper
trains with its own optimiser settings (lr 3e-4, bf16, fixed context sets per example); here the
library's one training loop (AdamW at the projector rate, early stopping on the validation loss)
trains every head in the benchmark. Context sizes are sampled per step (the paper fixes a context size
per data set) so the encoder also sees the few-pair contexts of the new-user protocol; the KL schedule
is a linear warm-up (the paper anneals; its exact schedule is not reproduced). Works with frozen
encoders only (the contexts are the frozen training embeddings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from ..config import PALConfig
from .base import PreferenceHead
from .registry import register_head

#: hidden and latent width when ``config.dim`` is not set (the paper's LLM runs use 512; see above)
DEFAULT_WIDTH = 128
#: weight of the KL term after annealing (the paper's)
KL_WEIGHT = 1e-4
#: optimisation steps over which the KL weight rises linearly from 0
KL_ANNEAL_STEPS = 1000
#: largest context set drawn per user and training step
MAX_CONTEXT = 16
#: at most this many of a user's pairs are encoded to infer their latent
MAX_INFER_PAIRS = 256
#: pairs encoded per chunk when inferring many users (memory bound)
INFER_CHUNK_PAIRS = 8192


def _mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.LeakyReLU(0.2), nn.Linear(width, width), nn.LeakyReLU(0.2),
                         nn.Linear(width, d_out))


class _UserPairs:
    """Each user's pairs as a padded table: ``table`` (U, m) row indices (-1 = padding), ``count`` (U,),
    ``pos`` (n,) the position of each row in its user's list, and a content index of the rows."""

    def __init__(self, prompt, chosen, rejected, user_idx: torch.Tensor, n_users: int):
        self.prompt, self.chosen, self.rejected = prompt.detach().cpu(), chosen.detach().cpu(), rejected.detach().cpu()
        users = user_idx.detach().cpu().long()
        n_users = max(n_users, int(users.max()) + 1 if len(users) else 0)
        self.count = torch.bincount(users, minlength=n_users)
        order = torch.argsort(users, stable=True)  # rows grouped by user, data order within a user
        start = torch.cumsum(self.count, 0) - self.count
        self.pos = torch.empty_like(users)
        self.pos[order] = torch.arange(len(users)) - start[users[order]]
        self.table = torch.full((n_users, int(self.count.max()) if len(users) else 0), -1, dtype=torch.long)
        self.table[users, self.pos] = torch.arange(len(users))
        self.users = users
        self.row_of = {self.key(u, c, r): i for i, (u, c, r) in enumerate(zip(users.tolist(), self.chosen, self.rejected))}

    @staticmethod
    def key(user: int, chosen: torch.Tensor, rejected: torch.Tensor) -> tuple:
        return user, chosen.numpy().tobytes(), rejected.numpy().tobytes()


@register_head("vpl")
class VPLHead(PreferenceHead):
    """Groups: ``projector_vpl`` (encoder and decoder), ``W`` (the users' inferred latents; not trained)."""

    default_loss = "bt"
    simplex_users = False
    description = "VPL-style: a variational encoder infers a user latent from labelled pairs; r = MLP([prompt ; item ; z])"

    def __init__(self, config: PALConfig, num_users: int = 0):
        super().__init__(config, num_users)
        self.user_logits.requires_grad_(False)  # rows are inferred by the encoder, never trained
        self._pairs: _UserPairs | None = None
        self._seen_cache: tuple[int, torch.Tensor] | None = None

    @property
    def state_dim(self) -> int:
        return int(self.config.dim or DEFAULT_WIDTH)

    def weights_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits  # a user's row is their latent, not mixture logits

    def build(self, c: PALConfig, gen: torch.Generator) -> None:
        d, width = c.prompt_dim + c.item_dim, self.state_dim
        self.pair_encoder = _mlp(2 * d, width, width)
        self.attn_qkv = nn.Linear(width, 3 * width)
        self.to_mu = nn.Linear(width, width)
        self.to_logvar = nn.Linear(width, width)
        self.decoder = _mlp(d + width, width, 1)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        learned = [p for name, p in self.named_parameters() if name != "user_logits"]
        return {"projector_vpl": learned, "W": [self.user_logits]}

    # ----- the model --------------------------------------------------------------------------
    def features(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(..., dp), (..., di) raw embeddings -> (..., D) standardised features phi."""
        return torch.cat([self.prompt_norm(prompt_emb), self.item_norm(item_emb)], dim=-1)

    def reward(self, prompt_emb, item_emb, weights) -> torch.Tensor:
        """(b, dp), (b, di), (b, L) latents -> (b,) rewards."""
        return self.decoder(torch.cat([self.features(prompt_emb, item_emb), weights], dim=-1)).squeeze(-1)

    def pair_rewards(self, prompt_emb, chosen_emb, rejected_emb, weights):
        phi_c, phi_r = self.features(prompt_emb, chosen_emb), self.features(prompt_emb, rejected_emb)
        both = self.decoder(torch.cat([torch.stack([phi_c, phi_r]), weights.expand(2, *weights.shape)], dim=-1))
        return both[0].squeeze(-1), both[1].squeeze(-1)

    def posterior(self, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context sets (G, c, dp), (G, c, di), (G, c, di) with ``mask`` (G, c) (True = a real pair) ->
        mean and log-variance (G, L) of q(z | context). A set with no pair gives the encoding of nothing
        (the pooled vector is 0)."""
        e = self.pair_encoder(torch.cat([self.features(prompt, chosen), self.features(prompt, rejected)], dim=-1))
        q, k, v = self.attn_qkv(e).chunk(3, dim=-1)  # (G, c, L) each
        scores = einsum(q, k, "g i l, g j l -> g i j") / math.sqrt(e.shape[-1])
        keys = mask[:, None, :] | ~mask.any(-1)[:, None, None]  # an empty set attends uniformly (then is zeroed)
        h = einsum(torch.softmax(scores.masked_fill(~keys, float("-inf")), dim=-1), v, "g i j, g j l -> g i l")
        m = mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10.0, 10.0)

    # ----- training ---------------------------------------------------------------------------
    def prepare_training(self, prompt_emb, chosen_emb, rejected_emb, user_idx) -> None:
        self._pairs = _UserPairs(prompt_emb, chosen_emb, rejected_emb, user_idx, self.num_users)
        self._seen_cache = None

    def finish_training(self, prompt_emb, chosen_emb, rejected_emb, user_idx) -> None:
        pairs = self._pairs or _UserPairs(prompt_emb, chosen_emb, rejected_emb, user_idx, self.num_users)
        with torch.no_grad():
            self.user_logits.data = self._infer(pairs).to(self.user_logits)
        self._pairs, self._seen_cache = None, None

    def kl_weight(self) -> float:
        return KL_WEIGHT * min(1.0, (int(self.train_steps) + 1) / KL_ANNEAL_STEPS)

    def training_loss(self, prompt_emb, chosen_emb, rejected_emb, user_idx: torch.Tensor) -> torch.Tensor:
        if self._pairs is None:  # not called from fit(): index the batch itself
            self.prepare_training(prompt_emb, chosen_emb, rejected_emb, user_idx)
        pairs, device = self._pairs, prompt_emb.device
        gen = torch.Generator().manual_seed(int(self.config.init_seed) * 1_000_003 + int(self.train_steps))
        users, inverse = torch.unique(user_idx.cpu(), return_inverse=True)  # G users in the batch
        c = int(torch.randint(1, MAX_CONTEXT + 1, (), generator=gen))
        # sample c of each user's rows without replacement, never a target of this batch
        keys = torch.rand(len(users), pairs.table.shape[1], generator=gen)
        keys[pairs.table[users] < 0] = float("inf")
        targets = [pairs.row_of.get(pairs.key(int(users[g]), x, y)) for g, x, y in
                   zip(inverse.tolist(), chosen_emb.detach().cpu(), rejected_emb.detach().cpu())]
        hit = [(g, t) for g, t in zip(inverse.tolist(), targets) if t is not None]
        if hit:
            g_idx, rows = torch.as_tensor(hit).T
            keys[g_idx, pairs.pos[rows]] = float("inf")
        c = min(c, keys.shape[1])
        chosen_keys, slots = torch.topk(keys, c, dim=1, largest=False)
        ctx = pairs.table[users[:, None], slots].clamp_min(0)  # (G, c)
        mask = torch.isfinite(chosen_keys)
        mu, logvar = self.posterior(*(t[ctx].to(device) for t in (pairs.prompt, pairs.chosen, pairs.rejected)),
                                    mask.to(device))
        eps = torch.randn(mu.shape, generator=gen).to(device)
        z = mu + torch.exp(0.5 * logvar) * eps
        inv = inverse.to(device)
        margin = self.margin(prompt_emb, chosen_emb, rejected_emb, z[inv])
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # (G,)
        loss = self.loss(margin) + self.kl_weight() * kl[inv].mean()
        if self.training and torch.is_grad_enabled():
            self.train_steps += 1
        return loss

    # ----- users ------------------------------------------------------------------------------
    def user_weights(self, user_idx: torch.Tensor) -> torch.Tensor:
        """(b,) user indices -> (b, L) latents. While :func:`pal_mm.training.fit` runs, the seen users'
        latents are inferred with the current encoder (validation sees what the encoder learned)."""
        if self._pairs is not None and not self.training:
            step = int(self.train_steps)
            if self._seen_cache is None or self._seen_cache[0] != step:
                with torch.no_grad():
                    self._seen_cache = (step, self._infer(self._pairs).to(self.user_logits))
            return self._seen_cache[1][user_idx.to(self._seen_cache[1].device)]
        return self.user_logits[user_idx]

    def infer_users(self, prompt_emb, chosen_emb, rejected_emb, user_rows: torch.Tensor, n_users: int) -> torch.Tensor:
        """(n_users, L) posterior means from each new user's pairs (no gradient steps)."""
        return self._infer(_UserPairs(prompt_emb, chosen_emb, rejected_emb, user_rows, n_users))

    def _infer(self, pairs: _UserPairs) -> torch.Tensor:
        """Posterior means (U, L) of every user of ``pairs`` from at most MAX_INFER_PAIRS of their pairs
        (a seeded choice when they have more)."""
        device = next(self.parameters()).device
        n_users, width = len(pairs.count), min(pairs.table.shape[1], MAX_INFER_PAIRS)
        table = pairs.table
        if table.shape[1] > width:  # keep a seeded random subset of each user's rows
            gen = torch.Generator().manual_seed(int(self.config.init_seed))
            keys = torch.rand(table.shape, generator=gen).masked_fill(table < 0, float("inf"))
            table = torch.gather(table, 1, torch.topk(keys, width, dim=1, largest=False).indices)
        out = torch.zeros(n_users, self.state_dim, device=device)
        step = max(1, INFER_CHUNK_PAIRS // max(width, 1))
        was_training = self.training
        self.eval()
        try:
            for s in range(0, n_users, step):
                rows = table[s:s + step, :width]
                mask = rows >= 0
                ctx = rows.clamp_min(0)
                mu, _ = self.posterior(*(t[ctx].to(device) for t in (pairs.prompt, pairs.chosen, pairs.rejected)),
                                       mask.to(device))
                out[s:s + step] = mu
        finally:
            self.train(was_training)
        return out
