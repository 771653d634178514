"""results.md and benchmark.png of the benchmark (``python -m experiments.benchmark.report [DIR]``
re-renders them from results.json and details.json)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

PAL = ("pal-a", "pal-b")
HERE = Path(__file__).resolve().parent


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(ms) -> str:
    return "–" if not ms or ms[0] is None or math.isnan(ms[0]) else f"{ms[0]:.3f} ± {ms[1]:.3f}"


def pick_n(unseen: dict, target: int = 10) -> str | None:
    """The largest n <= target with a value (as the string key), else the smallest n."""
    ns = sorted(int(n) for n in unseen)
    below = [n for n in ns if n <= target]
    return str(below[-1]) if below else (str(ns[0]) if ns else None)


def _best(values: dict) -> set[str]:
    good = {m: v for m, v in values.items() if v is not None and not math.isnan(v)}
    top = max(good.values(), default=None)
    return {m for m, v in good.items() if top is not None and v >= top - 1e-9}


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def wins_and_losses(results: dict) -> list[str]:
    """One line per data set: the best PAL head against the best baseline, seen and new users."""
    lines = []
    for name, d in results["datasets"].items():
        ms = d["methods"]
        pal = {m: v for m, v in ms.items() if m in PAL}
        base = {m: v for m, v in ms.items() if m not in PAL}
        if not pal or not base:
            continue
        parts = []
        for label, get in (("seen", lambda v: v["seen"]),
                           ("new users n=" + str(pick_n(next(iter(ms.values()))["unseen"])),
                            lambda v: v["unseen"].get(pick_n(v["unseen"]), [math.nan])[0])):
            bp = max(pal, key=lambda m: get(pal[m]))
            bb = max(base, key=lambda m: get(base[m]))
            delta = get(pal[bp]) - get(base[bb])
            verdict = "PAL wins" if delta > 0.005 else "PAL loses" if delta < -0.005 else "tie"
            parts.append(f"{label}: {verdict} ({bp} {_fmt(get(pal[bp]))} vs {bb} {_fmt(get(base[bb]))}, {delta:+.3f})")
        lines.append(f"* **{name}**: " + "; ".join(parts))
    return lines


def results_markdown(results: dict, details: dict) -> str:
    methods = details["methods"]
    t = details["timings_s"]
    mach = details["machine"]
    out = ["# Benchmark: PAL against LoRe, VPL and a single reward model", "",
           f"Every method with the library defaults of its head, on the same frozen vectors, splits and seeds "
           f"({details['config']['seeds']}); new users by `pal_mm.fewshot`. Mean over seeds; ± is the sample std. "
           f"Run time {t['total']:.0f} s wall ({t['data_and_encoding']:.0f} s data and encoding, {t['runs']:.0f} s "
           f"training and evaluation in {mach['jobs']} process(es) of {mach['threads_per_job']} thread(s); "
           f"{t['cpu_runs']:.0f} CPU s in the runs), {mach['cpus']} CPUs, torch {mach['torch']}.", ""]
    out += ["## Seen users (test accuracy) and new users (accuracy after n pairs)", ""]
    rows = []
    for name, d in results["datasets"].items():
        ms = d["methods"]
        oracle = (details["datasets"][name].get("oracle") or {}).get("seen_test", {}).get("accuracy")
        seen_best = _best({m: v["seen"] for m, v in ms.items()})
        n = pick_n(next(iter(ms.values()))["unseen"]) if ms else None
        new = {m: v["unseen"].get(n, [math.nan])[0] for m, v in ms.items()}
        new_best = _best(new)
        cells = []
        for m in methods:
            if m not in ms:
                cells.append("–")
                continue
            s = _fmt(ms[m]["seen"])
            u = _fmt(new[m])
            cells.append(f"{'**' + s + '**' if m in seen_best else s} / {'**' + u + '**' if m in new_best else u}")
        rows.append([name, f"n={n}", *cells, _fmt(oracle)])
    out += _table(rows, ["data set", "new users", *methods, "oracle (seen)"])
    out += ["", "Each cell: seen-user accuracy / new-user accuracy at the given n (bold: best of the row). The oracle "
            "is the true model's rule on the same test pairs (generated data only). Train s: wall seconds of `fit` "
            "(they grow with the machine's load); train CPU s: its CPU seconds (one thread).", "",
            "## Where PAL wins and loses", "", *wins_and_losses(results), ""]
    down = results.get("downstream") or {}
    if down:
        out += ["## Downstream: per-user best-of-N", "",
                "How often the candidate a method's rewards pick for a user is the one that user's ground truth prefers "
                "(summary default: 4 candidate summaries per test post, longest for the majority, shortest for the "
                "minority; text-to-image default: an image plain, cool- and warm-filtered, the user's own colour is "
                "best). Seen users, and new users after adapting on n pairs.", ""]
        rows = []
        for name, dm in down.items():
            any_m = next(iter(dm.values()))
            chance = 1 / any_m["candidates"]
            for m in methods:
                if m in dm:
                    v = dm[m]
                    groups = ", ".join(f"{g} {_fmt(x[0])}" for g, x in v["seen"]["per_group"].items())
                    rows.append([name, m, _pm(v["seen"]["accuracy"]), groups,
                                 _pm(v.get("unseen", {}).get("accuracy")), str(v.get("unseen", {}).get("n", "–")), _fmt(chance)])
        out += _table(rows, ["data set", "method", "seen users", "seen, per group", "new users", "n", "chance"]) + [""]
    out += ["## Per data set", ""]
    for name, d in results["datasets"].items():
        det = details["datasets"][name]
        ns = sorted({int(n) for v in d["methods"].values() for n in v["unseen"]})
        sizes = ", ".join(f"{s} {v['pairs']} ({v['users']})" for s, v in det["sizes"].items())
        test = f"{det['test_pairs']} per user" if det["test_pairs"] else "the rest of each user's rows"
        out += [f"### {name}", "", det["description"] + ".", "", f"Pairs (users): {sizes}; new-user test pairs: {test}.", ""]
        rows = []
        for m in methods:
            if m in d["methods"]:
                v = d["methods"][m]
                cpu = det["methods"][m].get("train_cpu_s") or []
                rows.append([m, _pm(det["methods"][m]["seen"]), *[_pm(v["unseen"].get(str(n))) for n in ns],
                             f"{v['params']:,}", _fmt(v["train_s"], 1), _fmt(sum(cpu) / len(cpu), 1) if cpu else "–"])
        oracle = det.get("oracle")
        if oracle:
            rows.append(["oracle (true model)", _fmt(oracle["seen_test"]["accuracy"]), *["" for _ in ns[:-1]],
                         _fmt(oracle["unseen"]["accuracy"]), "", "", ""])
        out += _table(rows, ["method", "seen", *[f"n={n}" for n in ns], "learned params", "train s", "train CPU s"]) + [""]
    return "\n".join(out) + "\n"


def plot(results: dict, details: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for m in details["methods"]:
            v = results["datasets"][name]["methods"].get(m)
            if not v or not v["unseen"]:
                continue
            ns = sorted(int(n) for n in v["unseen"])
            mean = [v["unseen"][str(n)][0] for n in ns]
            std = [v["unseen"][str(n)][1] for n in ns]
            line = ax.errorbar(ns, mean, yerr=std, marker="o", ms=3, capsize=2, label=m)
            ax.axhline(v["seen"], color=line[0].get_color(), ls=":", lw=1)
        oracle = (details["datasets"][name].get("oracle") or {}).get("unseen")
        if oracle:
            ax.axhline(oracle["accuracy"], color="k", ls="--", lw=0.8, label="oracle")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("pairs per new user (n)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("New-user accuracy vs n (dotted: seen-user accuracy; dashed: the true model on generated data)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or [str(HERE / "results")])[0])
    results = json.loads((out / "results.json").read_text())
    details = json.loads((out / "details.json").read_text())
    (out / "results.md").write_text(results_markdown(results, details), encoding="utf-8")
    plot(results, details, out / "benchmark.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
