"""Text-to-image PAL on the offline Pick-a-Filter default: seen users vs beta, unseen users vs n,
learned parameters vs the encoder.

    python experiments/t2i/run.py                      # full run (make reproduce-t2i), < 15 min on 2 CPU cores
    python experiments/t2i/run.py --quick --out /tmp/t2i   # small data, one seed (< 2 min; used by the tests)
    python experiments/t2i/run.py --encoder open-clip --encoder-arg model_name=ViT-B-32 ...

Steps (all numbers come from the library: ``fit``, ``adapt``, ``evaluate``):

1. build ``data/t2i_default`` with :mod:`data_scripts.t2i_default` when it is missing;
2. encode every distinct caption and image of every split once (through the embedding cache);
3. seen users: for each beta and method (PAL-B K=1, PAL-B K=2, single reward model) and seed, train on
   ``seen_train`` from ``restarts`` initialisations, keep the best epoch of the best one on ``seen_val``, and
   report accuracy on ``seen_test``;
4. unseen users (beta = 1): per seed, a fixed test set of ``test_pairs`` pairs per user and nested training
   sets of n pairs; ``adapt`` learns only each new user's K logits (fixed steps, no model selection);
5. write ``results.json`` (schema below), ``details.json``, ``results.md`` and three PNG plots.

``results.json``: ``{"encoder", "seen": {beta: {method: acc}}, "unseen": {method: {n: [mean, std]}},
"learned_params": {method: int}, "encoder_params": int}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (ROOT, HERE):  # data_scripts is not an installed package; t2i_report.py lives here
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from encoders.atomic import write_json  # noqa: E402
from encoders.precomputed import PrecomputedEncoder  # noqa: E402
from pal_mm.adaptation import adapt  # noqa: E402
from pal_mm.data import PreferenceData  # noqa: E402
from pal_mm.embedding import EncodedPairs, check_modalities, encode_values  # noqa: E402
from pal_mm.evaluation import evaluate  # noqa: E402
from pal_mm.config import AdaptConfig, PALConfig, TrainConfig  # noqa: E402
from pal_mm.training import fit  # noqa: E402
from t2i_report import plot_all, results_markdown  # noqa: E402  (experiments/t2i/t2i_report.py)

METHODS = ("pal-b-k1", "pal-b-k2", "single-rm")
SPLITS = ("seen_train", "seen_val", "seen_test", "unseen")


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(args: argparse.Namespace) -> dict:
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        cfg = deep_merge(cfg, yaml.safe_load((HERE / "quick.yaml").read_text()))
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


# --------------------------------------------------------------------------------------------
# data and embeddings
# --------------------------------------------------------------------------------------------
def ensure_data(cfg: dict, log) -> Path:
    """Build the dataset when it is missing; refuse a dataset of the other size."""
    data = Path(cfg["data"])
    if not data.is_absolute():
        data = ROOT / data
    meta = data / "meta.json"
    if not meta.is_file():
        from data_scripts import t2i_default

        log(f"building {data} (quick={cfg['quick_data']}) ...")
        t2i_default.build(data, seed=cfg["data_seed"], quick=cfg["quick_data"], log=log)
    built = json.loads(meta.read_text())
    if bool(built.get("quick")) != bool(cfg["quick_data"]):
        raise SystemExit(f"{data} holds the {'quick' if built.get('quick') else 'full'} dataset; "
                         f"pass --data DIR for the {'quick' if cfg['quick_data'] else 'full'} one")
    return data


def load_splits(data: Path, betas: list[float]) -> dict[tuple[float, str], PreferenceData]:
    return {(b, s): PreferenceData.load(data / f"beta_{float(b)}" / f"{s}.jsonl") for b in betas for s in SPLITS}


def make_cache(args: argparse.Namespace):
    """The on-disk embedding cache in ``--cache-dir``, or None with ``--no-cache``."""
    if args.no_cache:
        return None
    from encoders.cache import EmbeddingCache

    return EmbeddingCache(Path(args.cache_dir))


@dataclass
class Tables:
    """Embeddings of every distinct caption and image (``prompts`` (P, dp), ``items`` (I, di)) and,
    per split, the rows of each pair in them; small enough to ship to worker processes."""

    prompts: torch.Tensor
    items: torch.Tensor
    splits: dict  # (beta, split) -> (prompt rows, chosen rows, rejected rows, user ids)

    def pairs(self, beta: float, split: str) -> EncodedPairs:
        p, c, r, users = self.splits[(beta, split)]
        return EncodedPairs(self.prompts[p], self.items[c], self.items[r], users)


def encode_tables(encoder, splits: dict, cache) -> Tables:
    """Encode every distinct caption and image of all splits once (through the cache)."""
    for d in splits.values():
        check_modalities(encoder, d)
    prompt_row = {p: i for i, p in enumerate(dict.fromkeys(p for d in splits.values() for p in d.prompts))}
    item_row = {x: i for i, x in enumerate(dict.fromkeys(x for d in splits.values() for x in (*d.chosen, *d.rejected)))}
    prompts = encode_values(encoder, list(prompt_row), "prompt", cache)
    items = encode_values(encoder, list(item_row), "item", cache)
    encoder.bind_dims(prompts.shape[1], items.shape[1])
    rows = {key: (torch.tensor([prompt_row[p] for p in d.prompts]), torch.tensor([item_row[x] for x in d.chosen]),
                  torch.tensor([item_row[x] for x in d.rejected]), list(d.user_ids)) for key, d in splits.items()}
    return Tables(prompts, items, rows)


def unseen_splits(user_ids: list[str], ns: list[int], test_pairs: int, seed: int) -> tuple[dict[int, list[int]], list[int]]:
    """Per user, a seeded shuffle: the first ``test_pairs`` rows are the test set (the same for every
    n), the next n rows the training set (nested in n). Returns ({n: train indices}, test indices)."""
    by_user: dict[str, list[int]] = {}
    for i, u in enumerate(user_ids):
        by_user.setdefault(u, []).append(i)
    train = {n: [] for n in ns}
    test = []
    for u in sorted(by_user):
        idx = by_user[u][:]
        random.Random(f"unseen:{seed}:{u}").shuffle(idx)
        if len(idx) < test_pairs + max(ns):
            raise SystemExit(f"unseen user {u} has {len(idx)} pairs; need {test_pairs} test + {max(ns)} train")
        test += idx[:test_pairs]
        for n in ns:
            train[n] += idx[test_pairs:test_pairs + n]
    return {n: sorted(v) for n, v in train.items()}, sorted(test)


# --------------------------------------------------------------------------------------------
# experiment: one task = one (beta, method, seed) model
# --------------------------------------------------------------------------------------------
def head_config(cfg: dict, method: str) -> PALConfig:
    spec = {k: v for k, v in cfg["methods"][method].items() if k != "train"}
    return PALConfig(**{**cfg["head"], **spec})


def train_config(cfg: dict, method: str, seed: int) -> TrainConfig:
    """The shared ``train`` settings, updated by the method's own ``train`` entry; ``restarts``
    initialisations (seeds seed, seed+1, ...), the one with the lowest seen_val loss kept by ``fit``."""
    return TrainConfig(**{**cfg["train"], **cfg["methods"][method].get("train", {}), "seed": seed, "progress": False,
                          "restarts": int(cfg.get("restarts", 1))})


def mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if len(values) > 1 else 0.0


_STATE: dict = {}


def _init_worker(tables: Tables, cfg: dict, groups: dict, threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE.update(tables=tables, cfg=cfg, groups=groups)


def run_task(beta: float, method: str, seed: int) -> dict:
    """Train one model on the seen users of ``beta`` (best epoch on seen_val), test it on seen_test;
    at the unseen beta, also fit the unseen users for every n. Uses the worker state."""
    tables, cfg, groups = _STATE["tables"], _STATE["cfg"], _STATE["groups"]
    t0, c0 = time.perf_counter(), time.process_time()
    # the embeddings are precomputed; the model's encoder is only a placeholder of the right widths
    encoder = PrecomputedEncoder(prompt_dim=tables.prompts.shape[1], item_dim=tables.items.shape[1])
    train, val = tables.pairs(beta, "seen_train"), tables.pairs(beta, "seen_val")
    model = fit(train, val, encoder, head_config(cfg, method), train_config(cfg, method, seed * 1000), user_groups=groups)
    restarts = model.metrics.get("restarts") or [
        {k: model.metrics[k] for k in ("val_loss", "val_accuracy", "best_epoch", "epochs_run")} | {"seed": seed * 1000}]
    m = evaluate(model, tables.pairs(beta, "seen_test"), groups=groups)
    out = {"beta": beta, "method": method, "seed": seed, "accuracy": m["accuracy"],
           "val_accuracy": model.metrics.get("val_accuracy"), "best_epoch": model.metrics["best_epoch"],
           "epochs_run": model.metrics["epochs_run"], "learned_params": model.num_learned_parameters(), "restarts": restarts,
           "per_group": {g: v["accuracy"] for g, v in m.get("per_group", {}).items()}}
    ucfg = cfg["unseen"]
    if beta == float(ucfg["beta"]):
        ns = [int(n) for n in ucfg["n"]]
        unseen = tables.pairs(beta, "unseen")
        train_idx, test_idx = unseen_splits(unseen.user_ids, ns, int(ucfg["test_pairs"]), seed)
        test = unseen.subset(test_idx)
        out["unseen"] = {}
        for n in ns:
            new = copy.deepcopy(model)  # adapt works in place
            adapt(new, unseen.subset(train_idx[n]), AdaptConfig(**{**ucfg["adapt"], "seed": seed}), user_groups=groups)
            out["unseen"][str(n)] = evaluate(new, test, groups=groups)["accuracy"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["cpu_seconds"] = round(time.process_time() - c0, 1)
    return out


def run_tasks(tasks: list[tuple], tables: Tables, cfg: dict, groups: dict, jobs: int, log) -> list[dict]:
    """All tasks, in ``jobs`` spawned processes of one thread each (jobs = 1: in this process)."""
    threads = int(cfg.get("train_threads", 1))
    results = []
    if jobs <= 1:
        before = torch.get_num_threads()
        _init_worker(tables, cfg, groups, threads)
        try:
            for t in tasks:
                results.append(run_task(*t))
                log(_task_line(results[-1]))
        finally:
            torch.set_num_threads(before)
        return results
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(tables, cfg, groups, threads)) as pool:
        for r in pool.map(run_task, *zip(*tasks)):
            results.append(r)
            log(_task_line(r))
    return results


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

    data_dir = ensure_data(cfg, log)
    timings["data_s"] = time.perf_counter() - t_start
    betas = [float(b) for b in cfg["betas"]]
    splits = load_splits(data_dir, betas)
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
    ub = float(cfg["unseen"]["beta"])
    # longest first (K=2 at high beta, then the unseen beta), so the workers finish together
    tasks = sorted(((b, m, s) for b in betas for m in methods for s in seeds),
                   key=lambda t: (-(t[1] == "pal-b-k2"), -(t[0] == ub), -t[0], t[1], t[2]))
    jobs = resolve_jobs(args.jobs or cfg.get("jobs", "auto"), len(tasks))
    log(f"training {len(tasks)} models ({len(betas)} betas x {len(methods)} methods x {len(seeds)} seeds) in {jobs} process(es)")
    runs = run_tasks(tasks, tables, cfg, groups, jobs, log)
    timings["train_s"] = time.perf_counter() - t0
    timings["train_cpu_s"] = sum(r["cpu_seconds"] for r in runs)
    timings["total_s"] = time.perf_counter() - t_start

    by = {(r["beta"], r["method"]): [] for r in runs}
    for r in sorted(runs, key=lambda r: r["seed"]):
        by[(r["beta"], r["method"])].append(r)
    seen_runs = {str(b): {m: by[(b, m)] for m in methods} for b in betas}
    ns = [str(int(n)) for n in cfg["unseen"]["n"]]
    results = {
        "encoder": cfg["encoder"],
        "seen": {str(b): {m: round(mean_std([r["accuracy"] for r in by[(b, m)]])[0], 4) for m in methods} for b in betas},
        "unseen": {m: {n: [round(v, 4) for v in mean_std([r["unseen"][n] for r in by[(ub, m)]])] for n in ns} for m in methods},
        "learned_params": {m: int(by[(ub, m)][0]["learned_params"]) for m in methods},
        "encoder_params": int(sum(p.numel() for p in encoder.parameters())),
    }
    for b in betas:
        log(f"seen  beta={b:<4} " + "  ".join(f"{m} {results['seen'][str(b)][m]:.4f}" for m in methods))
    for m in methods:
        log(f"unseen {m:<9} " + "  ".join(f"n={n}: {results['unseen'][m][n][0]:.4f}" for n in ns))
    meta = json.loads((data_dir / "meta.json").read_text())
    details = {
        "config": cfg,
        "encoder": {"name": cfg["encoder"], "args": cfg.get("encoder_args", {}), "fingerprint": encoder.fingerprint(),
                    "prompt_dim": encoder.prompt_dim, "item_dim": encoder.item_dim},
        "data": {"dir": str(data_dir.relative_to(ROOT)) if data_dir.is_relative_to(ROOT) else str(data_dir), "users": meta["users"], "unique_images": meta["unique_images"],
                 "pairs": meta["betas"]},
        "seen_runs": seen_runs,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "jobs": jobs, "threads_per_job": int(cfg.get("train_threads", 1))},
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
    (out / "results.md").write_text(results_markdown(results, details))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(HERE / "config.yaml"))
    p.add_argument("--quick", action="store_true", help="small dataset, one seed, short training (< 2 min)")
    p.add_argument("--encoder", help="registered image-text encoder (default from the config: effnet-minilm)")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE", help="encoder keyword argument (repeatable)")
    p.add_argument("--data", help="dataset directory (built when missing)")
    p.add_argument("--out", default=None, help="results directory (default experiments/t2i/results)")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--cache-dir", default=str(HERE / "cache"), help="embedding cache directory")
    p.add_argument("--no-cache", action="store_true", help="encode without the on-disk embedding cache")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for training (default from the config: auto = one per CPU core, up to 8)")
    args = p.parse_args(argv)
    cfg = load_config(args)
    out = Path(args.out) if args.out else HERE / "results"
    t0 = time.perf_counter()
    run = run_experiment(cfg, args)
    write_outputs(out, run["results"], run["details"])
    print(f"wrote {out}/results.json, results.md and plots in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
