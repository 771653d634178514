"""The PAL paper's synthetic study: a ground-truth ideal-point mixture with K* = 3 prototypes.

    python -m experiments.synthetic.run                       # full run (make reproduce-synthetic), < 5 min on 2 CPU cores
    python -m experiments.synthetic.run --quick --out /tmp/s  # one seed, small data (< 30 s)

Per seed (a new population, new data and new model inits; all settings in config.yaml):

1. data (data_scripts/synthetic.py): K* true prototypes on the unit sphere, Dirichlet user weights, items
   on the sphere, noise prompts; seen users get train / val / test pairs, unseen users ``unseen_pool +
   unseen_test`` pairs each. The oracle (Bayes rule: prefer the item closer to the true ideal point) is
   scored on the same test pairs as the models: the ceiling;
2. (a) seen users: ``fit`` PAL-A and PAL-B for every K in ``ks`` and the single reward model
   (``single-rm``, one Bradley-Terry model for everybody); the epoch is chosen on val, accuracy is on test;
3. (c) recovered weights: for K = K*, the learned simplex weights of the seen users are matched to the
   true ones (Hungarian matching of the prototypes on the L1 cost) -> mean L1 and correlation;
4. (b) unseen users: the library's few-shot protocol (:mod:`pal_mm.fewshot`): ``repeats`` splits per
   seed, each with ``unseen_test`` fixed test pairs per user and nested n-pair training sets; ``adapt``
   learns only each new user's K logits (fixed steps); the adapted weights of K = K* models are
   compared with the truth using the permutation from step 3.

Outputs in ``--out`` (default experiments/synthetic/results/): ``results.json``, ``results.md``,
``seen_vs_k.png``, ``unseen_vs_n.png``, ``weights.png``.

``results.json``: ``{"config", "runtime_s", "oracle": {split: [mean, std]}, "seen": {model: {K: {"val", "test"}}},
"single_rm": {"val", "test"}, "unseen": {method: {n: [mean, std]}}, "weights": {model: {"seen_l1", "seen_corr",
"unseen_l1": {n: [mean, std]}}}, "selected_k": {model: K}, "checks": {...}, "per_seed": [...]}``;
every [mean, std] is over seeds (unseen: over seeds x repeats), std = sample std (ddof = 1).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch

from data_scripts import synthetic
from encoders import create_encoder
from pal_mm import AdaptConfig, PALConfig, PreferenceData, TrainConfig, evaluate, fit
from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.fewshot import adapt_curve, fewshot_splits

from ..common import add_config_args, config_path, load_config, mean_std, write_text
from .report import plot_all, results_markdown

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------
# data and ground truth
# --------------------------------------------------------------------------------------------
def make_data(dc: dict, seed: int):
    """Encoded splits {train, val, test, unseen} and the truth {protos, seen_w, new_w, ideal}."""
    protos, w = synthetic.make_population(dc["k_true"], dc["dim"], dc["seen_users"] + dc["unseen_users"], seed, alpha=dc["alpha"])
    seen_w, new_w = w[: dc["seen_users"]], w[dc["seen_users"]:]
    kw = {"prompt_dim": dc["prompt_dim"], "beta": dc["beta"]}
    s = 1000 * seed  # one data seed per split
    rows = {
        "train": synthetic.make_pairs(protos, seen_w, dc["train_pairs"], s + 1, **kw),
        "val": synthetic.make_pairs(protos, seen_w, dc["val_pairs"], s + 2, **kw),
        "test": synthetic.make_pairs(protos, seen_w, dc["test_pairs"], s + 3, **kw),
        # unseen users: the pairs the few-shot protocol splits into n training and fixed test pairs
        "unseen": synthetic.make_pairs(protos, new_w, dc["unseen_pool"], s + 4, user_prefix="new", **kw)
        + synthetic.make_pairs(protos, new_w, dc["unseen_test"], s + 5, user_prefix="new", **kw),
    }
    enc = create_encoder("precomputed")
    data = {name: encode_data(enc, PreferenceData.from_rows(r, source=f"synthetic:{name}")) for name, r in rows.items()}
    ideal = {**synthetic.ideal_points_by_id(protos, seen_w), **synthetic.ideal_points_by_id(protos, new_w, "new")}
    truth = {"protos": protos, "seen_w": seen_w, "new_w": new_w, "ideal": ideal}
    return enc, data, truth


def oracle_accuracy(pairs: EncodedPairs, truth: dict, beta: float) -> tuple[float, float]:
    """(accuracy of the Bayes rule on these labels, its expected accuracy under the label noise)."""
    correct, expected = synthetic.bayes_correct(truth["ideal"], pairs.user_ids, pairs.chosen.numpy(), pairs.rejected.numpy(), beta)
    return float(correct.mean()), expected


# --------------------------------------------------------------------------------------------
# (c) weight recovery, up to a permutation of the prototypes
# --------------------------------------------------------------------------------------------
def match_prototypes(learned: np.ndarray, true: np.ndarray) -> np.ndarray:
    """perm with learned[:, perm[j]] ~ true[:, j], minimising the total L1 (learned, true: (users, K))."""
    k = true.shape[1]
    cost = np.abs(learned[:, :, None] - true[:, None, :]).sum(0)  # (K learned, K true)
    try:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        return rows[np.argsort(cols)]
    except ImportError:  # brute force over the K! permutations
        return np.array(min(itertools.permutations(range(k)), key=lambda p: sum(cost[p[j], j] for j in range(k))))


def weight_errors(learned: np.ndarray, true: np.ndarray) -> dict:
    """mean per-user L1 distance on the simplex (0..2) and Pearson correlation of all entries."""
    return {"l1": float(np.abs(learned - true).sum(1).mean()), "corr": float(np.corrcoef(learned.ravel(), true.ravel())[0, 1])}


def user_weights(model, ids: list[str]) -> np.ndarray:
    return np.array([model.user_weights(u) for u in ids])


# --------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------
def run_seed(cfg: dict, seed: int) -> dict:
    torch.set_num_threads(1)  # tiny tensors: one thread per process is fastest
    t0, c0 = time.perf_counter(), time.process_time()
    dc, k_true, uc = cfg["data"], cfg["data"]["k_true"], cfg["unseen"]
    enc, data, truth = make_data(dc, seed)
    # the few-shot protocol: per repeat, unseen_test fixed test pairs per user and nested training sets
    splits = fewshot_splits(data["unseen"].user_ids, uc["n"], [1000 * seed + r for r in range(uc["repeats"])],
                            test_pairs=dc["unseen_test"])
    out = {"seed": seed, "oracle": {}, "seen": {}, "weights": {}, "unseen": {}, "scatter": {}}
    for split in ("val", "test"):
        out["oracle"][split], out["oracle"][split + "_expected"] = oracle_accuracy(data[split], truth, dc["beta"])
    new_test = [oracle_accuracy(data["unseen"].subset(s.test[uc["n"][0]]), truth, dc["beta"]) for s in splits]
    out["oracle"]["new_test"] = float(np.mean([a for a, _ in new_test]))
    out["oracle"]["new_test_expected"] = float(np.mean([e for _, e in new_test]))

    # (a) seen users: every model type and K, plus the single reward model
    models = {}
    tc = TrainConfig(**cfg["train"], seed=seed, progress=False)
    runs = [(name, k, {**mc, "k": k}) for name, mc in cfg["models"].items() for k in cfg["ks"]]
    runs.append(("single-rm", 1, cfg["baseline"]))
    for name, k, head in runs:
        c = time.process_time()
        model = fit(data["train"], data["val"], enc, PALConfig(**head), tc)
        key = name if name == "single-rm" else f"{name}-k{k}"
        models[key] = model
        out["seen"][key] = {"val": model.metrics["val_accuracy"], "test": evaluate(model, data["test"])["accuracy"],
                            "best_epoch": model.metrics["best_epoch"], "epochs_run": model.metrics["epochs_run"],
                            "cpu_s": round(time.process_time() - c, 1)}

    # (c) recovered weights of the seen users (K = K* models)
    seen_ids = [synthetic.user_id(u) for u in range(dc["seen_users"])]
    new_ids = [synthetic.user_id(u, "new") for u in range(dc["unseen_users"])]
    perms = {}
    for name in cfg["models"]:
        if f"{name}-k{k_true}" in models:
            learned = user_weights(models[f"{name}-k{k_true}"], seen_ids)
            perms[name] = match_prototypes(learned, truth["seen_w"])
            matched = learned[:, perms[name]]
            out["weights"][name] = {**{f"seen_{m}": v for m, v in weight_errors(matched, truth["seen_w"]).items()}, "unseen_l1": {}}
            out["scatter"][name] = {"true": truth["seen_w"].round(4).tolist(), "learned": matched.round(4).tolist()}

    # (b) unseen users: the library's adapt curve
    for key in uc["models"]:
        if key not in models:
            continue
        name = key.rsplit("-k", 1)[0]
        recover = key == f"{name}-k{k_true}" and name in perms
        results = adapt_curve(models[key], data["unseen"], splits, AdaptConfig(**uc["adapt"], seed=seed), weights=recover)
        out["unseen"][key] = {n: [r.accuracy for r in results if r.n == n] for n in uc["n"]}
        if recover:  # weights of new users vs truth, same permutation as the seen users
            out["weights"][name]["unseen_l1"] = {
                n: [weight_errors(np.array([r.weights[u] for u in new_ids])[:, perms[name]], truth["new_w"])["l1"]
                    for r in results if r.n == n] for n in uc["n"]}
    out["seconds"], out["cpu_seconds"] = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    print(f"seed {seed}: {out['seconds']} s ({out['cpu_seconds']} CPU s)", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------------
def ms(values) -> list[float]:
    """The library's mean +- std (sample std), rounded for the tables."""
    return [round(x, 4) for x in mean_std(values)]


def aggregate(cfg: dict, per_seed: list[dict]) -> dict:
    k_true, ns = cfg["data"]["k_true"], cfg["unseen"]["n"]
    res = {"oracle": {s: ms(p["oracle"][s] for p in per_seed) for s in per_seed[0]["oracle"]}, "seen": {}, "unseen": {}, "weights": {}}
    for name in cfg["models"]:
        res["seen"][name] = {k: {split: ms(p["seen"][f"{name}-k{k}"][split] for p in per_seed) for split in ("val", "test")} for k in cfg["ks"]}
    res["single_rm"] = {split: ms(p["seen"]["single-rm"][split] for p in per_seed) for split in ("val", "test")}
    for key in per_seed[0]["unseen"]:
        res["unseen"][key] = {n: ms(a for p in per_seed for a in p["unseen"][key][n]) for n in ns}
    for name in per_seed[0]["weights"]:
        w = [p["weights"][name] for p in per_seed]
        res["weights"][name] = {"seen_l1": ms(x["seen_l1"] for x in w), "seen_corr": ms(x["seen_corr"] for x in w),
                                "unseen_l1": {n: ms(a for x in w for a in x["unseen_l1"].get(n, [])) for n in ns if w[0]["unseen_l1"]}}
    # model selection on validation only: K with the best mean val accuracy
    res["selected_k"] = {name: max(cfg["ks"], key=lambda k: res["seen"][name][k]["val"][0]) for name in cfg["models"]}
    checks = {}
    if 1 in cfg["ks"] and k_true in cfg["ks"]:
        for name in cfg["models"]:
            checks[f"{name}: K={k_true} beats K=1 on seen test"] = res["seen"][name][k_true]["test"][0] > res["seen"][name][1]["test"][0]
    for key in (f"{name}-k{k_true}" for name in cfg["models"]):
        if key in res["unseen"]:
            checks[f"{key}: unseen accuracy rises with n (n={ns[-1]} > n={ns[0]})"] = res["unseen"][key][ns[-1]][0] > res["unseen"][key][ns[0]][0]
    res["checks"] = checks
    res["cpu_s_per_seed"] = ms(p["cpu_seconds"] for p in per_seed)
    return res


# --------------------------------------------------------------------------------------------
def check_config(cfg: dict) -> None:
    """The fixed test pairs plus the largest n must fit in each unseen user's pairs."""
    dc, ns = cfg["data"], cfg["unseen"]["n"]
    if max(ns) > dc["unseen_pool"]:
        raise SystemExit(f"error: unseen.n goes up to {max(ns)} but data.unseen_pool is {dc['unseen_pool']}")


def main(argv=None) -> dict:
    ap = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), HERE)
    ap.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    ap.add_argument("--workers", type=int, help="override the config's number of processes")
    a = ap.parse_args(argv)
    cfg = load_config(config_path(a, HERE))
    if a.seeds:
        cfg["seeds"] = a.seeds
    if a.workers:
        cfg["workers"] = a.workers
    check_config(cfg)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    workers = min(int(cfg.get("workers", 1)), len(cfg["seeds"]))
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            per_seed = pool.starmap(run_seed, [(copy.deepcopy(cfg), s) for s in cfg["seeds"]])
            pool.close()  # let the workers exit cleanly (terminate() would leak their semaphores)
            pool.join()
    else:
        per_seed = [run_seed(cfg, s) for s in cfg["seeds"]]
    res = aggregate(cfg, per_seed)
    res["runtime_s"] = round(time.perf_counter() - t0, 1)

    results = {"config": cfg, **res, "per_seed": per_seed}
    write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text(out / "results.md", results_markdown(cfg, res))
    plot_all(cfg, res, per_seed, out)
    print((out / "results.md").read_text())
    print(f"wrote {out} in {res['runtime_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
