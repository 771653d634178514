"""``PALModel``: an encoder, a PAL head, the table of known users and what the model believes about
them (:class:`~pal_mm.posterior.UserBeliefs`: calibration, a prior over users, every user's
posterior), with the user-facing API (``reward``, ``reward_std``, ``predict_preference``,
``update_user``) and Hugging Face-style ``save_pretrained`` / ``from_pretrained`` (config.json +
model.safetensors + users.json + a model card; no pickle). The beliefs are extra tensors in
model.safetensors (``beliefs.*``), so the checksums cover them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from encoders.base import Encoder

from .config import PALConfig
from .errors import PalMMError
from .heads import create_head
from .hub import (ENCODER_WEIGHTS_NAME, USERS_NAME, WEIGHTS_NAME, HubModel, encoder_from_reference, load_tensors,
                  read_config, read_users, strict_dumps, tensors_bytes, verify_files, write_model_files)
from .mixture import check_simplex
from .beliefs import UserBeliefs, user_basis
from .online import OnlineUser, update_user
from .posterior import covariance, pair_probabilities, reward_std, weight_covariance
from .version import __version__

FORMAT = "pal-model"
FORMAT_VERSION = 1


class PALModel(HubModel, library_name="pal-mm", license="apache-2.0", repo_url="https://github.com/pal-mm/pal-mm",
               tags=["reward-model", "personalized-alignment", "pal"]):
    """A personalised reward model: ``reward(prompt, response; user) -> float``."""

    def __init__(self, config: PALConfig, encoder: Encoder, users: Sequence[str] = (), user_groups: dict | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.head = create_head(config, num_users=len(users))
        self.users: list[str] = list(users)
        self.user_groups: dict[str, str] = dict(user_groups or {})
        self.metrics: dict[str, Any] = {}  # shown in the model card, saved in config.json
        self.data_info: dict[str, Any] = {}
        self.beliefs: UserBeliefs | None = None  # set at training time (pal_mm.prior); None in older models
        self._online: dict[int, OnlineUser] = {}  # update_user sessions (in memory only)

    # ----- users ----------------------------------------------------------------------------
    def _position(self, user: str) -> int | None:
        """Row of one user id (None when unknown), from an index rebuilt when the user table grows."""
        cached = getattr(self, "_positions", None)
        if cached is None or cached[0] != len(self.users):
            cached = (len(self.users), {u: i for i, u in enumerate(self.users)})
            self._positions = cached
        return cached[1].get(user)

    def user_index(self, user_ids: Sequence[str]) -> torch.Tensor:
        """Map user ids to rows of the user table; unknown ids are a clear error."""
        index = {u: i for i, u in enumerate(self.users)}
        missing = sorted({u for u in user_ids if u not in index})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PalMMError(f"unknown user(s): {shown}; fit them first with `pal-mm adapt` (or pass explicit weights)")
        return torch.as_tensor([index[u] for u in user_ids], dtype=torch.long)

    def add_users(self, user_ids: Sequence[str], logits: torch.Tensor, groups: dict | None = None,
                  precision: torch.Tensor | None = None) -> None:
        """Append new users with their (n, K) logits and, when the model keeps posteriors, their
        (n, S, S) posterior precisions (default: the prior's, i.e. nothing learned about them);
        existing users are untouched."""
        clash = sorted(set(user_ids) & set(self.users))
        if clash:
            raise PalMMError(f"user(s) already in the model: {', '.join(clash[:5])}")
        b = self.beliefs
        if b is not None and b.has_prior:
            if precision is None:
                precision = b.collapsed_prior()[1].expand(len(user_ids), -1, -1)
            b.precision = torch.cat([b.precision, precision.detach().to(b.precision)])
        self.head.append_users(logits)
        self.users += list(user_ids)
        self.user_groups.update(groups or {})

    @property
    def has_posterior(self) -> bool:
        """True when every known user has a posterior (models trained with pal-mm >= 0.2)."""
        return self.beliefs is not None and self.beliefs.has_prior and self.head.has_user_state

    def user_weights(self, user: str) -> list[float]:
        """The user's point on the K-simplex."""
        return self.head.user_weights(self.user_index([user]))[0].tolist()

    @torch.no_grad()
    def user_weight_covariance(self, users: Sequence[str] | None = None) -> torch.Tensor | None:
        """(n, K, K) posterior covariance of the users' simplex weights (delta method), or None without
        posteriors. ``users``: default all known users."""
        if not self.has_posterior:
            return None
        idx = self.user_index(list(self.users if users is None else users)).cpu()
        basis = user_basis(self.head.state_dim, self.head.simplex_users)
        z = self.head.user_logits.detach().cpu()[idx] @ basis
        return weight_covariance(z, covariance(self.beliefs.precision[idx]), basis, self.head.simplex_users).float()

    def user_weight_std(self, users: Sequence[str] | None = None) -> torch.Tensor | None:
        """(n, K) posterior standard deviations of the users' simplex weights, or None without posteriors."""
        cov = self.user_weight_covariance(users)
        return None if cov is None else torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0).sqrt()

    def mixture_weights(self, n: int, user: str | None = None, weights: Sequence[float] | None = None,
                        users: Sequence[str] | None = None) -> torch.Tensor:
        """(n, K) mixture weights, from exactly one of: a known ``user`` (the same row n times),
        explicit simplex ``weights``, or ``users`` (one known user id per row)."""
        given = [name for name, v in (("user", user), ("weights", weights), ("users", users)) if v is not None]
        if len(given) != 1:
            raise PalMMError("give exactly one of user=..., weights=... or users=[...]")
        if users is not None:
            users = [str(u) for u in users]
            if len(users) != n:
                raise PalMMError(f"got {len(users)} user ids for {n} rows")
            return self.head.user_weights(self.user_index(users).to(self.head.user_logits.device))
        if user is not None:
            w = self.head.user_weights(self.user_index([str(user)]).to(self.head.user_logits.device))
        elif not self.head.simplex_users:
            raise PalMMError(f"a {self.config.model_type} model's users are latent vectors, not mixtures: give user=...")
        else:
            w = torch.tensor(check_simplex(weights, self.config.k, "weights"), device=self.head.user_logits.device)[None]
        return w.expand(n, -1)

    def forward(self, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor, rejected_emb: torch.Tensor,
                user_idx: torch.Tensor) -> torch.Tensor:
        """Training forward on embeddings: (b, dp), (b, di), (b, di), (b,) -> (b,) margins
        reward(chosen) - reward(rejected). Going through ``forward`` lets DDP sync gradients."""
        return self.head.margin(prompt_emb, chosen_emb, rejected_emb, self.head.user_weights(user_idx))

    # ----- scoring --------------------------------------------------------------------------
    def reward_embeddings(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor, user: str | None = None,
                          weights: Sequence[float] | None = None, users: Sequence[str] | None = None) -> torch.Tensor:
        """Rewards (b,) of encoder outputs (b, prompt_dim), (b, item_dim) for one ``user``,
        explicit ``weights`` or per-row ``users`` (see :meth:`mixture_weights`). Differentiable:
        callers that need no gradient wrap it in ``torch.no_grad()``."""
        self.config.check_widths(prompt_emb, item_emb)
        w = self.mixture_weights(prompt_emb.shape[0], user=user, weights=weights, users=users)
        dev, dtype = w.device, w.dtype
        return self.head.reward(prompt_emb.to(dev, dtype), item_emb.to(dev, dtype), w)

    @torch.no_grad()
    def reward(self, prompts: Any | Sequence[Any], responses: Sequence[Any], user: str | None = None,
               weights: Sequence[float] | None = None) -> list[float]:
        """One scalar reward per (prompt, response). A single prompt is broadcast over all
        responses. Give ``user`` (a known id) or explicit simplex ``weights``."""
        from .embedding import broadcast_inputs, encode_values

        prompts, responses = broadcast_inputs(prompts, responses)
        self.eval()
        p = encode_values(self.encoder, prompts, "prompt")
        x = encode_values(self.encoder, responses, "item")
        return self.reward_embeddings(p, x, user=user, weights=weights).tolist()

    @torch.no_grad()
    def reward_std(self, prompts: Any | Sequence[Any], responses: Sequence[Any], user: str | None = None,
                   weights: Sequence[float] | None = None) -> list[float] | None:
        """Posterior standard deviation of each reward of :meth:`reward` (the uncertainty about the
        user's weights, linearised); 0.0 for explicit ``weights``; None without posteriors."""
        from .embedding import broadcast_inputs, encode_values

        if weights is not None and user is None:
            return [0.0] * len(broadcast_inputs(prompts, responses)[1])
        if not self.has_posterior:
            return None
        prompts, responses = broadcast_inputs(prompts, responses)
        self.eval()
        p = encode_values(self.encoder, prompts, "prompt")
        x = encode_values(self.encoder, responses, "item")
        self.config.check_widths(p, x)
        dev = self.head.user_logits.device
        i = int(self.user_index([str(user)])[0])
        return reward_std(self.head, self.beliefs, i, p.to(dev), x.to(dev)).tolist()

    def pair_probabilities(self, pairs, batch_size: int = 4096) -> torch.Tensor:
        """(n,) P(chosen preferred) for encoded pairs of known users (:class:`~pal_mm.embedding.EncodedPairs`):
        calibrated, averaged over each user's posterior when the model has one."""
        head = self.head
        was_training = head.training
        head.eval()
        idx = self.user_index(pairs.user_ids)
        dev = head.user_logits.device
        out = [pair_probabilities(head, self.beliefs, idx[s:s + batch_size].to(dev), pairs.prompt[s:s + batch_size].to(dev),
                                  pairs.chosen[s:s + batch_size].to(dev), pairs.rejected[s:s + batch_size].to(dev)).cpu()
               for s in range(0, len(pairs), batch_size)]
        head.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def predict_preference(self, prompts, responses_a, responses_b, user: str | None = None,
                           weights: Sequence[float] | None = None) -> list[float]:
        """Probability that ``a`` is preferred to ``b``. For a known ``user``: calibrated (the inverse
        temperature fitted at training time) and averaged over the user's posterior; for explicit
        ``weights``: sigmoid(a * (reward(a) - reward(b)))."""
        from .embedding import EncodedPairs, broadcast_inputs, encode_values

        prompts, responses_a = broadcast_inputs(prompts, responses_a)
        _, responses_b = broadcast_inputs(prompts, responses_b)
        self.eval()
        p = encode_values(self.encoder, prompts, "prompt")
        xa, xb = encode_values(self.encoder, responses_a, "item"), encode_values(self.encoder, responses_b, "item")
        if user is not None and weights is None:
            return self.pair_probabilities(EncodedPairs(p, xa, xb, [str(user)] * len(prompts))).tolist()
        a = self.beliefs.inv_temperature if self.beliefs is not None else 1.0
        margin = self.reward_embeddings(p, xa, user=user, weights=weights) - self.reward_embeddings(p, xb, user=user, weights=weights)
        return torch.sigmoid(a * margin.double()).tolist()

    def update_user(self, user: str, prompt: Any, chosen: Any, rejected: Any) -> list[float]:
        """Refine one user's weights from one new comparison (a new user starts from the prior) and
        return the new simplex weights. Online: warm-started on the head's reduced form, with the
        user's current posterior as the prior (:mod:`pal_mm.online`)."""
        from .embedding import encode_values

        self.eval()
        p = encode_values(self.encoder, [prompt], "prompt")
        items = encode_values(self.encoder, [chosen, rejected], "item")
        return self.update_user_embeddings(user, p, items[:1], items[1:])

    def update_user_embeddings(self, user: str, prompt_emb: torch.Tensor, chosen_emb: torch.Tensor,
                               rejected_emb: torch.Tensor) -> list[float]:
        """:meth:`update_user` on encoder outputs (b, dp), (b, di), (b, di) (b new pairs of one user)."""
        if not self.has_posterior:
            raise PalMMError("update_user needs a model with a prior over users (simplex users: pal-a, pal-b, lore; trained with this pal-mm version)")
        user = str(user)
        i = self._position(user)
        dev = self.head.user_logits.device
        if i is None:  # a new user: the session starts from the prior (all its components)
            mean = self.beliefs.collapsed_prior()[0]
            basis = user_basis(self.head.state_dim, self.head.simplex_users)
            self.add_users([user], (mean[None] @ basis.T).to(self.head.user_logits))
            i = len(self.users) - 1
            self._online[i] = OnlineUser.from_prior(self.beliefs, dev)
        self._online[i] = update_user(self.head, self.beliefs, i, prompt_emb.to(dev), chosen_emb.to(dev), rejected_emb.to(dev),
                                      self._online.get(i))
        return self.head.user_weights(torch.tensor([i], device=dev))[0].tolist()

    def num_learned_parameters(self) -> int:
        """Parameters PAL learns (heads + user table), encoder excluded unless fine-tuned."""
        n = self.head.num_learned_parameters()
        return n + sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)

    # ----- save / load ----------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: model.safetensors, users.json, encoder.safetensors (fine-tuned encoders
        only), then config.json with their checksums."""
        tensors = {**self.head.state_dict(), **(self.beliefs.tensors() if self.beliefs is not None else {})}
        files = {WEIGHTS_NAME: tensors_bytes(tensors),
                 USERS_NAME: (strict_dumps({"users": self.users, "groups": self.user_groups}, indent=1) + "\n").encode()}
        fine_tuned = self.encoder.weights_changed
        if fine_tuned:
            files[ENCODER_WEIGHTS_NAME] = tensors_bytes(self.encoder.state_dict())
        config = {
            "pal_mm_format": FORMAT,
            "format_version": FORMAT_VERSION,
            "pal_mm_version": __version__,
            "head": self.config.to_dict(),
            "encoder": {"name": self.encoder.name, "config": self.encoder.config(), "fingerprint": self.encoder.fingerprint(),
                        "fine_tuned": fine_tuned},
            "num_users": len(self.users),
            **({"beliefs": self.beliefs.summary()} if self.beliefs is not None else {}),
            "metrics": self.metrics,
            "data": self.data_info,
            **self._hub_config(),
        }
        write_model_files(Path(save_directory), config, files)

    def generate_model_card(self, **kwargs):
        from .model_card import pal_model_card

        return pal_model_card(self, **kwargs)

    @classmethod
    def _load_dir(cls, directory: Path, encoder: Encoder | None = None, trust_remote_code: bool = False,
                  device: str | None = None, dtype: str | None = None) -> "PALModel":
        """Build the model from a verified folder (see :mod:`pal_mm.hub` for what is checked)."""
        saved = read_pal_dir(directory)
        if encoder is None:
            encoder = encoder_from_reference(saved.encoder_ref, directory, trust_remote_code=trust_remote_code, device=device,
                                             dtype=dtype)
        encoder.bind_dims(saved.head_config.prompt_dim, saved.head_config.item_dim)
        model = cls(saved.head_config, encoder, saved.users, saved.groups)
        model.head = saved.head
        model.metrics, model.data_info = saved.metrics, saved.data_info
        model.beliefs = saved.beliefs
        if saved.encoder_file is not None:
            model.encoder.load_state_dict(load_tensors(saved.encoder_file, model.encoder.state_dict()))
        if device is not None:
            model.head.to(device)
        return model.eval()


@dataclass
class SavedPALModel:
    """A verified PAL model directory, read without building its encoder."""

    config: dict
    head_config: PALConfig
    head: torch.nn.Module
    users: list[str]
    groups: dict[str, str]
    encoder_ref: dict
    encoder_file: Path | None
    metrics: dict
    data_info: dict
    beliefs: UserBeliefs | None = None


def read_pal_dir(directory: Path) -> SavedPALModel:
    """Read and verify a full PAL model directory: config, checksums, users, the loaded head."""
    cfg = read_config(directory)
    fmt = cfg.get("pal_mm_format", FORMAT)  # directories saved before the format key was added have none
    if fmt == "personal-reward-model":
        raise PalMMError(f"{directory}: already an exported one-user reward model, not a full PAL model (load it with "
                         "PersonalRewardModel.from_pretrained; export from the full PAL model directory)")
    if fmt != FORMAT:
        raise PalMMError(f"{directory}: not a pal-mm model directory (format {fmt!r})")
    verify_files(directory, cfg)
    try:
        head_cfg = PALConfig.from_dict(cfg["head"])
        enc_ref = cfg["encoder"]
    except (KeyError, TypeError) as e:
        raise PalMMError(f"{directory}: corrupt model config ({type(e).__name__}: {e})") from None
    if not isinstance(enc_ref, dict) or not isinstance(enc_ref.get("name"), str):
        raise PalMMError(f"{directory}: corrupt encoder reference in config.json")
    if not isinstance(enc_ref.get("config") or {}, dict):
        raise PalMMError(f"{directory}: corrupt encoder options in config.json")
    users, groups = read_users(directory, cfg.get("num_users"))
    head = create_head(head_cfg, num_users=len(users))
    summary = cfg.get("beliefs")
    if summary is not None and not isinstance(summary, dict):
        raise PalMMError(f"{directory}: corrupt model config ('beliefs' must be an object)")
    expected = {**head.state_dict(), **(UserBeliefs.expected(summary, len(users)) if summary is not None else {})}
    tensors = load_tensors(directory / WEIGHTS_NAME, expected)
    head.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("beliefs.")})
    beliefs = UserBeliefs.from_tensors(tensors, str(directory / WEIGHTS_NAME)) if summary is not None else None
    enc_file = directory / ENCODER_WEIGHTS_NAME if enc_ref.get("fine_tuned") else None
    if enc_file is not None and not enc_file.is_file():
        raise PalMMError(f"{directory}: missing file {ENCODER_WEIGHTS_NAME} (the encoder was fine-tuned)")
    metrics, data_info = cfg.get("metrics") or {}, cfg.get("data") or {}
    if not isinstance(metrics, dict) or not isinstance(data_info, dict):
        raise PalMMError(f"{directory}: corrupt model config ('metrics' and 'data' must be objects)")
    return SavedPALModel(cfg, head_cfg, head.eval(), users, groups, enc_ref, enc_file, metrics, data_info, beliefs)
