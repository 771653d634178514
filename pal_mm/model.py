"""``PALModel``: an encoder, a PAL head and the table of known users, with the user-facing API
(``reward``, ``predict_preference``) and Hugging Face-style ``save_pretrained`` /
``from_pretrained`` (config.json + model.safetensors + users.json + a model card; no pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoders.atomic import output_dir
from encoders.base import Encoder

from .version import __version__
from .errors import PalMMError
from .config import PALConfig
from .heads import PALHead
from .mixture import check_simplex

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_WEIGHTS_NAME = "encoder.safetensors"
USERS_NAME = "users.json"


class PALModel(nn.Module):
    """A personalised reward model: ``reward(prompt, response; user) -> float``."""

    def __init__(self, config: PALConfig, encoder: Encoder, users: Sequence[str] = (), user_groups: dict | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.head = PALHead(config, num_users=len(users))
        self.users: list[str] = list(users)
        self.user_groups: dict[str, str] = dict(user_groups or {})
        self.metrics: dict[str, Any] = {}  # shown in the model card, saved in config.json
        self.data_info: dict[str, Any] = {}

    # ----- users ----------------------------------------------------------------------------
    def user_index(self, user_ids: Sequence[str]) -> torch.Tensor:
        """Map user ids to rows of the user table; unknown ids are a clear error."""
        index = {u: i for i, u in enumerate(self.users)}
        missing = sorted({u for u in user_ids if u not in index})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PalMMError(f"unknown user(s): {shown}; fit them first with `pal-mm adapt` (or pass explicit weights)")
        return torch.as_tensor([index[u] for u in user_ids], dtype=torch.long)

    def add_users(self, user_ids: Sequence[str], logits: torch.Tensor, groups: dict | None = None) -> None:
        """Append new users with their (n, K) logits; existing users are untouched."""
        clash = sorted(set(user_ids) & set(self.users))
        if clash:
            raise PalMMError(f"user(s) already in the model: {', '.join(clash[:5])}")
        self.head.append_users(logits)
        self.users += list(user_ids)
        self.user_groups.update(groups or {})

    def user_weights(self, user: str) -> list[float]:
        """The user's point on the K-simplex."""
        return self.head.user_weights(self.user_index([user]))[0].tolist()

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
    def predict_preference(self, prompts, responses_a, responses_b, user: str | None = None,
                           weights: Sequence[float] | None = None) -> list[float]:
        """Probability that ``a`` is preferred to ``b``: sigmoid(reward(a) - reward(b))."""
        ra = torch.tensor(self.reward(prompts, responses_a, user=user, weights=weights))
        rb = torch.tensor(self.reward(prompts, responses_b, user=user, weights=weights))
        return torch.sigmoid(ra - rb).tolist()

    def num_learned_parameters(self) -> int:
        """Parameters PAL learns (heads + user table), encoder excluded unless fine-tuned."""
        n = self.head.num_learned_parameters()
        return n + sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)

    # ----- save / load ----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write config.json, model.safetensors, users.json and README.md atomically: the files
        go to a temporary folder next to the target, which then replaces it."""
        with output_dir(save_directory) as tmp:
            self.write_files(tmp)

    def write_files(self, directory: Path) -> None:
        """Write the model files into an existing directory (no atomicity; see save_pretrained)."""
        from .model_card import model_card

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "pal_mm": __version__})
        fine_tuned = self.encoder.weights_changed
        if fine_tuned:
            enc_state = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
            save_file(enc_state, str(directory / ENCODER_WEIGHTS_NAME))
        config = {
            "pal_mm_version": __version__,
            "head": self.config.to_dict(),
            "encoder": {"name": self.encoder.name, "config": self.encoder.config(), "fingerprint": self.encoder.fingerprint(),
                        "fine_tuned": fine_tuned},
            "num_users": len(self.users),
            "metrics": self.metrics,
            "data": self.data_info,
        }
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
        (directory / USERS_NAME).write_text(json.dumps({"users": self.users, "groups": self.user_groups}, indent=1) + "\n")
        (directory / "README.md").write_text(model_card(self))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, encoder: Encoder | None = None) -> "PALModel":
        """Load a model directory (or a Hub repo id, downloaded with huggingface_hub)."""
        directory = _resolve_model_dir(path)
        cfg = read_config(directory)
        try:
            head_cfg = PALConfig.from_dict(cfg["head"])
            enc_cfg = cfg["encoder"]
            users_blob = json.loads((directory / USERS_NAME).read_text())
        except FileNotFoundError as e:
            raise PalMMError(f"{directory}: missing file {Path(e.filename).name}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PalMMError(f"{directory}: corrupt model config ({type(e).__name__}: {e})") from None
        if encoder is None:
            from encoders import create_encoder  # late: encoders imports pal_mm.errors

            encoder = create_encoder(enc_cfg["name"], **enc_cfg.get("config", {}))
        encoder.bind_dims(head_cfg.prompt_dim, head_cfg.item_dim)
        model = cls(head_cfg, encoder, users_blob["users"], users_blob.get("groups", {}))
        model.metrics = cfg.get("metrics", {})
        model.data_info = cfg.get("data", {})
        model.head.load_state_dict(_load_tensors(directory / WEIGHTS_NAME, model.head.state_dict()))
        if enc_cfg.get("fine_tuned"):
            model.encoder.load_state_dict(_load_tensors(directory / ENCODER_WEIGHTS_NAME, model.encoder.state_dict()))
        model.eval()
        return model


def read_config(directory: Path, kind: str = "pal-mm model directory") -> Any:
    """The parsed ``config.json`` of a model directory, or a one-line error naming the file."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise PalMMError(f"{directory}: not a {kind} (no {CONFIG_NAME})")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise PalMMError(f"{file}: corrupt model config (invalid JSON: {e.msg})") from None


def _resolve_model_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.exists():
        return p
    text = str(path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text))
        except Exception as e:
            raise PalMMError(f"{text}: no such directory, and not downloadable from the Hub ({type(e).__name__})") from None
    raise PalMMError(f"{text}: no such model directory")


def _load_tensors(file: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load a safetensors file and check it against the expected names and shapes."""
    if not file.is_file():
        raise PalMMError(f"{file}: missing weights file")
    try:
        tensors = load_file(str(file))
    except Exception as e:
        raise PalMMError(f"{file}: corrupt weights file ({type(e).__name__}: {e})") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PalMMError(f"{file}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise PalMMError(f"{file}: tensor {k} has shape {tuple(tensors[k].shape)}, config expects {tuple(v.shape)}")
    return tensors
