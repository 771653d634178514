"""Training checkpoints: what a killed run needs to continue from its last completed epoch and end with
the same model as an uninterrupted run (same machine).

A checkpoint directory holds two files, safetensors + JSON, no pickle::

    checkpoint-<n>.safetensors   tensors: model state, best-epoch state, optimiser state, RNG states
    checkpoint.json              everything else (epoch, history, counters, optimiser settings, the
                                 Python/NumPy RNG states) and the sha256 of the tensors file it belongs to

The tensors file gets a new name at every save and the JSON is written last (both atomically), so a
kill at any moment leaves the previous checkpoint intact; a damaged one is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from encoders.atomic import write_bytes, write_json

from .errors import PalMMError

FORMAT = "pal-mm-checkpoint-1"
JSON_NAME = "checkpoint.json"


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` and the JSON-able ``state`` as the directory's current checkpoint."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    previous = _read_json(d)
    n = int(previous.get("serial", 0)) + 1 if previous else 1
    name = f"checkpoint-{n}.safetensors"
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
    write_bytes(d / name, blob, fsync=True)
    write_json(d / JSON_NAME, {"format": FORMAT, "serial": n, "tensors": name,
                               "tensors_sha256": hashlib.sha256(blob).hexdigest(), "state": state})
    if previous and previous.get("tensors") != name:
        (d / str(previous["tensors"])).unlink(missing_ok=True)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(tensors, state)`` of the directory's checkpoint, or None when it has none."""
    d = Path(directory)
    meta = _read_json(d)
    if not meta:
        return None
    file = d / str(meta.get("tensors", ""))
    try:
        blob = file.read_bytes()
    except OSError:
        raise PalMMError(f"{d}: checkpoint is incomplete ({file.name} missing); start again without --resume") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise PalMMError(f"{file}: checkpoint checksum mismatch (corrupt); start again without --resume")
    try:
        tensors = st_load(blob)
    except Exception as e:
        raise PalMMError(f"{file}: unreadable checkpoint ({type(e).__name__})") from None
    return tensors, meta["state"]


def _read_json(d: Path) -> dict:
    f = d / JSON_NAME
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PalMMError(f"{f}: corrupt checkpoint ({type(e).__name__}); start again without --resume") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("state"), dict):
        raise PalMMError(f"{f}: not a pal-mm training checkpoint")
    return meta


# ----- optimiser ------------------------------------------------------------------------------
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimiser's per-parameter state as tensors ``optim.<param>.<key>`` and its groups as JSON."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"optim.{pid}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(groups) or any(len(a["params"]) != len(b["params"]) for a, b in zip(current, groups)):
        raise PalMMError("the checkpoint's optimiser does not match this run; start again without --resume")
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----- random number generators ---------------------------------------------------------------
def rng_tensors(loader_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU, CUDA), batch-order, Python and NumPy RNG states."""
    tensors = {"rng.torch": torch.get_rng_state(), "rng.loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    extra = {"python": _jsonable(random.getstate()),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, extra


def restore_rng(loader_generator: torch.Generator, tensors: dict[str, torch.Tensor], extra: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    loader_generator.set_state(tensors["rng.loader"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    random.setstate(_tupled(extra["python"]))
    name, keys, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
