"""Killed training runs: a real subprocess is SIGKILLed mid-run; the same command plus --resume
continues from the last completed epoch and ends with the same model as an uninterrupted run
(same machine, same thread count). Leftovers are reused by --resume or removed by the next run;
--overwrite never leaves --out empty; a seeded run writes byte-identical files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from encoders.atomic import write_jsonl
from data_scripts.synthetic import make_pairs, make_population
from pal_mm.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILES = ("model.safetensors", "config.json", "users.json", "metrics.jsonl", "README.md")  # run_config.yaml names --out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume_data")
    protos, w = make_population(k_true=2, dim=16, num_users=12, seed=3, alpha=0.3)
    write_jsonl(d / "train.jsonl", make_pairs(protos, w, 120, seed=1, prompt_dim=8))
    write_jsonl(d / "val.jsonl", make_pairs(protos, w, 20, seed=2, prompt_dim=8))
    return d


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"), "--out", str(out), "--k", "2",
            "--epochs", "12", "--patience", "0", "--restarts", "2", "--batch-size", "16", "--seed", "5", "--quiet", *extra]


def run_cli(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    code = "import sys, torch; torch.set_num_threads(1); from pal_mm.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def checkpoint_state(out: Path) -> dict | None:
    f = out.with_name(f".{out.name}.partial") / ".checkpoint" / "checkpoint.json"
    try:
        return json.loads(f.read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def test_sigkill_then_resume_gives_the_uninterrupted_model(data, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(train_argv(data, reference), tmp_path).wait(timeout=600) == 0

    out = tmp_path / "killed"
    proc = run_cli(train_argv(data, out), tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill in the second restart, a few epochs in
        state = checkpoint_state(out)
        if state and state["restart"] == 1 and state["epoch"] >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed: make it longer")
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    saved = checkpoint_state(out)
    assert saved["restart"] == 1 and 3 <= saved["epoch"] < 12

    resumed = run_cli(train_argv(data, out, "--resume"), tmp_path)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()
    for name in ("model.safetensors", "users.json", "metrics.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    cfg, ref_cfg = (json.loads((d / "config.json").read_text()) for d in (out, reference))
    assert cfg["metrics"] == ref_cfg["metrics"] and len(cfg["metrics"]["restarts"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "reference"]  # no .partial, no checkpoints left
    assert not (out / ".checkpoint").exists()


def test_leftovers_are_removed_without_resume(data, tmp_path, capsys):
    out = tmp_path / "m"
    partial = out.with_name(".m.partial")
    (partial / ".checkpoint").mkdir(parents=True)
    (partial / ".checkpoint" / "checkpoint.json").write_text("{}")
    dead_tmp = tmp_path / ".m.tmp-999999999-x"  # an output temp folder of a process that no longer exists
    dead_tmp.mkdir()
    assert main(train_argv(data, out, "--epochs", "2", "--restarts", "1")) == 0
    assert "removed the leftovers" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_resume_with_nothing_saved_trains_from_scratch(data, tmp_path, capsys):
    assert main(train_argv(data, tmp_path / "m", "--epochs", "2", "--restarts", "1", "--resume")) == 0
    assert "nothing to resume" in capsys.readouterr().err


def test_seeded_runs_write_identical_bytes(data, tmp_path):
    for name in ("a", "b"):
        assert main(train_argv(data, tmp_path / name, "--epochs", "3")) == 0
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_overwrite_swaps_and_never_leaves_out_empty(data, tmp_path, monkeypatch):
    out = tmp_path / "m"
    assert main(train_argv(data, out, "--epochs", "2", "--restarts", "1")) == 0
    first = (out / "model.safetensors").read_bytes()
    seen = []
    import encoders.atomic as atomic

    real = atomic._exchange

    def watched(a, b):  # the target must exist right before and right after the swap
        seen.append(Path(b).is_dir())
        ok = real(a, b)
        seen.append(Path(b).is_dir())
        return ok

    monkeypatch.setattr(atomic, "_exchange", watched)
    assert main(train_argv(data, out, "--epochs", "3", "--restarts", "1", "--seed", "9", "--overwrite")) == 0
    assert seen == [True, True] and (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_interrupted_swap_is_repaired(tmp_path):
    """Where the atomic exchange is unavailable, a kill between the two renames leaves .NAME.old-PID;
    the next writer of the same target puts it back."""
    from encoders.atomic import remove_dead_dirs

    target = tmp_path / "m"
    old = tmp_path / ".m.old-999999999"
    old.mkdir()
    (old / "config.json").write_text("{}")
    remove_dead_dirs(target)
    assert (target / "config.json").is_file() and not old.exists()
