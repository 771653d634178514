"""Encoder fine-tuning ("PAL-B-Large"): train the encoder, or only its top N blocks, together
with the PAL head. Batches are encoded on the fly with gradients; the encoder gets its own
learning rate (``TrainConfig.lr_encoder``).

Two losses:

* **pooled** (default, any encoder): the same pair loss as :func:`pal_mm.training.fit`, on
  pooled embeddings computed with gradients.
* **token-level** (causal LMs, PAL-B; the paper's ``b-cumulative``): prompt, chosen and
  rejected are encoded separately and right-padded to one length ``t``; prompt position ``i`` is
  paired with response position ``i``. Per position the margin
  ``m_i = r_i(chosen) - r_i(rejected)`` gives a loss ``l_i``; positions are weighted over the
  window from the first token where the two responses differ (``div``) to the end of the longer
  one (``end``) - with ``cumulative`` weights ``j / (L (L + 1) / 2)``, ``j = 1..L``,
  ``L = end - div`` - so later tokens count more. The window comes from the attention masks
  and token ids (pad positions are masked out, whatever the pad id), not from a hard-coded
  pad id. Identical responses get a one-position window at the last token.

The loop in one look::

    embed train once with the frozen encoder (cache) -> size the head, fit input normalisers
    unfreeze the encoder (or its top N blocks)
    for epoch:  for batch:  encode with gradients -> loss -> backward -> clip -> step
                encode val with the current encoder (no cache) -> val loss / accuracy
                keep the best state (head + trainable encoder weights) -> early stopping
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from einops import rearrange, repeat
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoders.base import Encoder

from .data import PreferenceData
from .embedding import check_modalities, encode_data
from .errors import PalMMError
from .config import PALConfig, TrainConfig
from .model import PALModel
from .training import BestEpoch, build_model, optimizer_groups, pair_margins, write_record

WEIGHTINGS = ("cumulative", "mean", "last")


# ------------------------------------------------------------------------------------------
# Token window and weights
# ------------------------------------------------------------------------------------------
def response_window(ids_a: torch.Tensor, mask_a: torch.Tensor, ids_b: torch.Tensor, mask_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Window ``[div, end)`` of two right-padded responses (b, t): ``div`` is the first position
    where they differ (a real token against a pad counts as a difference), ``end`` the length of
    the longer one. Identical responses: ``div = end - 1``. Returns (b,) ``div`` and ``end``."""
    a = ids_a.masked_fill(mask_a == 0, -1)  # pad positions compare equal to each other only
    b = ids_b.masked_fill(mask_b == 0, -1)
    differ = a != b  # (b, t)
    end = torch.maximum(mask_a.sum(1), mask_b.sum(1)).long()
    div = differ.long().argmax(1)  # first True; 0 when none
    div = torch.where(differ.any(1), div, (end - 1).clamp(min=0))
    return div, end


def window_weights(div: torch.Tensor, end: torch.Tensor, length: int, how: str = "cumulative") -> torch.Tensor:
    """(b,) window bounds -> (b, length) position weights, each row summing to 1.

    ``cumulative``: ``j / (L (L + 1) / 2)`` at window position ``j = 1..L``; ``mean``: ``1 / L``;
    ``last``: 1 at ``end - 1``."""
    if how not in WEIGHTINGS:
        raise PalMMError(f"token weighting must be one of {WEIGHTINGS}, got {how!r}")
    pos = torch.arange(length, device=div.device)[None]  # (1, t)
    inside = (pos >= div[:, None]) & (pos < end[:, None])
    span = (end - div).clamp(min=1).to(torch.float32)[:, None]  # (b, 1)
    if how == "cumulative":
        j = (pos - div[:, None] + 1).to(torch.float32)
        w = j / (span * (span + 1) / 2)
    elif how == "mean":
        w = 1.0 / span.expand(-1, length)
    else:
        w = (pos == (end[:, None] - 1)).to(torch.float32)
    return torch.where(inside, w, torch.zeros_like(w))


# ------------------------------------------------------------------------------------------
# One training step as a module (so accelerate/DDP see a forward pass)
# ------------------------------------------------------------------------------------------
class PairLoss(nn.Module):
    """``forward(prompts, chosen, rejected, user_idx) -> scalar loss`` for a PAL model whose
    encoder runs with gradients."""

    def __init__(self, model: PALModel, token_level: bool = False, weighting: str = "cumulative"):
        super().__init__()
        self.model = model
        self.token_level = token_level
        self.weighting = weighting

    def forward(self, prompts: Sequence, chosen: Sequence, rejected: Sequence, user_idx: torch.Tensor) -> torch.Tensor:
        head, encoder = self.model.head, self.model.encoder
        w = head.user_weights(user_idx)  # (b, K)
        if not self.token_level:
            p = encoder.embed(prompts, "prompt").float()  # a bf16/fp16 backbone feeds an fp32 head
            items = encoder.embed(list(chosen) + list(rejected), "item").float()
            c, r = items[: len(chosen)], items[len(chosen):]
            return head.loss(head.margin(p, c, r, w))
        return self.token_loss(prompts, chosen, rejected, w)

    def token_loss(self, prompts, chosen, rejected, w: torch.Tensor) -> torch.Tensor:
        head, encoder = self.model.head, self.model.encoder
        b = len(prompts)
        states, mask, ids = encoder.token_states(list(prompts) + list(chosen) + list(rejected))  # (3b, t, d)
        states = states.float()
        s_p, s_c, s_r = rearrange(states, "(three b) t d -> three b t d", three=3)
        m = rearrange(mask, "(three b) t -> three b t", three=3)
        i = rearrange(ids, "(three b) t -> three b t", three=3)
        div, end = response_window(i[1], m[1], i[2], m[2])
        weights = window_weights(div, end, states.shape[1], self.weighting)  # (b, t)
        sel = weights > 0  # only window positions go through the head
        w_pos = repeat(w, "b k -> b t k", t=states.shape[1])[sel]
        margins = head.margin(s_p[sel], s_c[sel], s_r[sel], w_pos)  # (positions,)
        per_pos = head.loss(margins, reduction="none")
        return (weights[sel].to(per_pos.dtype) * per_pos).sum() / b


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def _trainable_state(model: PALModel) -> dict[str, torch.Tensor]:
    """Head state plus the trainable encoder tensors (CPU copies) for best-epoch restore."""
    state = {f"head.{k}": v.detach().cpu().clone() for k, v in model.head.state_dict().items()}
    for k, p in model.encoder.named_parameters():
        if p.requires_grad:
            state[f"encoder.{k}"] = p.detach().cpu().clone()
    return state


def fit_finetune(
    train: PreferenceData,
    val: PreferenceData | None,
    encoder: Encoder,
    config: PALConfig | None = None,
    train_config: TrainConfig | None = None,
    train_layers: int | None = None,
    token_level: bool = False,
    token_weighting: str = "cumulative",
    cache=None,
    metrics_path: str | Path | None = None,
    user_groups: dict | None = None,
    mixed_precision: str | None = None,
    micro_batch_size: int | None = None,
    max_grad_norm: float | None = 1.0,
) -> PALModel:
    """Train a PAL head *and* the encoder (all of it, or its top ``train_layers`` blocks).

    ``cache`` is used only for the first, frozen pass that sizes the head and fits the input
    normalisers; afterwards embeddings come from the changing encoder. ``mixed_precision``
    ``None`` means bf16 on a GPU that supports it, else ``train_config.mixed_precision``.
    ``micro_batch_size`` splits each batch for gradient accumulation (memory).
    Returns the model with the best-validation weights; ``model.metrics`` reports
    ``trainable_parameters`` and ``encoder_trainable_parameters``."""
    if not isinstance(train, PreferenceData) or (val is not None and not isinstance(val, PreferenceData)):
        raise PalMMError("fine-tuning needs raw PreferenceData (inputs are re-encoded every step), not embeddings")
    if encoder.prompt_modality == "vector" or encoder.item_modality == "vector":
        raise PalMMError(f"encoder {encoder.name!r} has no weights to fine-tune")
    config = copy.deepcopy(config or PALConfig())
    tc = train_config or TrainConfig()
    if tc.restarts != 1:
        raise PalMMError("restarts are not supported when fine-tuning the encoder (each restart would re-train it)")
    if token_level and config.model_type != "pal-b":
        raise PalMMError("the token-level loss is defined for PAL-B (--model pal-b)")
    if token_level and (encoder.prompt_modality != "text" or encoder.item_modality != "text"):
        raise PalMMError(f"the token-level loss needs a text encoder for prompts and items, not {encoder.name!r}")
    config.init_seed = tc.seed
    set_seed(tc.seed)
    check_modalities(encoder, train)
    if val is not None:
        check_modalities(encoder, val)
    if len(train) == 0:
        raise PalMMError("no training pairs")
    user_groups = user_groups or train.user_groups()

    encoder.freeze()
    frozen = encode_data(encoder, train, cache)  # sizes the head, fits the normalisers
    model = build_model(frozen, encoder, config, user_groups)
    del frozen
    if val is not None:
        unknown = sorted(set(val.user_ids) - set(model.users))
        if unknown:
            raise PalMMError(f"validation data has user(s) absent from training: {', '.join(unknown[:5])}; "
                             "validation must hold seen users (new users go through `adapt`)")
    n_encoder = encoder.set_trainable(train_layers)
    if n_encoder == 0:
        raise PalMMError("no encoder parameter is trainable (--train-layers 0); use plain training instead")
    if token_level:
        encoder.token_states(["probe"])  # fails early for encoders without token states

    if mixed_precision is None:
        gpu = torch.cuda.is_available() and not tc.cpu
        mixed_precision = "bf16" if gpu and tc.mixed_precision == "no" and torch.cuda.is_bf16_supported() else tc.mixed_precision
    accelerator = Accelerator(cpu=tc.cpu, mixed_precision=mixed_precision)
    step = PairLoss(model, token_level=token_level, weighting=token_weighting)
    optimizer = torch.optim.AdamW(optimizer_groups(model, tc))
    user_idx = model.user_index(train.user_ids)
    loader = DataLoader(range(len(train)), batch_size=tc.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(tc.seed), collate_fn=list)
    step, optimizer, loader = accelerator.prepare(step, optimizer, loader)
    core: PALModel = accelerator.unwrap_model(step).model
    trainable = [p for p in core.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    metrics_file = open(metrics_path, "a") if metrics_path else None

    best = BestEpoch(tc.patience)
    history = []
    desc = f"finetune {config.model_type} K={config.k} ({n_encoder:,} encoder params{', token-level' if token_level else ''})"
    bar = tqdm(range(1, tc.epochs + 1), desc=desc, disable=not tc.progress or not accelerator.is_main_process)
    for epoch in bar:
        step.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for idx in loader:
            optimizer.zero_grad(set_to_none=True)
            micro = micro_batch_size or len(idx)
            batch_loss = 0.0
            for s in range(0, len(idx), micro):
                part = idx[s : s + micro]
                with accelerator.autocast():
                    loss = step([train.prompts[i] for i in part], [train.chosen[i] for i in part],
                                [train.rejected[i] for i in part], user_idx[part].to(accelerator.device))
                accelerator.backward(loss * (len(part) / len(idx)))
                batch_loss += loss.item() * len(part)
            if max_grad_norm:
                accelerator.clip_grad_norm_(trainable, max_grad_norm)
            optimizer.step()
            total += batch_loss
            count += len(idx)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "epoch_seconds": round(seconds, 4),
                  "train_pairs_per_s": round(count / max(seconds, 1e-9), 2)}
        if config.model_type == "pal-b":
            record["logit_scale"] = float(core.head.scale().detach())
        if val is not None and len(val):
            core.eval()
            m = pair_margins(core, encode_data(core.encoder, val, cache=None))
            record["val_loss"] = float(core.head.loss(m))
            record["val_accuracy"] = float((m > 0).float().mean())
        history.append(record)
        write_record(record, metrics_file if accelerator.is_main_process else None, bar)
        if best.update(record, lambda: _trainable_state(core)):
            break
    if metrics_file:
        metrics_file.close()
    if best.state is not None:
        missing = core.load_state_dict(best.state, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
    core = core.cpu().eval()
    core.encoder.mark_weights_changed()  # new weights: a new fingerprint for the cache
    core.metrics = {**best.metrics(history), "trainable_parameters": n_trainable, "encoder_trainable_parameters": n_encoder}
    core.data_info = {"train_pairs": len(train), "seen_users": len(core.users),
                      "fine_tuned_encoder": {"train_layers": "all" if train_layers is None else train_layers,
                                             "token_level": token_level, "token_weighting": token_weighting if token_level else None,
                                             "mixed_precision": mixed_precision}}
    core.train_config = asdict(tc)
    core.history = history
    return core
