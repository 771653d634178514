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
numbers. It is saved and loaded like every pal-mm model (``pal_mm.hub``: checksums, atomic writes, Hub)::

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
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from encoders.base import Encoder
from encoders.errors import EncoderError
from encoders.pixels import check_pixels

from .beliefs import UserBeliefs
from .config import PALConfig
from .embedding import broadcast_inputs, encode_values
from .errors import PalMMError
from .heads import create_head
from .hub import (CONFIG_NAME, ENCODER_WEIGHTS_NAME, WEIGHTS_NAME, HubModel, encoder_from_reference, finite_float,
                  load_tensors, looks_like_repo_id, read_config, read_json, tensors_bytes, verify_files, write_model_files)
from .mixture import check_simplex, describe_mixture, resolve_mixture
from .model import PALModel, read_pal_dir
from .version import __version__

FORMAT = "personal-reward-model"
FORMAT_VERSION = 1
MIXTURE_KEY = "mixture_weights"
HEAD_PREFIX = "head."


def encoder_reference(encoder: Encoder, fine_tuned: bool | None = None) -> dict:
    return {"name": encoder.name, "config": encoder.config(), "fingerprint": encoder.fingerprint(),
            "fine_tuned": encoder.weights_changed if fine_tuned is None else bool(fine_tuned),
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
class PersonalRewardModel(HubModel, library_name="pal-mm", license="apache-2.0", repo_url="https://github.com/pal-mm/pal-mm",
                          tags=["reward-model", "personalized-alignment", "pal", "personal-reward-model"]):
    """One user's PAL reward model: ``model(prompts, responses) -> list[float]``.

    ``config`` is the content of ``config.json`` (see :func:`export_personal_model`); the encoder
    is built from its registry reference on first use unless one is passed.
    """

    def __init__(self, config: dict, encoder: Encoder | None = None):
        super().__init__()
        cfg = validate_config(config)
        self.export_config = cfg
        self.config = PALConfig.from_dict(cfg["head"])
        self.head = create_head(self.config, num_users=0)
        self.head.requires_grad_(False)  # an inference artifact; unfreeze explicitly to train it
        self.register_buffer(MIXTURE_KEY, torch.tensor(cfg["mixture"]["weights"], dtype=torch.float32))
        # the source model's beliefs about this one user (calibration, prior, the user's posterior); None
        # in exports made before pal-mm kept them
        self.beliefs: UserBeliefs | None = None
        self._encoder_state_file: Path | None = None
        self._trust_remote_code = False
        self._device: str | None = None
        self._dtype: str | None = None
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

    def _build_encoder(self) -> Encoder:
        ref = self.export_config["encoder"]
        enc = encoder_from_reference(ref, Path("<config>"), trust_remote_code=self._trust_remote_code, device=self._device,
                                     dtype=self._dtype)
        enc.bind_dims(self.config.prompt_dim, self.config.item_dim)
        if ref.get("fine_tuned"):
            if self._encoder_state_file is None or not Path(self._encoder_state_file).is_file():
                raise PalMMError(f"this model needs its fine-tuned encoder weights ({ENCODER_WEIGHTS_NAME}), which are missing")
            enc.load_state_dict(load_tensors(Path(self._encoder_state_file), enc.state_dict()))
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

    def reward_embeddings(self, prompt_emb: torch.Tensor, item_emb: torch.Tensor, user: str | None = None,
                          weights: Sequence[float] | None = None) -> torch.Tensor:
        """(b, dp), (b, di) encoder outputs -> (b,) rewards; differentiable (no no_grad). The mixture
        is fixed: ``user`` / ``weights`` (the multi-user model's arguments) are refused."""
        if user is not None or weights is not None:
            raise PalMMError(f"this reward model was exported for {self.describe()}; it takes no other user or weights")
        self.config.check_widths(prompt_emb, item_emb)
        device, dtype = self.mixture_weights.device, self.mixture_weights.dtype
        w = self.mixture_weights[None].expand(prompt_emb.shape[0], -1)
        return self.head.reward(prompt_emb.to(device, dtype), item_emb.to(device, dtype), w)

    @torch.no_grad()
    def reward(self, prompts: Any, responses: Any, batch_size: int | None = None) -> list[float]:
        """One scalar per (prompt, response); a single prompt is broadcast over the responses.
        ``batch_size`` bounds how many pairs are encoded and scored at once (default: all)."""
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
        """P(a preferred to b) = sigmoid(a * (r(a) - r(b))), ``a`` the source model's inverse temperature
        (:attr:`inv_temperature`; the point weights; ``as_pal_model(m).predict_preference(.., user=m.user)``
        also averages over the user's posterior)."""
        ra = torch.tensor(self.reward(prompts, responses_a), dtype=torch.float64)
        rb = torch.tensor(self.reward(prompts, responses_b), dtype=torch.float64)
        return torch.sigmoid(self.inv_temperature * (ra - rb)).tolist()

    @property
    def inv_temperature(self) -> float:
        """The calibration of the model this one was exported from (1.0 when it had none)."""
        return float(self.beliefs.inv_temperature) if self.beliefs is not None else 1.0

    def score_pixels(self, prompts: str | Sequence[str], pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable reward of images given as a (B, 3, H, W) float tensor in [0, 1];
        gradients flow to ``pixels`` (see :func:`score_pixels`)."""
        return score_pixels(self, prompts, pixels)

    # ----- save / load ------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: model.safetensors (+ encoder.safetensors when the encoder was
        fine-tuned), then config.json with their checksums."""
        tensors = {HEAD_PREFIX + k: v for k, v in self.head.state_dict().items() if k != "user_logits"}
        tensors[MIXTURE_KEY] = self.mixture_weights
        cfg = copy.deepcopy(self.export_config)
        cfg.pop("beliefs", None)
        if self.beliefs is not None:
            tensors.update(self.beliefs.tensors())
            cfg["beliefs"] = self.beliefs.summary()
        files = {WEIGHTS_NAME: tensors_bytes(tensors)}
        cfg.pop("files", None)
        cfg.pop("hub_config", None)
        cfg["pal_mm_version"] = __version__
        cfg["mixture"]["weights"] = self.mixture_weights.detach().cpu().tolist()
        if cfg["encoder"].get("fine_tuned"):
            enc = self._modules.get("encoder")
            if enc is not None:
                files[ENCODER_WEIGHTS_NAME] = tensors_bytes(enc.state_dict())
            elif self._encoder_state_file is not None and Path(self._encoder_state_file).is_file():
                files[ENCODER_WEIGHTS_NAME] = Path(self._encoder_state_file).read_bytes()
            else:
                raise PalMMError(f"the encoder was fine-tuned but its weights ({ENCODER_WEIGHTS_NAME}) are not available")
        write_model_files(Path(save_directory), {**cfg, **self._hub_config()}, files)

    def generate_model_card(self, **kwargs):
        from .model_card import personal_model_card

        return personal_model_card(self.export_config, self.config, **kwargs)

    @classmethod
    def _load_dir(cls, directory: Path, encoder: Encoder | None = None, trust_remote_code: bool = False,
                  device: str | None = None, dtype: str | None = None) -> "PersonalRewardModel":
        cfg = read_export_config(directory)
        verify_files(directory, cfg)
        model = cls(cfg)
        model._trust_remote_code, model._device, model._dtype = bool(trust_remote_code), device, dtype
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
        summary = self.export_config.get("beliefs")
        if summary is not None:
            expected.update(UserBeliefs.expected(summary, 1))
        tensors = load_tensors(file, expected)
        self.beliefs = UserBeliefs.from_tensors(tensors, str(file)) if summary is not None else None
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
def validate_config(config: dict) -> dict:
    """Check an exported config (a deep copy is returned)."""
    if not isinstance(config, dict) or config.get("pal_mm_format") != FORMAT:
        raise PalMMError("not an exported pal-mm reward model config (expected \"pal_mm_format\": \"personal-reward-model\")")
    cfg = copy.deepcopy(config)
    try:
        head = PALConfig.from_dict(cfg["head"])
        enc = cfg["encoder"]
        weights = cfg["mixture"]["weights"]
        if not isinstance(enc, dict) or not isinstance(enc["name"], str) or not isinstance(weights, list):
            raise TypeError("encoder must be an object with a name, mixture weights a list")
    except (KeyError, TypeError, ValueError) as e:
        raise PalMMError(f"corrupt exported model config ({type(e).__name__}: {e})") from None
    if not all(finite_float(x) for x in weights):
        raise PalMMError("config.json mixture weights must be finite numbers")
    if "beliefs" in cfg and not isinstance(cfg["beliefs"], dict):
        raise PalMMError("corrupt exported model config ('beliefs' must be an object)")
    if _head_has_users(head) and _head_simplex(head):
        check_simplex(weights, head.k, "config.json mixture weights")
    elif _head_has_users(head):  # a latent user state (vpl): any finite vector
        if not weights:
            raise PalMMError("config.json mixture weights: expected the user's state, got an empty list")
    elif len(weights) != head.k:
        raise PalMMError(f"config.json mixture weights: expected {head.k} entries, got {len(weights)}")
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PalMMError(f"exported model format version {version!r} is newer than this pal-mm "
                         f"({__version__}) understands ({FORMAT_VERSION}); upgrade pal-mm")
    return cfg


def _head_has_users(head: PALConfig) -> bool:
    from .heads import get_head_class

    return get_head_class(head.model_type).has_user_state


def _head_simplex(head: PALConfig) -> bool:
    from .heads import get_head_class

    return get_head_class(head.model_type).simplex_users


def read_export_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    cfg = read_config(directory, kind="pal-mm reward model directory")
    if cfg.get("pal_mm_format") != FORMAT:
        hint = " (a full PAL model: load it with PALModel.from_pretrained, or export it with `pal-mm export`)" \
            if "head" in cfg and (directory / "users.json").is_file() else ""
        raise PalMMError(f"{directory}: not an exported pal-mm reward model{hint}")
    try:
        return validate_config(cfg)
    except PalMMError as e:
        raise PalMMError(f"{directory}: {e}") from None


def is_personal_model_dir(path: str | os.PathLike, **hub_kwargs) -> bool:
    """True when ``path`` (a local folder, or a Hub repo id) holds an exported reward model;
    ``hub_kwargs`` (``revision``, ``token``, ``cache_dir``...) go to ``hf_hub_download``."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        file = p / CONFIG_NAME
    elif not p.exists() and looks_like_repo_id(str(path)):
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(str(path), CONFIG_NAME, **hub_kwargs))
        except Exception:
            return False
    else:
        return False
    try:
        cfg = read_json(file)
    except PalMMError:
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
    return {
        "pal_mm_format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pal_mm_version": __version__,
        "head": head_config.to_dict(),
        "encoder": ref,
        "mixture": {**mixture, "weights": [float(x) for x in weights.tolist()]},
        "source_model": source,
    }


# ------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------
def export_personal_model(source: PALModel | str | os.PathLike, *, user: str | None = None, weights=None, logits=None,
                          prototype: int | str | None = None) -> PersonalRewardModel:
    """Fix the mixture weight of a PAL model (an in-memory :class:`PALModel` or a model
    directory / Hub id) and return the one-user reward model. Give exactly one of ``user``,
    ``weights`` (K values on the simplex), ``logits`` (softmax-ed) or ``prototype`` (0-based);
    a single-rm model needs none. Exporting from a directory never loads the encoder."""
    if isinstance(source, PALModel):
        head_config, head, users, groups = source.config, source.head, list(source.users), dict(source.user_groups)
        enc_ref, enc_file, metrics, data = encoder_reference(source.encoder), None, source.metrics, source.data_info
        encoder, beliefs = source.encoder, source.beliefs
    else:
        saved = read_pal_dir(_model_directory(source))
        head_config, head, users, groups = saved.head_config, saved.head, saved.users, saved.groups
        ref = saved.encoder_ref
        enc_ref = {"name": ref["name"], "config": ref.get("config") or {}, "fingerprint": ref.get("fingerprint"),
                   "fine_tuned": bool(ref.get("fine_tuned"))}
        enc_file, metrics, data, encoder, beliefs = saved.encoder_file, saved.metrics, saved.data_info, None, saved.beliefs
    w, mixture = resolve_mixture(head, users, user=user, weights=weights, logits=logits, prototype=prototype)
    group = groups.get(mixture.get("user")) if mixture.get("user") is not None else None
    cfg = build_config(head_config, enc_ref, w, mixture, len(users), metrics, data, group)
    bounds = head.reward_range()
    if bounds is not None:
        cfg["reward_range"] = list(bounds)
    model = PersonalRewardModel(cfg, encoder=encoder)
    state = {k: v for k, v in head.state_dict().items() if k != "user_logits"}
    state["user_logits"] = model.head.user_logits
    model.head.load_state_dict(state)
    with torch.no_grad():
        model.mixture_weights.copy_(w)
    model._encoder_state_file = enc_file
    model.beliefs = one_user_beliefs(beliefs, users.index(mixture["user"]) if mixture.get("user") is not None else None)
    return model.eval()


def one_user_beliefs(beliefs: UserBeliefs | None, index: int | None) -> UserBeliefs | None:
    """What an exported model keeps of its source's beliefs: the calibration, the prior over users (so
    new users adapted on it get the same MAP fit) and one posterior precision (1, S, S): the exported
    user's, or for explicit weights / a prototype a point (precision 1e6 I: the weights are given, not
    estimated)."""
    if beliefs is None or not beliefs.has_prior:
        return None if beliefs is None else UserBeliefs(inv_temperature=beliefs.inv_temperature, strength=beliefs.strength)
    s = beliefs.prior_precision.shape[0]
    precision = beliefs.precision[index:index + 1] if index is not None else 1e6 * torch.eye(s)[None]
    return UserBeliefs(beliefs.inv_temperature, beliefs.prior_means, beliefs.prior_log_weights, beliefs.prior_precision,
                       beliefs.strength, precision.clone())


def _model_directory(source: str | os.PathLike) -> Path:
    p = Path(str(source)).expanduser()
    if p.is_dir():
        return p
    if not p.exists() and looks_like_repo_id(str(source)):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(source)))
        except Exception as e:
            raise PalMMError(f"{source}: no such directory, and not downloadable from the Hub ({type(e).__name__})") from None
    raise PalMMError(f"{source}: no such model directory")


def load_reward_model(path: str | os.PathLike, **kwargs):
    """A :class:`PersonalRewardModel` for an exported directory, else a :class:`PALModel`
    (``kwargs``: those of ``from_pretrained``, e.g. ``revision=``, ``token=``, ``device=``)."""
    hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if kwargs.get(k) is not None}
    if is_personal_model_dir(path, **hub):
        return PersonalRewardModel.from_pretrained(path, **kwargs)
    return PALModel.from_pretrained(path, **kwargs)


def fixed_logits(model: PersonalRewardModel) -> torch.Tensor:
    """(K,) user-table logits whose weights are the exported mixture: the saved logits when it was
    exported from a user or from logits (the same numbers, so the same weights bit for bit); else
    ``log w`` (``-1e4`` for a zero weight, whose softmax is exactly 0) for simplex heads, ``w``
    itself for heads whose rows are not logits."""
    saved = model.mixture.get("logits")
    if saved is not None and len(saved) == model.config.k:
        return torch.tensor(saved, dtype=torch.float32)
    w = model.mixture_weights.detach().float().cpu()
    if not model.head.simplex_users:
        return w.clone()
    return torch.where(w > 0, w.clamp_min(1e-38).log(), torch.full_like(w, -1e4))


def as_pal_model(model: PersonalRewardModel, users: Sequence[str] | None = None) -> PALModel:
    """The multi-user form of an exported one-user model: the same head (all K prototypes), the same
    encoder, and a user table in which every user of ``users`` has the exported mixture (default:
    the user it was exported for, if any). Each of them gets the exported model's rewards, so commands
    written for a :class:`PALModel` (``eval``, ``adapt``, ``score-images``, ``generate``) take exported
    models too; ``adapt`` adds new users on its prototypes."""
    if not isinstance(model, PersonalRewardModel):
        raise PalMMError(f"expected a PersonalRewardModel, got {type(model).__name__}")
    users = [model.user] if users is None and model.user is not None else [str(u) for u in users or []]
    source = model.export_config.get("source_model") or {}
    group = source.get("user_group")
    pal = PALModel(copy.deepcopy(model.config), model.encoder, users=users,
                   user_groups={model.user: group} if group and model.user in users else {})
    state = {k: v for k, v in model.head.state_dict().items() if k != "user_logits"}
    state["user_logits"] = fixed_logits(model)[None].expand(len(users), -1).clone()
    pal.head.load_state_dict(state)
    pal.head.to(model.mixture_weights.device)
    b = model.beliefs
    if b is not None:  # every user of the table holds the exported user's beliefs
        pal.beliefs = UserBeliefs(b.inv_temperature, b.prior_means, b.prior_log_weights, b.prior_precision, b.strength,
                                  None if b.precision is None else b.precision.expand(len(users), -1, -1).clone())
    pal.metrics = dict(source.get("metrics") or {})
    pal.data_info = {**dict(source.get("data") or {}), "exported_mixture": model.describe()}
    return pal.eval()


# ------------------------------------------------------------------------------------------
# Differentiable image scores
# ------------------------------------------------------------------------------------------
def score_pixels(model, prompts: str | Sequence[str], pixels: torch.Tensor, user: str | None = None,
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Differentiable rewards (B,) of images ``pixels`` (B, 3, H, W) in [0, 1] for the prompt(s)
    (one string, or one per image). ``model``: a :class:`PersonalRewardModel`, or a
    :class:`PALModel` with ``user`` / ``weights``. The model's parameters are not trained; the
    gradient reaches ``pixels`` (and whatever produced them)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_reward_model(model)
    try:
        pixels = check_pixels(pixels)
    except EncoderError as e:  # pal_mm's API raises its own error type
        raise PalMMError(str(e)) from None
    n = pixels.shape[0]
    if isinstance(prompts, str):
        prompts = [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise PalMMError(f"got {len(prompts)} prompts for {n} images")
    enc = model.encoder
    if enc.item_modality != "image":
        raise PalMMError(f"encoder {enc.name!r} scores {enc.item_modality} items, not images")
    was = model.training
    model.eval()
    try:
        p = encode_values(enc, prompts, "prompt").clone()  # no gradient needed on the text side
        x = enc.encode_pixels(pixels).float()
        return model.reward_embeddings(p, x, user=user, weights=weights)
    finally:
        model.train(was)


__all__ = ["PersonalRewardModel", "as_pal_model", "score_pixels", "build_config", "encoder_reference", "export_personal_model",
           "fixed_logits", "is_personal_model_dir", "load_reward_model", "read_export_config", "validate_config"]
