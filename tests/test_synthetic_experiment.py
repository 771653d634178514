"""experiments/synthetic/run.py --quick: runs end to end and writes the documented outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "synthetic" / "run.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_quick")
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_run_writes_outputs(quick_run):
    for name in ("results.json", "results.md", "seen_vs_k.png", "unseen_vs_n.png", "weights.png"):
        f = quick_run / name
        assert f.is_file() and f.stat().st_size > 0, name
    assert (quick_run / "seen_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (quick_run / "results.md").read_text()
    assert "## (a) Seen users" in md and "## (b) Unseen users" in md and "## (c) Recovered user weights" in md


def test_quick_run_json_schema(quick_run):
    res = json.loads((quick_run / "results.json").read_text())
    assert {"config", "runtime_s", "oracle", "seen", "single_rm", "unseen", "weights", "selected_k", "checks", "per_seed"} <= set(res)
    cfg = res["config"]
    ks, ns = [str(k) for k in cfg["ks"]], [str(n) for n in cfg["unseen"]["n"]]
    assert set(res["seen"]) == {"pal-a", "pal-b"}
    for name in ("pal-a", "pal-b"):
        assert sorted(res["seen"][name]) == sorted(ks)
        for k in ks:
            for split in ("val", "test"):
                mean, std = res["seen"][name][k][split]
                assert 0.0 <= mean <= 1.0 and std >= 0.0
        w = res["weights"][name]
        assert {"seen_l1", "seen_corr", "unseen_l1"} <= set(w)
        assert 0.0 <= w["seen_l1"][0] <= 2.0 and -1.0 <= w["seen_corr"][0] <= 1.0
        assert sorted(w["unseen_l1"]) == sorted(ns)
    assert {"pal-a-k3", "pal-b-k3", "single-rm"} <= set(res["unseen"])
    for curve in res["unseen"].values():
        assert sorted(curve) == sorted(ns)
    assert {"val", "test", "new_test"} <= set(res["oracle"])
    assert 0.5 < res["oracle"]["test"][0] <= 1.0
    assert {"val", "test"} <= set(res["single_rm"])
    assert res["checks"] and all(isinstance(v, bool) for v in res["checks"].values())
    assert len(res["per_seed"]) == len(cfg["seeds"]) == 1
    # model selection only on validation: K is picked from the val column
    for name, k in res["selected_k"].items():
        assert res["seen"][name][str(k)]["val"][0] == max(res["seen"][name][kk]["val"][0] for kk in ks)
