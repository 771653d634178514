"""``pal-mm train``: fit PAL on seen users and save a model directory."""

from __future__ import annotations

from ..config import PALConfig, TrainConfig
from ..training import fit
from . import _common as c


def add_parser(sub):
    p = sub.add_parser("train", help="train a PAL model on seen users")
    c.add_config_flag(p)
    p.add_argument("--data", help="training pairs (file, save_to_disk dir, or Hub dataset name)")
    p.add_argument("--val", help="validation pairs of the same users (early stopping / best epoch)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.add_encoder_flags(p)
    c.add_cache_flag(p)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="pal-b", choices=["pal-a", "pal-b", "single-rm"], help="head type")
    m.add_argument("--k", type=int, default=2, help="number of prototypes K")
    m.add_argument("--dim", type=int, default=None, help="preference-space width (default: item embedding width)")
    m.add_argument("--projector", default="mlp2-gelu", help="identity | linear | mlp{L}-{relu|gelu}[-dropout{D}][-residual]")
    m.add_argument("--prototype-projector", default=None, help="PAL-B g_k projector (default: --projector)")
    m.add_argument("--no-normalize", action="store_true", help="do not standardise input embeddings")
    o = p.add_argument_group("optimisation")
    d = TrainConfig()
    o.add_argument("--epochs", type=int, default=d.epochs)
    o.add_argument("--batch-size", type=int, default=d.batch_size)
    o.add_argument("--lr-projector", type=float, default=d.lr_projector)
    o.add_argument("--lr-prototypes", type=float, default=d.lr_prototypes)
    o.add_argument("--lr-users", type=float, default=d.lr_users)
    o.add_argument("--lr-logit-scale", type=float, default=d.lr_logit_scale)
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs (0: off)")
    o.add_argument("--seed", type=int, default=d.seed)
    o.add_argument("--restarts", type=int, default=d.restarts,
                   help="train from this many initialisations (seeds seed, seed+1, ...) and keep the lowest val loss (needs --val)")
    o.add_argument("--mixed-precision", default=d.mixed_precision, choices=["auto", "no", "bf16", "fp16"])
    o.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    o.add_argument("--report-to", default="none", help="none | csv | tensorboard | any accelerate tracker (metrics.jsonl is always written)")
    f = p.add_argument_group("encoder fine-tuning (PAL-B-Large; see pal_mm/finetune.py)")
    f.add_argument("--finetune-encoder", action="store_true", help="train the encoder together with the head")
    f.add_argument("--train-layers", type=int, default=None, metavar="N", help="fine-tune only the top N encoder blocks (implies --finetune-encoder)")
    f.add_argument("--lr-encoder", type=float, default=d.lr_encoder, help="encoder learning rate")
    f.add_argument("--token-level", action="store_true", help="PAL-B token-level loss with cumulative weights (causal LMs; implies --finetune-encoder)")
    return p


def run(args) -> int:
    c.require(args, "data", "out")
    encoder = c.make_encoder(args)
    train = c.load_data(args.data, encoder)
    val = c.load_data(args.val, encoder) if args.val else None
    config = PALConfig(model_type=args.model, k=args.k, dim=args.dim, projector=args.projector,
                       prototype_projector=args.prototype_projector, normalize_inputs=not args.no_normalize)
    tc = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr_projector=args.lr_projector,
                     lr_prototypes=args.lr_prototypes, lr_users=args.lr_users, lr_logit_scale=args.lr_logit_scale,
                     weight_decay=args.weight_decay, patience=args.patience, seed=args.seed, restarts=args.restarts,
                     mixed_precision=args.mixed_precision, cpu=args.cpu, progress=not args.quiet, lr_encoder=args.lr_encoder,
                     report_to=args.report_to, finetune_encoder=args.finetune_encoder, train_layers=args.train_layers,
                     token_level=args.token_level)
    cache = c.make_cache(args)
    with c.atomic_output_dir(args.out, args.overwrite) as tmp:
        model = fit(train, val, encoder, config, tc, cache=cache, metrics_path=tmp / "metrics.jsonl")
        model.data_info.update(train_file=str(args.data), val_file=str(args.val) if args.val else None)
        model.write_files(tmp)
        c.write_run_config(tmp, args)
    summary = ", ".join(f"{k}={v}" for k, v in model.metrics.items())
    if cache is not None and encoder.name != "precomputed":
        print(f"embeddings ({encoder.name}): {cache.summary()}")
    print(f"saved {args.model} K={args.k} ({len(model.users)} users, {model.num_learned_parameters():,} learned parameters) to {args.out}; {summary}")
    return 0
