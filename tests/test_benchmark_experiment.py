"""experiments.benchmark: configs, the candidate sets and best-of-N on hand examples, and the --quick
run end to end (seconds: small generated data, one seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from encoders.precomputed import PrecomputedEncoder
from experiments.benchmark import run as bench_run
from experiments.benchmark.data import Candidates, summary_sets, t2i_sets
from experiments.benchmark.downstream import best_of_n
from experiments.benchmark.report import pick_n, wins_and_losses
from experiments.common import load_config
from pal_mm import PALConfig, PALModel
from pal_mm.data import PreferenceData
from pal_mm.heads import list_heads

HERE = Path(__file__).resolve().parents[1] / "experiments" / "benchmark"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_configs():
    full, quick = load_config(HERE / "config.yaml"), load_config(HERE / "quick.yaml")
    assert set(full["methods"]) == {"pal-a", "pal-b", "single-rm", "lore", "vpl"}
    assert all(m["model_type"] in list_heads() for m in full["methods"].values())
    assert all(set(m) == {"model_type"} for m in full["methods"].values())  # library defaults only
    assert full["train"] == {} and full["adapt"] == {}
    assert {"synthetic_k1", "synthetic_k2", "synthetic_k3", "synthetic_k5", "summary_default", "t2i_default"} <= set(full["datasets"])
    assert quick["run"] == ["synthetic_k2"] and quick["datasets"]["synthetic_k2"]["k_true"] == 2  # merged, not replaced


def test_summary_sets_and_t2i_sets(tmp_path):
    rows = []
    for post, cands in (("p1", ["a", "bbb", "cc", "dddd"]), ("p2", ["x", "yy", "zz", "wwww"])):
        for c, r in zip(cands, cands[1:] + cands[:1]):
            rows.append({"user_id": "u", "prompt": post, "chosen": c, "rejected": r})
    data = {s: PreferenceData.from_rows(rows) for s in ("seen_train", "seen_val", "seen_test", "unseen")}
    # p2 has two candidates of the same length: no unique best for the groups, left out
    assert summary_sets(data) == [("p1", ["a", "bbb", "cc", "dddd"], 3, 0)]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("coins_001_0123456789.png", "coins_001_0123456789_cool.png", "coins_001_0123456789_warm.png",
                 "retina_002_abcdefabcd.png", "retina_002_abcdefabcd_cool.png"):  # retina has no warm version
        (images / name).write_bytes(b"")
    (tmp_path / "beta_1.0").mkdir()
    sets = t2i_sets(tmp_path / "beta_1.0", 10)
    assert [(c, [Path(p).name for p in paths]) for c, paths in sets] == [
        ("a collection of old coins on a dark background",
         ["coins_001_0123456789.png", "coins_001_0123456789_cool.png", "coins_001_0123456789_warm.png"])]


def test_best_of_n_by_hand():
    cfg = PALConfig(model_type="lore", k=2, prompt_dim=1, item_dim=2, normalize_inputs=False)
    model = PALModel(cfg, PrecomputedEncoder(prompt_dim=1, item_dim=2), users=["a", "b"], user_groups={"a": "x", "b": "y"})
    with torch.no_grad():
        model.head.V.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))  # basis 0 likes coordinate 0, basis 1 coordinate 1
        model.head.user_logits.copy_(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))
    items = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]],   # set 0: x's best is 0, y's best is 1
                          [[0.0, 2.0], [2.0, 0.0], [0.0, 0.0]]])  # set 1: x's best is 1, y's best is 0
    cand = Candidates(torch.zeros(2, 1), items, {"x": torch.tensor([0, 1]), "y": torch.tensor([1, 2])}, ["s0", "s1"], "hand")
    out = best_of_n(model, cand, ["a", "b"], model.user_groups)
    assert out["per_group"] == {"x": 1.0, "y": 0.5} and out["accuracy"] == 0.75 and out["picks"] == 4
    out = best_of_n(model, cand, ["a", "b"], model.user_groups, exclude={"a": {"s1"}})
    assert out["per_group"]["x"] == 1.0 and out["picks"] == 3


def test_report_helpers():
    assert pick_n({"1": 0, "5": 0, "20": 0}) == "5" and pick_n({"20": 0, "50": 0}) == "20"
    res = {"datasets": {"d": {"methods": {
        "pal-b": {"seen": 0.8, "unseen": {"10": [0.7, 0.0]}}, "lore": {"seen": 0.75, "unseen": {"10": [0.72, 0.0]}}}}}}
    line = wins_and_losses(res)[0]
    assert "seen: PAL wins (pal-b 0.800 vs lore 0.750, +0.050)" in line and "n=10: PAL loses" in line


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "bench"
    results = bench_run.main(["--quick", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.png", "details.json", "results.json", "results.md"]
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    methods = saved["datasets"]["synthetic_k2"]["methods"]
    assert set(methods) == {"pal-a", "pal-b", "single-rm", "lore", "vpl"}
    for m, v in methods.items():
        assert set(v) == {"seen", "unseen", "params", "train_s"}
        assert 0.0 <= v["seen"] <= 1.0 and v["params"] > 0 and v["train_s"] >= 0
        assert set(v["unseen"]) == {"1", "5"} and all(len(ms) == 2 and not math.isnan(ms[0]) for ms in v["unseen"].values())
    details = json.loads((out / "details.json").read_text())
    assert details["datasets"]["synthetic_k2"]["oracle"]["seen_test"]["accuracy"] > 0.5
    text = (out / "results.md").read_text()
    assert "| synthetic_k2 | n=5 |" in text and "Where PAL wins and loses" in text
    with pytest.raises(SystemExit):
        bench_run.main(["--quick", "--out", str(out), "--methods", "nope"])
