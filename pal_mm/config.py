"""The plain config dataclasses: what a head is (:class:`PALConfig`), how it is trained
(:class:`TrainConfig`) and how new users are fitted (:class:`AdaptConfig`).

This module imports nothing heavy (no torch), so the command line can build its flags, defaults
and help from these fields (``metadata["help"]``) without loading a model library. Values are
checked in ``__post_init__``: a bad value is one :class:`~pal_mm.errors.PalMMError` line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import PalMMError

#: ``PALConfig(k=AUTO)``: choose K on validation data (:mod:`pal_mm.selection`)
AUTO = "auto"
#: the preference-space width d when ``PALConfig.dim`` is not set (see :meth:`PALConfig.default_dim`)
DEFAULT_DIM = 64


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class PALConfig:
    """Everything needed to rebuild a head (saved under ``"head"`` in a model's ``config.json``)."""

    model_type: str = field(default="pal-b", metadata=_help("head type (see `pal-mm heads`): pal-a, pal-b, single-rm, ..."))
    k: int | str = field(default=2, metadata=_help(
        "number of prototypes K, or auto: K = 1, 2, ... trained, each next K accepted while it beats the last accepted "
        "one by more than two standard errors of the per-pair calibrated validation log loss (seen users' val pairs plus a few-shot "
        "refit of them; see pal_mm.selection)", auto=True))
    prompt_dim: int = field(default=0, metadata=_help("prompt embedding width (set from the encoder/data)", cli=False))
    item_dim: int = field(default=0, metadata=_help("item embedding width (set from the encoder/data)", cli=False))
    dim: int | None = field(default=None, metadata=_help(
        f"preference-space width d (default: {DEFAULT_DIM} whatever the input widths, fixed when training starts; "
        "identity and residual projectors: the item width); the defaults study found d = the item width at most 1.7 validation points better and the "
        "item width of large encoders many times slower"))
    projector: str = field(default="mlp2-gelu",
                           metadata=_help("item map f (and PAL-B's g_k): identity | linear | mlp{L}-{relu|gelu|linear}[-dropout{D}][-residual]"))
    prototype_projector: str | None = field(default=None, metadata=_help("PAL-B prototype maps g_k (default: --projector)"))
    pal_a_use_prompt: bool = field(default=True, metadata=_help("PAL-A: f sees [prompt ; item] instead of the item alone", cli=False))
    logit_scale_init: float = field(default=math.log(1 / 0.07), metadata=_help("initial log inverse temperature s", cli=False))
    logit_scale_max: float = field(default=100.0, metadata=_help("cap on e^s", cli=False))
    loss: str | None = field(default=None, metadata=_help("bt | hinge (default: the head type's own)", cli=False))
    label_noise: float | None = field(default=None, metadata=_help(
        "assumed fraction eps of flipped labels in the Bradley-Terry loss: P(chosen) = eps + (1 - 2 eps) sigmoid(m), "
        "so a pair that contradicts the model costs at most -log(eps); 0 is the plain Bradley-Terry loss "
        "(default: the head type's own, 0.2 for pal-b and 0 for the others, fixed when training starts; "
        "the hinge loss ignores it)", metavar="EPS"))
    normalize_inputs: bool = field(default=True, metadata=_help("standardise input embeddings (mean and one scale from train)", cli=False))
    init_seed: int = field(default=0, metadata=_help("seed of the head's initialisation (set from --seed)", cli=False))

    def __post_init__(self):
        if not isinstance(self.model_type, str) or not self.model_type:
            raise PalMMError(f"model_type must be a head name, got {self.model_type!r}")
        if self.k != AUTO and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise PalMMError(f"k must be an integer >= 1 or 'auto', got {self.k!r}")
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1):
            raise PalMMError(f"dim must be an integer >= 1, got {self.dim!r}")
        if self.loss not in (None, "bt", "hinge"):
            raise PalMMError(f"loss must be 'bt' or 'hinge', got {self.loss!r}")
        if self.label_noise is not None:
            if isinstance(self.label_noise, bool) or not isinstance(self.label_noise, (int, float)) \
                    or not 0.0 <= float(self.label_noise) < 0.5:
                raise PalMMError(f"label_noise must be a number in [0, 0.5), got {self.label_noise!r}")
            self.label_noise = float(self.label_noise)

    @property
    def width(self) -> int:
        """d: ``dim``, or the item width for a config saved without one (models trained before the
        default rule; training always fixes ``dim``, see :meth:`default_dim`)."""
        return int(self.dim or self.item_dim)

    def default_dim(self) -> int | None:
        """The width training fixes when ``dim`` is not set: :data:`DEFAULT_DIM`, or None (the item
        width) for projectors that need equal input and output widths (identity, residual)."""
        equal = self.projector == "identity" or self.projector.endswith("-residual")
        return None if equal else DEFAULT_DIM

    def fix_widths(self, prompt_dim: int, item_dim: int) -> None:
        """Set the input widths and, when ``dim`` is unset, d by :meth:`default_dim` (training does this
        once, from the training embeddings)."""
        self.prompt_dim, self.item_dim = int(prompt_dim), int(item_dim)
        if self.dim is None:
            self.dim = self.default_dim()

    def to_dict(self) -> dict:
        return asdict(self)

    def check_widths(self, prompt_emb, item_emb) -> None:
        """Embeddings (b, prompt_dim) and (b, item_dim) for the same b, or a one-line error."""
        if prompt_emb.ndim != 2 or item_emb.ndim != 2 or prompt_emb.shape[0] != item_emb.shape[0]:
            raise PalMMError(f"expected (b, {self.prompt_dim}) and (b, {self.item_dim}) embeddings, "
                             f"got {tuple(prompt_emb.shape)} and {tuple(item_emb.shape)}")
        if prompt_emb.shape[1] != self.prompt_dim or item_emb.shape[1] != self.item_dim:
            raise PalMMError(f"inputs have widths prompt={prompt_emb.shape[1]}, item={item_emb.shape[1]}; this model "
                             f"takes prompt={self.prompt_dim}, item={self.item_dim}")

    @classmethod
    def from_dict(cls, d: dict) -> "PALConfig":
        if not isinstance(d, dict):
            raise PalMMError(f"a head config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PalMMError(f"unknown PAL config key(s): {', '.join(sorted(unknown))}")
        # a model saved before label_noise existed was trained with the plain Bradley-Terry loss
        return cls(**{"label_noise": 0.0, **d})


@dataclass
class TrainConfig:
    """Optimisation settings, measured by the defaults study (``experiments/defaults``) on validation data
    over generated mixtures (K* 1-5, widths 8-1024, scales x0.01-x100, label noise, 20-500 pairs per
    user, 10-1,000 users) and the two embedded defaults. Inputs are standardised first, so no rate
    depends on the embeddings' scale; the user logits and PAL-A's prototypes learn 10x faster than in
    the paper (5e-2: at 5e-3 a mixture sits on the K = 1 plateau and early stopping ends it there)."""

    epochs: int = field(default=30, metadata=_help("maximum number of epochs"))
    batch_size: int = field(default=64, metadata=_help("pairs per optimisation step"))
    # The paper uses 1e-4 for the projectors at batch size 4 with thousands of steps per epoch. At
    # batch 64 the defaults study's validation selection picks 1e-3 over 3e-3 (the lowest mean
    # validation regret over its generated mixtures; see experiments/defaults/README.md).
    lr_projector: float = field(default=1e-3, metadata=_help("learning rate of the projectors f and g_k (and the single RM)"))
    lr_prototypes: float = field(default=5e-2, metadata=_help("learning rate of PAL-A's prototype points P (the paper: 5e-3)"))
    lr_users: float = field(default=5e-2, metadata=_help(
        "learning rate of the users' mixture logits (the paper: 5e-3, with which mixtures stall at K = 1)"))
    lr_logit_scale: float = field(default=0.1, metadata=_help("learning rate of PAL-B's logit scale"))
    lr_encoder: float = field(default=1e-5, metadata=_help("encoder learning rate (only when it is fine-tuned)"))
    weight_decay: float = field(default=0.01, metadata=_help("decoupled weight decay of the projectors (AdamW)"))
    patience: int = field(default=5, metadata=_help("epochs without a better validation loss before stopping (0: never stop early)"))
    restarts: int | None = field(default=None, metadata=_help(
        "initialisations to train (seeds seed, seed+1, ...); the lowest validation loss is kept (needs --val). "
        "Default: 2 for a K >= 2 model with clustered users and validation data (restart 0 clusters users by "
        "what they prefer, restart 1 by how that depends on the prompt), else 1"))
    k_init: str = field(default="cluster", metadata=_help(
        "how a K >= 2 model starts: cluster (each user on the prototype of their cluster of preferences, prototypes "
        "fresh), split (the same users, prototypes copied from a fitted K = 1 model) or random (user logits N(0, 1)); "
        "cluster and split fit K = 1 first and keep it (copied K times) if no epoch beats it on validation",
        choices=("cluster", "split", "random")))
    # 0 was chosen on held-out validation pairs over the defaults study's data sets and seeds
    # (experiments/defaults/split_evidence.py): mean regret 0.06 points, 1 SE 0.20, 2 SE 0.34, 3 SE 0.42.
    split_evidence: float = field(default=0.0, metadata=_help(
        "a K >= 2 model replaces its K = 1 start (its epoch 0) only when its mean per-pair validation loss is lower "
        "by more than this many standard errors of the mean difference (default 0: the lowest validation loss wins)",
        metavar="SE"))
    seed: int = field(default=0, metadata=_help("random seed (initialisation and batch order)"))
    mixed_precision: str = field(default="auto", metadata=_help(
        "accelerate mixed precision; auto = bf16 when fine-tuning the encoder on a bf16 GPU, else no",
        choices=("auto", "no", "bf16", "fp16")))
    cpu: bool = field(default=False, metadata=_help("train on the CPU even when a GPU is present"))
    progress: bool = field(default=True, metadata=_help("show progress bars", cli=False))
    report_to: str = field(default="none", metadata=_help("none | csv | tensorboard | any accelerate tracker (metrics.jsonl is always written)"))
    # encoder fine-tuning (PAL-B-Large): the encoder is trained with the head, inputs re-encoded every step
    finetune_encoder: bool = field(default=False, metadata=_help("train the encoder together with the head"))
    train_layers: int | None = field(default=None, metadata=_help(
        "fine-tune only the top N blocks of each encoder backbone (implies --finetune-encoder)", metavar="N"))
    token_level: bool = field(default=False, metadata=_help(
        "PAL-B token-level loss with cumulative window weights (causal LMs; implies --finetune-encoder)"))
    token_weighting: str = field(default="cumulative", metadata=_help("token-level window weights",
                                                                       choices=("cumulative", "mean", "last")))
    micro_batch_size: int | None = field(default=None, metadata=_help(
        "split each batch into micro-batches of this size (gradient accumulation; memory)"))
    max_grad_norm: float | None = field(default=None, metadata=_help(
        "clip the gradient norm (0: never); default 1.0 when fine-tuning the encoder, no clipping otherwise"))

    @property
    def fine_tunes_encoder(self) -> bool:
        return bool(self.finetune_encoder or self.train_layers is not None or self.token_level)

    def restarts_for(self, k: int, has_val: bool) -> int:
        """``restarts``, or its default: 2 for K >= 2 with clustered users and validation data, else 1."""
        if self.restarts is not None:
            return int(self.restarts)
        clustered = k >= 2 and self.k_init != "random" and not self.fine_tunes_encoder
        return 2 if clustered and has_val else 1

    @property
    def grad_clip(self) -> float:
        """The gradient-norm bound in force (0: none)."""
        if self.max_grad_norm is not None:
            return float(self.max_grad_norm)
        return 1.0 if self.fine_tunes_encoder else 0.0

    def __post_init__(self):
        _positive_int(self, "epochs", "batch_size")
        if self.restarts is not None:
            _positive_int(self, "restarts")
        _non_negative_int(self, "patience")
        _non_negative_float(self, "split_evidence")
        _positive_float(self, "lr_projector", "lr_prototypes", "lr_users", "lr_logit_scale", "lr_encoder")
        _non_negative_float(self, "weight_decay")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise PalMMError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.train_layers is not None:
            _non_negative_int(self, "train_layers")
        if self.micro_batch_size is not None:
            _positive_int(self, "micro_batch_size")
        if self.max_grad_norm is not None:
            _non_negative_float(self, "max_grad_norm")
        if self.k_init not in ("split", "cluster", "random"):
            raise PalMMError(f"k_init must be split, cluster or random, got {self.k_init!r}")
        if self.token_weighting not in ("cumulative", "mean", "last"):
            raise PalMMError(f"token_weighting must be cumulative, mean or last, got {self.token_weighting!r}")


@dataclass
class AdaptConfig:
    """How new users' K logits are fitted. With the model's prior (the default, for models that have
    one): the MAP under the prior learned from the seen users, by Gauss-Newton steps to convergence,
    with a Laplace posterior. Without it: a fixed number of Adam steps (no model selection either way)."""

    prior: bool = field(default=True, metadata=_help(
        "MAP under the model's prior over users (learned from the seen users at training time) with a posterior; "
        "--no-prior: the plain fit of --steps Adam steps"))
    prior_strength: float | None = field(default=None, metadata=_help(
        "multiply the prior's precision by this instead of the strength chosen on validation pairs at training time"))
    steps: int = field(default=300, metadata=_help("optimisation steps without the prior (fixed; no model selection; 0 keeps the initial weights)"))
    lr: float = field(default=0.05, metadata=_help("learning rate of the new users' logits (without the prior)"))
    l2: float = field(default=0.0, metadata=_help("pull the logits toward 0, the uniform mixture (without the prior)"))
    init: str = field(default="zeros", metadata=_help("initial logits without the prior: zeros (uniform mixture) or random "
                                                      "(N(0, 1)); the prior's fit starts at the prior mean",
                                                      choices=("zeros", "random")))
    seed: int = field(default=0, metadata=_help("seed of the random initialisation"))

    def __post_init__(self):
        _non_negative_int(self, "steps")
        _positive_float(self, "lr")
        _non_negative_float(self, "l2")
        if self.prior_strength is not None:
            _positive_float(self, "prior_strength")
        if not isinstance(self.prior, bool):
            raise PalMMError(f"prior must be true or false, got {self.prior!r}")
        if self.init not in ("zeros", "random"):
            raise PalMMError(f"init must be zeros or random, got {self.init!r}")


# ----- value checks (one line each) ----------------------------------------------------------
def _number(obj, name: str, kind: type) -> float:
    value = getattr(obj, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(float(value)):
        raise PalMMError(f"{name.replace('_', '-')} must be {'an integer' if kind is int else 'a finite number'}, got {value!r}")
    return value


def _positive_int(obj, *names: str) -> None:
    for n in names:
        if _number(obj, n, int) < 1:
            raise PalMMError(f"{n.replace('_', '-')} must be >= 1, got {getattr(obj, n)!r}")


def _non_negative_int(obj, *names: str) -> None:
    for n in names:
        if _number(obj, n, int) < 0:
            raise PalMMError(f"{n.replace('_', '-')} must be >= 0, got {getattr(obj, n)!r}")


def _positive_float(obj, *names: str) -> None:
    for n in names:
        if _number(obj, n, float) <= 0:
            raise PalMMError(f"{n.replace('_', '-')} must be > 0, got {getattr(obj, n)!r}")


def _non_negative_float(obj, *names: str) -> None:
    for n in names:
        if _number(obj, n, float) < 0:
            raise PalMMError(f"{n.replace('_', '-')} must be >= 0, got {getattr(obj, n)!r}")
