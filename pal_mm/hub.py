"""One save/load path for every pal-mm model directory, on ``huggingface_hub``'s ``ModelHubMixin``.

A model directory (local, or a Hub repo) holds::

    config.json          what the model is ("pal_mm_format"), its head, its encoder reference, and the
                         sha256 of every other file ("files")
    model.safetensors    the head's tensors (and, per format, user table / fixed mixture weights)
    users.json           known users and their groups (full PAL models)
    encoder.safetensors  the encoder's weights, only when they were fine-tuned
    README.md            the model card (``huggingface_hub.ModelCard``)

A model directory is untrusted input. Loading verifies the checksums, refuses non-finite tensors,
tensors whose names or shapes disagree with the config, and JSON with duplicate keys or NaN; every
failure is one :class:`~pal_mm.errors.PalMMError` line. Nothing read from a directory can enable code
execution: ``trust_remote_code`` comes only from the caller (see :func:`encoder_from_reference`).
Saving is atomic (a temporary folder replaces the target) and byte-reproducible (no timestamps,
one metadata key in safetensors headers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from encoders.atomic import output_dir, write_bytes, write_text
from encoders.errors import EncoderError

from .errors import PalMMError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_WEIGHTS_NAME = "encoder.safetensors"
USERS_NAME = "users.json"
CARD_NAME = "README.md"
#: encoder options that may run code: never taken from a saved config, only from the caller
UNSAFE_ENCODER_KEYS = ("trust_remote_code",)


class HubModel(nn.Module, ModelHubMixin):
    """Base of :class:`~pal_mm.model.PALModel` and :class:`~pal_mm.export.PersonalRewardModel`.

    Subclasses implement :meth:`_save_pretrained` (write the files into a folder, ``config.json``
    last, via :func:`write_model_files`), :meth:`_load_dir` (build the model from a verified folder)
    and :meth:`generate_model_card`. ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` are
    the mixin's, with atomic writes and one-line errors."""

    def write_files(self, directory: str | os.PathLike, *, config: dict | None = None,
                    model_card_kwargs: dict | None = None) -> None:
        """Write the model files into an existing folder (not atomic: see :meth:`save_pretrained`).
        ``config``: extra JSON-able metadata kept under ``"hub_config"`` in config.json."""
        directory = Path(directory)
        self._pending_hub_config = config
        try:
            self._save_pretrained(directory)
        finally:
            self._pending_hub_config = None
        write_text(directory / CARD_NAME, str(self.generate_model_card(**(model_card_kwargs or {}))))

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: dict | None = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict | None = None, **push_to_hub_kwargs) -> str | None:
        """Write the model directory atomically; with ``push_to_hub=True`` also upload it
        (``repo_id`` defaults to the folder name; other keywords go to :meth:`push_to_hub`)."""
        target = Path(save_directory)
        with output_dir(target) as tmp:
            self.write_files(tmp, config=config, model_card_kwargs=model_card_kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id or target.name, config=config, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                        force_download: bool = False, local_files_only: bool = False, **model_kwargs):
        """Load a model directory or a Hub repo id (``revision``, ``token``, ``cache_dir`` go to
        huggingface_hub). ``model_kwargs`` go to the subclass (``encoder=``, ``trust_remote_code=``,
        ``device=``)."""
        text = str(pretrained_model_name_or_path)
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise PalMMError(f"{text}: not a model directory")
        if not path.exists() and not looks_like_repo_id(text):
            raise PalMMError(f"{text}: no such model directory")
        try:
            return cls._from_pretrained(model_id=str(path) if path.exists() else text, revision=revision, cache_dir=cache_dir,
                                        force_download=force_download, local_files_only=local_files_only, token=token,
                                        **model_kwargs)
        except EncoderError:
            raise
        except (OSError, ValueError) as e:  # network, auth, missing repo, unreadable files
            raise PalMMError(f"{text}: could not load ({type(e).__name__}: {first_line(e)})") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False, local_files_only=False,
                         token=None, config=None, **model_kwargs):
        """The mixin's hook: a local folder, or a snapshot of the Hub repo."""
        if os.path.isdir(model_id):
            directory = Path(model_id)
        else:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir, token=token,
                                               force_download=force_download, local_files_only=local_files_only))
        return cls._load_dir(directory, **model_kwargs)

    @classmethod
    def _load_dir(cls, directory: Path, **kwargs):
        raise NotImplementedError

    def _hub_config(self) -> dict:
        """Extra metadata passed as ``save_pretrained(config=...)``, stored in config.json."""
        cfg = getattr(self, "_pending_hub_config", None)
        if cfg is None:
            return {}
        if not isinstance(cfg, dict):
            raise PalMMError(f"config must be a dict of JSON values, got {type(cfg).__name__}")
        return {"hub_config": json.loads(strict_dumps(cfg))}


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def tensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of CPU copies; one metadata key, so equal tensors give equal bytes."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


def strict_dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON that every parser accepts: no NaN or infinity (``allow_nan=False`` raises a one-line error)."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        raise PalMMError("refusing to write NaN or infinity into a JSON file") from None


def write_model_files(directory: Path, config: dict, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes), then ``config.json`` with their sha256 under ``"files"``."""
    for name, blob in files.items():
        write_bytes(directory / name, blob)
    config = {**config, "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in sorted(files.items())}}
    write_text(directory / CONFIG_NAME, strict_dumps(config) + "\n")


# ------------------------------------------------------------------------------------------
# Reading (untrusted)
# ------------------------------------------------------------------------------------------
def read_json(file: Path) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; one-line errors naming the file."""

    def pairs(items):
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise PalMMError(f"{file}: duplicate key {dup!r}")
        return dict(items)

    def no_constants(name):
        raise PalMMError(f"{file}: non-standard JSON value {name}")

    try:
        return json.loads(file.read_bytes().decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constants)
    except FileNotFoundError:
        raise PalMMError(f"{file.parent}: missing file {file.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise PalMMError(f"{file}: corrupt ({type(e).__name__}: {first_line(e)})") from None


def read_config(directory: Path, kind: str = "pal-mm model directory") -> dict:
    """The parsed ``config.json`` of a model directory, or a one-line error naming the file."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise PalMMError(f"{directory}: not a {kind} (no {CONFIG_NAME})")
    cfg = read_json(file)
    if not isinstance(cfg, dict):
        raise PalMMError(f"{file}: corrupt model config (expected a JSON object)")
    return cfg


def verify_files(directory: Path, config: dict) -> None:
    """Check every file listed under ``config["files"]`` against its sha256 (older directories
    without checksums load with a warning)."""
    files = config.get("files")
    if files is None:
        warnings.warn(f"{directory}: saved without checksums (an older pal-mm); its files cannot be verified", stacklevel=3)
        return
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise PalMMError(f"{directory / CONFIG_NAME}: corrupt 'files' entry")
    for name, expected in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise PalMMError(f"{directory / CONFIG_NAME}: bad file name {name!r} under 'files'")
        file = directory / name
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise PalMMError(f"{directory}: missing file {name}") from None
        except OSError as e:
            raise PalMMError(f"{file}: unreadable ({type(e).__name__})") from None
        if digest != expected:
            raise PalMMError(f"{file}: checksum mismatch (the file was modified or is corrupt)")


def load_tensors(file: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A safetensors file checked against the expected names, shapes and dtypes; all values finite."""
    try:
        tensors = st_load(file.read_bytes())
    except FileNotFoundError:
        raise PalMMError(f"{file}: missing weights file") from None
    except Exception as e:  # safetensors raises its own error types on garbage
        raise PalMMError(f"{file}: corrupt weights file ({type(e).__name__}: {first_line(e)})") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise PalMMError(f"{file}: weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in expected.items():
        t = tensors[k]
        if t.shape != v.shape:
            raise PalMMError(f"{file}: tensor {k} has shape {tuple(t.shape)}, config expects {tuple(v.shape)}")
        if t.dtype != v.dtype:
            raise PalMMError(f"{file}: tensor {k} has dtype {t.dtype}, expected {v.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise PalMMError(f"{file}: tensor {k} holds NaN or infinite values")
    return tensors


def read_users(directory: Path, num_users: Any) -> tuple[list[str], dict[str, str]]:
    """``users.json``: unique string ids (as many as config.json says) and a group per user."""
    blob = read_json(directory / USERS_NAME)
    if not isinstance(blob, dict) or not isinstance(blob.get("users"), list):
        raise PalMMError(f"{directory / USERS_NAME}: corrupt (expected {{\"users\": [...], \"groups\": {{...}}}})")
    users, groups = blob["users"], blob.get("groups") or {}
    if not all(isinstance(u, str) for u in users):
        raise PalMMError(f"{directory / USERS_NAME}: user ids must be strings")
    seen: set[str] = set()
    dup = next((u for u in users if u in seen or seen.add(u)), None)
    if dup is not None:
        raise PalMMError(f"{directory / USERS_NAME}: duplicate user id {dup!r}")
    if not isinstance(groups, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in groups.items()):
        raise PalMMError(f"{directory / USERS_NAME}: 'groups' must map user ids to group names")
    if isinstance(num_users, bool) or not isinstance(num_users, int) or num_users != len(users):
        raise PalMMError(f"{directory}: config.json says {num_users!r} users, users.json holds {len(users)}")
    return users, groups


def encoder_from_reference(ref: Any, where: Path, trust_remote_code: bool = False, device: str | None = None,
                           dtype: str | None = None):
    """Build the encoder a saved config names. The saved options are data: keys that could run code
    are dropped (code execution comes only from the caller's ``trust_remote_code``); ``device`` /
    ``dtype`` are the caller's overrides."""
    from encoders import encoder_from_config

    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        raise PalMMError(f"{where}: corrupt encoder reference in {CONFIG_NAME}")
    options = ref.get("config") or {}
    if not isinstance(options, dict):
        raise PalMMError(f"{where}: corrupt encoder options in {CONFIG_NAME}")
    options = {k: v for k, v in options.items() if k not in UNSAFE_ENCODER_KEYS}
    overrides = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return encoder_from_config(ref["name"], options, trust_remote_code=bool(trust_remote_code), **overrides)


# ------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------
def looks_like_repo_id(text: str) -> bool:
    """``org/name`` (a Hub repo id), not a local path."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text and not text.endswith("/")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def finite_float(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
