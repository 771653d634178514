"""Text-to-image PAL on the offline Pick-a-Filter default: seen users vs beta, unseen users vs n,
learned parameters vs the encoder.

    python -m experiments.t2i.run                         # full run (make reproduce-t2i), < 15 min on 2 CPU cores
    python -m experiments.t2i.run --quick --out /tmp/t2i  # small data, one seed (< 2 min)
    python -m experiments.t2i.run --data data/pickapic    # any built text-to-image data (one variant or several)
    python -m experiments.t2i.run --encoder open-clip --encoder-arg model_name=ViT-B-32 ...

Steps (all numbers come from the library: ``fit``, ``pal_mm.fewshot``, ``evaluate``):

1. build ``data/t2i_default`` with :mod:`data_scripts.t2i_default` when it is missing, and read its
   variants (one dataset directory per beta) through :mod:`pal_mm.splits` (see ``data.py``);
2. encode every distinct caption and image of every split once (through the embedding cache);
3. seen users: for each beta and method (PAL-B K=1, PAL-B K=2, single reward model) and seed, train on
   ``seen_train`` from ``restarts`` initialisations, keep the best epoch of the best one on ``seen_val``, and
   report accuracy on ``seen_test``;
4. unseen users (beta = 1): the library's few-shot protocol per seed (split seed = training seed):
   ``test_pairs`` fixed test pairs per user and nested n-pair training sets; ``adapt`` learns only each
   new user's K logits (fixed steps, no model selection);
5. write ``results.json`` (schema below), ``details.json``, ``results.md`` and three PNG plots.

``results.json``: ``{"encoder", "seen": {beta: {method: acc}}, "unseen": {method: {n: [mean, std]}},
"learned_params": {method: int}, "encoder_params": int}``; means and sample stds (ddof = 1) over seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from encoders.precomputed import PrecomputedEncoder
from pal_mm import AdaptConfig, PALConfig, TrainConfig, evaluate, fit
from pal_mm.embedding import EncodedPairs, check_modalities, encode_values
from pal_mm.fewshot import adapt_curve, curve_summary, fewshot_split

from ..common import (ROOT, add_config_args, config_path, load_config, machine, make_log, mean_std, repo_path,
                      run_in_processes, write_json, write_text)
from .data import describe, ensure_data, load_variants
from .report import plot_all, results_markdown

HERE = Path(__file__).resolve().parent
METHODS = ("pal-b-k1", "pal-b-k2", "single-rm")
SPLITS = ("seen_train", "seen_val", "seen_test", "unseen")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def resolve_config(args: argparse.Namespace) -> dict:
    cfg = load_config(config_path(args, HERE))
    if args.encoder:
        cfg["encoder"] = args.encoder
        cfg["encoder_args"] = {}
    for item in args.encoder_arg:
        key, _, value = item.partition("=")
        cfg.setdefault("encoder_args", {})[key.strip().replace("-", "_")] = yaml.safe_load(value)
    if args.data:
        cfg["data"] = args.data
    if args.seeds:
        cfg["seeds"] = [int(s) for s in args.seeds.split(",")]
    return cfg


def head_config(cfg: dict, method: str) -> PALConfig:
    spec = {k: v for k, v in cfg["methods"][method].items() if k != "train"}
    return PALConfig(**{**(cfg.get("head") or {}), **spec})


def train_config(cfg: dict, method: str, seed: int) -> TrainConfig:
    """The shared ``train`` settings (library defaults where the config names none), updated by the
    method's own ``train`` entry."""
    return TrainConfig(**{**(cfg.get("train") or {}), **cfg["methods"][method].get("train", {}), "seed": seed,
                          "progress": False})


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------
def make_cache(args: argparse.Namespace):
    """The on-disk embedding cache in ``--cache-dir``, or None with ``--no-cache``."""
    if args.no_cache:
        return None
    from encoders.cache import EmbeddingCache

    return EmbeddingCache(Path(args.cache_dir))


@dataclass
class Tables:
    """Embeddings of every distinct caption and image (``prompts`` (P, dp), ``items`` (I, di)) and,
    per (variant, split), the rows of each pair in them; small enough to ship to worker processes."""

    prompts: torch.Tensor
    items: torch.Tensor
    splits: dict  # (variant key, split) -> (prompt rows, chosen rows, rejected rows, user ids)

    def pairs(self, key: str, split: str) -> EncodedPairs:
        p, c, r, users = self.splits[(key, split)]
        return EncodedPairs(self.prompts[p], self.items[c], self.items[r], users)


def _key(value):
    """A hashable key for a caption, an image path or a precomputed vector."""
    return tuple(value) if isinstance(value, list) else value


def encode_tables(encoder, splits: dict, cache) -> Tables:
    """Encode every distinct caption and image (or vector) of all splits once (through the cache)."""
    for d in splits.values():
        check_modalities(encoder, d)
    prompt_values = {_key(p): p for d in splits.values() for p in d.prompts}
    item_values = {_key(x): x for d in splits.values() for x in (*d.chosen, *d.rejected)}
    prompt_row = {k: i for i, k in enumerate(prompt_values)}
    item_row = {k: i for i, k in enumerate(item_values)}
    prompts = encode_values(encoder, list(prompt_values.values()), "prompt", cache)
    items = encode_values(encoder, list(item_values.values()), "item", cache)
    encoder.bind_dims(prompts.shape[1], items.shape[1])
    rows = {key: (torch.tensor([prompt_row[_key(p)] for p in d.prompts]), torch.tensor([item_row[_key(x)] for x in d.chosen]),
                  torch.tensor([item_row[_key(x)] for x in d.rejected]), list(d.user_ids)) for key, d in splits.items()}
    return Tables(prompts, items, rows)


# --------------------------------------------------------------------------------------------
# experiment: one task = one (variant, method, seed) model
# --------------------------------------------------------------------------------------------
_STATE: dict = {}


def _init_worker(tables: Tables, cfg: dict, groups: dict, unseen_key: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE.update(tables=tables, cfg=cfg, groups=groups, unseen_key=unseen_key)


def run_task(key: str, method: str, seed: int) -> dict:
    """Train one model on the seen users of variant ``key`` (best epoch on seen_val), test it on
    seen_test; on the unseen variant, also run the few-shot protocol. Uses the worker state."""
    tables, cfg, groups = _STATE["tables"], _STATE["cfg"], _STATE["groups"]
    t0, c0 = time.perf_counter(), time.process_time()
    # the embeddings are precomputed; the model's encoder is only a placeholder of the right widths
    encoder = PrecomputedEncoder(prompt_dim=tables.prompts.shape[1], item_dim=tables.items.shape[1])
    train, val = tables.pairs(key, "seen_train"), tables.pairs(key, "seen_val")
    model = fit(train, val, encoder, head_config(cfg, method), train_config(cfg, method, seed * 1000), user_groups=groups)
    restarts = model.metrics.get("restarts") or [
        {k: model.metrics[k] for k in ("val_loss", "val_accuracy", "best_epoch", "epochs_run")} | {"seed": seed * 1000}]
    m = evaluate(model, tables.pairs(key, "seen_test"), groups=groups)
    out = {"beta": key, "method": method, "seed": seed, "accuracy": m["accuracy"],
           "val_accuracy": model.metrics.get("val_accuracy"), "best_epoch": model.metrics["best_epoch"],
           "epochs_run": model.metrics["epochs_run"], "learned_params": model.num_learned_parameters(), "restarts": restarts,
           "dim": model.config.width, "projector": model.config.projector, "k_init": model.metrics.get("k_init"),
           "per_group": {g: v["accuracy"] for g, v in m.get("per_group", {}).items()}}
    if key == _STATE["unseen_key"]:
        ucfg = cfg["unseen"]
        unseen = tables.pairs(key, "unseen")
        split = fewshot_split(unseen.user_ids, ucfg["n"], seed, test_pairs=int(ucfg["test_pairs"]))
        out["fewshot"] = adapt_curve(model, unseen, [split], AdaptConfig(**{**ucfg["adapt"], "seed": seed}), groups=groups)
        out["unseen"] = {str(r.n): r.accuracy for r in out["fewshot"]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["cpu_seconds"] = round(time.process_time() - c0, 1)
    return out


def run_tasks(tasks: list[tuple], tables: Tables, cfg: dict, groups: dict, unseen_key: str, jobs: int, log) -> list[dict]:
    """All tasks, in ``jobs`` spawned processes of one thread each (jobs = 1: in this process)."""
    init = (tables, cfg, groups, unseen_key, int(cfg.get("train_threads", 1)))
    return run_in_processes(run_task, tasks, _init_worker, init, jobs, lambda r: log(_task_line(r)))


def resolve_jobs(jobs, n_tasks: int) -> int:
    """``auto``: one process per CPU core (up to 8), never more than there are tasks."""
    n = min(os.cpu_count() or 1, 8) if jobs == "auto" else int(jobs)
    return max(1, min(n, n_tasks))


def _task_line(r: dict) -> str:
    return (f"  beta={r['beta']:<4} {r['method']:<9} seed={r['seed']}  test {r['accuracy']:.4f}  val {r['val_accuracy']:.4f}  "
            f"best epoch {r['best_epoch']}/{r['epochs_run']}  {r['seconds']:.0f}s")


def run_experiment(cfg: dict, args: argparse.Namespace, log=print) -> dict:
    t_start = time.perf_counter()
    timings = {}
    from encoders import create_encoder

    data_dir = ensure_data(repo_path(cfg["data"]), bool(cfg["quick_data"]), int(cfg["data_seed"]), log)
    variants = load_variants(data_dir, None if cfg.get("betas") is None else [str(float(b)) for b in cfg["betas"]])
    timings["data_s"] = time.perf_counter() - t_start
    keys = [v.key for v in variants]
    unseen_key = str(float(cfg["unseen"]["beta"])) if len(variants) > 1 else keys[0]
    splits = {(v.key, s): v.dataset[s] for v in variants for s in SPLITS}
    groups = {u: g for d in splits.values() for u, g in d.user_groups().items()}

    t0 = time.perf_counter()
    encoder = create_encoder(cfg["encoder"], **cfg.get("encoder_args", {}))
    tables = encode_tables(encoder, splits, make_cache(args))
    timings["encode_s"] = time.perf_counter() - t0
    log(f"encoded {len(tables.items)} images and {len(tables.prompts)} captions with {cfg['encoder']} "
        f"(prompt {encoder.prompt_dim}-d, image {encoder.item_dim}-d) in {timings['encode_s']:.1f}s")

    t0 = time.perf_counter()
    seeds = [int(s) for s in cfg["seeds"]]
    methods = [m for m in METHODS if m in cfg["methods"]]
    order = {k: i for i, k in enumerate(keys)}
    # longest first (K=2 at high beta, then the unseen variant), so the workers finish together
    tasks = sorted(((k, m, s) for k in keys for m in methods for s in seeds),
                   key=lambda t: (-(t[1] == "pal-b-k2"), -(t[0] == unseen_key), -order[t[0]], t[1], t[2]))
    jobs = resolve_jobs(args.jobs or cfg.get("jobs", "auto"), len(tasks))
    log(f"training {len(tasks)} models ({len(keys)} variants x {len(methods)} methods x {len(seeds)} seeds) in {jobs} process(es)")
    runs = run_tasks(tasks, tables, cfg, groups, unseen_key, jobs, log)
    timings["train_s"] = time.perf_counter() - t0
    timings["train_cpu_s"] = sum(r["cpu_seconds"] for r in runs)
    timings["total_s"] = time.perf_counter() - t_start

    by = {(r["beta"], r["method"]): [] for r in runs}
    for r in sorted(runs, key=lambda r: r["seed"]):
        by[(r["beta"], r["method"])].append(r)
    curves = {m: curve_summary(x for r in by[(unseen_key, m)] for x in r.pop("fewshot")) for m in methods}
    results = {
        "encoder": cfg["encoder"],
        "seen": {k: {m: round(mean_std(r["accuracy"] for r in by[(k, m)])[0], 4) for m in methods} for k in keys},
        "unseen": {m: {n: [round(v, 4) for v in c] for n, c in curves[m]["accuracy"].items()} for m in methods},
        "learned_params": {m: int(by[(unseen_key, m)][0]["learned_params"]) for m in methods},
        "encoder_params": int(sum(p.numel() for p in encoder.parameters())),
    }
    for k in keys:
        log(f"seen  beta={k:<4} " + "  ".join(f"{m} {results['seen'][k][m]:.4f}" for m in methods))
    for m in methods:
        log(f"unseen {m:<9} " + "  ".join(f"n={n}: {v[0]:.4f}" for n, v in results["unseen"][m].items()))
    data = describe(data_dir, variants)
    data["dir"] = str(data_dir.relative_to(ROOT)) if data_dir.is_relative_to(ROOT) else str(data_dir)
    details = {
        "config": cfg,
        "encoder": {"name": cfg["encoder"], "args": cfg.get("encoder_args", {}), "fingerprint": encoder.fingerprint(),
                    "prompt_dim": encoder.prompt_dim, "item_dim": encoder.item_dim},
        "data": data,
        "unseen_variant": unseen_key,
        "seen_runs": {k: {m: by[(k, m)] for m in methods} for k in keys},
        "unseen_by_group": {m: curves[m]["per_group"] for m in methods},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {**machine(), "jobs": jobs, "threads_per_job": int(cfg.get("train_threads", 1))},
    }
    return {"results": results, "details": details}


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def write_outputs(out: Path, results: dict, details: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("results.json", results), ("details.json", details)):
        write_json(out / name, obj)
    plot_all(out, results, details)
    write_text(out / "results.md", results_markdown(results, details))


def main(argv: list[str] | None = None) -> int:
    p = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), HERE)
    p.add_argument("--encoder", help="registered image-text encoder (default from the config: effnet-minilm)")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE", help="encoder keyword argument (repeatable)")
    p.add_argument("--data", help="data folder: variants (meta.json 'variants') or one dataset directory (the default is built when missing)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--cache-dir", default=str(HERE / "cache"), help="embedding cache directory")
    p.add_argument("--no-cache", action="store_true", help="encode without the on-disk embedding cache")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for training (default from the config: auto = one per CPU core, up to 8)")
    args = p.parse_args(argv)
    cfg = resolve_config(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    run = run_experiment(cfg, args, make_log("t2i"))
    write_outputs(out, run["results"], run["details"])
    print(f"wrote {out}/results.json, results.md and plots in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
