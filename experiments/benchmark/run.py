"""One benchmark for every method on every data set that is present: ``make benchmark``.

    python -m experiments.benchmark.run                          # config.yaml (offline: < 20 min on 2 CPU cores)
    python -m experiments.benchmark.run --quick --out /tmp/b     # smoke run (synthetic only, seconds)
    python -m experiments.benchmark.run --datasets summary_default --methods pal-b,lore

Protocol (every method gets exactly the same data, vectors, splits, seeds and selection rule):

1. **Data** (:mod:`.data`): the offline data sets (generated mixtures with K* in {1, 2, 3, 5}, the
   summary default, the text-to-image default's beta = 1 variant) and every real one whose directory
   ``data_scripts`` has written (PRISM, PersonalRewardBench, Persona, TL;DR, PersonalLLM). Each data set
   is encoded once (through the embedding cache); every method trains on the same vectors.
2. **Seen users**, per (data set, method, seed): ``pal_mm.fit`` with the LIBRARY DEFAULTS of that
   head (``PALConfig(model_type=...)``, ``TrainConfig(seed=seed)``: nothing is tuned per data set or
   method), best epoch on ``seen_val``; accuracy on ``seen_test``; learned parameters; training time
   (wall seconds of ``fit`` on one torch thread).
3. **New users**: :mod:`pal_mm.fewshot` (the one protocol): per seed one split of the unseen users
   (nested n-pair training sets, ``test_pairs`` fixed test pairs per user or the rest), ``adapt`` with
   the library's ``AdaptConfig`` (gradient steps on the user weights; VPL infers its latents with its
   encoder), accuracy per n; mean +- sample std over seeds (:func:`pal_mm.fewshot.mean_std`).
4. **Downstream** (:mod:`.downstream`): per-user best-of-N on the two embedded defaults.

Outputs (``--out``, default experiments/benchmark/results): ``results.json`` (``{"datasets": {NAME:
{"methods": {METHOD: {"seen", "unseen": {n: [mean, std]}, "params", "train_s"}}}}, "downstream": ...}``),
``details.json`` (per seed, per group, oracle, sizes, timings), ``results.md`` and ``benchmark.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from encoders.precomputed import PrecomputedEncoder
from pal_mm import AdaptConfig, PALConfig, TrainConfig, evaluate, fit
from pal_mm.fewshot import adapt_curve, curve_summary, fewshot_split

from ..common import (Clock, add_config_args, config_path, load_config, machine, make_log, mean_std, run_in_processes,
                      write_json, write_text)
from .data import BenchData, load_all
from .downstream import downstream
from .report import plot, results_markdown

HERE = Path(__file__).resolve().parent
log = make_log("benchmark")


# --------------------------------------------------------------------------------------------
# one task = one (data set, method, seed) model
# --------------------------------------------------------------------------------------------
_STATE: dict = {}


def _init_worker(data: dict[str, BenchData], cfg: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE.update(data=data, cfg=cfg)


def run_task(name: str, method: str, seed: int) -> dict:
    data: BenchData = _STATE["data"][name]
    cfg = _STATE["cfg"]
    c0 = time.process_time()
    encoder = PrecomputedEncoder(*data.dims)  # the vectors are precomputed: a placeholder of the right widths
    head = PALConfig(**cfg["methods"][method])
    train = TrainConfig(**{**cfg.get("train", {}), "seed": seed, "progress": False})
    with Clock() as clock:
        model = fit(data.splits["seen_train"], data.splits["seen_val"], encoder, head, train, user_groups=data.groups)
    m = evaluate(model, data.splits["seen_test"], groups=data.groups)
    acfg = AdaptConfig(**{**cfg.get("adapt", {}), "seed": seed})
    split = fewshot_split(data.splits["unseen"].user_ids, data.ns, seed, data.test_pairs)
    shots = adapt_curve(model, data.splits["unseen"], [split], acfg, groups=data.groups)
    out = {"dataset": name, "method": method, "seed": seed, "seen": m["accuracy"],
           "seen_per_group": {g: v["accuracy"] for g, v in m.get("per_group", {}).items()},
           "val_accuracy": model.metrics.get("val_accuracy"), "best_epoch": model.metrics.get("best_epoch"),
           "epochs_run": model.metrics.get("epochs_run"), "params": int(model.num_learned_parameters()),
           "params_without_users": int(model.head.num_learned_parameters(include_users=False)),
           "train_s": round(clock.wall, 2), "train_cpu_s": round(clock.cpu, 2), "shots": [vars(r) for r in shots]}
    if data.candidates is not None:
        out["downstream"] = downstream(model, data, split, int(cfg["downstream"]["n"]), acfg)
    out["cpu_s"] = round(time.process_time() - c0, 2)
    return out


def run_tasks(tasks: list[tuple], data: dict[str, BenchData], cfg: dict, jobs: int) -> list[dict]:
    """All tasks in ``jobs`` spawned processes of one torch thread each (jobs = 1: in this process)."""
    init = (data, cfg, int(cfg.get("threads_per_job", 1)))
    return run_in_processes(run_task, tasks, _init_worker, init, jobs, lambda r: log(_line(r)))


def _line(r: dict) -> str:
    shots = {s["n"]: s["accuracy"] for s in r["shots"]}
    mid = max((n for n in shots if n <= 10), default=None)
    new = f"  new n={mid} {shots[mid]:.3f}" if mid is not None else ""
    return (f"  {r['dataset']:<22} {r['method']:<9} seed {r['seed']}  seen {r['seen']:.3f}{new}  "
            f"epoch {r['best_epoch']}/{r['epochs_run']}  {r['train_s']:.1f}s")


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
def aggregate(runs: list[dict], data: list[BenchData], methods: list[str]) -> tuple[dict, dict]:
    """(results.json, details.json) from the per-task records."""
    from pal_mm.fewshot import ShotResult

    results = {"datasets": {}, "downstream": {}}
    details = {"datasets": {}}
    for d in data:
        res, det = {}, {}
        for method in methods:
            rs = sorted((r for r in runs if r["dataset"] == d.name and r["method"] == method), key=lambda r: r["seed"])
            if not rs:
                continue
            curve = curve_summary(ShotResult(**s) for r in rs for s in r["shots"])
            res[method] = {"seen": round(mean_std(r["seen"] for r in rs)[0], 4),
                           "unseen": {n: [round(v, 4) for v in ms] for n, ms in curve["accuracy"].items()},
                           "params": rs[0]["params"], "train_s": round(mean_std(r["train_s"] for r in rs)[0], 2)}
            det[method] = {"seen": mean_std(r["seen"] for r in rs), "seen_per_seed": [r["seen"] for r in rs],
                           "seen_per_group": {g: mean_std(r["seen_per_group"][g] for r in rs) for g in rs[0]["seen_per_group"]},
                           "unseen_per_group": curve["per_group"], "unseen_users": curve["users"],
                           "val_accuracy": [r["val_accuracy"] for r in rs], "best_epoch": [r["best_epoch"] for r in rs],
                           "epochs_run": [r["epochs_run"] for r in rs], "params_without_users": rs[0]["params_without_users"],
                           "train_s": [r["train_s"] for r in rs], "train_cpu_s": [r["train_cpu_s"] for r in rs],
                           "cpu_s": [r["cpu_s"] for r in rs]}
            if "downstream" in rs[0]:
                down = {part: {"accuracy": [round(v, 4) for v in mean_std(r["downstream"][part]["accuracy"] for r in rs)],
                               "per_group": {g: [round(v, 4) for v in mean_std(r["downstream"][part]["per_group"][g] for r in rs)]
                                             for g in rs[0]["downstream"][part]["per_group"]}}
                        for part in rs[0]["downstream"]}
                meta = rs[0]["downstream"]["seen"]
                down["candidates"], down["sets"] = meta["candidates"], meta["sets"]
                if "unseen" in rs[0]["downstream"]:
                    down["unseen"]["n"] = rs[0]["downstream"]["unseen"]["n"]
                results["downstream"].setdefault(d.name, {})[method] = down
        results["datasets"][d.name] = {"methods": res}
        details["datasets"][d.name] = {"kind": d.kind, "description": d.description, "sizes": d.sizes(), "ns": d.ns,
                                       "test_pairs": d.test_pairs, "oracle": d.oracle, "methods": det}
    return results, details


# --------------------------------------------------------------------------------------------
def default_encoder_factory(name: str, args: dict):
    from encoders import create_encoder

    return create_encoder(name, **args)


def make_cache(cfg: dict):
    from encoders.cache import EmbeddingCache

    return None if cfg.get("cache") is False else EmbeddingCache()


def resolve_jobs(jobs, n_tasks: int) -> int:
    n = min(os.cpu_count() or 1, 8) if jobs == "auto" else int(jobs)
    return max(1, min(n, n_tasks))


def main(argv: list[str] | None = None, encoder_factory=default_encoder_factory) -> dict:
    ap = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), HERE)
    ap.add_argument("--datasets", help="comma-separated data set names (default: every present one)")
    ap.add_argument("--methods", help="comma-separated methods (default: the config's)")
    ap.add_argument("--jobs", default=None, help="worker processes (default from the config; auto = one per core)")
    args = ap.parse_args(argv)
    cfg_file = config_path(args, HERE)
    cfg = load_config(cfg_file)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(cfg["methods"])
    unknown = sorted(set(methods) - set(cfg["methods"]))
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; the config has {list(cfg['methods'])}")
    only = {d.strip() for d in args.datasets.split(",")} if args.datasets else None
    t0, c0 = time.perf_counter(), time.process_time()
    log(f"config {cfg_file.name}; methods {methods}; seeds {cfg['seeds']}")
    with Clock() as prep:
        data = load_all(cfg, log, encoder_factory, make_cache(cfg), only)
    if not data:
        raise SystemExit("error: no data set to run")
    tasks = [(d.name, m, s) for d in data for m in methods for s in cfg["seeds"]]
    # the slowest first (VPL, large data), so the workers finish together
    size = {d.name: len(d.splits["seen_train"]) * (d.dims[0] + d.dims[1]) for d in data}
    tasks.sort(key=lambda t: (-(t[1] == "vpl"), -size[t[0]]))
    jobs = resolve_jobs(args.jobs or cfg.get("jobs", "auto"), len(tasks))
    log(f"{len(data)} data sets ready in {prep.wall:.0f}s; {len(tasks)} runs in {jobs} process(es)")
    with Clock() as train:
        runs = run_tasks(tasks, {d.name: d for d in data}, cfg, jobs)
    results, details = aggregate(runs, data, methods)
    details.update(config=cfg, config_file=cfg_file.name, methods=methods,
                   timings_s={"data_and_encoding": round(prep.wall, 1), "runs": round(train.wall, 1),
                              "total": round(time.perf_counter() - t0, 1), "cpu_main_process": round(time.process_time() - c0, 1),
                              "cpu_runs": round(sum(r["cpu_s"] for r in runs), 1)},
                   machine={**machine(), "jobs": jobs, "threads_per_job": int(cfg.get("threads_per_job", 1))})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_json(out / "details.json", details)
    write_text(out / "results.md", results_markdown(results, details))
    plot(results, details, out / "benchmark.png")
    log(f"wrote {out}/results.json, details.json, results.md, benchmark.png in {time.perf_counter() - t0:.0f}s")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
