"""The summary (TL;DR protocol) experiment: config loading, data resolution, and a --quick run
end to end with the real MiniLM encoder (into a temporary output directory and cache)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "summary" / "run.py"
METHODS = {"pal-b-k1", "pal-b-k2", "pal-a-k2", "single-rm"}


def load_run():
    spec = importlib.util.spec_from_file_location("summary_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run_mod():
    return load_run()


@pytest.fixture(scope="module")
def default_data(tmp_path_factory, run_mod):
    """The offline default dataset, built by run.py's resolver into a temporary directory."""
    tmp = tmp_path_factory.mktemp("summary_data")
    cfg = {"data": {"real_dir": str(tmp / "absent_real"), "default_dir": str(tmp / "summary_default")}}
    d, kind = run_mod.resolve_data(None, cfg)
    assert kind == "default" and d == tmp / "summary_default"
    return d


def test_configs_load_and_quick_inherits(run_mod):
    full = run_mod.load_config(RUN.parent / "default.yaml")
    quick = run_mod.load_config(RUN.parent / "quick.yaml")
    assert set(full["methods"]) == METHODS and set(quick["methods"]) == METHODS
    assert full["encoders"] == ["minilm", "smollm2"] and quick["encoders"] == ["minilm"]
    assert full["unseen"]["ns"] == [1, 2, 5, 10, 20, 50, 100] and len(full["unseen"]["seeds"]) == 5
    # quick overrides only what it names; nested keys are merged
    assert quick["unseen"]["adapt"]["lr"] == full["unseen"]["adapt"]["lr"]
    assert quick["unseen"]["adapt"]["steps"] < full["unseen"]["adapt"]["steps"]
    assert full["subset"] is None and quick["subset"]["unseen_users"] > 0


def test_resolve_data_prefers_given_dir_and_labels_it(run_mod, default_data):
    cfg = {"data": {"real_dir": "nowhere", "default_dir": "nowhere"}}
    d, kind = run_mod.resolve_data(str(default_data), cfg)
    assert d == default_data and kind == "default"
    with pytest.raises(SystemExit):
        run_mod.resolve_data(str(default_data / "missing"), cfg)


def test_quick_subset_keeps_both_groups(run_mod, default_data):
    cfg = run_mod.load_config(RUN.parent / "quick.yaml")
    data = run_mod.load_splits(default_data, cfg["subset"])
    assert len(data["unseen"].users) == cfg["subset"]["unseen_users"]
    assert set(data["seen_train"].user_groups().values()) == {"majority", "minority"}
    posts = set(data["seen_test"].prompts) | set(data["unseen"].prompts)
    assert len(posts) <= cfg["subset"]["test_posts"]


def _check_shape(block: dict, ns: list[str]):
    assert set(block["seen"]) == METHODS and set(block["unseen"]) == METHODS
    for m, r in block["seen"].items():
        assert set(r) == {"accuracy", "groups", "learned_params"}
        assert isinstance(r["accuracy"], float) and 0.0 <= r["accuracy"] <= 1.0
        assert set(r["groups"]) == {"majority", "minority"}
        assert all(isinstance(v, float) for v in r["groups"].values())
        assert isinstance(r["learned_params"], int) and r["learned_params"] > 0
    for m, curve in block["unseen"].items():
        assert list(curve) == ns
        for v in curve.values():
            assert isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) and math.isfinite(x) for x in v)


def test_quick_run_end_to_end(run_mod, default_data, tmp_path):
    out_dir = tmp_path / "results"
    out = run_mod.main(["--quick", "--data-dir", str(default_data), "--out", str(out_dir)])
    for name in ("results.json", "details.json", "results.md", "sample_efficiency.png", "seen_groups.png"):
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    res = json.loads((out_dir / "results.json").read_text())
    assert res == json.loads(json.dumps(out))
    assert set(res) == {"dataset", "encoder", "seen", "unseen", "by_encoder"}
    assert res["dataset"] == "summary_default" and res["encoder"] == "minilm"
    ns = [str(n) for n in run_mod.load_config(RUN.parent / "quick.yaml")["unseen"]["ns"]]
    _check_shape(res, ns)
    assert set(res["by_encoder"]) == {"minilm"}
    sub = res["by_encoder"]["minilm"]
    assert set(sub) == {"dataset", "encoder", "seen", "unseen"}
    _check_shape(sub, ns)
    assert sub["seen"] == res["seen"] and sub["unseen"] == res["unseen"]
    # K = 2 has one more prototype map than K = 1; the single RM has no user logits
    seen = res["seen"]
    assert seen["pal-b-k2"]["learned_params"] > seen["pal-b-k1"]["learned_params"]
    details = json.loads((out_dir / "details.json").read_text())
    assert details["quick"] is True and details["dataset_kind"] == "default"
    assert details["by_encoder"]["minilm"]["cache"]["misses"] > 0
    md = (out_dir / "results.md").read_text()
    assert "QUICK MODE" in md and "Comparison with the paper" in md and "+36 %" in md
    assert "offline" in md.lower()
