"""Part of the defaults study: does ``PALConfig(k="auto")`` (``pal-mm train --k auto``) find K*?

For every K* in ``k_true`` and every seed in ``seeds``, a mixture is generated (``base`` of the study
with the ``data`` overrides, a new population per seed) and ``pal_mm.fit`` runs with ``k="auto"``
and library defaults otherwise; K is chosen on validation pairs only (``pal_mm.selection``). The hit
rate is the fraction of (K*, seed) runs whose chosen K equals K*.
"""

from __future__ import annotations

import time

from encoders.precomputed import PrecomputedEncoder
from pal_mm import PALConfig, TrainConfig, evaluate, fit

from .generate import Spec, make_data


def run_auto_k(cfg: dict, base: dict, log=print) -> dict:
    runs = []
    for k_true in cfg["k_true"]:
        for seed in cfg["seeds"]:
            spec = Spec(name=f"auto-k{k_true}-s{seed}", **{**base, **cfg.get("data", {}), "k_true": k_true, "seed": seed})
            data, bayes = make_data(spec)
            t0 = time.perf_counter()
            enc = PrecomputedEncoder(prompt_dim=spec.prompt_dim, item_dim=spec.item_dim)
            model = fit(data["train"], data["val"], enc, PALConfig(k="auto", **cfg.get("head", {})),
                        TrainConfig(seed=seed, progress=False))
            sel = model.metrics["k_selection"]
            runs.append({"k_true": k_true, "seed": seed, "chosen": sel["chosen"],
                         "test": round(evaluate(model, data["test"])["accuracy"], 4), "bayes": round(bayes["test"], 4),
                         "candidates": sel["candidates"], "seconds": round(time.perf_counter() - t0, 1)})
            r = runs[-1]
            log(f"  auto K: K*={k_true} seed={seed} -> K={r['chosen']} (tried {[c['k'] for c in r['candidates']]}), "
                f"test {r['test']:.4f}, {r['seconds']:.0f}s")
    by_k = {str(k): sum(r["chosen"] == k for r in runs if r["k_true"] == k) / max(1, sum(r["k_true"] == k for r in runs))
            for k in cfg["k_true"]}
    return {"runs": runs, "hit_rate": round(sum(r["chosen"] == r["k_true"] for r in runs) / len(runs), 4),
            "hit_rate_by_k": by_k, "data": cfg.get("data", {})}
