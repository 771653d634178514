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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoders.base import Encoder

from .data import PreferenceData
from .embedding import EncodedPairs, encode_data
from .errors import PalMMError
from .heads import PALConfig
from .model import PALModel
from .tracking import make_trackers


@dataclass
class TrainConfig:
    """Optimisation settings. Learning rates follow the PAL paper's per-group values (users and
    prototypes 5e-3, logit scale 0.1), with the projectors' rate scaled for a larger batch."""

    epochs: int = 30
    batch_size: int = 64
    # The paper uses 1e-4 for the projectors at batch size 4 with thousands of steps per epoch;
    # at our default batch size of 64 (16x fewer steps) 1e-3 reaches the same fit.
    lr_projector: float = 1e-3  # f and g_k
    lr_prototypes: float = 5e-3  # PAL-A's P
    lr_users: float = 5e-3  # user logits W
    lr_logit_scale: float = 0.1
    lr_encoder: float = 1e-5  # only when the encoder is fine-tuned
    weight_decay: float = 0.01  # projectors only (decoupled, AdamW)
    patience: int = 5  # epochs without val-loss improvement before stopping; 0 = never stop early
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate)
    cpu: bool = False  # force CPU even when a GPU is present
    progress: bool = True
    report_to: str = "none"  # "none" | "csv" | "tensorboard" | any accelerate tracker


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
    already-encoded :class:`EncodedPairs` (experiments encode once and train many heads)."""
    config = copy.deepcopy(config or PALConfig())
    tc = train_config or TrainConfig()
    config.init_seed = tc.seed
    set_seed(tc.seed)
    if isinstance(train, PreferenceData):
        user_groups = user_groups or train.user_groups()
        train = encode_data(encoder, train, cache)
    if isinstance(val, PreferenceData):
        val = encode_data(encoder, val, cache)
    if len(train) == 0:
        raise PalMMError("no training pairs")
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

    best = {"val_loss": float("inf"), "epoch": 0, "state": None}
    history = []
    bad_epochs = 0
    bar = tqdm(range(1, tc.epochs + 1), desc=f"train {config.model_type} K={config.k}", disable=not tc.progress or not accelerator.is_main_process)
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
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "epoch_seconds": round(time.perf_counter() - t0, 4),
                  "train_pairs_per_s": round(count / max(time.perf_counter() - t0, 1e-9), 1)}
        if config.model_type == "pal-b":
            record["logit_scale"] = float(core.head.scale().detach())
        record.update(mixture_mass(core))
        if val is not None and len(val):
            record.update(validation_metrics(core, val))
        history.append(record)
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
        if metrics_file and accelerator.is_main_process:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_loss", "val_accuracy")})
        if "val_loss" in record:
            if record["val_loss"] < best["val_loss"] - 1e-6:
                best = {"val_loss": record["val_loss"], "epoch": epoch, "state": copy.deepcopy(core.state_dict())}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if tc.patience and bad_epochs >= tc.patience:
                    break
    if metrics_file:
        metrics_file.close()
    accelerator.end_training()
    if best["state"] is not None:
        core.load_state_dict(best["state"])
    core = core.cpu().eval()
    core.metrics = {"best_epoch": best["epoch"] or len(history), "epochs_run": len(history)}
    if best["state"] is not None:
        core.metrics.update(val_loss=round(best["val_loss"], 6), val_accuracy=round(history[best["epoch"] - 1]["val_accuracy"], 6))
    core.data_info = {"train_pairs": len(train), "seen_users": len(core.users)}
    core.train_config = asdict(tc)
    core.history = history
    return core
