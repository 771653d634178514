"""The defaults study: do the library's defaults fit data nobody tuned them for?

    python -m experiments.defaults.run                        # make reproduce-defaults (~22 min on 2 idle cores)
    python -m experiments.defaults.run --quick --out /tmp/d   # quick.yaml: a few small data sets (~1 min)

For every data set (generated ground-truth mixtures over a grid of K*, widths, scales, label noise,
pairs per user and users, see ``generate.py``; plus the two embedded defaults, see ``embedded.py``):

1. **candidates**: the library defaults (``PALConfig(k=K*)``, ``TrainConfig()``) and each named
   candidate setting of ``config.yaml`` (overrides of the defaults) are trained on the seen users'
   ``train`` pairs (best epoch on ``val``) and scored on ``val``, ``test`` and new users (``adapt`` on
   each new user's first pairs, accuracy on the rest);
2. **best**: per data set, the candidate with the highest ``val`` accuracy (never test) and its test
   accuracy; the **oracle fit** is the correctly specified model (the generating family at the true
   K*, same training settings) and **Bayes** the true reward's accuracy on the same test pairs;
3. **selection**: each candidate's mean and worst validation regret (best val minus its val, over
   data sets); the one with the lowest mean regret is what the library defaults should be;
4. **auto K** (``auto_k.py``): ``pal_mm.selection.select_k`` on mixtures with K* in {2, 3, 4} and
   several seeds: how often it finds K*.

Outputs in ``--out`` (default experiments/defaults/results/): ``results.json`` (``{"config", "datasets":
{name: {"spec", "bayes", "runs": {candidate: {...}}, "oracle": {...}}}, "summary": {name: {"defaults",
"best", "best_candidate", "oracle", "bayes"}}, "selection": {candidate: {"mean_val_regret",
"max_val_regret"}}, "selected", "auto_k", "runtime_s"}``), ``results.md`` and ``defaults.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from encoders.precomputed import PrecomputedEncoder
from pal_mm import AdaptConfig, PALConfig, TrainConfig, adapt, evaluate, fit
from pal_mm.config import DEFAULT_DIM
from pal_mm.embedding import EncodedPairs

from ..common import add_config_args, config_path, load_config, machine, make_log, write_json, write_text
from .generate import Spec, make_data, new_user_split, oracle_head

HERE = Path(__file__).resolve().parent
log = make_log("defaults")


# --------------------------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------------------------
def _selected(cfg: dict, key: str) -> dict:
    """``cfg[key]`` restricted to the names listed under ``only[key]`` (quick.yaml), in that order."""
    names = (cfg.get("only") or {}).get(key)
    return cfg[key] if names is None else {n: cfg[key][n] for n in names}


def generated_specs(cfg: dict) -> list[Spec]:
    """One :class:`Spec` per entry of ``datasets`` (overrides of ``base``)."""
    return [Spec(name=name, **{**cfg["base"], **(over or {})}) for name, over in _selected(cfg, "datasets").items()]


def embedded_names(cfg: dict) -> list[str]:
    """The config's ``embedded`` names in their canonical form: ``t2i-0.0`` and ``t2i-0`` are one data set
    (``t2i-<beta:g>``, the name its part file and table row get)."""
    names = []
    for n in cfg.get("embedded") or []:
        if str(n).startswith("t2i-"):
            try:
                n = f"t2i-{float(str(n).split('-', 1)[1]):g}"
            except ValueError:
                raise SystemExit(f"defaults config: embedded data set {n!r}: expected t2i-<beta>, e.g. t2i-0.5") from None
        names.append(str(n))
    return names


def load_embedded(cfg: dict) -> list[dict]:
    """The embedded defaults named in ``embedded`` (``summary``, ``t2i-<beta>``)."""
    from . import embedded

    names = embedded_names(cfg)
    out = []
    n_new = int(cfg.get("embedded_new_train", 10))
    if "summary" in names:
        out.append({"name": "summary", **embedded.load_summary(n_new, log)})
    betas = [float(n.split("-", 1)[1]) for n in names if n.startswith("t2i-")]
    if betas:
        for beta, entry in embedded.load_t2i(betas, n_new, log).items():
            out.append({"name": f"t2i-{beta:g}", **entry})
    return out


# --------------------------------------------------------------------------------------------
# one model
# --------------------------------------------------------------------------------------------
def new_user_accuracy(model, new: EncodedPairs, rows: tuple[list[int], list[int]]) -> float:
    """Accuracy on new users' test rows after ``adapt`` on their fitting rows (library defaults)."""
    fit_rows, test_rows = rows
    work = copy.deepcopy(model)
    tag = lambda ids: [f"new:{u}" for u in ids]  # noqa: E731
    part = new.subset(fit_rows)
    adapt(work, EncodedPairs(part.prompt, part.chosen, part.rejected, tag(part.user_ids)), AdaptConfig())
    test = new.subset(test_rows)
    return evaluate(work, EncodedPairs(test.prompt, test.chosen, test.rejected, tag(test.user_ids)))["accuracy"]


def train_one(entry: dict, head: dict, train: dict, seed: int) -> dict:
    """Fit one head on ``entry``'s seen users and score it (val, test, new users)."""
    data = entry["data"]
    t0 = time.perf_counter()
    encoder = PrecomputedEncoder(prompt_dim=data["train"].prompt.shape[1], item_dim=data["train"].chosen.shape[1])
    if head.get("dim") == "item":  # the width tied to the item embeddings (the previous default)
        head = {**head, "dim": encoder.item_dim}
    model = fit(data["train"], data["val"], encoder, PALConfig(**{"k": entry["k"], **head}),
                TrainConfig(**{**train, "seed": seed, "progress": False}))
    out = {"val": model.metrics.get("val_accuracy"), "test": evaluate(model, data["test"])["accuracy"],
           "new": new_user_accuracy(model, data["new"], entry["new_rows"]),
           "k": model.config.k, "dim": model.config.dim, "best_epoch": model.metrics["best_epoch"],
           "epochs_run": model.metrics["epochs_run"]}
    if "k_selection" in model.metrics:
        out["k_selection"] = model.metrics["k_selection"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def run_dataset(entry: dict, cfg: dict) -> dict:
    """Every candidate (and the oracle fit, for generated data) on one data set."""
    seed = int(cfg.get("seed", 0))
    runs = {}
    item_dim = entry["data"]["train"].chosen.shape[1]
    for name, cand in _selected(cfg, "candidates").items():
        cand = cand or {}
        if cand.get("head", {}).get("dim") == "item" and item_dim == DEFAULT_DIM and "defaults" in runs:
            runs[name] = {**runs["defaults"], "same_as": "defaults"}  # d = the item width = the default width
        else:
            runs[name] = train_one(entry, cand.get("head", {}), cand.get("train", {}), seed)
        r = runs[name]
        log(f"  {entry['name']:<14} {name:<22} val {r['val']:.4f}  test {r['test']:.4f}  new {r['new']:.4f}  "
            f"epochs {r['best_epoch']}/{r['epochs_run']}  {r['seconds']:.1f}s")
    out = {"runs": runs}
    if entry.get("oracle_head"):
        out["oracle"] = train_one(entry, entry["oracle_head"], cfg.get("oracle_train", {}), seed)
        log(f"  {entry['name']:<14} {'oracle fit':<22} val {out['oracle']['val']:.4f}  test {out['oracle']['test']:.4f}  "
            f"new {out['oracle']['new']:.4f}")
    return out


# --------------------------------------------------------------------------------------------
# summary and selection (validation only)
# --------------------------------------------------------------------------------------------
def summarise(datasets: dict) -> tuple[dict, dict, str]:
    """Per data set: defaults vs the best candidate on val vs the oracle fit; per candidate: its
    validation regret; the candidate with the lowest mean validation regret."""
    summary, regrets = {}, {}
    for name, d in datasets.items():
        runs = d["runs"]
        best = max(runs, key=lambda c: (runs[c]["val"], c == "defaults"))
        summary[name] = {"defaults": runs["defaults"], "best_candidate": best, "best": runs[best],
                         "oracle": d.get("oracle"), "bayes": d.get("bayes")}
        for c, r in runs.items():
            regrets.setdefault(c, []).append(runs[best]["val"] - r["val"])
    selection = {c: {"mean_val_regret": round(sum(v) / len(v), 4), "max_val_regret": round(max(v), 4)}
                 for c, v in regrets.items()}
    selected = min(selection, key=lambda c: (selection[c]["mean_val_regret"], selection[c]["max_val_regret"]))
    return summary, selection, selected


def main(argv=None) -> dict:
    ap = add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), HERE)
    ap.add_argument("--only", nargs="+", help="run only these data sets (names from the config; auto-k: the auto-K part)")
    ap.add_argument("--skip-auto-k", action="store_true", help="leave out the auto-K part")
    ap.add_argument("--resume", action="store_true", help="reuse the parts already in OUT/parts (one file per data set)")
    a = ap.parse_args(argv)
    cfg = load_config(config_path(a, HERE))
    torch.set_num_threads(int(cfg.get("threads", 1)))
    out = Path(a.out)
    parts = out / "parts"  # one file per data set (and auto-k), written as soon as it is done
    only = embedded_names({"embedded": a.only}) if a.only else None  # t2i-0.0 = t2i-0
    wanted = lambda name: not only or name in only  # noqa: E731
    done = lambda name: a.resume and (parts / f"{name}.json").is_file()  # noqa: E731

    entries = []
    for spec in generated_specs(cfg):
        if not wanted(spec.name) or done(spec.name):
            continue
        data, bayes = make_data(spec)
        entries.append({"name": spec.name, "data": data, "new_rows": new_user_split(spec), "k": spec.k_true,
                        "spec": spec.to_dict(), "bayes": bayes, "oracle_head": oracle_head(spec)})
    embedded = [n for n in embedded_names(cfg) if wanted(n) and not done(n)]
    if embedded:
        entries += load_embedded({**cfg, "embedded": embedded})

    for entry in entries:
        log(f"{entry['name']}: {len(entry['data']['train'])} train pairs, K = {entry['k']}")
        t0 = time.perf_counter()
        res = run_dataset(entry, cfg)
        write_json(parts / f"{entry['name']}.json", {
            "spec": entry.get("spec"), "bayes": entry.get("bayes"), "k": entry["k"],
            "widths": entry.get("widths") or [entry["spec"]["prompt_dim"], entry["spec"]["item_dim"]], **res,
            "seconds": round(time.perf_counter() - t0, 1)})
    if cfg.get("auto_k") and not a.skip_auto_k and wanted("auto-k") and not done("auto-k"):
        from .auto_k import run_auto_k

        t0 = time.perf_counter()
        write_json(parts / "auto-k.json", {**run_auto_k(cfg["auto_k"], cfg["base"], log),
                                           "seconds": round(time.perf_counter() - t0, 1)})

    names = [n for n in [s.name for s in generated_specs(cfg)] + embedded_names(cfg) if wanted(n)]
    datasets = {n: json.loads((parts / f"{n}.json").read_text()) for n in names if (parts / f"{n}.json").is_file()}
    summary, selection, selected = summarise(datasets)
    results = {"config": cfg, "datasets": datasets, "summary": summary, "selection": selection, "selected": selected}
    if (parts / "auto-k.json").is_file() and wanted("auto-k") and not a.skip_auto_k:
        results["auto_k"] = json.loads((parts / "auto-k.json").read_text())
    # the parts may have run in several processes: the runtime is the sum of their wall times
    results["runtime_s"] = round(sum(d["seconds"] for d in datasets.values()) + results.get("auto_k", {}).get("seconds", 0), 1)
    results["machine"] = machine()

    from .report import plot, results_markdown

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown(results))
    plot(results, out / "defaults.png")
    print((out / "results.md").read_text())
    log(f"wrote {out} in {results['runtime_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
