"""The config.json of an exported one-user reward model (:mod:`pal_mm.export`): its format, how it
is built from a PAL model's parts, and the checks every load runs on it (an untrusted file)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from encoders.base import Encoder
from encoders.errors import EncoderError

from .config import PALConfig
from .errors import PalMMError
from .heads import get_head_class
from .hub import CONFIG_NAME, finite_float, looks_like_repo_id, read_config, read_json
from .mixture import check_simplex
from .version import __version__

FORMAT = "personal-reward-model"
FORMAT_VERSION = 1


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
    head_class = get_head_class(head.model_type)
    if head_class.has_user_state and head_class.simplex_users:
        check_simplex(weights, head.k, "config.json mixture weights")
    elif head_class.has_user_state:  # a latent user state (vpl): any finite vector
        if not weights:
            raise PalMMError("config.json mixture weights: expected the user's state, got an empty list")
    elif len(weights) != head.k:
        raise PalMMError(f"config.json mixture weights: expected {head.k} entries, got {len(weights)}")
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PalMMError(f"exported model format version {version!r} is newer than this pal-mm "
                         f"({__version__}) understands ({FORMAT_VERSION}); upgrade pal-mm")
    return cfg


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
