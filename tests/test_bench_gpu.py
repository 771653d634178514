"""The GPU benchmark script runs end to end (tiny sizes, CPU): it is meant for one short run on a
lent GPU, where a broken script would waste the device time."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_gpu_tiny_smoke_run(tmp_path):
    from experiments.bench.bench_gpu import main

    assert main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["text"]["texts"] > 0 and report["heads"]["epochs"] >= 1 and report["heads"]["new_users"] == 200
    assert report["reference_pattern"]["pairs_per_s"] > 0 and "TINY" in (tmp_path / "gpu.md").read_text()
