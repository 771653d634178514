"""``pal-mm train``: fit a head on seen users and save a model directory."""

from __future__ import annotations

from ..config import PALConfig, TrainConfig
from . import _common as c

HEAD_FLAGS = {"model_type": "--model"}  # the README's `--model pal-a | pal-b | single-rm`
EXAMPLES = """\
  pal-mm train --data train.jsonl --val val.jsonl --encoder minilm --model pal-b --k 2 --out runs/m
  pal-mm train --data train.jsonl --val val.jsonl --restarts 3 --seed 0 --out runs/m --overwrite
  pal-mm train --data train.jsonl --val val.jsonl --k auto --out runs/m   # K chosen on the validation pairs
  pal-mm train --config run.yaml --resume        # continue a killed run from its last epoch
"""


def add_parser(sub):
    p = c.add_command(sub, "train", "train a PAL model on seen users", EXAMPLES)
    p.add_argument("--data", help="training pairs (file, save_to_disk dir, or Hub dataset name)")
    p.add_argument("--val", help="validation pairs of the same users (early stopping, best epoch, restarts)")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory (the old one stays until the new one is complete)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run that was writing --out from its last completed epoch (same data and flags)")
    c.add_encoder_flags(p)
    c.add_runtime_flags(p)
    m = p.add_argument_group("model")
    c.add_fields(m, PALConfig, only=("model_type", "k", "dim", "projector", "prototype_projector", "label_noise"), flags=HEAD_FLAGS)
    m.add_argument("--no-normalize", action="store_true", help="do not standardise input embeddings (default: standardise)")
    o = p.add_argument_group("optimisation")
    c.add_fields(o, TrainConfig, skip=("finetune_encoder", "train_layers", "token_level", "token_weighting", "lr_encoder",
                                      "micro_batch_size", "max_grad_norm"))
    f = p.add_argument_group("encoder fine-tuning (PAL-B-Large)")
    c.add_fields(f, TrainConfig, only=("finetune_encoder", "train_layers", "token_level", "token_weighting", "lr_encoder",
                                      "micro_batch_size", "max_grad_norm"))
    return p


def run(args) -> int:
    c.require(args, "data", "out")
    config = c.config_from_args(PALConfig, args, HEAD_FLAGS, normalize_inputs=not args.no_normalize)
    tc = c.config_from_args(TrainConfig, args, progress=not args.quiet)
    from accelerate import PartialState

    # under `accelerate launch` (or torchrun) this joins the process group: the processes share the
    # extraction and train one model together (DDP); only the main process writes anything
    state = PartialState(cpu=tc.cpu)
    if state.num_processes > 1 and args.resume:
        raise c.PalMMError("--resume continues a run in one process; start it without `accelerate launch`")
    target = c.check_output(args.out, args.overwrite, resume=args.resume) if state.is_main_process else None
    from ..selection import fit  # training.fit, or a choice of K on validation (--k auto)
    from ..splitting import mixture_outcome

    encoder = c.make_encoder(args)
    train = c.load_data(args.data, encoder)
    val = c.load_data(args.val, encoder) if args.val else None
    cache = c.make_cache(args)
    if not state.is_main_process:
        fit(train, val, encoder, config, tc, cache=cache)  # this process's share; the main process saves
        return 0
    with c.resumable_output_dir(target, args.overwrite, args.resume, say=c.notice) as work:
        model = fit(train, val, encoder, config, tc, cache=cache, metrics_path=work.directory / "metrics.jsonl",
                    checkpoint_dir=work.checkpoints, resume=work.resuming)
        model.data_info.update(train_file=str(args.data), val_file=str(args.val) if args.val else None)
        model.write_files(work.directory)
        c.write_run_config(work.directory, args)
    summary = ", ".join(f"{k}={v}" for k, v in model.metrics.items() if not isinstance(v, (dict, list)))
    beliefs = model.metrics.get("beliefs", {})
    summary += "".join(f", {k}={beliefs[k]}" for k in ("inv_temperature", "prior_strength") if k in beliefs)
    chosen = model.metrics.get("k_selection")
    if chosen:
        print("K on validation: " + ", ".join(f"K={r['k']} loss {r['score']:.4f}" for r in chosen["candidates"])
              + f" -> K={chosen['chosen']}")
    outcome = mixture_outcome(model.metrics)
    if outcome:
        print(f"mixture: {outcome}")
    if cache is not None and encoder.uses_cache:
        print(f"embeddings ({encoder.name}): {cache.summary()}")
    print(f"saved {config.model_type} K={model.config.k} ({len(model.users)} users, {model.num_learned_parameters():,} learned "
          f"parameters) to {args.out}; {summary}")
    return 0
