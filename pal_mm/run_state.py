"""What one training run keeps between epochs: the best epoch so far (early stopping on the
validation loss), CPU snapshots of the model state, and the fingerprint a checkpoint must match."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Callable

import torch

from encoders.base import Encoder

from .config import PALConfig, TrainConfig
from .embedding import EncodedPairs
from .model import PALModel


class BestEpoch:
    """Tracks the epoch with the lowest validation loss (its state is kept) and says when
    ``patience`` epochs without improvement have passed (``patience=0``: never). Epoch 0 (the
    starting point, when it is evaluated: a model split from K = 1) is a candidate too."""

    def __init__(self, patience: int):
        self.patience = patience
        self.val_loss = float("inf")
        self.val_accuracy: float | None = None
        self.epoch = 0
        self.state: dict | None = None
        self.bad_epochs = 0

    def update(self, record: dict, snapshot: Callable[[], dict]) -> bool:
        """Take one epoch's record; ``snapshot()`` is called when it is the best so far. Returns
        True when training should stop."""
        if "val_loss" not in record:
            return False
        if record["val_loss"] < self.val_loss - 1e-6:
            self.val_loss, self.epoch, self.state, self.bad_epochs = record["val_loss"], record["epoch"], snapshot(), 0
            self.val_accuracy = record.get("val_accuracy")
            return False
        self.bad_epochs += 1
        return bool(self.patience) and self.bad_epochs >= self.patience

    def revert(self, record: dict, state: dict) -> None:
        """Make ``record`` (an earlier epoch, e.g. epoch 0) the best one, with its ``state``."""
        self.val_loss, self.val_accuracy, self.epoch, self.state = record["val_loss"], record.get("val_accuracy"), record["epoch"], state

    def metrics(self, history: list[dict]) -> dict:
        """``best_epoch``, ``epochs_run`` (epochs trained) and, with validation data, the best val loss/accuracy."""
        run = int(history[-1]["epoch"]) if history else 0
        out = {"best_epoch": self.epoch if self.state is not None else run, "epochs_run": run}
        if self.state is not None:
            out.update(val_loss=round(self.val_loss, 6), val_accuracy=round(self.val_accuracy, 6))
        return out

    def to_json(self) -> dict:
        return {"val_loss": self.val_loss, "val_accuracy": self.val_accuracy, "epoch": self.epoch,
                "bad_epochs": self.bad_epochs, "has_state": self.state is not None}

    def load(self, blob: dict, state: dict | None) -> None:
        self.val_loss, self.epoch, self.bad_epochs = float(blob["val_loss"]), int(blob["epoch"]), int(blob["bad_epochs"])
        self.val_accuracy = blob.get("val_accuracy")
        self.state = state


def model_state(model: PALModel) -> dict[str, torch.Tensor]:
    """Head state plus the trainable encoder tensors (CPU copies) for best-epoch restore and checkpoints."""
    state = {f"head.{k}": v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    for k, p in model.encoder.named_parameters():
        if p.requires_grad:
            state[f"encoder.{k}"] = p.detach().cpu().clone()
    return state


def load_model_state(model: PALModel, state: dict[str, torch.Tensor]) -> None:
    model.head.load_state_dict(prefixed(state, "head."))
    enc = prefixed(state, "encoder.")
    if enc:
        params = dict(model.encoder.named_parameters())
        with torch.no_grad():
            for k, v in enc.items():
                params[k].copy_(v)


def prefix(state: dict, pre: str) -> dict:
    return {pre + k: v for k, v in state.items()}


def prefixed(state: dict, pre: str) -> dict:
    return {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}


def run_fingerprint(train: EncodedPairs, val: EncodedPairs | None, config: PALConfig, tc: TrainConfig, encoder: Encoder) -> str:
    """What a checkpoint must match to be resumed: data, settings and encoder."""
    h = hashlib.sha256()
    for pairs in (train, val):
        if pairs is not None:
            for t in (pairs.prompt, pairs.chosen, pairs.rejected):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update("\0".join(pairs.user_ids).encode())
    settings = {k: v for k, v in asdict(tc).items() if k not in ("progress", "report_to")}
    h.update(json.dumps([config.to_dict(), settings, encoder.fingerprint()], sort_keys=True, default=str).encode())
    return h.hexdigest()
