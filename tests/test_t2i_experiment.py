"""experiments/t2i/run.py: `--quick` end to end (real effnet-minilm encoder, data built from scratch,
fresh embedding cache, temporary output directory) and the protocol helpers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "t2i" / "run.py"
METHODS = {"pal-b-k1", "pal-b-k2", "single-rm"}
BETAS = {"0.0", "0.25", "0.5", "0.75", "1.0"}
NS = ["1", "2", "5", "10", "20", "50"]


def _load_run_module():
    spec = importlib.util.spec_from_file_location("t2i_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["t2i_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2i_quick")
    cmd = [sys.executable, str(RUN), "--quick", "--out", str(tmp / "results"), "--data", str(tmp / "data"),
           "--cache-dir", str(tmp / "cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return tmp / "results"


def test_quick_run_results_json_has_exactly_the_documented_schema(quick_run):
    res = json.loads((quick_run / "results.json").read_text())
    assert set(res) == {"encoder", "seen", "unseen", "learned_params", "encoder_params"}
    assert res["encoder"] == "effnet-minilm"
    assert set(res["seen"]) == BETAS
    for beta, per in res["seen"].items():
        assert set(per) == METHODS
        assert all(isinstance(v, float) and 0.5 <= v <= 1.0 for v in per.values()), (beta, per)
    assert set(res["unseen"]) == METHODS
    for method, per in res["unseen"].items():
        assert list(per) == NS
        assert all(len(v) == 2 and 0.0 <= v[0] <= 1.0 and v[1] >= 0.0 for v in per.values())
    assert set(res["learned_params"]) == METHODS and all(isinstance(v, int) and v > 0 for v in res["learned_params"].values())
    assert res["learned_params"]["pal-b-k2"] > res["learned_params"]["pal-b-k1"]
    assert isinstance(res["encoder_params"], int) and res["encoder_params"] > 20 * res["learned_params"]["pal-b-k2"]


def test_quick_run_sanity(quick_run):
    res = json.loads((quick_run / "results.json").read_text())
    for method in ("pal-b-k1", "single-rm"):  # no user state: adaptation cannot change anything
        assert len({tuple(v) for v in res["unseen"][method].values()}) == 1
    assert res["seen"]["1.0"]["pal-b-k2"] > 0.6


def test_quick_run_writes_report_and_plots(quick_run):
    for name in ("results.md", "details.json", "seen_vs_beta.png", "unseen_vs_n.png", "learned_params.png"):
        assert (quick_run / name).is_file(), name
    for name in ("seen_vs_beta.png", "unseen_vs_n.png", "learned_params.png"):
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (quick_run / "results.md").read_text()
    for heading in ("## Seen users", "## Unseen users", "## Learned parameters", "## Beside the paper's claims"):
        assert heading in md
    assert "156x" in md and "EfficientNet-Lite0" in md
    details = json.loads((quick_run / "details.json").read_text())
    assert all(r["best_epoch"] <= r["epochs_run"] for per in details["seen_runs"].values() for runs in per.values() for r in runs)


def test_unseen_splits_fixed_test_and_nested_training_sets():
    run = _load_run_module()
    users = [f"u{i % 3}" for i in range(3 * 40)]
    train, test = run.unseen_splits(users, [1, 5, 10], test_pairs=20, seed=3)
    assert len(test) == 60 and all(len(train[n]) == 3 * n for n in (1, 5, 10))
    assert set(train[1]) <= set(train[5]) <= set(train[10])
    assert not set(train[10]) & set(test)
    again, test_again = run.unseen_splits(users, [1, 5, 10], test_pairs=20, seed=3)
    assert again == train and test_again == test
    with pytest.raises(SystemExit, match="need 20 test"):
        run.unseen_splits(users, [30], test_pairs=20, seed=0)


def test_config_merge_and_jobs(tmp_path):
    run = _load_run_module()
    args = run.argparse.Namespace(config=str(RUN.parent / "config.yaml"), quick=True, encoder=None, encoder_arg=["batch_size=8"],
                                  data=None, seeds="4,5")
    cfg = run.load_config(args)
    full = run.load_config(run.argparse.Namespace(**{**vars(args), "quick": False}))
    assert cfg["quick_data"] is True and full["quick_data"] is False
    assert cfg["train"]["epochs"] < full["train"]["epochs"] and cfg["train"]["lr_users"] == full["train"]["lr_users"]  # deep merge
    assert cfg["unseen"]["beta"] == 1.0 and cfg["seeds"] == [4, 5] and cfg["encoder_args"] == {"batch_size": 8}
    assert run.train_config(cfg, "pal-b-k2", 1).patience == 0 and run.train_config(cfg, "pal-b-k1", 1).patience > 0
    assert run.head_config(cfg, "pal-b-k2").k == 2
    assert run.resolve_jobs(3, 2) == 2 and run.resolve_jobs("auto", 100) >= 1 and run.resolve_jobs(0, 5) == 1
    (tmp_path / "meta.json").write_text(json.dumps({"quick": True}))
    with pytest.raises(SystemExit, match="quick"):
        run.ensure_data({**cfg, "data": str(tmp_path), "quick_data": False}, print)
