"""Tables and plots of the synthetic study (``results.md``, ``seen_vs_k.png``, ``unseen_vs_n.png``,
``weights.png``), from the aggregated results and the per-seed records written by run.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fmt(m: list[float]) -> str:
    return f"{m[0]:.3f} ± {m[1]:.3f}"


def results_markdown(cfg: dict, res: dict) -> str:
    dc, k_true, ns = cfg["data"], cfg["data"]["k_true"], cfg["unseen"]["n"]
    names = list(cfg["models"])
    lines = [
        "# Synthetic study: ground-truth ideal-point mixture", "",
        f"K* = {k_true} prototypes in R^{dc['dim']}, Dirichlet({dc['alpha']}) user weights, label noise beta = {dc['beta']}; "
        f"{dc['seen_users']} seen users x {dc['train_pairs']}/{dc['val_pairs']}/{dc['test_pairs']} train/val/test pairs, "
        f"{dc['unseen_users']} unseen users x {dc['unseen_pool'] + dc['unseen_test']} pairs, split by the library's few-shot "
        f"protocol (`pal_mm.fewshot`: {dc['unseen_test']} fixed test pairs per user, nested n-pair training sets). "
        f"Mean ± sample std (ddof = 1) over seeds {cfg['seeds']} (unseen users: over seeds x {cfg['unseen']['repeats']} "
        "few-shot splits). "
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
