"""`accelerate launch` training with two CPU processes (gloo): the processes train one model together
(DDP, each on its share of the batches) and only the main process writes the model directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]


# in `make test` (about 10 s): with the slow tests only, a change in accelerate broke this path unnoticed
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_accelerate_launch_two_cpu_processes(synthetic_dir, tmp_path):
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "pal_mm.cli", "train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
           "--encoder", "precomputed", "--epochs", "3", "--cpu", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved pal-b") == 1  # one process wrote and reported
    config = json.loads((out / "config.json").read_text())
    assert '"processes": 2' in json.dumps(config)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the default K = 2 fit: the K = 1 start (3 epochs), then two starts of K = 2 (epoch 0 = the start, 1-3)
    assert [r["epoch"] for r in records if r.get("stage") == "split-source"] == [1, 2, 3]
    for start in (0, 1):
        assert [r["epoch"] for r in records if r.get("restart") == start] == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".model*"))  # no leftovers of a second writer
    from pal_mm.model import PALModel

    model = PALModel.from_pretrained(str(out))
    assert len(model.users) == 16
