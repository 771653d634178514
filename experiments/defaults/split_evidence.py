"""A side study: how much validation evidence should a mixture need before it replaces K = 1?

    python -m experiments.defaults.split_evidence --out experiments/defaults/results/split_evidence
    python -m experiments.defaults.split_evidence --only users-10 t2i-0.25 --out /tmp/se   # some data sets

A K >= 2 model starts from its fitted K = 1 model and keeps that copy unless the mixture's mean per-pair
validation loss is lower by more than ``TrainConfig.split_evidence`` standard errors. The threshold is a
choice made *with* validation pairs, so it cannot be judged on the same pairs (a lower threshold always
looks better there). This study holds half of every seen user's validation pairs out:

* **A**: what training sees as validation (best epoch, the K = 1 fallback's test): for generated data all of
  ``val``; for the embedded defaults, which have no more pairs, half of each user's ``val`` pairs (seeded);
* **B**: where each threshold's final model is scored: for generated data a second validation set of the same
  users and size from its own random stream; for the embedded defaults the other half of ``val``. The
  threshold is chosen on B; test pairs are reported, never used.

Halving ``val`` shrinks a real gain's evidence by about sqrt(2) (standard errors grow with fewer pairs), so
on the embedded defaults a threshold acts like a ~1.4x larger one at full size; the generated data sets,
with a fresh B, compare thresholds at the size training really sees.

Per data set (the defaults study's generated mixtures with K* >= 2, less scale-mixed, which gives base's
numbers, and the embedded defaults at every text-to-image beta) and seed: K = 1 is fitted once on (train, A), then the K* model is trained from it
for every threshold (``split_source``, so all thresholds share the same K = 1 start). Regret: per data set,
the best threshold's mean B accuracy (over seeds) minus each threshold's; the threshold with the lowest
mean regret is what the default should be.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from encoders.precomputed import PrecomputedEncoder
from pal_mm import PALConfig, TrainConfig, evaluate, fit
from pal_mm.data import user_orders
from pal_mm.embedding import EncodedPairs

from ..common import load_config, machine, make_log, write_json, write_text
from .generate import Population, make_data
from .run import embedded_names, generated_specs, load_embedded

HERE = Path(__file__).resolve().parent
log = make_log("split-evidence")
THRESHOLDS = [0.0, 1.0, 2.0, 3.0]
SEEDS = [0, 1, 2]
EMBEDDED = ["summary", "t2i-0", "t2i-0.25", "t2i-0.5", "t2i-0.75", "t2i-1"]
FRESH_STREAM = 7  # generate.make_data's streams: 1-3 seen splits, 9 new users
SKIP = {"scale-mixed"}  # the same numbers as base (inputs are standardised): it would count base twice


def halves(val: EncodedPairs, seed: int) -> tuple[EncodedPairs, EncodedPairs]:
    """(A, B): every user's validation pairs in the protocol's seeded order (:func:`pal_mm.data.user_orders`)
    cut in two; a user's odd pair goes to A."""
    a, b = [], []
    for rows in user_orders(val.user_ids, seed).values():
        cut = (len(rows) + 1) // 2
        a += rows[:cut]
        b += rows[cut:]
    return val.subset(sorted(a)), val.subset(sorted(b))


def run_one(data: dict, k: int, seed: int, thresholds: list[float], fresh_b: EncodedPairs | None = None) -> dict:
    """K = 1 once, then the K model for every threshold; accuracies on B (and test, reported only). With
    ``fresh_b`` (generated data) training sees all of ``val`` and B is that independent set instead."""
    val_a, val_b = (data["val"], fresh_b) if fresh_b is not None else halves(data["val"], seed)
    enc = PrecomputedEncoder(prompt_dim=data["train"].prompt.shape[1], item_dim=data["train"].chosen.shape[1])
    t0 = time.perf_counter()
    k1 = fit(data["train"], val_a, enc, PALConfig(k=1), TrainConfig(seed=seed, restarts=1, progress=False), beliefs=False)
    out = {"k1": {"b": evaluate(k1, val_b)["accuracy"], "test": evaluate(k1, data["test"])["accuracy"]}, "thresholds": {}}
    for t in thresholds:
        m = fit(data["train"], val_a, enc, PALConfig(k=k), TrainConfig(seed=seed, split_evidence=t, progress=False),
                split_source=k1, beliefs=False)
        info = m.metrics.get("k_init", {})
        out["thresholds"][f"{t:g}"] = {"b": evaluate(m, val_b)["accuracy"], "test": evaluate(m, data["test"])["accuracy"],
                                       "kept_k1": bool(info.get("kept_k1")), "gain_se": info.get("gain_over_k1_se")}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["pairs"] = {"A": len(val_a), "B": len(val_b), "B_is": "fresh" if fresh_b is not None else "half of val"}
    return out


def fresh_validation(spec) -> EncodedPairs:
    """A second validation set of the seen users, as large as ``val``, from its own random stream."""
    pop = Population(spec)
    pairs, _ = pop.pairs(np.arange(spec.users), spec.sizes()["val"], FRESH_STREAM, "u")
    return pairs


def entries(cfg: dict, only: list[str] | None):
    wanted = lambda n: not only or n in only  # noqa: E731
    for spec in generated_specs(cfg):
        if spec.k_true >= 2 and spec.name not in SKIP and wanted(spec.name):
            data, _ = make_data(spec)
            yield spec.name, data, spec.k_true, fresh_validation(spec)
    names = [n for n in embedded_names({"embedded": EMBEDDED}) if wanted(n)]
    if names:
        for e in load_embedded({**cfg, "embedded": names}):
            yield e["name"], e["data"], e["k"], None


def summarise(parts: dict[str, dict], thresholds: list[str]) -> dict:
    """Per data set: mean B / test accuracy per threshold over seeds, splits kept; per threshold: regret."""
    rows = {}
    for name, part in parts.items():
        runs = part["seeds"]
        row = {}
        for t in thresholds:
            row[t] = {"b": statistics.mean(r["thresholds"][t]["b"] for r in runs.values()),
                      "test": statistics.mean(r["thresholds"][t]["test"] for r in runs.values()),
                      "splits": sum(not r["thresholds"][t]["kept_k1"] for r in runs.values())}
        best = max(v["b"] for v in row.values())
        for v in row.values():
            v["regret"] = 100 * (best - v["b"])
        rows[name] = row
    selection = {t: {"mean_regret": statistics.mean(rows[n][t]["regret"] for n in rows),
                     "max_regret": max(rows[n][t]["regret"] for n in rows)} for t in thresholds}
    # the lowest mean regret; a tie goes to the larger threshold (fewer claims of groups)
    chosen = min(thresholds, key=lambda t: (round(selection[t]["mean_regret"], 6), -float(t)))
    return {"datasets": rows, "selection": selection, "chosen": chosen}


def markdown(res: dict) -> str:
    ts = res["thresholds"]
    s = res["summary"]
    lines = ["# Side study: the evidence a mixture needs to replace K = 1", "",
             f"Generated by `python -m experiments.defaults.split_evidence` in {res['runtime_s']:.0f} s (summed over "
             f"processes; {res['machine'].get('cpus', '?')} CPUs). Seeds {res['seeds']}. Training sees validation pairs **A** "
             "(embedded defaults: half of each seen user's val pairs); each threshold's final model is scored on **B** "
             "(the other half), where the "
             "threshold is chosen (generated data: training sees all of val and B is a fresh validation set of the same size). "
             "Test accuracy is reported, never used. Accuracies in %, means over seeds; "
             "*splits*: seeds whose final model is the mixture (not the K = 1 copy).", "",
             "| data set | " + " | ".join(f"t = {t}: B / test (splits)" for t in ts) + " |",
             "|---|" + "---|" * len(ts)]
    for name, row in s["datasets"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * row[t]['b']:.1f} / {100 * row[t]['test']:.1f} ({row[t]['splits']})" for t in ts) + " |")
    lines += ["", "| threshold (SE) | mean B regret | worst B regret |", "|---|---|---|"]
    for t in ts:
        sel = s["selection"][t]
        lines.append(f"| {t}{' (chosen)' if t == s['chosen'] else ''} | {sel['mean_regret']:.2f} | {sel['max_regret']:.2f} |")
    lines += ["", f"Lowest mean regret on B (ties to the larger threshold): **{s['chosen']} standard errors**.", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"), help="the defaults study's config (data sets)")
    ap.add_argument("--out", default=str(HERE / "results" / "split_evidence"))
    ap.add_argument("--only", nargs="+", help="run only these data sets")
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--thresholds", nargs="+", type=float, default=THRESHOLDS)
    ap.add_argument("--resume", action="store_true", help="reuse the parts already in OUT/parts")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    torch.set_num_threads(int(cfg.get("threads", 1)))
    out, thresholds = Path(a.out), [f"{t:g}" for t in a.thresholds]
    parts_dir = out / "parts"
    only = embedded_names({"embedded": a.only}) if a.only else None
    for name, data, k, fresh_b in entries(cfg, only):
        if a.resume and (parts_dir / f"{name}.json").is_file():
            continue
        log(f"{name}: {len(data['train'])} train pairs, K = {k}")
        seeds = {}
        for seed in a.seeds:
            seeds[str(seed)] = r = run_one(data, k, seed, a.thresholds, fresh_b)
            log(f"  seed {seed}: K=1 B {r['k1']['b']:.3f}; " + "  ".join(
                f"t={t}: B {v['b']:.3f} test {v['test']:.3f} {'K=1' if v['kept_k1'] else 'split'} ({v['gain_se']})"
                for t, v in r["thresholds"].items()) + f"  {r['seconds']:.0f}s")
        write_json(parts_dir / f"{name}.json", {"k": k, "seeds": seeds})
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(parts_dir.glob("*.json"))}
    if only:
        parts = {n: v for n, v in parts.items() if n in only}
    res = {"thresholds": thresholds, "seeds": a.seeds, "summary": summarise(parts, thresholds), "parts": parts,
           "runtime_s": round(sum(r["seconds"] for p in parts.values() for r in p["seeds"].values()), 1),
           "machine": machine()}
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res))
    print((out / "results.md").read_text())
    return res


if __name__ == "__main__":
    main()
