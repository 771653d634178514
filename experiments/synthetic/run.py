"""The PAL paper's synthetic study: a ground-truth ideal-point mixture with K* = 3 prototypes.

    python experiments/synthetic/run.py                       # full run (make reproduce-synthetic), < 5 min on 2 CPU cores
    python experiments/synthetic/run.py --quick --out /tmp/s  # one seed, small data (< 60 s; used by the tests)

Per seed (a new population, new data and new model inits; all settings in config.yaml):

1. data (data_scripts/synthetic.py): K* true prototypes on the unit sphere, Dirichlet user weights, items
   on the sphere, noise prompts; seen users get train / val / test pairs, unseen users a pool of
   training pairs and a fixed test set. The oracle (Bayes rule: prefer the item closer to the true
   ideal point) is scored on the same test pairs as the models: the ceiling;
2. (a) seen users: ``fit`` PAL-A and PAL-B for every K in ``ks`` and the single reward model
   (``single-rm``, one Bradley-Terry model for everybody); the epoch is chosen on val, accuracy is on test;
3. (c) recovered weights: for K = K*, the learned simplex weights of the seen users are matched to the
   true ones (Hungarian matching of the prototypes on the L1 cost) -> mean L1 and correlation;
4. (b) unseen users: ``adapt`` (only each new user's K logits, fixed steps) on the first n pairs of a
   shuffled pool, for every n and ``repeats`` shuffles, then accuracy on the fixed unseen test set;
   the adapted weights of K = K* models are compared with the truth using the permutation from step 3.

Outputs in ``--out`` (default experiments/synthetic/results/): ``results.json``, ``results.md``,
``seen_vs_k.png``, ``unseen_vs_n.png``, ``weights.png``.

``results.json``: ``{"config", "runtime_s", "oracle": {split: [mean, std]}, "seen": {model: {K: {"val", "test"}}},
"single_rm": {"val", "test"}, "unseen": {method: {n: [mean, std]}}, "weights": {model: {"seen_l1", "seen_corr",
"unseen_l1": {n: [mean, std]}}}, "selected_k": {model: K}, "checks": {...}, "per_seed": [...]}``;
every [mean, std] is over seeds (unseen: over seeds x repeats).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # data_scripts is not an installed package
    sys.path.insert(0, str(ROOT))

from data_scripts import synthetic  # noqa: E402
from encoders import create_encoder  # noqa: E402
from pal_mm.adaptation import adapt  # noqa: E402
from pal_mm.data import PreferenceData  # noqa: E402
from pal_mm.embedding import EncodedPairs, encode_data  # noqa: E402
from pal_mm.evaluation import evaluate  # noqa: E402
from pal_mm.config import AdaptConfig, PALConfig, TrainConfig  # noqa: E402
from pal_mm.training import fit  # noqa: E402


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, quick: bool) -> dict:
    cfg = yaml.safe_load(Path(path).read_text())
    quick_block = cfg.pop("quick", {})
    return deep_merge(cfg, quick_block) if quick else cfg


# --------------------------------------------------------------------------------------------
# data and ground truth
# --------------------------------------------------------------------------------------------
def make_data(dc: dict, seed: int):
    """Encoded splits {train, val, test, pool, new_test} and the truth {protos, seen_w, new_w, ideal}."""
    protos, w = synthetic.make_population(dc["k_true"], dc["dim"], dc["seen_users"] + dc["unseen_users"], seed, alpha=dc["alpha"])
    seen_w, new_w = w[: dc["seen_users"]], w[dc["seen_users"]:]
    kw = {"prompt_dim": dc["prompt_dim"], "beta": dc["beta"]}
    s = 1000 * seed  # one data seed per split
    rows = {
        "train": synthetic.make_pairs(protos, seen_w, dc["train_pairs"], s + 1, **kw),
        "val": synthetic.make_pairs(protos, seen_w, dc["val_pairs"], s + 2, **kw),
        "test": synthetic.make_pairs(protos, seen_w, dc["test_pairs"], s + 3, **kw),
        "pool": synthetic.make_pairs(protos, new_w, dc["unseen_pool"], s + 4, user_prefix="new", **kw),
        "new_test": synthetic.make_pairs(protos, new_w, dc["unseen_test"], s + 5, user_prefix="new", **kw),
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
    with torch.no_grad():
        return model.head.user_weights(model.user_index(ids)).numpy()


# --------------------------------------------------------------------------------------------
# (b) unseen users: every (n, repeat) in ONE batched adapt call
# --------------------------------------------------------------------------------------------
def tag(user: str, n: int, r: int) -> str:
    return f"{user}@n{n}r{r}"


def unseen_sets(pool: EncodedPairs, test: EncodedPairs, ns: list[int], repeats: int, seed: int):
    """Training pairs for every (n, r) and one test set per (n, r). User u of draw r with n pairs is
    renamed ``u@n{n}r{r}``: adapt fits each user independently (own mean loss, per-coordinate Adam),
    so one call on all renamed users gives the same logits as one call per (n, r)."""
    by_user = defaultdict(list)
    for i, u in enumerate(pool.user_ids):
        by_user[u].append(i)
    rng = np.random.default_rng(seed)
    idx, ids = [], []
    for r in range(repeats):
        order = {u: rng.permutation(rows) for u, rows in by_user.items()}  # nested: n pairs = first n
        for n in ns:
            for u, rows in order.items():
                assert len(rows) >= n, f"unseen_pool ({len(rows)}) < n ({n})"
                idx += rows[:n].tolist()
                ids += [tag(u, n, r)] * n
    t = torch.as_tensor(idx)
    train = EncodedPairs(pool.prompt[t], pool.chosen[t], pool.rejected[t], ids)
    tests = {(n, r): EncodedPairs(test.prompt, test.chosen, test.rejected, [tag(u, n, r) for u in test.user_ids])
             for r in range(repeats) for n in ns}
    return train, tests


# --------------------------------------------------------------------------------------------
# one seed
# --------------------------------------------------------------------------------------------
def run_seed(cfg: dict, seed: int) -> dict:
    torch.set_num_threads(1)  # tiny tensors: one thread per process is fastest
    t0, c0 = time.perf_counter(), time.process_time()
    dc, k_true = cfg["data"], cfg["data"]["k_true"]
    enc, data, truth = make_data(dc, seed)
    out = {"seed": seed, "oracle": {}, "seen": {}, "weights": {}, "unseen": {}, "scatter": {}}
    for split in ("val", "test", "new_test"):
        out["oracle"][split], out["oracle"][split + "_expected"] = oracle_accuracy(data[split], truth, dc["beta"])

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
    perms = {}
    for name in cfg["models"]:
        if f"{name}-k{k_true}" in models:
            learned = user_weights(models[f"{name}-k{k_true}"], seen_ids)
            perms[name] = match_prototypes(learned, truth["seen_w"])
            matched = learned[:, perms[name]]
            out["weights"][name] = {**{f"seen_{m}": v for m, v in weight_errors(matched, truth["seen_w"]).items()}, "unseen_l1": {}}
            out["scatter"][name] = {"true": truth["seen_w"].round(4).tolist(), "learned": matched.round(4).tolist()}

    # (b) unseen users
    uc = cfg["unseen"]
    train_new, tests = unseen_sets(data["pool"], data["new_test"], uc["n"], uc["repeats"], seed)
    new_ids = [synthetic.user_id(u, "new") for u in range(dc["unseen_users"])]
    for key in uc["models"]:
        if key not in models:
            continue
        acfg = AdaptConfig(**uc["adapt"], seed=seed)
        if models[key].config.k == 1:  # softmax of one logit is 1: nothing to fit, only register the users
            acfg.steps = 0
        model = adapt(copy.deepcopy(models[key]), train_new, acfg)
        out["unseen"][key] = {n: [evaluate(model, tests[n, r])["accuracy"] for r in range(uc["repeats"])] for n in uc["n"]}
        name = key.rsplit("-k", 1)[0]
        if key == f"{name}-k{k_true}" and name in perms:  # weights of new users vs truth, same permutation
            out["weights"][name]["unseen_l1"] = {
                n: [weight_errors(user_weights(model, [tag(u, n, r) for u in new_ids])[:, perms[name]], truth["new_w"])["l1"]
                    for r in range(uc["repeats"])] for n in uc["n"]}
    out["seconds"], out["cpu_seconds"] = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
    print(f"seed {seed}: {out['seconds']} s ({out['cpu_seconds']} CPU s)", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# aggregate, report
# --------------------------------------------------------------------------------------------
def ms(values) -> list[float]:
    v = np.asarray(list(values), dtype=float)
    return [round(float(v.mean()), 4), round(float(v.std()), 4)]


def aggregate(cfg: dict, per_seed: list[dict]) -> dict:
    k_true = cfg["data"]["k_true"]
    res = {"oracle": {s: ms(p["oracle"][s] for p in per_seed) for s in per_seed[0]["oracle"]}, "seen": {}, "unseen": {}, "weights": {}}
    for name in cfg["models"]:
        res["seen"][name] = {k: {split: ms(p["seen"][f"{name}-k{k}"][split] for p in per_seed) for split in ("val", "test")} for k in cfg["ks"]}
    res["single_rm"] = {split: ms(p["seen"]["single-rm"][split] for p in per_seed) for split in ("val", "test")}
    for key in per_seed[0]["unseen"]:
        res["unseen"][key] = {n: ms(a for p in per_seed for a in p["unseen"][key][n]) for n in cfg["unseen"]["n"]}
    for name in per_seed[0]["weights"]:
        w = [p["weights"][name] for p in per_seed]
        res["weights"][name] = {"seen_l1": ms(x["seen_l1"] for x in w), "seen_corr": ms(x["seen_corr"] for x in w),
                                "unseen_l1": {n: ms(a for x in w for a in x["unseen_l1"].get(n, [])) for n in cfg["unseen"]["n"] if w[0]["unseen_l1"]}}
    # model selection on validation only: K with the best mean val accuracy
    res["selected_k"] = {name: max(cfg["ks"], key=lambda k: res["seen"][name][k]["val"][0]) for name in cfg["models"]}
    checks = {}
    if 1 in cfg["ks"] and k_true in cfg["ks"]:
        for name in cfg["models"]:
            checks[f"{name}: K={k_true} beats K=1 on seen test"] = res["seen"][name][k_true]["test"][0] > res["seen"][name][1]["test"][0]
    ns = cfg["unseen"]["n"]
    for key in (f"{name}-k{k_true}" for name in cfg["models"]):
        if key in res["unseen"]:
            checks[f"{key}: unseen accuracy rises with n (n={ns[-1]} > n={ns[0]})"] = res["unseen"][key][ns[-1]][0] > res["unseen"][key][ns[0]][0]
    res["checks"] = checks
    res["cpu_s_per_seed"] = ms(p["cpu_seconds"] for p in per_seed)
    return res


def fmt(m: list[float]) -> str:
    return f"{m[0]:.3f} ± {m[1]:.3f}"


def results_markdown(cfg: dict, res: dict) -> str:
    dc, k_true, ns = cfg["data"], cfg["data"]["k_true"], cfg["unseen"]["n"]
    names = list(cfg["models"])
    lines = [
        "# Synthetic study: ground-truth ideal-point mixture", "",
        f"K* = {k_true} prototypes in R^{dc['dim']}, Dirichlet({dc['alpha']}) user weights, label noise beta = {dc['beta']}; "
        f"{dc['seen_users']} seen users x {dc['train_pairs']}/{dc['val_pairs']}/{dc['test_pairs']} train/val/test pairs, "
        f"{dc['unseen_users']} unseen users (n pairs from a pool of {dc['unseen_pool']}, {dc['unseen_test']} fixed test pairs each). "
        f"Mean ± std over seeds {cfg['seeds']} (unseen users: over seeds x {cfg['unseen']['repeats']} draws of the n pairs). "
        f"Runtime {res['runtime_s']:.0f} s wall, {res['cpu_s_per_seed'][0]:.0f} CPU s per seed "
        f"({min(cfg.get('workers', 1), len(cfg['seeds']))} worker process(es)).", "",
        "Oracle = the true model (Bayes rule: prefer the item closer to the true ideal point) on the same test pairs: "
        f"seen test {fmt(res['oracle']['test'])}, unseen test {fmt(res['oracle']['new_test'])} "
        f"(expected under the label noise: {fmt(res['oracle']['test_expected'])}).", "",
        "## (a) Seen users: accuracy vs K", "",
        "| K | " + " | ".join(f"{n} val | {n} test" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for k in cfg["ks"]:
        lines.append(f"| {k}{' (= K*)' if k == k_true else ''} | " + " | ".join(f"{fmt(res['seen'][n][k]['val'])} | {fmt(res['seen'][n][k]['test'])}" for n in names) + " |")
    lines += ["", f"single reward model (single-rm): val {fmt(res['single_rm']['val'])}, test {fmt(res['single_rm']['test'])}; "
              f"oracle: val {fmt(res['oracle']['val'])}, test {fmt(res['oracle']['test'])}.",
              "K selected on validation accuracy: " + ", ".join(f"{n} K = {k}" for n, k in res["selected_k"].items()) + ".", "",
              "## (b) Unseen users: accuracy vs pairs per user n", "",
              "| n | " + " | ".join(res["unseen"]) + " | oracle |", "|---|" + "---|" * (len(res["unseen"]) + 1)]
    for n in ns:
        lines.append(f"| {n} | " + " | ".join(fmt(res["unseen"][key][n]) for key in res["unseen"]) + f" | {fmt(res['oracle']['new_test'])} |")
    lines += ["", "K = 1 models and single-rm have no per-user state to learn: their unseen accuracy does not depend on n.", "",
              f"## (c) Recovered user weights (K = K* = {k_true}, prototypes matched by the Hungarian method on the seen users)", "",
              "| model | seen L1 | seen corr | " + " | ".join(f"unseen L1, n={n}" for n in ns) + " |",
              "|---|---|---|" + "---|" * len(ns)]
    for name, w in res["weights"].items():
        lines.append(f"| {name} | {fmt(w['seen_l1'])} | {fmt(w['seen_corr'])} | " + " | ".join(fmt(w["unseen_l1"][n]) if n in w["unseen_l1"] else "-" for n in ns) + " |")
    lines += ["", "L1 = mean over users of sum_k |w_k - w*_k| (0 = exact, 2 = disjoint); a uniform guess scores about "
              f"{uniform_l1(cfg):.2f} here.", "", "## Checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {c}" for c, ok in res["checks"].items()]
    return "\n".join(lines) + "\n"


def uniform_l1(cfg: dict) -> float:
    """Expected L1 of the uniform mixture to a Dirichlet(alpha) draw (Monte Carlo)."""
    k, a = cfg["data"]["k_true"], cfg["data"]["alpha"]
    w = np.random.default_rng(0).dirichlet([a] * k, size=20000)
    return float(np.abs(w - 1 / k).sum(1).mean())


def plot_all(cfg: dict, res: dict, per_seed: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks, ns, k_true = cfg["ks"], cfg["unseen"]["n"], cfg["data"]["k_true"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in cfg["models"]:
        m = np.array([res["seen"][name][k]["test"] for k in ks])
        ax.errorbar(ks, m[:, 0], yerr=m[:, 1], marker="o", capsize=3, label=name.upper())
    for label, v, style in (("single-rm", res["single_rm"]["test"], "--"), ("oracle", res["oracle"]["test"], ":")):
        ax.axhline(v[0], color="k", linestyle=style, label=label)
    ax.axvline(k_true, color="grey", alpha=0.3)
    ax.set(xlabel="K (prototypes)", ylabel="seen-user test accuracy", title=f"Seen users (K* = {k_true})", xticks=ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "seen_vs_k.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, curve in res["unseen"].items():
        m = np.array([curve[n] for n in ns])
        if key.endswith("-k1") or key == "single-rm":  # nothing to adapt: flat lines
            ax.plot(ns, m[:, 0], linestyle="--", label=f"{key} (no user state)")
        else:
            ax.errorbar(ns, m[:, 0], yerr=m[:, 1], marker="o", capsize=3, label=key)
    ax.axhline(res["oracle"]["new_test"][0], color="k", linestyle=":", label="oracle")
    ax.set(xscale="log", xlabel="pairs per unseen user n", ylabel="unseen-user test accuracy", title="Unseen users (adapt W only)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "unseen_vs_n.png", dpi=120)
    plt.close(fig)

    names = list(per_seed[0]["scatter"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        t, l = np.array(per_seed[0]["scatter"][name]["true"]), np.array(per_seed[0]["scatter"][name]["learned"])
        for j in range(t.shape[1]):
            ax.scatter(t[:, j], l[:, j], s=10, label=f"prototype {j + 1}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="true weight", ylabel="learned weight (matched)", title=f"{name.upper()} K={k_true}, seen users, seed {per_seed[0]['seed']}")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    for name in names:
        curve = res["weights"][name]["unseen_l1"]
        if curve:
            m = np.array([curve[n] for n in ns])
            ax.errorbar(ns, m[:, 0], yerr=m[:, 1], marker="o", capsize=3, label=name.upper())
    ax.axhline(uniform_l1(cfg), color="k", linestyle="--", label="uniform weights")
    ax.set(xscale="log", xlabel="pairs per unseen user n", ylabel="L1 to true weights", title="Unseen users: weight error")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "weights.png", dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--quick", action="store_true", help="one seed, small data (< 60 s)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    ap.add_argument("--workers", type=int, help="override the config's number of processes")
    a = ap.parse_args(argv)
    cfg = load_config(a.config, a.quick)
    if a.seeds:
        cfg["seeds"] = a.seeds
    if a.workers:
        cfg["workers"] = a.workers
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    workers = min(int(cfg.get("workers", 1)), len(cfg["seeds"]))
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            per_seed = pool.starmap(run_seed, [(cfg, s) for s in cfg["seeds"]])
            pool.close()  # let the workers exit cleanly (terminate() would leak their semaphores)
            pool.join()
    else:
        per_seed = [run_seed(cfg, s) for s in cfg["seeds"]]
    res = aggregate(cfg, per_seed)
    res["runtime_s"] = round(time.perf_counter() - t0, 1)

    results = {"config": cfg, **res, "per_seed": per_seed}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(cfg, res))
    plot_all(cfg, res, per_seed, out)
    print((out / "results.md").read_text())
    print(f"wrote {out} in {res['runtime_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
