"""Choosing K on validation data: ``PALConfig(k="auto")``, ``pal-mm train --k auto``, :func:`select_k`.

For K = 1, 2, ... a model is trained (see :mod:`pal_mm.splitting`: users start on their clusters'
prototypes, and the accepted smaller model, prototypes copied, is its epoch 0 and fallback) and scored
on two kinds of validation pairs, never on test data:

* **seen users**: every validation pair of the seen users, with the users' trained weights;
* **few-shot**: seen users treated as new users, the way :mod:`pal_mm.fewshot` treats them: per user,
  the first ``n`` validation pairs of the protocol's seeded order (``n`` = half a user's validation
  pairs, at most 10) fit a fresh weight vector with :func:`pal_mm.adaptation.adapt`, the rest are
  scored. Extra prototypes that only fit noise make these fits worse.

Each K gets the per-pair log losses of both parts under the model's calibrated probabilities
``P(chosen) = sigmoid(a m)`` (``a``: ``model.beliefs.inv_temperature``, fitted on the validation pairs when
training ends): a proper score whatever the head's training loss. (The training loss itself is a poorer
yardstick: PAL-B's label-noise loss caps what a badly wrong pair costs, and with it the evidence a further
K brings; on the defaults study's K* = 3 mixtures it found K* in 0 of 3 seeds, the calibrated log loss in
3 of 3.) The rule is forward
selection with a test: K = 1 is accepted; each next K is trained with the accepted model as its
fallback and accepted when its mean per-pair loss beats the accepted model's by more than
:data:`K_EVIDENCE` (2) standard errors of the mean difference on the same pairs, unless it kept that
fallback (best epoch 0: the accepted model with its prototypes copied, which adds no group; its few-shot
refit can still score differently, because duplicated prototypes change the refit's prior); K stops growing
after :data:`MAX_MISSES` misses in a row (or at the end of ``ks``), and the last accepted K is
returned. The per-K numbers are written to ``metrics.jsonl`` (``{"k_selection": K, ...}`` lines after
each K's epochs) and kept in ``model.metrics["k_selection"]``, which the model card shows.

:func:`fit` is ``pal_mm.fit``: :func:`pal_mm.training.fit`, or :func:`select_k` when ``config.k`` is
``"auto"``.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from encoders.atomic import write_text
from encoders.base import Encoder

from .adaptation import adapt
from .config import AUTO, AdaptConfig, PALConfig, TrainConfig
from .data import PreferenceData
from .embedding import EncodedPairs, check_modalities, encode_data
from .errors import PalMMError
from .fewshot import fewshot_split
from .heads import get_head_class
from .model import PALModel
from .scoring import pair_margins
from .training import fit as fit_k

#: the Ks tried by default (in order; stops early, see the module docstring)
DEFAULT_KS = (1, 2, 3, 4, 5, 6, 7, 8)
#: at most this many validation pairs per user fit the few-shot weights
MAX_FEWSHOT_PAIRS = 10
#: K stops growing after this many Ks in a row that do not beat the accepted one
MAX_MISSES = 2
#: the next K is accepted when it beats the accepted one by more than this many standard errors: a claim of one
#: more group in the population, made on clear evidence (its hit rate: experiments/defaults, auto-K). Within a
#: K model, the choice between its K = 1 start and the mixture is TrainConfig.split_evidence's (default 0).
K_EVIDENCE = 2.0


def fit(train, val, encoder: Encoder, config: PALConfig | None = None, train_config: TrainConfig | None = None,
        cache=None, metrics_path: str | Path | None = None, user_groups: dict | None = None,
        checkpoint_dir: str | Path | None = None, resume: bool = False, **kwargs) -> PALModel:
    """``pal_mm.fit``: train on seen users (:func:`pal_mm.training.fit`); with ``config.k == "auto"``
    choose K on validation data (:func:`select_k`)."""
    if config is not None and config.k == AUTO:
        return select_k(train, val, encoder, config, train_config, cache=cache, metrics_path=metrics_path,
                        user_groups=user_groups, checkpoint_dir=checkpoint_dir, resume=resume, **kwargs)
    return fit_k(train, val, encoder, config, train_config, cache=cache, metrics_path=metrics_path,
                 user_groups=user_groups, checkpoint_dir=checkpoint_dir, resume=resume, **kwargs)


def fewshot_rows(val: EncodedPairs, seed: int) -> tuple[int, list[int], list[int]]:
    """(n, fitting rows, scored rows) of the few-shot part: ``n`` = half the median validation pairs
    per user (1 to :data:`MAX_FEWSHOT_PAIRS`); users with ``<= n`` pairs are left out."""
    counts = statistics.median(list(_counts(val.user_ids).values())) if len(val) else 0
    n = int(max(1, min(MAX_FEWSHOT_PAIRS, counts // 2)))
    split = fewshot_split(val.user_ids, [n], seed)
    return n, split.train[n], split.test[n]


def _counts(ids) -> dict:
    out: dict = {}
    for u in ids:
        out[u] = out.get(u, 0) + 1
    return out


def losses_and_hits(model: PALModel, pairs: EncodedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) per-pair log losses ``-log sigmoid(a m)`` of the calibrated probabilities (``a``: the model's
    inverse temperature, 1 without beliefs) and (n,) correctness of known users' pairs."""
    a = model.beliefs.inv_temperature if model.beliefs is not None else 1.0
    with torch.no_grad():
        m = pair_margins(model, pairs)
        return F.softplus(-a * m).double(), (m > 0).double()


def fewshot_losses(model: PALModel, val: EncodedPairs, rows: tuple[list[int], list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses and correctness on the scored rows after fitting the seen users afresh on the
    fitting rows, as new users (:func:`pal_mm.adaptation.adapt`, default settings)."""
    fit_rows, test_rows = rows
    if not fit_rows or not test_rows:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    encoder = model.encoder
    work = copy.deepcopy(model, {id(encoder): encoder})
    tag = lambda pairs: EncodedPairs(pairs.prompt, pairs.chosen, pairs.rejected,  # noqa: E731
                                     [f"{u} [k-selection]" for u in pairs.user_ids])
    adapt(work, tag(val.subset(fit_rows)), AdaptConfig())
    return losses_and_hits(work, tag(val.subset(test_rows)))


def _score(model: PALModel, val: EncodedPairs, rows) -> tuple[dict, torch.Tensor]:
    seen_loss, seen_ok = losses_and_hits(model, val)
    few_loss, few_ok = fewshot_losses(model, val, rows)
    both = torch.cat([seen_loss, few_loss])
    row = {"val_loss": float(seen_loss.mean()), "val_accuracy": float(seen_ok.mean()),
           "fewshot_loss": float(few_loss.mean()) if len(few_loss) else None,
           "fewshot_accuracy": float(few_ok.mean()) if len(few_ok) else None, "score": float(both.mean())}
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}, both


def accepts(candidate: torch.Tensor, current: torch.Tensor, evidence: float = K_EVIDENCE) -> tuple[bool, float | None]:
    """(does the candidate's mean per-pair loss beat the current model's by more than ``evidence``
    standard errors of the mean difference?, that gain in standard errors)."""
    d = candidate - current
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    if se == 0.0:
        return False, None
    gain = -float(d.mean()) / se
    return gain > evidence, round(gain, 3)


def select_k(train: PreferenceData | EncodedPairs, val: PreferenceData | EncodedPairs | None, encoder: Encoder,
             config: PALConfig, train_config: TrainConfig | None = None, ks=None, cache=None,
             metrics_path: str | Path | None = None, user_groups: dict | None = None,
             checkpoint_dir: str | Path | None = None, resume: bool = False) -> PALModel:
    """Train K = 1, 2, ... (``ks``, default :data:`DEFAULT_KS`; the first is accepted) and return the model
    of the K the rule in the module docstring picks, with ``metrics["k_selection"]``."""
    tc = train_config or TrainConfig()
    ks = sorted({int(k) for k in (ks or DEFAULT_KS)})
    if not ks or ks[0] < 1:
        raise PalMMError(f"K candidates must be integers >= 1, got {ks}")
    head_cls = get_head_class(config.model_type)
    if not head_cls.has_user_state or not head_cls.simplex_users:
        raise PalMMError(f"k = auto needs a head with prototypes and simplex users, not {config.model_type!r}")
    if tc.fine_tunes_encoder:
        raise PalMMError("k = auto trains one model per K; it is not supported when fine-tuning the encoder")
    if isinstance(train, PreferenceData):
        user_groups = user_groups or train.user_groups()
        check_modalities(encoder, train)
        train = encode_data(encoder, train, cache)
    if isinstance(val, PreferenceData):
        check_modalities(encoder, val)
        val = encode_data(encoder, val, cache)
    if val is None or len(val) == 0:
        raise PalMMError("k = auto chooses K on validation pairs of the seen users: give --val")
    n, *rows = fewshot_rows(val, tc.seed)
    models, losses, table, records = {}, {}, [], []
    accepted, misses = None, 0
    for k in ks:
        sub = Path(checkpoint_dir) / f"k{k}" if checkpoint_dir else None
        # the fallback of K is the accepted model (cluster: fresh prototypes, so any smaller model can be
        # copied in); split continues from copies of K = 1's prototype
        source = (models.get(accepted) if tc.k_init == "cluster" else models.get(1)) if accepted else None
        # trackers (--report-to) get no directory per K: the per-K epochs go to metrics.jsonl below
        model = fit_k(train, val, encoder, replace(copy.deepcopy(config), k=k), replace(tc, report_to="none"),
                      user_groups=user_groups, checkpoint_dir=sub, resume=resume, split_source=source)
        models[k] = model
        row, losses[k] = _score(model, val, rows)
        ok, gain = (True, None) if accepted is None else accepts(losses[k], losses[accepted])
        if source is not None and model.metrics.get("best_epoch") == 0:
            ok = False  # it kept its fallback, the accepted model copied: no further group, whatever the refit scores
        row = {"k": k, **row, "gain_se": gain, "accepted": ok, "best_epoch": model.metrics.get("best_epoch")}
        table.append(row)
        records += [{"k": k, **r} for r in model.history] + [{"k_selection": k, **{x: y for x, y in row.items() if x != "k"}}]
        if metrics_path:
            write_text(Path(metrics_path), "".join(json.dumps(r) + "\n" for r in records))
        accepted, misses = (k, 0) if ok else (accepted, misses + 1)
        if misses >= MAX_MISSES:
            break
    model = models[accepted]
    model.metrics["k_selection"] = {
        "chosen": accepted, "fewshot_pairs": n, "fewshot_users": len({val.user_ids[i] for i in rows[1]}),
        "rule": (f"K grows while a K model beats the last accepted one by more than {K_EVIDENCE:g} standard errors "
                 f"of the mean per-pair validation loss (seen-user pairs + few-shot pairs); stops after {MAX_MISSES} misses"),
        "candidates": table}
    return model
