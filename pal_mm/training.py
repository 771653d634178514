"""Training a preference head on seen users: one epoch loop for frozen and fine-tuned encoders.

AdamW with per-group learning rates, early stopping on the validation loss (never the test set),
restarts kept by validation loss, accelerate for device / mixed precision / multi-GPU, a checkpoint
after every epoch (``--resume`` continues a killed run), and a finite-loss check on every step.

The loop, in one look::

    encode train once (frozen encoder, through the cache) -> build the model, fit input normalisers
    [fine-tuning: unfreeze the encoder, or its top N blocks]
    for restart:  for epoch:  for batch:  PairLoss(batch) -> backward -> [clip] -> step
                              validation loss/accuracy -> keep the best state -> checkpoint -> stop after `patience`
    keep the restart with the lowest validation loss

A batch is either slices of embedding tensors already in memory (frozen encoder) or raw inputs that
:class:`PairLoss` encodes with gradients (fine-tuned encoder); everything else is shared.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoders.atomic import write_text
from encoders.base import Encoder

from .checkpoint import load_checkpoint, optimizer_tensors, restore_optimizer, restore_rng, rng_tensors, save_checkpoint
from .config import AUTO, PALConfig, TrainConfig
from .data import PreferenceData
from .batches import PairBatches
from .embedding import EncodedPairs, check_modalities, encode_data, render_data
from .errors import PalMMError
from .finetune import token_level_loss
from .model import PALModel
from .prior import fit_beliefs
from .run_state import BestEpoch, load_model_state, model_state, prefix, prefixed, run_fingerprint
from .scoring import mixture_mass, pair_losses, validation_metrics
from .splitting import init_users_by_cluster, split_head, starts_from_k1
from .threads import for_head, head_step_work
from .tracking import make_trackers

#: TrainConfig field giving each parameter group's learning rate; other groups use lr_projector
GROUP_LR = {"projector_f": "lr_projector", "projectors_gk": "lr_projector", "P": "lr_prototypes", "W": "lr_users",
            "logit_scale": "lr_logit_scale"}


def optimizer_groups(model: PALModel, tc: TrainConfig) -> list[dict]:
    """AdamW groups: the head's groups at their rates (weight decay on ``projector*`` only), plus the
    trainable encoder parameters at ``lr_encoder``."""
    groups = []
    for name, params in model.head.param_groups().items():
        params = [p for p in params if p.requires_grad]
        if params:
            wd = tc.weight_decay if name.startswith("projector") else 0.0
            groups.append({"params": params, "lr": getattr(tc, GROUP_LR.get(name, "lr_projector")), "weight_decay": wd,
                           "name": name})
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    if enc:
        groups.append({"params": enc, "lr": tc.lr_encoder, "weight_decay": 0.0, "name": "encoder"})
    return groups


def build_model(train: EncodedPairs, encoder: Encoder, config: PALConfig, user_groups: dict | None = None) -> PALModel:
    """A fresh model sized from the training embeddings, normalisers fitted on them."""
    config.fix_widths(train.prompt.shape[1], train.chosen.shape[1])
    users = list(dict.fromkeys(train.user_ids))
    model = PALModel(config, encoder, users, user_groups)
    config.label_noise = model.head.label_noise  # the head type's default when unset: saved, so the model keeps its loss
    model.head.fit_normalizers(train.prompt, torch.cat([train.chosen, train.rejected]))
    return model


# ------------------------------------------------------------------------------------------
# One batch -> one loss
# ------------------------------------------------------------------------------------------
class PairLoss(nn.Module):
    """``forward(prompts, chosen, rejected, user_idx) -> scalar loss``: embeddings (frozen encoder) go
    straight to the head; raw inputs (fine-tuned encoder) are encoded with gradients first. A module,
    so that accelerate / DDP see one forward pass."""

    def __init__(self, model: PALModel, token_level: bool = False, weighting: str = "cumulative"):
        super().__init__()
        self.model = model
        self.token_level = token_level
        self.weighting = weighting

    def forward(self, prompts, chosen, rejected, user_idx: torch.Tensor) -> torch.Tensor:
        head, encoder = self.model.head, self.model.encoder
        if self.token_level:
            return token_level_loss(head, encoder, prompts, chosen, rejected, head.user_weights(user_idx), self.weighting)
        if not isinstance(prompts, torch.Tensor):
            prompts = encoder.embed(prompts, "prompt").float()  # a bf16/fp16 backbone feeds an fp32 head
            items = encoder.embed(list(chosen) + list(rejected), "item").float()
            chosen, rejected = items[: len(chosen)], items[len(chosen):]
        return head.training_loss(prompts, chosen, rejected, user_idx)


# ------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------
def fit(
    train: PreferenceData | EncodedPairs,
    val: PreferenceData | EncodedPairs | None,
    encoder: Encoder,
    config: PALConfig | None = None,
    train_config: TrainConfig | None = None,
    cache=None,
    metrics_path: str | Path | None = None,
    user_groups: dict | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    split_source: PALModel | None = None,
    beliefs: bool = True,
) -> PALModel:
    """Train a head on seen users and return the model with the best-validation weights.

    ``train``/``val`` may be raw :class:`PreferenceData` (encoded here, through ``cache``) or
    already-encoded :class:`EncodedPairs` (experiments encode once and train many heads); fine-tuning
    the encoder (``train_config.fine_tunes_encoder``) needs raw data. With ``restarts > 1`` the head is
    trained from that many initialisations (seeds ``seed``, ``seed + 1``, ...) and the one with the
    lowest validation loss is returned. With ``checkpoint_dir`` a checkpoint is written after every
    epoch; ``resume=True`` continues from it (same data and settings) and ends with the same model as
    an uninterrupted run.

    A K >= 2 model starts as ``train_config.k_init`` says (:mod:`pal_mm.splitting`): each user on the
    prototype of their cluster; ``cluster`` and ``split`` first fit K = 1 on the same data (or take
    ``split_source``, a fitted model of the same head type with fewer prototypes), whose copy is epoch 0
    and is kept unless the K model's validation loss is lower (by more than ``train_config.split_evidence``
    standard errors of the per-pair difference; default 0).
    The trained model then gets its beliefs (calibration, prior over users, posteriors;
    :func:`pal_mm.prior.fit_beliefs`) unless ``beliefs=False``."""
    tc = train_config or TrainConfig()
    config = copy.deepcopy(config or PALConfig())
    if config.k == AUTO:
        raise PalMMError("k='auto' trains one model per K: call pal_mm.fit or pal_mm.selection.select_k")
    finetune = tc.fine_tunes_encoder
    raw_train = raw_val = None
    if isinstance(train, PreferenceData):
        user_groups = user_groups or train.user_groups()
        check_modalities(encoder, train)
        raw_train = render_data(encoder, train)  # fine-tuning feeds raw inputs: conversations rendered once
        if finetune:
            encoder.freeze()
        train = encode_data(encoder, train, cache)
    if isinstance(val, PreferenceData):
        check_modalities(encoder, val)
        raw_val = render_data(encoder, val)
        val = encode_data(encoder, val, cache)
    tc = replace(tc, restarts=tc.restarts_for(config.k, val is not None and len(val) > 0))
    _check_run(train, val, encoder, config, tc, raw_train, raw_val)
    if split_source is not None and (split_source.config.model_type != config.model_type or split_source.config.k >= config.k):
        raise PalMMError(f"split_source must be a {config.model_type} model with fewer than K={config.k} prototypes, "
                         f"got {split_source.config.model_type} K={split_source.config.k}")
    needs_source = starts_from_k1(config, tc) and (tc.k_init == "split" or (val is not None and len(val) > 0))
    if split_source is None and needs_source:
        sub = Path(checkpoint_dir) / "split-source" if checkpoint_dir else None
        source_tc = replace(tc, restarts=1, report_to="none")  # its epochs go to this run's metrics.jsonl
        split_source = fit(train, val, encoder, replace(config, k=1), source_tc, user_groups=user_groups,
                           checkpoint_dir=sub, resume=resume, beliefs=False)
    run = _Run(train, val, encoder, config, tc, raw_train if finetune else None, raw_val if finetune else None,
               user_groups, metrics_path, checkpoint_dir, split_source if needs_source else None)
    # small heads train on one CPU thread (pal_mm.threads); a fine-tuned encoder keeps torch's setting
    config.fix_widths(train.prompt.shape[1], train.chosen.shape[1])
    work = None if finetune else head_step_work(tc.batch_size, config.prompt_dim, config.item_dim, config.width, config.k)
    with for_head(work):
        model = run.fit(resume)
        if not beliefs:  # a K = 1 model fitted only to start a mixture from
            return model
        if finetune:  # calibration, prior and posteriors need the fine-tuned encoder's embeddings
            train = encode_data(model.encoder, raw_train)
            val = encode_data(model.encoder, raw_val) if raw_val is not None else None
        fit_beliefs(model, train, val)
    return model


def _check_run(train, val, encoder, config, tc, raw_train, raw_val) -> None:
    if len(train) == 0:
        raise PalMMError("no training pairs")
    if tc.restarts > 1 and (val is None or len(val) == 0):
        raise PalMMError("restarts > 1 needs validation data to choose between the initialisations")
    if not tc.fine_tunes_encoder:
        return
    if raw_train is None or (val is not None and raw_val is None):
        raise PalMMError("fine-tuning needs raw PreferenceData (inputs are re-encoded every step), not embeddings")
    if encoder.prompt_modality == "vector" or encoder.item_modality == "vector":
        raise PalMMError(f"encoder {encoder.name!r} has no weights to fine-tune")
    if tc.restarts != 1:
        raise PalMMError("restarts are not supported when fine-tuning the encoder (each restart would re-train it)")
    if tc.token_level and config.model_type != "pal-b":
        raise PalMMError("the token-level loss is defined for PAL-B (--model pal-b)")
    if tc.token_level and (encoder.prompt_modality != "text" or encoder.item_modality != "text"):
        raise PalMMError(f"the token-level loss needs a text encoder for prompts and items, not {encoder.name!r}")


#: wall-clock fields of an epoch record: written to timings.jsonl, not metrics.jsonl (so that the
#: metrics file of a seeded run is byte-identical from run to run)
TIMING_KEYS = ("epoch_seconds", "train_pairs_per_s")


class _Run:
    """One call of :func:`fit`: the restarts, each an epoch loop, with checkpoints in between."""

    def __init__(self, train, val, encoder, config, tc, raw_train, raw_val, user_groups, metrics_path, checkpoint_dir,
                 split_source: PALModel | None = None):
        self.train, self.val, self.encoder, self.config, self.tc = train, val, encoder, config, tc
        self.split_source = split_source
        self.raw_train, self.raw_val, self.user_groups = raw_train, raw_val, user_groups
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.fingerprint = run_fingerprint(train, val, config, tc, encoder)
        # every epoch of every restart (after the K = 1 model it splits, if any), for metrics.jsonl
        self.records: list[dict] = [{"stage": "split-source", **r} for r in (split_source.history if split_source else [])]
        self.init_info: dict | None = None
        self.evidence: float | None = None  # the last restart's gain over its K = 1 fallback, in standard errors
        self.tried: list[dict] = []  # finished restarts
        self.best_done: PALModel | None = None  # the best finished restart
        self.best_done_info: dict | None = None

    # ----- restarts ---------------------------------------------------------------------------
    def fit(self, resume: bool) -> PALModel:
        tc = self.tc
        saved = load_checkpoint(self.checkpoint_dir) if (resume and self.checkpoint_dir) else None
        first = 0
        if saved is not None:
            tensors, state = saved
            if state.get("run") != self.fingerprint:
                raise PalMMError(f"{self.checkpoint_dir}: the checkpoint belongs to another run (other data or settings); "
                                 "start again without --resume")
            first, self.records, self.tried = int(state["restart"]), list(state["records"]), list(state["tried"])
            if state.get("best_done"):
                self.best_done_info = state["best_done"]
                self.best_done = self._model_from_state(self.best_done_info, prefixed(tensors, "done."))
        for r in range(first, tc.restarts):
            model = self._fit_once(r, saved if r == first else None)
            self.records += model.history
            self.tried.append({k: model.metrics.get(k) for k in ("val_loss", "val_accuracy", "best_epoch", "epochs_run")}
                              | {"seed": tc.seed + r})
            if self.best_done is None or _val_loss(model) < _val_loss(self.best_done):
                self.best_done = model
                self.best_done_info = {"restart": r, "seed": tc.seed + r, "metrics": model.metrics, "history": model.history}
        best = self.best_done
        if tc.restarts > 1:
            best.metrics["restarts"] = self.tried
        return best

    def _model_from_state(self, info: dict, tensors: dict[str, torch.Tensor]) -> PALModel:
        """A finished restart rebuilt from its saved state (after a resume)."""
        model = self._build(int(info["seed"]))
        load_model_state(model, tensors)
        model = model.cpu().eval()
        model.metrics, model.history = dict(info["metrics"]), list(info["history"])
        model.data_info = {"train_pairs": len(self.train), "seen_users": len(model.users)}
        return model

    def _build(self, seed: int) -> PALModel:
        config = copy.deepcopy(self.config)
        config.init_seed = seed
        set_seed(seed)
        model = build_model(self.train, self.encoder, config, self.user_groups)
        if self.val is not None:
            unknown = sorted(set(self.val.user_ids) - set(model.users))
            if unknown:
                raise PalMMError(f"validation data has user(s) absent from training: {', '.join(unknown[:5])}; "
                                 "validation must hold seen users (new users go through `adapt`)")
        if self.tc.fine_tunes_encoder:
            n = self.encoder.set_trainable(self.tc.train_layers)
            if n == 0:
                raise PalMMError("no encoder parameter is trainable (--train-layers 0); use plain training instead")
            if self.tc.token_level:
                self.encoder.token_states(["probe"])  # fails early for encoders without token states
        self.init_info = self._init_users(model, seed, with_prompt=(seed - self.tc.seed) % 2 == 1)
        return model

    def _init_users(self, model: PALModel, seed: int, with_prompt: bool) -> dict | None:
        """``k_init``: split the K = 1 source and/or start each user on their cluster's prototype."""
        head = model.head
        if head.config.k < 2 or self.tc.k_init == "random" or not head.simplex_users or head.num_users < 2:
            return None
        if self.split_source is not None and self.tc.k_init == "split":
            split_head(head, self.split_source.head)
            if self.split_source.config.k > 1:  # users keep their source weights (see PreferenceHead.load_split)
                return {"k_init": "split"}
        info = init_users_by_cluster(head, self.train.prompt if with_prompt else None, self.train.chosen,
                                     self.train.rejected, model.user_index(self.train.user_ids), seed)
        return {"k_init": self.tc.k_init, "signature": "item x prompt" if with_prompt else "item", **info}

    def _keep_k1_unless_clearly_worse(self, core: PALModel, val: EncodedPairs, best: BestEpoch, epoch0: dict) -> None:
        """Keep the best K epoch only when its validation loss beats the source model (epoch 0: K = 1, or the
        K' < K model given as ``split_source``) by more than ``split_evidence`` standard errors of the
        mean per-pair difference; otherwise revert to the source's copy. A small validation set would
        otherwise pick a mixture whose gain is noise."""
        trained = model_state(core)
        k_losses = pair_losses(core, val)
        split_head(core.head, self.split_source.head)
        diff = k_losses - pair_losses(core, val)
        se = float(diff.std()) / math.sqrt(len(diff))
        self.evidence = round(-float(diff.mean()) / se, 3) if se > 0 else None  # standard errors better than K = 1
        if float(diff.mean()) < -self.tc.split_evidence * se:
            load_model_state(core, trained)
        else:
            best.revert(epoch0, model_state(core))

    def _epoch_zero(self, core: PALModel, val: EncodedPairs, restart: int | None, best: BestEpoch, history: list[dict]) -> None:
        """Epoch 0: the fitted source model (K = 1, or K' < K) as a K model (prototype k a copy of source
        prototype k mod K'; for K = 1 the same rewards for any weights) is a candidate for the best epoch,
        so the result is never worse than the source on validation."""
        fresh = None if self.tc.k_init == "split" else model_state(core)  # split: the model already is the copy
        if fresh is not None:
            split_head(core.head, self.split_source.head)
        record = {"epoch": 0, **({} if restart is None else {"restart": restart}), **validation_metrics(core, val)}
        history.append(record)
        best.update(record, lambda: model_state(core))
        if fresh is not None:
            load_model_state(core, fresh)

    # ----- one restart ------------------------------------------------------------------------
    def _fit_once(self, r: int, saved: tuple | None) -> PALModel:
        tc = replace(self.tc, seed=self.tc.seed + r)
        restart = r if self.tc.restarts > 1 else None
        self.evidence = None
        model = self._build(tc.seed)
        logging_dir = self.metrics_path.parent if self.metrics_path else None
        accelerator = Accelerator(cpu=tc.cpu, mixed_precision=_mixed_precision(tc),
                                  log_with=make_trackers(tc.report_to, logging_dir), project_dir=logging_dir)
        if tc.report_to not in (None, "", "none"):
            accelerator.init_trackers("pal-mm", config={**asdict(tc), **model.config.to_dict()})
        step = PairLoss(model, token_level=tc.token_level, weighting=tc.token_weighting)
        optimizer = torch.optim.AdamW(optimizer_groups(model, tc))
        batches = PairBatches(self.train, self.raw_train, model.user_index(self.train.user_ids))
        gen = torch.Generator().manual_seed(tc.seed)
        if _plain_loop(accelerator, tc):  # one process, fp32, frozen encoder: no per-step wrappers
            step = accelerator.prepare(step)  # device placement
            loader = _EpochSlices(batches, gen, tc.batch_size, accelerator.device)
        else:
            loader = DataLoader(batches, batch_size=tc.batch_size, shuffle=True, generator=gen, collate_fn=batches.collate)
            step, optimizer, loader = accelerator.prepare(step, optimizer, loader)
        core: PALModel = accelerator.unwrap_model(step).model
        trainable = [p for p in core.parameters() if p.requires_grad]
        core.head.prepare_training(self.train.prompt, self.train.chosen, self.train.rejected, batches.user_idx)
        best, history, start = BestEpoch(tc.patience), [], 1
        if saved is not None:
            tensors, state = saved
            load_model_state(core, prefixed(tensors, "model."))
            restore_optimizer(optimizer, tensors, state["optimizer"])
            restore_rng(gen, tensors, state["rng"])
            best.load(state["best"], prefixed(tensors, "best.") or None)
            history, start = list(state["history"]), int(state["epoch"]) + 1
        val = self.val if self.raw_val is None else None  # fine-tuning: re-encode val every epoch
        desc = f"{'finetune' if tc.fine_tunes_encoder else 'train'} {core.config.model_type} K={core.config.k}" + (
            "" if restart is None else f" (restart {restart})")
        bar = tqdm(range(start, tc.epochs + 1), desc=desc, disable=not tc.progress or not accelerator.is_main_process)
        if saved is None and self.split_source is not None and self.val is not None and len(self.val):
            self._epoch_zero(core, val if val is not None else self._encode_val(core), restart, best, history)
        stop = bool(history) and best.patience and best.bad_epochs >= best.patience
        for epoch in ([] if stop else bar):
            record = self._epoch(epoch, restart, step, core, optimizer, loader, batches, trainable, accelerator, tc)
            record.update(core.head.extra_metrics())
            record.update(mixture_mass(core))
            if self.val is not None and len(self.val):
                record.update(validation_metrics(core, val if val is not None else self._encode_val(core)))
            history.append(record)
            accelerator.log({k: v for k, v in record.items() if k not in ("epoch", "restart")}, step=epoch)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_loss", "val_accuracy")})
            stop = best.update(record, lambda: model_state(core))
            if accelerator.is_main_process:
                self._write_metrics(history)
                if self.checkpoint_dir is not None:
                    self._checkpoint(r, epoch, core, optimizer, gen, best, history)
            if stop:
                break
        for tracker in accelerator.trackers:  # not end_training(): it also ends the process group, which the
            tracker.finish()                  # next fit of this run (restarts, K = 1 start, --k auto) still needs
        if best.state is not None:
            load_model_state(core, best.state)
        if self.split_source is not None and best.epoch > 0 and history and history[0]["epoch"] == 0:
            self._keep_k1_unless_clearly_worse(core, val if val is not None else self._encode_val(core), best, history[0])
        core = core.cpu().eval()
        core.head.finish_training(self.train.prompt, self.train.chosen, self.train.rejected, batches.user_idx)
        if tc.fine_tunes_encoder:
            core.encoder.mark_weights_changed()  # new weights: a new fingerprint for the cache
        core.metrics = best.metrics(history)
        if self.init_info is not None:
            core.metrics["k_init"] = self.init_info | (
                {"kept_k1": core.metrics["best_epoch"] == 0, "gain_over_k1_se": self.evidence,
                 "split_evidence": self.tc.split_evidence}
                if self.split_source is not None and best.state is not None else {})
        if self.split_source is not None:
            core.metrics["split_source"] = {"k": self.split_source.config.k, **{
                k: self.split_source.metrics.get(k) for k in ("val_loss", "val_accuracy", "best_epoch", "epochs_run")}}
        core.data_info = {"train_pairs": len(self.train), "seen_users": len(core.users)}
        if accelerator.num_processes > 1:
            core.data_info["processes"] = accelerator.num_processes
        if tc.fine_tunes_encoder:
            core.metrics.update(trainable_parameters=sum(p.numel() for p in trainable),
                                encoder_trainable_parameters=sum(p.numel() for p in trainable if _is_encoder(core, p)))
            core.data_info["fine_tuned_encoder"] = {
                "train_layers": "all" if tc.train_layers is None else tc.train_layers, "token_level": tc.token_level,
                "token_weighting": tc.token_weighting if tc.token_level else None, "mixed_precision": accelerator.mixed_precision}
        core.history = history
        return core

    def _epoch(self, epoch, restart, step, core, optimizer, loader, batches, trainable, accelerator, tc) -> dict:
        step.train()
        plain = isinstance(loader, _EpochSlices)
        autocast = nullcontext if accelerator.mixed_precision == "no" else accelerator.autocast
        backward = torch.Tensor.backward if plain else accelerator.backward
        t0, count = time.perf_counter(), 0
        losses = []  # (pairs-weighted loss, step): read back once per epoch, not once per step (no host sync)
        for s, batch in enumerate(loader):
            prompts, chosen, rejected, uidx = batches.unpack(batch, accelerator.device)
            optimizer.zero_grad(set_to_none=True)
            b = len(uidx)
            micro = min(tc.micro_batch_size or b, b)
            for m in range(0, b, micro):
                part = slice(m, m + micro)
                with autocast():
                    loss = step(prompts[part], chosen[part], rejected[part], uidx[part])
                backward(loss if micro == b else loss * ((min(m + micro, b) - m) / b))
                losses.append((loss.detach(), min(m + micro, b) - m, s + 1))
            if tc.grad_clip:
                accelerator.clip_grad_norm_(trainable, tc.grad_clip)
            optimizer.step()
            count += b
        total = 0.0
        for value, (_, n, s) in zip(torch.stack([v for v, _, _ in losses]).tolist() if losses else [], losses):
            if not math.isfinite(value):
                raise PalMMError(_divergence_message(epoch, s, self.train, tc))
            total += value * n
        seconds = time.perf_counter() - t0
        return {"epoch": epoch, **({} if restart is None else {"restart": restart}), "train_loss": total / max(count, 1),
                "epoch_seconds": round(seconds, 4), "train_pairs_per_s": round(count / max(seconds, 1e-9), 1)}

    def _encode_val(self, core: PALModel) -> EncodedPairs:
        core.eval()
        return encode_data(core.encoder, self.raw_val, cache=None)

    # ----- files --------------------------------------------------------------------------------
    def _write_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl (deterministic numbers) and timings.jsonl (wall clock), rewritten whole
        each epoch so a resumed run never repeats an epoch."""
        if self.metrics_path is None:
            return
        records = self.records + history
        metrics = "".join(json.dumps({k: v for k, v in r.items() if k not in TIMING_KEYS}) + "\n" for r in records)
        timings = "".join(json.dumps({k: r[k] for k in ("epoch", "restart", *TIMING_KEYS) if k in r}) + "\n" for r in records)
        write_text(self.metrics_path, metrics)
        write_text(self.metrics_path.with_name("timings.jsonl"), timings)

    def _checkpoint(self, r: int, epoch: int, core: PALModel, optimizer, gen: torch.Generator, best: BestEpoch,
                    history: list[dict]) -> None:
        opt_tensors, opt_groups = optimizer_tensors(optimizer)
        rng, rng_json = rng_tensors(gen)
        tensors = {**prefix(model_state(core), "model."), **opt_tensors, **rng}
        if best.state is not None:
            tensors.update(prefix(best.state, "best."))
        if self.best_done is not None:
            tensors.update(prefix(model_state(self.best_done), "done."))
        state = {"run": self.fingerprint, "restart": r, "epoch": epoch, "history": history, "records": self.records,
                 "tried": self.tried, "best": best.to_json(), "best_done": self.best_done_info, "optimizer": opt_groups,
                 "rng": rng_json}
        save_checkpoint(self.checkpoint_dir, tensors, state)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
class _EpochSlices:
    """The batches of a plain single-process run: iterating gives one epoch of
    :meth:`PairBatches.epoch_slices` (a fresh shuffle from the run's generator each time)."""

    def __init__(self, batches: PairBatches, generator: torch.Generator, batch_size: int, device):
        self.batches, self.generator, self.batch_size, self.device = batches, generator, batch_size, device

    def __iter__(self):
        return self.batches.epoch_slices(self.generator, self.batch_size, self.device)


def _plain_loop(accelerator: Accelerator, tc: TrainConfig) -> bool:
    """One process, no mixed precision, no gradient accumulation and a frozen encoder: the epoch loop
    slices pre-shuffled tensors and calls ``loss.backward()`` / ``optimizer.step()`` directly (what
    accelerate's wrappers reduce to in this case, minus their per-step cost on small heads)."""
    return (accelerator.num_processes == 1 and accelerator.mixed_precision == "no"
            and accelerator.gradient_accumulation_steps == 1 and not tc.fine_tunes_encoder)


def _mixed_precision(tc: TrainConfig) -> str:
    if tc.mixed_precision != "auto":
        return tc.mixed_precision
    gpu = torch.cuda.is_available() and not tc.cpu
    return "bf16" if gpu and tc.fine_tunes_encoder and torch.cuda.is_bf16_supported() else "no"


def _val_loss(model: PALModel) -> float:
    v = model.metrics.get("val_loss")
    return math.inf if v is None or not math.isfinite(v) else float(v)


def _divergence_message(epoch: int, step: int, train: EncodedPairs, tc: TrainConfig) -> str:
    biggest = max(float(t.abs().max()) for t in (train.prompt, train.chosen, train.rejected))
    return (f"training diverged: the loss became NaN or infinite at epoch {epoch}, step {step}; likely causes: input "
            f"values too large (max |x| in the embeddings = {biggest:.3g}) or learning rates too high "
            f"(--lr-projector {tc.lr_projector:g}, --lr-users {tc.lr_users:g}); nothing was saved")


def _is_encoder(model: PALModel, p: torch.Tensor) -> bool:
    return any(p is q for q in model.encoder.parameters())
