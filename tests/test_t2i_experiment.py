"""experiments.t2i: the data layouts it reads (variants, the older beta_* folders, one dataset
directory), a whole run on tiny vector data in-process (fast), and `--quick` end to end with the
real effnet-minilm encoder on the built default (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoders.atomic import write_json
from experiments.common import load_config
from experiments.t2i import run as t2i_run
from experiments.t2i.data import load_variants, variant_dirs
from pal_mm.config import TrainConfig
from pal_mm.splits import write_dataset

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments" / "t2i"
METHODS = {"pal-b-k1", "pal-b-k2", "single-rm"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_rows(beta: float, seed: int = 0) -> dict[str, list[dict]]:
    """Vectors: 6 seen users (3 'cool' prefer item coordinate 0, 3 'warm' coordinate 1, in a fraction
    beta of their pairs; else both prefer coordinate 2) and 4 unseen users with 14 pairs each."""
    rng = np.random.default_rng(seed)

    def pairs(user: str, group: str, n: int) -> list[dict]:
        out = []
        for i in range(n):
            a, b = rng.normal(size=6).round(4), rng.normal(size=6).round(4)
            axis = (0 if group == "cool" else 1) if i < beta * n else 2
            chosen, rejected = (a, b) if a[axis] > b[axis] else (b, a)
            out.append({"user_id": user, "prompt": rng.normal(size=4).round(4).tolist(), "chosen": chosen.tolist(),
                        "rejected": rejected.tolist(), "group": group})
        return out

    seen = {f"s{i}": "cool" if i < 3 else "warm" for i in range(6)}
    rows = {s: [] for s in ("seen_train", "seen_val", "seen_test")}
    for u, g in seen.items():
        r = pairs(u, g, 30)
        rows["seen_train"] += r[:20]
        rows["seen_val"] += r[20:25]
        rows["seen_test"] += r[25:]
    rows["unseen"] = [x for i in range(4) for x in pairs(f"n{i}", "cool" if i % 2 else "warm", 14)]
    return rows


def write_variants(root: Path, betas=(0.0, 1.0), legacy: bool = False) -> Path:
    names = [f"beta_{b}" for b in betas]
    for b, name in zip(betas, names):
        write_dataset(root / name, tiny_rows(b), {"kind": "custom", **({} if legacy else {"beta": b})})
        if legacy:
            (root / name / "meta.json").unlink()  # the older builds wrote no meta.json per beta
    write_json(root / "meta.json", {"name": "tiny", **({} if legacy else {"variants": names})})
    return root


def test_variant_layouts(tmp_path):
    new = write_variants(tmp_path / "new", betas=(0.25, 1.0))
    assert [(d.name, b) for d, b in variant_dirs(new)] == [("beta_0.25", 0.25), ("beta_1.0", 1.0)]
    old = write_variants(tmp_path / "old", betas=(1.0, 0.0, 0.5), legacy=True)
    assert [(d.name, b) for d, b in variant_dirs(old)] == [("beta_0.0", 0.0), ("beta_0.5", 0.5), ("beta_1.0", 1.0)]
    single = write_dataset(tmp_path / "pickapic", tiny_rows(0.5), {"kind": "real", "name": "pickapic"})
    (one,) = load_variants(single, keys=["0.0", "1.0"])  # one dataset directory: run as one variant
    assert one.key == "pickapic" and one.beta is None and len(one.dataset["unseen"]) == 56
    assert [v.key for v in load_variants(new, keys=["1.0"])] == ["1.0"]
    with pytest.raises(SystemExit, match="no variant"):
        load_variants(new, keys=["0.5"])
    with pytest.raises(SystemExit, match="neither"):
        variant_dirs(tmp_path)


def test_configs_quick_inherits_and_flags_override():
    args = t2i_run.argparse.Namespace(config=None, quick=True, encoder=None, encoder_arg=["batch_size=8"], data=None, seeds="4,5")
    cfg = t2i_run.resolve_config(args)
    full = load_config(HERE / "config.yaml")
    assert cfg["quick_data"] is True and full["quick_data"] is False
    assert cfg["train"]["epochs"] < TrainConfig().epochs and full["train"] == {}  # library defaults, fewer epochs
    assert cfg["methods"] == full["methods"]
    assert cfg["seeds"] == [4, 5] and cfg["encoder_args"] == {"batch_size": 8}
    assert t2i_run.train_config(cfg, "pal-b-k2", 1) == TrainConfig(epochs=cfg["train"]["epochs"], seed=1, progress=False)
    assert t2i_run.head_config(cfg, "pal-b-k2").k == 2
    assert t2i_run.resolve_jobs(3, 2) == 2 and t2i_run.resolve_jobs(0, 5) == 1
    with pytest.raises(SystemExit, match="not both"):
        t2i_run.resolve_config(t2i_run.argparse.Namespace(**{**vars(args), "config": str(HERE / "config.yaml")}))


def test_a_run_on_tiny_vector_data(tmp_path):
    data = write_variants(tmp_path / "data")
    (tmp_path / "tiny.yaml").write_text(
        f"inherit: {HERE / 'quick.yaml'}\nseeds: [0, 1]\ntrain: {{epochs: 3, batch_size: 32}}\n"
        "unseen: {n: [1, 5], test_pairs: 6, adapt: {steps: 20}}\n")
    out = tmp_path / "results"
    assert t2i_run.main(["--config", str(tmp_path / "tiny.yaml"), "--data", str(data), "--encoder", "precomputed",
                         "--no-cache", "--jobs", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"encoder", "seen", "unseen", "learned_params", "encoder_params"}
    assert list(res["seen"]) == ["0.0", "1.0"] and set(res["seen"]["1.0"]) == METHODS
    assert set(res["unseen"]) == METHODS and all(list(c) == ["1", "5"] for c in res["unseen"].values())
    details = json.loads((out / "details.json").read_text())
    assert details["unseen_variant"] == "1.0" and details["data"]["users"] == {"seen": 6, "unseen": 4, "cool": 5, "warm": 5}
    runs = details["seen_runs"]["1.0"]
    for m in METHODS:
        accs = [[r["unseen"][n] for r in runs[m]] for n in ("1", "5")]
        mean, std = res["unseen"][m]["5"]
        assert mean == pytest.approx(np.mean(accs[1]), abs=1e-4)
        assert std == pytest.approx(np.std(accs[1], ddof=1), abs=1e-4)  # the sample std over seeds
    for m in ("pal-b-k1", "single-rm"):  # no user state: the fixed test pairs give one number for every n
        assert res["unseen"][m]["1"] == res["unseen"][m]["5"]
    assert set(details["unseen_by_group"]["pal-b-k2"]) == {"cool", "warm"}
    assert "## Unseen users" in (out / "results.md").read_text()


@pytest.mark.slow
def test_quick_command_end_to_end(tmp_path):
    """The real encoder on the small default, built from scratch, with a fresh embedding cache."""
    cmd = [sys.executable, "-m", "experiments.t2i.run", "--quick", "--out", str(tmp_path / "results"),
           "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = tmp_path / "results"
    res = json.loads((out / "results.json").read_text())
    assert res["encoder"] == "effnet-minilm" and set(res["seen"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert all(list(per) == ["1", "2", "5", "10", "20", "50"] for per in res["unseen"].values())
    assert res["learned_params"]["pal-b-k2"] > res["learned_params"]["pal-b-k1"]
    assert res["encoder_params"] > 20 * res["learned_params"]["pal-b-k2"]
    for method in ("pal-b-k1", "single-rm"):  # no user state: adaptation cannot change anything
        assert len({tuple(v) for v in res["unseen"][method].values()}) == 1
    assert res["seen"]["1.0"]["pal-b-k2"] > 0.6
    for name in ("seen_vs_beta.png", "unseen_vs_n.png", "learned_params.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for heading in ("## Seen users", "## Unseen users", "## Learned parameters", "## Beside the paper's claims"):
        assert heading in md
    assert "156x" in md and "EfficientNet-Lite0" in md
