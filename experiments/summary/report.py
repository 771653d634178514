"""Tables, plots and acceptance checks of the summary experiment (``results.md``,
``sample_efficiency.png``, ``seen_groups.png``), from ``results.json`` and ``details.json``.

    python -m experiments.summary.report [RESULTS_DIR]   # re-render from an earlier run's JSON files
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from encoders.atomic import write_json, write_text

ENCODER_LABELS = {"minilm": "all-MiniLM-L6-v2 (22.7 M, 384-d, mean-pooled)", "smollm2": "SmolLM2-135M (576-d, last-token)"}

# The paper's claims (docs/method.md, "Headline claims"): relative statements only, no absolute accuracies.
PAPER_CLAIMS = {
    "seen": "+1.7 % accuracy over the previous best method",
    "unseen": "+36 % accuracy over the previous best method",
    "params": "100x fewer parameters than that method (the repository README says 20x)",
}


def log(msg: str) -> None:
    print(f"[summary] {msg}", flush=True)


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def pm(v: list[float]) -> str:
    return f"{pct(v[0])} ± {pct(v[1])}"


def gain(a: float, b: float) -> str:
    """a over b, in points and relative."""
    return f"{(a - b) * 100:+.1f} points ({(a / b - 1) * 100:+.0f} % relative)" if b else f"{(a - b) * 100:+.1f} points"


def acceptance(res: dict) -> list[dict]:
    """The issue's acceptance statements, checked on one encoder's numbers (no thresholds tuned)."""
    seen, unseen = res["seen"], res["unseen"]
    out = []
    if {"pal-b-k1", "pal-b-k2"} <= set(seen):
        k1, k2 = seen["pal-b-k1"], seen["pal-b-k2"]
        dg = {g: k2["groups"][g] - k1["groups"].get(g, float("nan")) for g in k2["groups"]}
        main = max(dg, key=lambda g: dg[g]) if dg else None
        out.append({"claim": "K = 2 beats K = 1 on seen users, mainly through the minority group",
                    "holds": bool(k2["accuracy"] > k1["accuracy"] and main == "minority"),
                    "evidence": f"PAL-B {pct(k2['accuracy'])} vs {pct(k1['accuracy'])} %; per group "
                                + ", ".join(f"{g} {v * 100:+.1f}" for g, v in dg.items()) + " points"})
    for m in ("pal-b-k2", "pal-a-k2"):
        c = unseen.get(m, {})
        if len(c) >= 2:
            ns = sorted(c, key=int)
            means = [c[n][0] for n in ns]
            drops = [f"n={a}->{b}" for a, b, x, y in zip(ns, ns[1:], means, means[1:]) if y < x - 0.005]
            out.append({"claim": f"{m}: unseen accuracy rises with n",
                        "holds": bool(means[-1] > means[0] and not drops),
                        "evidence": " -> ".join(pct(x) for x in means) + (f" (dips over 0.5 points at {', '.join(drops)})" if drops else "")})
    if "single-rm" in unseen:
        for m in ("pal-b-k2", "pal-a-k2"):
            c = unseen.get(m, {})
            ns = [n for n in c if int(n) >= 10 and n in unseen["single-rm"]]
            if ns:
                out.append({"claim": f"{m} beats the single RM on unseen users at n >= 10",
                            "holds": all(c[n][0] > unseen["single-rm"][n][0] for n in ns),
                            "evidence": ", ".join(f"n={n}: {pct(c[n][0])} vs {pct(unseen['single-rm'][n][0])}" for n in ns)})
    return out


def comparison_rows(res: dict, details: dict) -> list[tuple[str, str, str]]:
    """(claim, paper, ours) for one encoder: PAL-B K = 2 (the paper's TL;DR model) against our
    baseline, the single reward model on the same embeddings."""
    seen, unseen = res["seen"], res["unseen"]
    rows = []
    if "pal-b-k2" in seen and "single-rm" in seen:
        b2, rm = seen["pal-b-k2"]["accuracy"], seen["single-rm"]["accuracy"]
        text = f"PAL-B K = 2 vs single RM: {gain(b2, rm)} ({pct(b2)} vs {pct(rm)} %)"
        if "pal-b-k1" in seen:
            text += f"; vs PAL-B K = 1: {gain(b2, seen['pal-b-k1']['accuracy'])}"
        rows.append(("seen users", PAPER_CLAIMS["seen"], text))
    if "single-rm" in unseen and "pal-b-k2" in unseen:
        parts = [f"n={n}: {gain(unseen['pal-b-k2'][n][0], unseen['single-rm'][n][0])}"
                 for n in unseen["pal-b-k2"] if int(n) >= 10 and n in unseen["single-rm"]]
        rows.append(("unseen users", PAPER_CLAIMS["unseen"],
                     "PAL-B K = 2 vs single RM, " + ("; ".join(parts) if parts else "n/a (no n >= 10 run)")))
    enc = details["encoder"]
    if "pal-b-k2" in seen:
        p = seen["pal-b-k2"]["learned_params"]
        text = (f"PAL-B K = 2 learns {p:,} (frozen encoder); fine-tuning the {enc['name']} encoder alone would learn "
                f"{enc['frozen_parameters']:,} ({enc['frozen_parameters'] / p:.0f}x more)")
        if "single-rm" in seen:
            text += f"; the single RM head learns {seen['single-rm']['learned_params']:,}"
        rows.append(("learned parameters", PAPER_CLAIMS["params"], text))
    return rows


DIFFERENCES = """\
What differs from the paper's setting (so the numbers are not comparable one to one):

* **Data.** {data_note}
* **Encoder.** Frozen MiniLM (all-MiniLM-L6-v2, 22.7 M parameters) and SmolLM2-135M on 2 CPU cores,
  instead of OPT-350m (and the larger backbones of the paper's tables).
* **Features.** One pooled vector per text (MiniLM: mean over tokens; SmolLM2: last token), instead of the
  paper's token-level states with the "cumulative" per-position loss (docs/method.md, "Token-level training").
* **Baseline.** The "previous best method" of the paper's claims is most likely the LoRA-based personalised
  reward models of P-RLHF (unverified); we do not run it. Our baseline is a single (population) reward
  model head on the same frozen embeddings, so "+x points" here is PAL vs a non-personalised model, not
  vs P-RLHF, and the parameter ratio is against fine-tuning the whole encoder, not against P-RLHF.
* **Training.** The library defaults (pal_mm.config, chosen by experiments/defaults): heads of width d = 64, AdamW,
  batch 64, projectors at lr 1e-3 and user logits at 5e-2 (the paper: batch 4, 1 epoch, lr 1e-4 and 5e-3), K = 2
  started from the seen users' clusters with the fitted K = 1 model as the fallback, early stopping on the seen users'
  validation loss (up to {epochs} epochs); unseen users fitted for a fixed {steps} full-batch steps
  (the reference code: 20 epochs, checkpoint chosen on the test pairs; docs/method.md, "Known defects").
"""


def data_note(kind: str) -> str:
    if kind == "real":
        return ("Reddit TL;DR with the P-RLHF synthetic length users, as in the paper; the unseen-user minority "
                "list is rebuilt by rule (the reference's hard-coded list is not reproducible).")
    return ("The offline stand-in: Drugs.com patient reviews as posts with four extractive summaries each "
            "(headline, lead, top-2 and top-3 sentences), not Reddit posts with human-written TL;DRs; about "
            "4,300 seen-user pairs instead of ~23,000, 31 unseen users with 130-200 pairs each. The same users, "
            "length labels and split protocol. The real TL;DR build (`python -m data_scripts.summary --out "
            "data/summary_real`) needs the Hugging Face Hub; run.py uses it automatically when present.")


def results_markdown(out: dict, details: dict) -> str:
    kind, cfg, quick = details["dataset_kind"], details["config"], details["quick"]
    timing = {"total": details["seconds"]["total"],
              "by_encoder": {e: d["seconds"]["total"] for e, d in details["by_encoder"].items()}}
    L = []
    L.append("# Summary (Reddit TL;DR protocol) experiment: results\n")
    if quick:
        L.append("**QUICK MODE: a smoke run on a subset (fewer users, posts, epochs, seeds). These numbers are not results.**\n")
    L.append(f"* Dataset: **{out['dataset']}** ({details['dataset_description']})")
    L.append(f"* Encoders: {', '.join(f'`{e}` ({ENCODER_LABELS.get(e, e)})' for e in out['by_encoder'])}, frozen (PAL \"Tiny\")")
    L.append(f"* Seen-user models: early stopping on `seen_val` loss; seeds {cfg.get('seen_seeds', [0])}. "
             f"Unseen users: {len(cfg['unseen']['seeds'])} seeds (few-shot split + adapt init), "
             f"{cfg['unseen']['adapt'].get('steps', 300)} adapt steps, init `{cfg['unseen']['adapt'].get('init', 'zeros')}`.")
    L.append(f"* Runtime: {timing['total']:.0f} s wall in all (" + ", ".join(f"{e}: {s:.0f} s" for e, s in timing["by_encoder"].items())
             + f"), {details['seconds'].get('cpu', float('nan')):.0f} s CPU, on {details['platform']['cpus']} CPU cores "
             "(a shared machine: wall times are noisy)\n")
    for enc_name, res in out["by_encoder"].items():
        det = details["by_encoder"][enc_name]
        L.append(f"## Encoder `{enc_name}`\n")
        lp = det.get("length_probe", {}).get("seen_test")
        if lp:
            L.append(f"Length probe (diagnostic, no preference labels): a ridge regression from the frozen summary embedding "
                     f"to log length, fitted on train-pool summaries, explains R^2 = {lp['r2']:.2f} on test-pool summaries and "
                     f"orders {pct(lp['pair_order_accuracy'])} % of seen-test pairs by length correctly: length (the only "
                     f"signal in the labels) is linearly readable from these pooled embeddings to that degree.\n")
        L.append("### Seen users (test accuracy, %)\n")
        groups = sorted({g for m in res["seen"].values() for g in m["groups"]})
        L.append("| method | accuracy | " + " | ".join(groups) + " | learned parameters | best epoch |")
        L.append("|---|---|" + "---|" * len(groups) + "---|---|")
        for m, r in res["seen"].items():
            best = ", ".join(str(v.get("best_epoch")) for v in det["seen"][m]["val"])
            L.append(f"| {m} | {pct(r['accuracy'])} | " + " | ".join(pct(r["groups"].get(g, float('nan'))) for g in groups)
                     + f" | {r['learned_params']:,} | {best} |")
        L.append("")
        ns = sorted({int(n) for c in res["unseen"].values() for n in c})
        L.append("### Unseen users (test accuracy %, mean ± sample std over seeds) vs pairs per user n\n")
        L.append("| method | " + " | ".join(f"n={n}" for n in ns) + " |")
        L.append("|---|" + "---|" * len(ns))
        for m, c in res["unseen"].items():
            L.append(f"| {m} | " + " | ".join(pm(c[str(n)]) if str(n) in c else "" for n in ns) + " |")
        L.append("")
        L.append("Per group (mean over seeds, %):\n")
        L.append("| method | group | " + " | ".join(f"n={n}" for n in ns) + " |")
        L.append("|---|---|" + "---|" * len(ns))
        for m, gd in det["unseen_by_group"].items():
            for g, c in sorted(gd.items()):
                L.append(f"| {m} | {g} | " + " | ".join(pct(c[str(n)][0]) if str(n) in c else "" for n in ns) + " |")
        L.append("")
    L.append("## Acceptance checks (issue: K = 2 vs K = 1, sample efficiency, PAL vs single RM)\n")
    L.append("| encoder | statement | holds | evidence |")
    L.append("|---|---|---|---|")
    for enc_name, res in out["by_encoder"].items():
        for a in details["by_encoder"][enc_name].get("acceptance", []):
            L.append(f"| {enc_name} | {a['claim']} | {'yes' if a['holds'] else '**no**'} | {a['evidence']} |")
    L.append("")
    L.append("## Comparison with the paper's claims\n")
    L.append("The paper reports relative gains only (docs/method.md, \"Headline claims\"); no absolute TL;DR accuracies were available.\n")
    L.append("| claim | paper | ours (" + ", ".join(out["by_encoder"]) + ") |")
    L.append("|---|---|---|")
    per_enc = {e: comparison_rows(out["by_encoder"][e], details["by_encoder"][e]) for e in out["by_encoder"]}
    first = next(iter(per_enc.values()))
    for i, (claim, paper, _) in enumerate(first):
        ours = "<br>".join(f"{e}: {rows[i][2]}" for e, rows in per_enc.items() if i < len(rows))
        L.append(f"| {claim} | {paper} | {ours} |")
    L.append("")
    L.append(DIFFERENCES.format(data_note=data_note(kind), epochs=cfg["train"].get("epochs", 30),
                                steps=cfg["unseen"]["adapt"].get("steps", 300)))
    L.append("Unseen users: the library's few-shot protocol (`pal_mm.fewshot`): per seed a per-user split (n pairs to fit, "
             "the rest to test; nested in n), all (n, seed) blocks of a model fitted in one `adapt` call and scored with "
             "`evaluate`; mean ± sample std (ddof = 1) over seeds.\n")
    L.append("Plots: `sample_efficiency.png` (unseen accuracy vs n, ± 1 std bands), `seen_groups.png` (seen accuracy per group).")
    return "\n".join(L) + "\n"


def plot(out: dict, details: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encs = list(out["by_encoder"])
    colors = {"pal-b-k1": "tab:orange", "pal-b-k2": "tab:blue", "pal-a-k2": "tab:green", "single-rm": "tab:gray"}
    fig, axes = plt.subplots(1, len(encs), figsize=(5.5 * len(encs), 4), squeeze=False)
    for ax, e in zip(axes[0], encs):
        for m, c in out["by_encoder"][e]["unseen"].items():
            ns = sorted(int(n) for n in c)
            mu = [c[str(n)][0] for n in ns]
            sd = [c[str(n)][1] for n in ns]
            ax.plot(ns, mu, marker="o", label=m, color=colors.get(m), linestyle="--" if m == "single-rm" else "-")
            ax.fill_between(ns, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], alpha=0.2, color=colors.get(m))
        ax.set_xscale("log")
        ax.set_xlabel("labelled pairs per unseen user (n)")
        ax.set_ylabel("unseen-user test accuracy")
        ax.set_title(f"unseen users, {e} ({out['dataset']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "sample_efficiency.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(encs), figsize=(5.5 * len(encs), 4), squeeze=False)
    for ax, e in zip(axes[0], encs):
        seen = out["by_encoder"][e]["seen"]
        methods = list(seen)
        groups = ["overall"] + sorted({g for r in seen.values() for g in r["groups"]})
        width = 0.8 / len(groups)
        for gi, g in enumerate(groups):
            vals = [seen[m]["accuracy"] if g == "overall" else seen[m]["groups"].get(g, float("nan")) for m in methods]
            xs = [i + (gi - (len(groups) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, vals, width, label=g, color={"overall": "0.6", "majority": "tab:blue", "minority": "tab:red"}.get(g))
            for x, v in zip(xs, vals):
                ax.text(x, v + 0.01, f"{100 * v:.0f}", ha="center", fontsize=7)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylim(0, 1.22)
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_ylabel("seen-user test accuracy")
        ax.set_title(f"seen users by group, {e}")
        ax.legend(fontsize=8, loc="upper center", ncol=len(groups))
    fig.tight_layout()
    fig.savefig(out_dir / "seen_groups.png", dpi=120)
    plt.close(fig)
    return ["sample_efficiency.png", "seen_groups.png"]


def write_reports(out: dict, details: dict, out_dir: Path) -> None:
    """results.md and the plots, from the two JSON files' contents."""
    write_text(out_dir / "results.md", results_markdown(out, details))
    plot(out, details, out_dir)


def report_only(out_dir: Path) -> dict:
    """Re-render results.md and the plots from an earlier run's results.json + details.json."""
    out = json.loads((out_dir / "results.json").read_text())
    details = json.loads((out_dir / "details.json").read_text())
    for e, res in out["by_encoder"].items():
        details["by_encoder"][e]["acceptance"] = acceptance(res)
    write_json(out_dir / "details.json", details)
    write_reports(out, details, out_dir)
    log(f"re-rendered {out_dir}/results.md and plots")
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    report_only(Path(args[0]) if args else Path(__file__).resolve().parent / "results")


if __name__ == "__main__":
    main()
