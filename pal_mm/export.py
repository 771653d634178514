"""A PAL model with its mixture weight fixed: a standard, one-user reward model.

``r(prompt, response) = PAL head(prompt, response; w)`` with ``w`` on the K-simplex fixed at
export time (method reference, section 8):

* a seen user ``u``: ``w = softmax(W_u)`` (exactly the numbers ``PALModel.reward(user=u)`` uses);
* explicit weights ``w`` (checked against the simplex with a tolerance, never exact equality),
  or logits (``w = softmax(logits)``);
* prototype ``k``: the one-hot ``e_k`` (0-based index).

:class:`PersonalRewardModel` holds the head (projectors, input normalisers, logit scale; no user
table) and the fixed weights, and references its encoder by registry name + config +
fingerprint; the encoder weights are bundled (``encoder.safetensors``) only when they were
fine-tuned. Rewards equal the PAL model's for that user: the same head code runs on the same
numbers. It is a ``huggingface_hub.PyTorchModelHubMixin`` model::

    rm = PersonalRewardModel.from_pretrained("out/alice")      # or a Hub repo id
    rm(["a prompt"], ["a response"])                           # -> [float]
    rm.push_to_hub("me/pal-alice")

Directory layout: ``config.json`` (``"pal_mm_format": "personal-reward-model"``),
``model.safetensors``, ``README.md`` (model card with YAML front matter), optionally
``encoder.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_file
from torch import nn

from encoders.atomic import output_dir
from encoders.base import Encoder
from encoders.errors import EncoderError

from .version import __version__
from .errors import PalMMError
from .embedding import broadcast_inputs
from .config import PALConfig
from .heads import PALHead
from .mixture import check_simplex, describe_mixture, resolve_mixture
from .model import CONFIG_NAME, ENCODER_WEIGHTS_NAME, USERS_NAME, WEIGHTS_NAME, PALModel, _load_tensors, _resolve_model_dir, read_config

FORMAT = "personal-reward-model"
FORMAT_VERSION = 1
MIXTURE_KEY = "mixture_weights"
HEAD_PREFIX = "head."


def encoder_is_fine_tuned(encoder: Encoder) -> bool:
    """Weights that differ from the registry's (fine-tuned, or loaded from encoder.safetensors)."""
    return encoder.weights_changed


def encoder_reference(encoder: Encoder, fine_tuned: bool | None = None) -> dict:
    return {"name": encoder.name, "config": encoder.config(), "fingerprint": encoder.fingerprint(),
            "fine_tuned": encoder_is_fine_tuned(encoder) if fine_tuned is None else bool(fine_tuned),
            "prompt_modality": encoder.prompt_modality, "item_modality": encoder.item_modality}


def _modalities(name: str) -> dict:
    try:
        from encoders import get_encoder_class

        cls = get_encoder_class(name)
        return {"prompt_modality": cls.prompt_modality, "item_modality": cls.item_modality}
    except EncoderError:  # a plug-in that is not installed here: export still works
        return {"prompt_modality": None, "item_modality": None}


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------
class PersonalRewardModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="pal-mm",
    license="apache-2.0",
    tags=["reward-model", "personalized-alignment", "pal", "personal-reward-model"],
    repo_url="https://github.com/pal-mm/pal-mm",
):
    """One user's PAL reward model: ``model(prompts, responses) -> list[float]``.

    ``config`` is the content of ``config.json`` (see :func:`export_personal_model`); the encoder
    is built from its registry reference on first use unless one is passed.
    """

    def __init__(self, config: dict, encoder: Encoder | None = None):
        super().__init__()
        cfg = validate_config(config)
        self.export_config = cfg
        self.config = PALConfig.from_dict(cfg["head"])
        with torch.random.fork_rng(devices=[]):  # PALHead seeds the global RNG when it initialises
            self.head = PALHead(self.config, num_users=0)
        self.head.requires_grad_(False)  # an inference artifact; unfreeze explicitly to train it
        self.register_buffer(MIXTURE_KEY, torch.tensor(cfg["mixture"]["weights"], dtype=torch.float32))
        self._encoder_state_file: Path | None = None
        if isinstance(encoder, Encoder):
            self.set_encoder(encoder)

    # ----- encoder (built lazily from its reference) ----------------------------------------
    @property
    def encoder(self) -> Encoder:
        enc = self._modules.get("encoder")
        if enc is None:
            enc = self._build_encoder()
            self._modules["encoder"] = enc
        return enc

    def set_encoder(self, encoder: Encoder) -> None:
        """Use this encoder instance (it must produce the vectors the head was trained on)."""
        if not isinstance(encoder, Encoder):
            raise PalMMError(f"encoder must be an encoders.Encoder, got {type(encoder).__name__}")
        encoder.bind_dims(self.config.prompt_dim, self.config.item_dim)
        self._modules["encoder"] = encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._modules.get("encoder") is not None

    def _build_encoder(self) -> Encoder:
        from encoders import create_encoder  # late: encoders imports pal_mm.errors

        ref = self.export_config["encoder"]
        enc = create_encoder(ref["name"], **(ref.get("config") or {}))
        enc.bind_dims(self.config.prompt_dim, self.config.item_dim)
        if ref.get("fine_tuned"):
            if self._encoder_state_file is None or not Path(self._encoder_state_file).is_file():
                raise PalMMError(f"this model needs its fine-tuned encoder weights ({ENCODER_WEIGHTS_NAME}), which are missing")
            enc.load_state_dict(_load_tensors(Path(self._encoder_state_file), enc.state_dict()))
        if ref.get("fingerprint") and enc.fingerprint() != ref["fingerprint"]:
            warnings.warn(f"encoder {ref['name']!r}: fingerprint {enc.fingerprint()} differs from the one this reward model "
                          f"was exported with ({ref['fingerprint']}); the installed encoder may produce different "
                          "vectors, so rewards may differ", stacklevel=3)
        return enc

    # ----- what it was exported for ---------------------------------------------------------
    @property
    def mixture(self) -> dict:
        return dict(self.export_config["mixture"])

    @property
    def user(self) -> str | None:
        """The user id it was exported for (None for explicit weights or a prototype)."""
        return self.export_config["mixture"].get("user")

    @property
    def weights(self) -> list[float]:
        return self.mixture_weights.tolist()

    def describe(self) -> str:
        return describe_mixture(self.export_config["mixture"])

    # ----- scoring --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_mode(self):
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def _head_device(self) -> torch.device:
        return self.mixture_weights.device

    def reward_embeddings(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """(b, dp), (b, di) encoder outputs -> (b,) rewards; differentiable (no no_grad)."""
        self.config.check_widths(prompt_emb, item_emb)
        device, dtype = self._head_device(), self.mixture_weights.dtype
        w = self.mixture_weights[None].expand(prompt_emb.shape[0], -1)
        return self.head.reward(prompt_emb.to(device, dtype), item_emb.to(device, dtype), w)

    @torch.no_grad()
    def reward(self, prompts: Any, responses: Any, batch_size: int | None = None) -> list[float]:
        """One scalar per (prompt, response); a single prompt is broadcast over the responses.
        ``batch_size`` bounds how many pairs are encoded and scored at once (default: all)."""
        from .embedding import encode_values

        prompts, responses = broadcast_inputs(prompts, responses)
        if not responses:
            return []
        step = int(batch_size) if batch_size else len(responses)
        if step < 1:
            raise PalMMError(f"batch_size must be >= 1, got {batch_size}")
        out: list[float] = []
        with self._eval_mode():
            for i in range(0, len(responses), step):
                p = encode_values(self.encoder, prompts[i : i + step], "prompt")
                x = encode_values(self.encoder, responses[i : i + step], "item")
                out += self.reward_embeddings(p, x).tolist()
        return out

    def forward(self, prompts: Any, responses: Any, batch_size: int | None = None) -> list[float]:
        """``model(prompts, responses)`` is :meth:`reward`."""
        return self.reward(prompts, responses, batch_size=batch_size)

    @torch.no_grad()
    def predict_preference(self, prompts: Any, responses_a: Any, responses_b: Any) -> list[float]:
        """P(a preferred to b) = sigmoid(r(a) - r(b))."""
        ra = torch.tensor(self.reward(prompts, responses_a))
        rb = torch.tensor(self.reward(prompts, responses_b))
        return torch.sigmoid(ra - rb).tolist()

    def score_pixels(self, prompts: str | Sequence[str], pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable reward of images given as a (B, 3, H, W) float tensor in [0, 1];
        gradients flow to ``pixels`` (see :func:`pal_mm.rlhf.score_pixels`)."""
        from .rlhf import score_pixels

        return score_pixels(self, prompts, pixels)

    # ----- save ------------------------------------------------------------------------------
    def write_files(self, directory: str | os.PathLike) -> None:
        """config.json, model.safetensors, README.md (+ encoder.safetensors when the encoder
        was fine-tuned) into an existing directory; see :meth:`save_pretrained` for atomicity."""
        from .model_card import personal_model_card

        directory = Path(directory)
        tensors = {HEAD_PREFIX + k: v.detach().cpu().clone().contiguous()
                   for k, v in self.head.state_dict().items() if k != "user_logits"}
        tensors[MIXTURE_KEY] = self.mixture_weights.detach().cpu().clone().contiguous()
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "pal_mm": __version__, "pal_mm_format": FORMAT})
        cfg = copy.deepcopy(self.export_config)
        cfg["pal_mm_version"] = __version__
        cfg["mixture"]["weights"] = self.mixture_weights.detach().cpu().tolist()
        if cfg["encoder"].get("fine_tuned"):
            enc = self._modules.get("encoder")
            if enc is not None:
                state = {k: v.detach().cpu().clone().contiguous() for k, v in enc.state_dict().items()}
                save_file(state, str(directory / ENCODER_WEIGHTS_NAME))
            elif self._encoder_state_file is not None and Path(self._encoder_state_file).is_file():
                shutil.copyfile(self._encoder_state_file, directory / ENCODER_WEIGHTS_NAME)
            else:
                raise PalMMError(f"the encoder was fine-tuned but its weights ({ENCODER_WEIGHTS_NAME}) are not available")
        (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        (directory / "README.md").write_text(personal_model_card(cfg, self.config))

    def _save_pretrained(self, save_directory: Path) -> None:  # PyTorchModelHubMixin hook
        self.write_files(save_directory)

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, repo_id: str | None = None,
                        config: dict | None = None, model_card_kwargs: dict | None = None, **push_to_hub_kwargs) -> str | None:
        """Write the model directory atomically (a temporary folder next to the target replaces
        it); with ``push_to_hub=True`` also upload it (``repo_id`` defaults to the folder name).
        ``config`` / ``model_card_kwargs`` are accepted for the mixin's API and ignored: the
        config and card are always generated from the model."""
        target = Path(save_directory)
        with output_dir(target) as tmp:
            self.write_files(tmp)
        if push_to_hub:
            return self.push_to_hub(repo_id or target.name, **push_to_hub_kwargs)
        return None

    # ----- load ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, encoder: Encoder | None = None,
                        device: str | torch.device | None = None, **hub_kwargs) -> "PersonalRewardModel":
        """Load an exported directory or a Hub repo id (``revision=``, ``token=``,
        ``cache_dir=``... go to huggingface_hub). ``encoder``: reuse an encoder instance
        instead of building it from the saved reference; ``device``: move the model there."""
        text = str(pretrained_model_name_or_path)
        path = Path(text).expanduser()
        if path.exists():
            if not path.is_dir():
                raise PalMMError(f"{text}: not a model directory")
            read_export_config(path)  # a clear error for a full PAL model or a foreign folder
            return super().from_pretrained(str(path), encoder=encoder, device=device, **hub_kwargs)
        if not _looks_like_repo_id(text):
            raise PalMMError(f"{text}: no such model directory")
        try:
            return super().from_pretrained(text, encoder=encoder, device=device, **hub_kwargs)
        except EncoderError:
            raise
        except Exception as e:  # network, auth, missing repo
            raise PalMMError(f"{text}: no such directory, and not loadable from the Hub ({type(e).__name__})") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None, force_download: bool = False,
                         local_files_only: bool = False, token=None, config: dict | None = None,
                         encoder: Encoder | None = None, device: str | torch.device | None = None,
                         **unused) -> "PersonalRewardModel":
        """PyTorchModelHubMixin hook: the files are read from a local folder or a Hub snapshot."""
        if os.path.isdir(model_id):
            directory = Path(model_id)
        else:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                               force_download=force_download, token=token, local_files_only=local_files_only))
        cfg = read_export_config(directory)
        model = cls(cfg)
        model._load_weights(directory / WEIGHTS_NAME)
        if cfg["encoder"].get("fine_tuned"):
            model._encoder_state_file = directory / ENCODER_WEIGHTS_NAME
            if not model._encoder_state_file.is_file():
                raise PalMMError(f"{directory}: missing file {ENCODER_WEIGHTS_NAME} (the encoder was fine-tuned)")
        if isinstance(encoder, Encoder):
            model.set_encoder(encoder)
        else:
            model.encoder  # noqa: B018  (build it now: errors and fingerprint warnings at load time)
        if device is not None:
            model.to(device)
        return model.eval()

    def _load_weights(self, file: Path) -> None:
        head_state = self.head.state_dict()
        expected = {HEAD_PREFIX + k: v for k, v in head_state.items() if k != "user_logits"}
        expected[MIXTURE_KEY] = self.mixture_weights
        tensors = _load_tensors(file, expected)
        state = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
        state["user_logits"] = head_state["user_logits"]
        self.head.load_state_dict(state)
        w = tensors[MIXTURE_KEY].float()
        if not torch.allclose(w, self.mixture_weights, atol=1e-6):
            raise PalMMError(f"{file}: mixture weights {w.tolist()} disagree with config.json {self.mixture_weights.tolist()}")
        with torch.no_grad():
            self.mixture_weights.copy_(w)


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
def _looks_like_repo_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text


def validate_config(config: dict) -> dict:
    """Check an exported config (a deep copy is returned)."""
    if not isinstance(config, dict) or config.get("pal_mm_format") != FORMAT:
        raise PalMMError("not an exported pal-mm reward model config (expected \"pal_mm_format\": \"personal-reward-model\")")
    cfg = copy.deepcopy(config)
    try:
        head = PALConfig.from_dict(cfg["head"])
        enc = cfg["encoder"]
        weights = [float(x) for x in cfg["mixture"]["weights"]]
        enc["name"]
    except (KeyError, TypeError, ValueError) as e:
        raise PalMMError(f"corrupt exported model config ({type(e).__name__}: {e})") from None
    if head.model_type != "single-rm":
        check_simplex(weights, head.k, "config.json mixture weights")
    elif len(weights) != head.k:
        raise PalMMError(f"config.json mixture weights: expected {head.k} entries, got {len(weights)}")
    if int(cfg.get("format_version", 1)) > FORMAT_VERSION:
        raise PalMMError(f"exported model format version {cfg['format_version']} is newer than this pal-mm "
                         f"({__version__}) understands ({FORMAT_VERSION}); upgrade pal-mm")
    return cfg


def read_export_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    cfg = read_config(directory, "model directory")
    if not isinstance(cfg, dict) or cfg.get("pal_mm_format") != FORMAT:
        hint = " (a full PAL model: load it with PALModel.from_pretrained, or export it with `pal-mm export`)" \
            if isinstance(cfg, dict) and "head" in cfg and (directory / USERS_NAME).is_file() else ""
        raise PalMMError(f"{directory}: not an exported pal-mm reward model{hint}")
    try:
        return validate_config(cfg)
    except PalMMError as e:
        raise PalMMError(f"{directory}: {e}") from None


def is_personal_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` (a local folder, or a Hub repo id) holds an exported reward model."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        file = p / CONFIG_NAME
    elif not p.exists() and _looks_like_repo_id(str(path)):
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(str(path), CONFIG_NAME))
        except Exception:
            return False
    else:
        return False
    try:
        cfg = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("pal_mm_format") == FORMAT


def build_config(head_config: PALConfig, encoder_ref: dict, weights: torch.Tensor, mixture: dict,
                 num_users: int, metrics: dict | None = None, data: dict | None = None, group: str | None = None) -> dict:
    # local file paths of the training run stay out of a file meant for the Hub
    data = {k: v for k, v in (data or {}).items() if not str(k).endswith(("_file", "_path", "_dir"))}
    source = {"num_users": int(num_users), "metrics": dict(metrics or {}), "data": data}
    if group is not None:
        source["user_group"] = group
    ref = dict(encoder_ref)
    for key, value in _modalities(ref["name"]).items():
        ref.setdefault(key, value)
    cfg = {
        "pal_mm_format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pal_mm_version": __version__,
        "head": head_config.to_dict(),
        "encoder": ref,
        "mixture": {**mixture, "weights": [float(x) for x in weights.tolist()]},
        "source_model": source,
    }
    return cfg


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def _read_pal_dir(directory: Path) -> dict:
    """A PAL model directory without building its encoder: config, users, the loaded head."""
    cfg = read_config(directory)
    if isinstance(cfg, dict) and cfg.get("pal_mm_format") == FORMAT:
        raise PalMMError(f"{directory}: already an exported one-user reward model ({describe_mixture(cfg.get('mixture', {}))}); "
                         "export from the full PAL model directory")
    try:
        head_cfg = PALConfig.from_dict(cfg["head"])
        enc_cfg = dict(cfg["encoder"])
        users_blob = json.loads((directory / USERS_NAME).read_text())
        users = [str(u) for u in users_blob["users"]]
    except FileNotFoundError as e:
        raise PalMMError(f"{directory}: missing file {Path(e.filename).name}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PalMMError(f"{directory}: corrupt model config ({type(e).__name__}: {e})") from None
    with torch.random.fork_rng(devices=[]):
        head = PALHead(head_cfg, num_users=len(users))
    head.load_state_dict(_load_tensors(directory / WEIGHTS_NAME, head.state_dict()))
    enc_file = directory / ENCODER_WEIGHTS_NAME if enc_cfg.get("fine_tuned") else None
    if enc_file is not None and not enc_file.is_file():
        raise PalMMError(f"{directory}: missing file {ENCODER_WEIGHTS_NAME} (the encoder was fine-tuned)")
    enc_ref = {"name": enc_cfg["name"], "config": enc_cfg.get("config", {}), "fingerprint": enc_cfg.get("fingerprint"),
               "fine_tuned": bool(enc_cfg.get("fine_tuned"))}
    return {"head_config": head_cfg, "head": head, "users": users, "groups": users_blob.get("groups", {}) or {},
            "encoder_ref": enc_ref, "encoder_file": enc_file, "metrics": cfg.get("metrics", {}), "data": cfg.get("data", {})}


def export_personal_model(source: PALModel | str | os.PathLike, *, user: str | None = None, weights=None, logits=None,
                          prototype: int | str | None = None) -> PersonalRewardModel:
    """Fix the mixture weight of a PAL model (an in-memory :class:`PALModel` or a model
    directory / Hub id) and return the one-user reward model. Give exactly one of ``user``,
    ``weights`` (K values on the simplex), ``logits`` (softmax-ed) or ``prototype`` (0-based);
    a single-rm model needs none. Exporting from a directory never loads the encoder."""
    if isinstance(source, PALModel):
        src = {"head_config": source.config, "head": source.head, "users": list(source.users),
               "groups": dict(source.user_groups), "encoder_ref": encoder_reference(source.encoder),
               "encoder_file": None, "metrics": source.metrics, "data": source.data_info}
        encoder = source.encoder
    else:
        src = _read_pal_dir(_resolve_model_dir(source))
        encoder = None
    head: PALHead = src["head"]
    w, mixture = resolve_mixture(head, src["users"], user=user, weights=weights, logits=logits, prototype=prototype)
    group = src["groups"].get(mixture.get("user")) if mixture.get("user") is not None else None
    cfg = build_config(src["head_config"], src["encoder_ref"], w, mixture, len(src["users"]), src["metrics"], src["data"], group)
    if src["head_config"].model_type == "pal-b":  # r = min(e^s, s_max) * cos: bounded by the scale
        scale = float(head.scale().detach())
        cfg["reward_range"] = [-scale, scale]
    model = PersonalRewardModel(cfg, encoder=encoder)
    state = {k: v for k, v in head.state_dict().items() if k != "user_logits"}
    state["user_logits"] = model.head.user_logits
    model.head.load_state_dict(state)
    with torch.no_grad():
        model.mixture_weights.copy_(w)
    model._encoder_state_file = src["encoder_file"]
    return model.eval()


def load_reward_model(path: str | os.PathLike, **kwargs):
    """A :class:`PersonalRewardModel` for an exported directory, else a :class:`PALModel`."""
    if is_personal_model_dir(path):
        return PersonalRewardModel.from_pretrained(path, **kwargs)
    return PALModel.from_pretrained(path, **kwargs)
