"""New users: the prior, calibrated posteriors, active querying and online updates (``make reproduce-new-users``).

    python -m experiments.new_users.run                       # config.yaml: mixture, summary, t2i defaults
    python -m experiments.new_users.run --quick --out /tmp/nu # quick.yaml: a small mixture (smoke test)

Per data set (settings in config.yaml): one seen-user model is trained (``pal_mm.fit``: best epoch, the
calibration temperature and the prior's strength all chosen on the seen users' VALIDATION pairs). Then:

* **seen users**: accuracy, ECE and Brier on ``seen_test`` (n = 0 in the ECE table);
* **new users**, per split seed: every new user's rows in the seeded order of :func:`pal_mm.data.user_orders`;
  the last ``test_pairs`` are the user's held-out pairs, the rest is the pool (labels hidden);
  - *population*: the user at the prior mean (no pairs);
  - *random*: the first n pool pairs, ``adapt`` with the prior (MAP + Laplace posterior) and without it
    (``AdaptConfig(prior=False)``: 300 Adam steps, the pre-prior behaviour);
  - *asked*: ``rounds`` rounds of ``pal_mm.query.select_queries(model, pool - answered, per_round)`` (the
    model knows the user from the answers so far; a new user starts from the prior) -> the answers (the
    hidden labels) -> ``adapt`` with the prior on all answers so far; for the EIG strategy and the cheaper
    uncertainty proxy;
  accuracy (ties excluded), ECE and Brier of the posterior predictive on the held-out pairs;
* **update latency**: ``PALModel.update_user_embeddings`` one pair at a time (embeddings precomputed;
  one torch thread) vs one ``adapt`` refit on the same pairs (held-out accuracy, weight difference).

Outputs (``--out``, default experiments/new_users/results): results.json, results.md, asked_vs_random.png,
ece_vs_n.png, reliability_<data set>.png. Mean +- sample std (ddof = 1) over split seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from encoders import create_encoder
from pal_mm import AdaptConfig, PALConfig, PreferenceData, TrainConfig, adapt, evaluate, fit
from pal_mm.data import user_orders
from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.beliefs import user_basis
from pal_mm.query import select_queries

from ..common import Clock, add_config_args, config_path, load_config, machine, make_log, mean_std, repo_path, write_text
from .report import plot_all, results_markdown

HERE = Path(__file__).resolve().parent
log = make_log("new_users")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def load_splits(dc: dict) -> tuple[dict[str, PreferenceData], str, str]:
    """({seen_train, seen_val, seen_test, unseen}, encoder name, description)."""
    if dc["source"] == "synthetic":
        from data_scripts import synthetic

        d = dc["data"]
        protos, w = synthetic.make_population(d["k_true"], d["dim"], d["seen_users"] + d["new_users"], d["seed"], d["alpha"])
        seen, new = w[: d["seen_users"]], w[d["seen_users"]:]
        kw = {"prompt_dim": d["prompt_dim"], "beta": d["beta"]}
        s = 1000 * d["seed"]
        rows = {"seen_train": synthetic.make_pairs(protos, seen, d["train_pairs"], s + 1, **kw),
                "seen_val": synthetic.make_pairs(protos, seen, d["val_pairs"], s + 2, **kw),
                "seen_test": synthetic.make_pairs(protos, seen, d["test_pairs"], s + 3, **kw),
                "unseen": synthetic.make_pairs(protos, new, d["new_pairs"], s + 4, user_prefix="new", **kw)}
        desc = (f"generated ideal-point mixture, K* = {d['k_true']}, {d['seen_users']} seen users x {d['train_pairs']} pairs, "
                f"{d['new_users']} new users x {d['new_pairs']} pairs")
        return {k: PreferenceData.from_rows(v, source=f"mixture:{k}") for k, v in rows.items()}, "precomputed", desc
    from pal_mm.splits import load_dataset

    if dc["source"] == "summary_default":
        from data_scripts.summary_default import DEFAULT_OUT, build

        root = repo_path(dc.get("data", DEFAULT_OUT))
        if not (root / "unseen.jsonl").is_file():
            log(f"building {root} (data_scripts.summary_default)")
            build(str(root))
        desc = "offline summary default (drug reviews, 10 seen users 7 long / 3 short, length labels)"
    elif dc["source"] == "t2i_default":
        from experiments.t2i.data import ensure_data, load_variants

        root = ensure_data(repo_path(dc.get("data", "data/t2i_default")), False, 0, log)
        variant = load_variants(root, [str(float(dc["beta"]))])[0]
        desc = f"offline text-to-image default, beta = {dc['beta']} (cool / warm users, bundled photos)"
        return dict(variant.dataset.splits), dc["encoder"], desc
    else:
        raise SystemExit(f"error: unknown data source {dc['source']!r}")
    return dict(load_dataset(root).splits), dc["encoder"], desc


# --------------------------------------------------------------------------------------------
# new users: population, random, asked
# --------------------------------------------------------------------------------------------
def scores(model, pairs: EncodedPairs, keep_probs: bool = False) -> dict:
    m = evaluate(model, pairs, probabilities=keep_probs)
    out = {k: m[k] for k in ("accuracy", "ece", "brier")}
    if keep_probs:
        out["probabilities"] = m["probabilities"]
    return out


def population(model, users: list[str]):
    m = copy.deepcopy(model)
    mean = m.beliefs.collapsed_prior()[0][None] @ user_basis(m.config.k, m.head.simplex_users).T
    m.add_users(users, mean.expand(len(users), -1))
    return m


def hidden_pool(data: PreferenceData, rows: list[int], rng: random.Random) -> tuple[PreferenceData, list[int]]:
    """The pool as the query sees it: each pair's two responses in a random order (no label)."""
    pool = data.subset(rows)
    for i in range(len(pool)):
        if rng.random() < 0.5:
            pool.chosen[i], pool.rejected[i] = pool.rejected[i], pool.chosen[i]
    return pool, rows


def run_seed(model, new: PreferenceData, enc: EncodedPairs, cfg: dict, seed: int, cache=None) -> dict:
    orders = user_orders(new.user_ids, seed)
    tp = int(cfg["test_pairs"])
    test_rows = sorted(i for rows in orders.values() for i in rows[-tp:])
    pools = {u: rows[:-tp] for u, rows in orders.items()}
    test = enc.subset(test_rows)
    users = sorted(orders)
    out = {"population": scores(population(model, users), test), "random_prior": {}, "random_plain": {}, "asked": {}}
    keep = set(cfg.get("reliability_n", []))
    for n in cfg["random_n"]:
        train = enc.subset(sorted(i for rows in pools.values() for i in rows[:n]))
        out["random_prior"][n] = scores(adapt(copy.deepcopy(model), train), test, keep_probs=n in keep)
        out["random_plain"][n] = scores(adapt(copy.deepcopy(model), train, AdaptConfig(prior=False)), test)
    for strategy in cfg["strategies"]:
        rng = random.Random(seed)
        answered: dict[str, list[int]] = {u: [] for u in users}
        current, curve, seconds = model, {}, []
        for r in range(1, int(cfg["rounds"]) + 1):
            done = {i for v in answered.values() for i in v}
            left = [i for u in users for i in pools[u] if i not in done]
            pool, rows = hidden_pool(new, left, rng)
            t = time.perf_counter()
            picked = select_queries(current, pool, int(cfg["per_round"]), strategy=strategy, cache=cache)
            seconds.append(time.perf_counter() - t)
            for u, idx in picked.items():
                answered[u] += [rows[j] for j in idx]
            current = adapt(copy.deepcopy(model), enc.subset(sorted(i for v in answered.values() for i in v)))
            curve[r * int(cfg["per_round"])] = scores(current, test)
        out["asked"][strategy] = {"curve": curve, "query_seconds_per_round": statistics.fmean(seconds)}
    return out


def update_latency(model, enc: EncodedPairs, cfg: dict) -> dict:
    """Sequential update_user vs one adapt refit on the same pairs (seed 0 order)."""
    lc = cfg["latency"]
    orders = user_orders(enc.user_ids, 0)
    users = sorted(orders)[: int(lc["users"])]
    tp = int(cfg["test_pairs"])
    rows = [i for u in users for i in orders[u][: int(lc["pairs"])]]
    order = sorted(rows, key=lambda i: (orders[enc.user_ids[i]].index(i), enc.user_ids[i]))  # round-robin over users
    test = enc.subset(sorted(i for u in users for i in orders[u][-tp:]))
    times, cpu, online = [], [], None
    for _ in range(int(lc.get("repeats", 1))):
        online = copy.deepcopy(model)
        for i in order:
            t, c = time.perf_counter(), time.thread_time()
            online.update_user_embeddings(enc.user_ids[i], enc.prompt[i:i + 1], enc.chosen[i:i + 1], enc.rejected[i:i + 1])
            cpu.append(time.thread_time() - c)
            times.append(time.perf_counter() - t)
    with Clock() as clock:
        refit = adapt(copy.deepcopy(model), enc.subset(sorted(rows)))
    w_on = np.array([online.user_weights(u) for u in users])
    w_re = np.array([refit.user_weights(u) for u in users])
    # known users (their stored posterior, one component): adapted on their first 5 pairs, then updated pair by pair
    first = [i for u in users for i in orders[u][:5]]
    known = adapt(copy.deepcopy(model), enc.subset(sorted(first)))
    known_cpu = []
    for i in [i for i in order if i not in set(first)]:
        c = time.thread_time()
        known.update_user_embeddings(enc.user_ids[i], enc.prompt[i:i + 1], enc.chosen[i:i + 1], enc.rejected[i:i + 1])
        known_cpu.append(time.thread_time() - c)
    ms, cpu_ms = np.array(times) * 1e3, np.array(cpu) * 1e3
    return {"updates": len(times), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "cpu_median_ms": float(np.median(cpu_ms)), "cpu_p90_ms": float(np.percentile(cpu_ms, 90)),
            "refit_ms_per_user": clock.wall * 1e3 / len(users), "prior_components": len(model.beliefs.prior_means),
            "known_user_cpu_median_ms": float(np.median(known_cpu)) * 1e3, "known_user_updates": len(known_cpu),
            "online_accuracy": evaluate(online, test)["accuracy"], "refit_accuracy": evaluate(refit, test)["accuracy"],
            "max_weight_difference": float(np.abs(w_on - w_re).max())}


# --------------------------------------------------------------------------------------------
# one data set
# --------------------------------------------------------------------------------------------
def run_dataset(name: str, dc: dict, cfg: dict) -> dict:
    from encoders.cache import EmbeddingCache

    t0 = time.perf_counter()
    splits, enc_name, desc = load_splits(dc)
    log(f"{name}: {desc}")
    encoder = create_encoder(enc_name)
    cache = EmbeddingCache() if encoder.uses_cache else None
    with Clock() as encoding:
        torch.set_num_threads(2)  # encoding may use both cores; the heads one
        enc = {k: encode_data(encoder, v, cache) for k, v in splits.items()}
        torch.set_num_threads(1)
    groups = {**splits["seen_train"].user_groups(), **splits["unseen"].user_groups()}
    with Clock() as training:
        model = fit(enc["seen_train"], enc["seen_val"], encoder, PALConfig(**dc["head"]),
                    TrainConfig(**{**dc.get("train", {}), "progress": False}), user_groups=groups)
    log(f"{name}: trained in {training.wall:.0f} s; calibration a = {model.beliefs.inv_temperature:.3f}, "
        f"prior strength {model.beliefs.strength}")
    res = {"description": desc, "encoder": enc_name, "head": dc["head"], "train": dc.get("train", {}),
           "users": {"seen": len(splits["seen_train"].users), "new": len(splits["unseen"].users)},
           "beliefs": model.metrics.get("beliefs"), "seen": scores(model, enc["seen_test"], keep_probs=True), "per_seed": []}
    for seed in cfg["seeds"]:
        res["per_seed"].append(run_seed(model, splits["unseen"], enc["unseen"], cfg, seed, cache))
        log(f"{name}: seed {seed} done ({time.perf_counter() - t0:.0f} s)")
    res["latency"] = update_latency(model, enc["unseen"], cfg)
    res["seconds"] = {"encoding": round(encoding.wall, 1), "training": round(training.wall, 1),
                      "total": round(time.perf_counter() - t0, 1)}
    return summarise(res, cfg)


def _ms(xs) -> list[float]:
    return [round(x, 4) for x in mean_std(xs)]


def summarise(res: dict, cfg: dict) -> dict:
    """Mean +- std over seeds of every curve; reliability probabilities pooled over seeds."""
    seeds = res["per_seed"]
    keys = ("accuracy", "ece", "brier")
    res["summary"] = {
        "population": {k: _ms(s["population"][k] for s in seeds) for k in keys},
        "random_prior": {str(n): {k: _ms(s["random_prior"][n][k] for s in seeds) for k in keys} for n in cfg["random_n"]},
        "random_plain": {str(n): {k: _ms(s["random_plain"][n][k] for s in seeds) for k in keys} for n in cfg["random_n"]},
        "asked": {st: {str(n): {k: _ms(s["asked"][st]["curve"][n][k] for s in seeds) for k in keys}
                       for n in seeds[0]["asked"][st]["curve"]} for st in cfg["strategies"]},
        "query_seconds_per_round": {st: round(statistics.fmean(s["asked"][st]["query_seconds_per_round"] for s in seeds), 4)
                                    for st in cfg["strategies"]},
    }
    res["reliability"] = {"seen users": res["seen"].pop("probabilities")}
    for n in cfg.get("reliability_n", []):
        res["reliability"][f"new users, {n} pairs"] = [p for s in seeds for p in s["random_prior"][n].pop("probabilities")]
    for s in seeds:  # JSON keys
        for key in ("random_prior", "random_plain"):
            s[key] = {str(n): v for n, v in s[key].items()}
        for st in s["asked"].values():
            st["curve"] = {str(n): v for n, v in st["curve"].items()}
    return res


def main(argv=None) -> dict:
    ap = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), HERE)
    ap.add_argument("--datasets", nargs="+", help="override the config's `run` list")
    a = ap.parse_args(argv)
    cfg = load_config(config_path(a, HERE))
    names = a.datasets or cfg["run"]
    unknown = sorted(set(names) - set(cfg["datasets"]))
    if unknown:
        raise SystemExit(f"error: unknown data set(s) {unknown}; the config has {sorted(cfg['datasets'])}")
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {name: run_dataset(name, cfg["datasets"][name], cfg) for name in names}
    reliability = {name: r.pop("reliability") for name, r in results.items()}
    blob = {"config": cfg, "quick": bool(a.quick), "machine": machine(), "runtime_s": round(time.perf_counter() - t0, 1),
            "datasets": results}
    write_text(out / "results.json", json.dumps(blob, indent=1) + "\n")
    write_text(out / "results.md", results_markdown(blob))
    plot_all(blob, reliability, out)
    print((out / "results.md").read_text())
    log(f"wrote {out} in {blob['runtime_s']:.0f} s")
    return blob


if __name__ == "__main__":
    main()
