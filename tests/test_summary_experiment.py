"""experiments.summary: config loading, data resolution, a run on a tiny subset of the offline default
with the real MiniLM encoder (fast), and the --quick run end to end (slow)."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

import pytest

from experiments.common import load_config
from experiments.summary import run as summary_run

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments" / "summary"
METHODS = {"pal-b-k1", "pal-b-k2", "pal-a-k2", "single-rm"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The offline default dataset, built by run.py's resolver into a temporary directory."""
    tmp = tmp_path_factory.mktemp("summary_data")
    cfg = {"data": {"real_dir": str(tmp / "absent_real"), "default_dir": str(tmp / "summary_default")}}
    d, kind = summary_run.resolve_data(None, cfg)
    assert kind == "default" and d == tmp / "summary_default"
    return d


def test_configs_load_and_quick_inherits():
    full, quick = load_config(HERE / "config.yaml"), load_config(HERE / "quick.yaml")
    assert set(full["methods"]) == METHODS and set(quick["methods"]) == METHODS
    assert full["encoders"] == ["minilm", "smollm2"] and quick["encoders"] == ["minilm"]
    assert full["unseen"]["ns"] == [1, 2, 5, 10, 20, 50, 100] and len(full["unseen"]["seeds"]) == 5
    # quick overrides only what it names; nested keys are merged
    assert quick["unseen"]["adapt"]["lr"] == full["unseen"]["adapt"]["lr"]
    assert quick["unseen"]["adapt"]["steps"] < full["unseen"]["adapt"]["steps"]
    assert full["subset"] is None and quick["subset"]["unseen_users"] > 0


def test_resolve_data_prefers_given_dir_and_labels_it(default_data):
    cfg = {"data": {"real_dir": "nowhere", "default_dir": "nowhere"}}
    d, kind = summary_run.resolve_data(str(default_data), cfg)
    assert d == default_data and kind == "default"
    with pytest.raises(SystemExit):
        summary_run.resolve_data(str(default_data / "missing"), cfg)
    assert summary_run.dataset_kind({"kind": "real", "source": "explabox"}) == "real"  # meta's own kind wins
    assert summary_run.dataset_kind({"source": "openai/summarize_from_feedback"}) == "real"
    assert summary_run.dataset_kind({}) == "custom"


def test_quick_subset_keeps_both_groups(default_data):
    cfg = load_config(HERE / "quick.yaml")
    data = summary_run.load_splits(default_data, cfg["subset"])
    assert len(data["unseen"].users) == cfg["subset"]["unseen_users"]
    assert set(data["seen_train"].user_groups().values()) == {"majority", "minority"}
    posts = set(data["seen_test"].prompts) | set(data["unseen"].prompts)
    assert len(posts) <= cfg["subset"]["test_posts"]


def _check_shape(block: dict, ns: list[str]):
    assert set(block["seen"]) == METHODS and set(block["unseen"]) == METHODS
    for m, r in block["seen"].items():
        assert set(r) == {"accuracy", "groups", "learned_params"}
        assert set(r["groups"]) == {"majority", "minority"}
        assert isinstance(r["learned_params"], int) and r["learned_params"] > 0
    for m, curve in block["unseen"].items():
        assert list(curve) == ns
        assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in curve.values())


def test_tiny_run(default_data, tmp_path):
    (tmp_path / "tiny.yaml").write_text(
        f"inherit: {HERE / 'quick.yaml'}\ntrain: {{epochs: 2, patience: 1}}\n"
        "unseen: {ns: [1, 5], seeds: [42, 43], adapt: {steps: 20}}\n"
        "subset: {train_posts: 16, test_posts: 10, unseen_users: 4}\n")
    out_dir = tmp_path / "results"
    out = summary_run.main(["--config", str(tmp_path / "tiny.yaml"), "--data-dir", str(default_data), "--out", str(out_dir)])
    res = json.loads((out_dir / "results.json").read_text())
    assert res == json.loads(json.dumps(out))
    assert set(res) == {"dataset", "encoder", "seen", "unseen", "by_encoder"} and res["encoder"] == "minilm"
    _check_shape(res, ["1", "5"])
    assert res["by_encoder"]["minilm"]["unseen"] == res["unseen"]
    assert res["seen"]["pal-b-k2"]["learned_params"] > res["seen"]["pal-b-k1"]["learned_params"]
    details = json.loads((out_dir / "details.json").read_text())
    det = details["by_encoder"]["minilm"]
    assert details["quick"] is True and details["dataset_kind"] == "default" and details["users"]["unseen"] == 4
    counts = Counter(summary_run.load_splits(default_data, load_config(tmp_path / "tiny.yaml")["subset"])["unseen"].user_ids)
    assert det["unseen_users"] == {n: sum(c > int(n) for c in counts.values()) for n in ("1", "5")}  # > n pairs to be tested
    assert det["cache"]["misses"] > 0
    for m in METHODS:  # [mean, std] over the two split seeds, std with ddof = 1
        for n, (mean, std) in res["unseen"][m].items():
            per_seed = det["unseen_per_seed"][m][n]
            assert len(per_seed) == 2
            assert mean == pytest.approx(statistics.fmean(per_seed)) and std == pytest.approx(statistics.stdev(per_seed))
    assert set(det["unseen_by_group"]["pal-b-k2"]) <= {"majority", "minority"}
    md = (out_dir / "results.md").read_text()
    assert "QUICK MODE" in md and "pal_mm.fewshot" in md and "/work/" not in md
    assert (out_dir / "sample_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_run_end_to_end(default_data, tmp_path):
    out_dir = tmp_path / "results"
    out = summary_run.main(["--quick", "--data-dir", str(default_data), "--out", str(out_dir)])
    for name in ("results.json", "details.json", "results.md", "sample_efficiency.png", "seen_groups.png"):
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    ns = [str(n) for n in load_config(HERE / "quick.yaml")["unseen"]["ns"]]
    _check_shape(out, ns)
    md = (out_dir / "results.md").read_text()
    assert "Comparison with the paper" in md and "+36 %" in md and "offline" in md.lower()
