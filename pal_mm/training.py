"""Training PAL on seen users: AdamW with per-group learning rates, early stopping on the
validation loss (never the test set), accelerate for device / mixed precision / multi-GPU.

The loop, in one look::

    encode train/val once  ->  build model, fit input normalisers on train embeddings
    for epoch:  for batch:  loss(margin(chosen, rejected))  ->  backward  ->  step
                evaluate val loss/accuracy  ->  keep the best state  ->  stop after `patience`
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoders.base import Encoder

from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .errors import PalMMError
from .config import PALConfig, TrainConfig
from .model import PALModel
from .tracking import make_trackers


def optimizer_groups(model: PALModel, tc: TrainConfig) -> list[dict]:
    lrs = {"projector_f": tc.lr_projector, "projectors_gk": tc.lr_projector, "P": tc.lr_prototypes,
           "W": tc.lr_users, "logit_scale": tc.lr_logit_scale}
    groups = []
    for name, params in model.head.param_groups().items():
        params = [p for p in params if p.requires_grad]
        if params:
            wd = tc.weight_decay if name.startswith("projector") else 0.0
            groups.append({"params": params, "lr": lrs[name], "weight_decay": wd, "name": name})
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": tc.lr_encoder, "weight_decay": 0.0, "name": "encoder"})
    return groups


def build_model(train: EncodedPairs, encoder: Encoder, config: PALConfig, user_groups: dict | None = None) -> PALModel:
    """A fresh model sized from the training embeddings, normalisers fitted on them."""
    config.prompt_dim = train.prompt.shape[1]
    config.item_dim = train.chosen.shape[1]
    users = list(dict.fromkeys(train.user_ids))
    model = PALModel(config, encoder, users, user_groups)
    model.head.fit_normalizers(train.prompt, torch.cat([train.chosen, train.rejected]))
    return model


@torch.no_grad()
def pair_rewards(model: PALModel, pairs: EncodedPairs, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,), (n,) rewards of the chosen and of the rejected items, for known users, in eval mode."""
    head = model.head
    was_training = head.training
    head.eval()
    idx = model.user_index(pairs.user_ids)
    device = next(head.parameters()).device
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        sl = slice(s, s + batch_size)
        prompt = pairs.prompt[sl].to(device)
        ideal = head.ideal_point(prompt, head.user_weights(idx[sl].to(device)))
        chosen.append(head.score(ideal, head.item_embedding(prompt, pairs.chosen[sl].to(device))).float().cpu())
        rejected.append(head.score(ideal, head.item_embedding(prompt, pairs.rejected[sl].to(device))).float().cpu())
    head.train(was_training)
    empty = torch.zeros(0)
    return (torch.cat(chosen) if chosen else empty), (torch.cat(rejected) if rejected else empty)


def pair_margins(model: PALModel, pairs: EncodedPairs, batch_size: int = 4096) -> torch.Tensor:
    """(n,) margins reward(chosen) - reward(rejected); exactly 0 means a tie."""
    chosen, rejected = pair_rewards(model, pairs, batch_size)
    return chosen - rejected


def validation_metrics(model: PALModel, val: EncodedPairs) -> dict:
    """Loss, accuracy, reward margin and reward statistics on validation pairs."""
    r_c, r_r = pair_rewards(model, val)
    m = r_c - r_r
    rewards = torch.cat([r_c, r_r])
    return {"val_loss": float(model.head.loss(m)), "val_accuracy": float((m > 0).float().mean()),
            "val_margin": float(m.mean()), "val_reward_mean": float(rewards.mean()), "val_reward_std": float(rewards.std())}


@torch.no_grad()
def mixture_mass(model: PALModel) -> dict:
    """Mean weight of each prototype over the known users (how much each prototype is used)."""
    if model.head.num_users == 0 or model.config.model_type == "single-rm":
        return {}
    w = torch.softmax(model.head.user_logits.float(), dim=-1).mean(0)
    return {f"mixture_mass_{k}": round(float(v), 6) for k, v in enumerate(w)}


class BestEpoch:
    """Tracks the epoch with the lowest validation loss (its state is kept) and says when
    ``patience`` epochs without improvement have passed (``patience=0``: never)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.val_loss = float("inf")
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
            return False
        self.bad_epochs += 1
        return bool(self.patience) and self.bad_epochs >= self.patience

    def metrics(self, history: list[dict]) -> dict:
        """``best_epoch``, ``epochs_run`` and, with validation data, the best val loss/accuracy."""
        out = {"best_epoch": self.epoch or len(history), "epochs_run": len(history)}
        if self.state is not None:
            out.update(val_loss=round(self.val_loss, 6), val_accuracy=round(history[self.epoch - 1]["val_accuracy"], 6))
        return out


def write_record(record: dict, metrics_file, bar) -> None:
    """One epoch's record: a line of metrics.jsonl (when a file is open) and the progress bar."""
    if metrics_file:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_loss", "val_accuracy")})


def fit(
    train: PreferenceData | EncodedPairs,
    val: PreferenceData | EncodedPairs | None,
    encoder: Encoder,
    config: PALConfig | None = None,
    train_config: TrainConfig | None = None,
    cache=None,
    metrics_path: str | Path | None = None,
    user_groups: dict | None = None,
) -> PALModel:
    """Train a PAL model on seen users and return it with the best-validation weights.

    ``train``/``val`` may be raw :class:`PreferenceData` (encoded here, through ``cache``) or
    already-encoded :class:`EncodedPairs` (experiments encode once and train many heads).
    With ``train_config.restarts > 1`` the head is trained from that many initialisations
    (seeds ``seed``, ``seed + 1``, ...) and the one with the lowest validation loss is returned
    (mixtures of prototypes can settle in a poor split; a restart is the usual cure)."""
    tc = train_config or TrainConfig()
    if isinstance(train, PreferenceData):
        user_groups = user_groups or train.user_groups()
        train = encode_data(encoder, train, cache)
    if isinstance(val, PreferenceData):
        val = encode_data(encoder, val, cache)
    if len(train) == 0:
        raise PalMMError("no training pairs")
    if tc.restarts < 1:
        raise PalMMError(f"restarts must be >= 1, got {tc.restarts}")
    if tc.restarts > 1 and (val is None or len(val) == 0):
        raise PalMMError("restarts > 1 needs validation data to choose between the initialisations")
    best, tried = None, []
    for r in range(tc.restarts):
        model = _fit_once(train, val, encoder, config, replace(tc, seed=tc.seed + r), metrics_path, user_groups,
                          restart=r if tc.restarts > 1 else None)
        tried.append({k: model.metrics.get(k) for k in ("val_loss", "val_accuracy", "best_epoch", "epochs_run")} | {"seed": tc.seed + r})
        if best is None or model.metrics["val_loss"] < best.metrics["val_loss"]:
            best = model
    if tc.restarts > 1:
        best.metrics["restarts"] = tried
    best.train_config = asdict(tc)
    return best


def _fit_once(train: EncodedPairs, val: EncodedPairs | None, encoder: Encoder, config: PALConfig | None, tc: TrainConfig,
              metrics_path: str | Path | None, user_groups: dict | None, restart: int | None = None) -> PALModel:
    """One training run from the initialisation of ``tc.seed`` (``restart``: its index, logged)."""
    config = copy.deepcopy(config or PALConfig())
    config.init_seed = tc.seed
    set_seed(tc.seed)
    model = build_model(train, encoder, config, user_groups)
    if val is not None:
        unknown = sorted(set(val.user_ids) - set(model.users))
        if unknown:
            raise PalMMError(f"validation data has user(s) absent from training: {', '.join(unknown[:5])}; "
                             "validation must hold seen users (new users go through `adapt`)")

    logging_dir = Path(metrics_path).parent if metrics_path else None
    accelerator = Accelerator(cpu=tc.cpu, mixed_precision=tc.mixed_precision, log_with=make_trackers(tc.report_to, logging_dir),
                              project_dir=logging_dir)
    if accelerator.trackers or tc.report_to not in (None, "", "none"):
        accelerator.init_trackers("pal-mm", config={**asdict(tc), **config.to_dict()})
    optimizer = torch.optim.AdamW(optimizer_groups(model, tc))
    tensors = (train.prompt, train.chosen, train.rejected, model.user_index(train.user_ids))
    # batches are gathered by slicing whole tensors (no per-row __getitem__/collate cost)
    loader = DataLoader(range(len(train)), batch_size=tc.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(tc.seed),
                        collate_fn=lambda idx: tuple(t[torch.as_tensor(idx)] for t in tensors))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    core = accelerator.unwrap_model(model)
    metrics_file = open(metrics_path, "a") if metrics_path else None

    best = BestEpoch(tc.patience)
    history = []
    desc = f"train {config.model_type} K={config.k}" + ("" if restart is None else f" (restart {restart})")
    bar = tqdm(range(1, tc.epochs + 1), desc=desc, disable=not tc.progress or not accelerator.is_main_process)
    for epoch in bar:
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for prompt, chosen, rejected, uidx in loader:
            with accelerator.autocast():
                loss = core.head.loss(model(prompt, chosen, rejected, uidx))
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            total += loss.item() * len(uidx)
            count += len(uidx)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, **({} if restart is None else {"restart": restart}), "train_loss": total / max(count, 1),
                  "epoch_seconds": round(seconds, 4), "train_pairs_per_s": round(count / max(seconds, 1e-9), 1)}
        if config.model_type == "pal-b":
            record["logit_scale"] = float(core.head.scale().detach())
        record.update(mixture_mass(core))
        if val is not None and len(val):
            record.update(validation_metrics(core, val))
        history.append(record)
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        write_record(record, metrics_file if accelerator.is_main_process else None, bar)
        if best.update(record, lambda: copy.deepcopy(core.state_dict())):
            break
    if metrics_file:
        metrics_file.close()
    accelerator.end_training()
    if best.state is not None:
        core.load_state_dict(best.state)
    core = core.cpu().eval()
    core.metrics = best.metrics(history)
    core.data_info = {"train_pairs": len(train), "seen_users": len(core.users)}
    core.history = history
    return core
