"""The head interface: what training, adaptation, evaluation, export and the model rely on.

A head maps embeddings to rewards. Notation (shapes in brackets): ``b`` batch, ``K`` mixture size
(``config.k``), ``dp`` / ``di`` prompt / item embedding widths.

* Every user ``u`` has one row of ``user_logits`` (K numbers); their mixture weights are
  ``w_u = softmax(W_u)`` (tau = 1), a point on the (K-1)-simplex. New users are fitted by learning
  only their row (:mod:`pal_mm.adaptation`), so adding users never changes anyone else's rewards.
* Inputs are standardised first (:class:`~pal_mm.heads.projectors.InputNormalizer`, fitted on the
  training embeddings and saved with the model).
* A subclass implements :meth:`build` (its modules), :meth:`reward` and :meth:`param_groups`; it may
  override :meth:`pair_rewards` (share work between the two items of a pair), :meth:`training_loss`
  (an extra term, context sampling...), :meth:`user_pair_features` / :meth:`margins_from_features` (a
  cheap, per-pair form of new users' margins, which :meth:`user_margins` and the new-user loss
  :meth:`user_objective` are built on),
  :meth:`infer_users` (amortised inference of new users' rows, without gradient steps) and the
  training hooks :meth:`prepare_training` / :meth:`finish_training`.
* A user's row has :attr:`state_dim` numbers (K logits for simplex heads; a latent vector for heads
  whose users are not mixtures: then :attr:`simplex_users` is False and ``weights_from_logits`` is the
  identity).

Parameter-group names map to learning rates in :func:`pal_mm.training.optimizer_groups`:
``projector*`` (projector rate and weight decay), ``P`` (prototypes), ``W`` (user logits),
``logit_scale``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PALConfig
from ..errors import PalMMError
from .projectors import InputNormalizer


def bt_loss(margin: torch.Tensor, label_noise: float = 0.0) -> torch.Tensor:
    """(b,) per-pair ``-log(eps + (1 - 2 eps) sigmoid(m))``, computed stably in log space:
    ``logaddexp(log eps, log(1 - 2 eps) + log sigmoid(m))``; eps = 0 gives ``softplus(-m)``."""
    if label_noise <= 0.0:
        return F.softplus(-margin)
    eps = torch.tensor(label_noise, dtype=margin.dtype, device=margin.device)
    return -torch.logaddexp(eps.log(), torch.log1p(-2 * eps) - F.softplus(-margin))


class PreferenceHead(nn.Module):
    """Base class of the preference heads (see the module docstring)."""

    #: registry name, set by :func:`~pal_mm.heads.registry.register_head`
    name: str = "base"
    #: the pair loss when ``config.loss`` is not set: ``bt`` (Bradley-Terry) or ``hinge``
    default_loss: str = "bt"
    #: the Bradley-Terry loss's label noise eps when ``config.label_noise`` is not set (see :meth:`loss`)
    default_label_noise: float = 0.0
    #: False for heads that ignore users (the single reward model): adapt has nothing to fit
    has_user_state: bool = True
    #: one line for ``pal-mm heads``
    description: str = ""
    #: True when a user's row is K logits whose softmax is a point on the simplex
    simplex_users: bool = True
    #: True when :meth:`load_split` can start this head from a fitted smaller one (K' < K)
    splittable: bool = False
    #: True when :meth:`margin_gradients_from_features` is a closed form, cheap for any number of pairs
    #: (new users' Jacobians then use it instead of backward passes through every pair)
    closed_form_margin_gradients: bool = False

    def __init__(self, config: PALConfig, num_users: int = 0):
        super().__init__()
        self.config = c = config
        if c.prompt_dim <= 0 or c.item_dim <= 0:
            raise PalMMError("prompt_dim and item_dim must be set before building a head")
        self.loss_type = c.loss or self.default_loss
        self.label_noise = self.default_label_noise if c.label_noise is None else c.label_noise
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(c.init_seed)
            gen = torch.Generator().manual_seed(c.init_seed)
            self.prompt_norm = InputNormalizer(c.prompt_dim) if c.normalize_inputs else nn.Identity()
            self.item_norm = InputNormalizer(c.item_dim) if c.normalize_inputs else nn.Identity()
            self.build(c, gen)
            self.user_logits = nn.Parameter(torch.randn(num_users, self.state_dim, generator=gen))

    # ----- what subclasses implement ------------------------------------------------------------
    def build(self, config: PALConfig, gen: torch.Generator) -> None:
        """Create the head's modules (under a seeded global RNG; ``gen`` for explicit draws)."""
        raise NotImplementedError

    def reward(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(b, dp) raw prompt embeddings, (b, di) raw item embeddings, (b, K) weights -> (b,) rewards."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Learned parameters by group name (see the module docstring); ``W`` holds the user logits."""
        raise NotImplementedError

    # ----- pairs and losses -----------------------------------------------------------------------
    def pair_rewards(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                     weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(b,) rewards of the chosen and of the rejected item."""
        return self.reward(prompt_emb, chosen_emb, weights), self.reward(prompt_emb, rejected_emb, weights)

    def margin(self, prompt_emb, chosen_emb, rejected_emb, weights) -> torch.Tensor:
        """(b,) reward(chosen) - reward(rejected)."""
        r_c, r_r = self.pair_rewards(prompt_emb, chosen_emb, rejected_emb, weights)
        return r_c - r_r

    def loss(self, margin: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Bradley-Terry or hinge ``max(0, 1 - m)`` on (b,) margins. Bradley-Terry with label noise
        ``eps`` (:attr:`label_noise`: ``config.label_noise`` or the head's default) is the likelihood of
        labels flipped with probability eps: ``-log(eps + (1 - 2 eps) sigmoid(m))``; eps = 0 is the plain
        ``-log sigmoid(m)``."""
        if self.loss_type != "bt":
            per_pair = F.relu(1 - margin)
        else:
            per_pair = bt_loss(margin, self.label_noise)
        return per_pair.mean() if reduction == "mean" else per_pair

    def training_loss(self, prompt_emb, chosen_emb, rejected_emb, user_idx: torch.Tensor) -> torch.Tensor:
        """The scalar a training step minimises on one batch of known users' pairs."""
        return self.loss(self.margin(prompt_emb, chosen_emb, rejected_emb, self.user_weights(user_idx)))

    # ----- users ----------------------------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        """Numbers per user row (K for simplex heads)."""
        return self.config.k

    @property
    def num_users(self) -> int:
        return self.user_logits.shape[0]

    def weights_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., K) logits -> (..., K) simplex weights."""
        return torch.softmax(logits, dim=-1)

    def user_weights(self, user_idx: torch.Tensor) -> torch.Tensor:
        """(b,) user indices -> (b, K) simplex weights."""
        return self.weights_from_logits(self.user_logits[user_idx])

    @torch.no_grad()
    def append_users(self, logits: torch.Tensor) -> None:
        """Add users with the given (n_new, K) logits; existing rows are untouched."""
        new = torch.cat([self.user_logits.data, logits.to(self.user_logits)], 0)
        self.user_logits = nn.Parameter(new, requires_grad=self.user_logits.requires_grad)

    def user_pair_features(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor,
                           rejected_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen parts of new users' pair margins, every tensor (n, ...) with one row per pair (so
        features of different pairs can be concatenated, e.g. to extend a user's pairs online). The
        default keeps the raw embeddings; heads override it with a cheaper reduced form (evaluated
        once, without gradients)."""
        return {"prompt": prompt_emb, "chosen": chosen_emb, "rejected": rejected_emb}

    def margins_from_features(self, features: dict[str, torch.Tensor], logits: torch.Tensor,
                              user_rows: torch.Tensor) -> torch.Tensor:
        """(n,) margins reward(chosen) - reward(rejected) of the pairs in ``features`` for users'
        rows ``logits`` (n_users, state_dim), pair i belonging to user ``user_rows[i]``; must equal
        :meth:`margin` up to float rounding and be differentiable in ``logits``."""
        w = self.weights_from_logits(logits)[user_rows]
        return self.margin(features["prompt"], features["chosen"], features["rejected"], w)

    def margin_gradients_from_features(self, features: dict[str, torch.Tensor], logits: torch.Tensor,
                                       user_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) margins of :meth:`margins_from_features` and (n, state_dim) their gradients, row i being
        d m_i / d logits[user_rows[i]] (a pair depends on its own user's row only). The default uses
        autograd with one row of logits per pair; heads may override it with a closed form."""
        n = user_rows.shape[0]
        with torch.enable_grad():
            rows = logits.detach()[user_rows].clone().requires_grad_(True)
            m = self.margins_from_features(features, rows, torch.arange(n, device=rows.device))
            (grad,) = torch.autograd.grad(m.sum(), rows)
        return m.detach(), grad

    def user_margins(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                     user_rows: torch.Tensor, n_users: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``fn(logits (n_users, state_dim)) -> (n,)``: every pair's margin as a function of the new
        users' rows (pair i belongs to user ``user_rows[i]``), the frozen parts evaluated once
        (:meth:`user_pair_features`, :meth:`margins_from_features`). New users' losses
        (:meth:`user_objective`), posteriors and online updates (:mod:`pal_mm.posterior`) build on it."""
        with torch.no_grad():
            features = self.user_pair_features(prompt_emb, chosen_emb, rejected_emb)

        def margins(logits: torch.Tensor) -> torch.Tensor:
            return self.margins_from_features(features, logits, user_rows)

        return margins

    def user_objective(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                       user_rows: torch.Tensor, n_users: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``fn(logits (n_users, K)) -> (n_users,)``: each new user's mean loss over their pairs, from
        :meth:`user_margins` (so a head's reduced margin form makes this cheap too)."""
        counts = torch.bincount(user_rows, minlength=n_users).clamp_min(1).float()
        margins = self.user_margins(prompt_emb, chosen_emb, rejected_emb, user_rows, n_users)

        def objective(logits: torch.Tensor) -> torch.Tensor:
            per_pair = self.loss(margins(logits), reduction="none")
            return torch.zeros(n_users, dtype=per_pair.dtype).index_add(0, user_rows, per_pair) / counts

        return objective

    def infer_users(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                    user_rows: torch.Tensor, n_users: int) -> torch.Tensor | None:
        """Amortised inference: (n_users, state_dim) rows for new users straight from their pairs, or
        None (the default) to fit them by gradient steps on :meth:`user_objective`."""
        return None

    # ----- training helpers -----------------------------------------------------------------------
    def load_split(self, source: "PreferenceHead") -> None:
        """Start at ``source`` (same type, K' <= K prototypes): everything shared copied, prototype k
        a copy of source prototype k mod K'. With K' > 1 and the same users, each user keeps their
        source weights (the copies get weight ~e^-30), so the head computes what ``source`` does; with
        K' = 1 that holds for any weights and the user logits are not touched (heads with
        :attr:`splittable`; see :mod:`pal_mm.splitting`)."""
        raise PalMMError(f"head {self.name!r} cannot start from a smaller model (it does not split prototypes)")

    def _copy_split_state(self, source: "PreferenceHead", prototype_of) -> None:
        """Copy ``source``'s state into this head: ``prototype_of(key, own_value, source_state)`` gives the
        value of a prototype-indexed key (or None for a key shared as it is); ``user_logits`` is kept."""
        if type(source) is not type(self) or source.config.k > self.config.k:
            raise PalMMError(f"cannot split a {source.name} K={source.config.k} model into {self.name} K={self.config.k}")
        src = source.state_dict()
        state = {}
        with torch.no_grad():
            for key, value in self.state_dict().items():
                if key == "user_logits":
                    state[key] = self._split_logits(value, src[key], source.config.k)
                    continue
                proto = prototype_of(key, value, src)
                state[key] = (proto if proto is not None else src[key]).detach().clone().to(value)
        self.load_state_dict(state)

    @staticmethod
    def _split_logits(own: torch.Tensor, src: torch.Tensor, k_src: int) -> torch.Tensor:
        """(users, K) logits putting each user on their (users, K') source weights (see :meth:`load_split`)."""
        if k_src == 1 or src.shape[0] != own.shape[0]:
            return own
        out = torch.empty_like(own)
        out[:, :k_src] = src
        out[:, k_src:] = src.min(dim=1, keepdim=True).values - 30.0
        return out

    def prepare_training(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                         user_idx: torch.Tensor) -> None:
        """Called once before the epoch loop with the whole training set (embeddings of a frozen
        encoder; ``user_idx`` (n,) rows of the user table): e.g. to index each user's pairs."""

    def finish_training(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                        user_idx: torch.Tensor) -> None:
        """Called once after the best state is restored, with the same arguments as :meth:`prepare_training`."""

    def fit_normalizers(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> None:
        """Fit the input standardisation on training embeddings (n, dp) and (n, di)."""
        if self.config.normalize_inputs:
            self.prompt_norm.fit(prompt_emb)
            self.item_norm.fit(item_emb)

    def num_learned_parameters(self, include_users: bool = True) -> int:
        return sum(p.numel() for name, ps in self.param_groups().items() if include_users or name != "W" for p in ps)

    def reward_range(self) -> tuple[float, float] | None:
        """(low, high) bounds every reward lies in, when the head has them (None otherwise)."""
        return None

    def extra_metrics(self) -> dict:
        """Numbers worth logging once per epoch (e.g. PAL-B's logit scale)."""
        return {}
