"""experiments.synthetic: one seed on tiny data in-process (fast), the aggregation and weight
matching on hand examples, and the --quick command end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.common import load_config
from experiments.synthetic import run as synthetic_run
from pal_mm.fewshot import fewshot_split

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "experiments" / "synthetic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config() -> dict:
    cfg = load_config(HERE / "quick.yaml")
    cfg["data"].update(seen_users=10, train_pairs=40, val_pairs=10, test_pairs=10, unseen_users=6, unseen_pool=12, unseen_test=8)
    cfg["train"].update(epochs=4, patience=2)
    cfg["unseen"].update(n=[1, 12], repeats=2, adapt={"steps": 30})
    return cfg


@pytest.fixture(scope="module")
def one_seed():
    cfg = tiny_config()
    return cfg, synthetic_run.run_seed(cfg, 0)


def test_quick_config_inherits_the_full_one():
    full, quick = load_config(HERE / "config.yaml"), load_config(HERE / "quick.yaml")
    assert quick["seeds"] == [0] and full["seeds"] == [0, 1, 2, 3]
    assert quick["data"]["k_true"] == full["data"]["k_true"] == 3  # nested keys merged, not replaced
    assert quick["unseen"]["adapt"]["lr"] == full["unseen"]["adapt"]["lr"] and quick["unseen"]["adapt"]["steps"] == 150
    assert quick["models"] == full["models"]


def test_one_seed_follows_the_few_shot_protocol(one_seed):
    cfg, out = one_seed
    ns, k_true = cfg["unseen"]["n"], cfg["data"]["k_true"]
    assert set(out["unseen"]) == {"pal-a-k3", "pal-b-k3", "pal-a-k1", "pal-b-k1", "single-rm"}
    for key, curve in out["unseen"].items():
        assert sorted(curve) == ns and all(len(v) == cfg["unseen"]["repeats"] for v in curve.values())
    # no user state (K = 1, the single RM): the same fixed test pairs give the same accuracy at every n
    for key in ("pal-a-k1", "pal-b-k1", "single-rm"):
        assert out["unseen"][key][1] == out["unseen"][key][12], key
    # the oracle is scored on the protocol's fixed test pairs of each split (not on all unseen pairs)
    _, data, truth = synthetic_run.make_data(cfg["data"], 0)
    split_acc = []
    for r in range(cfg["unseen"]["repeats"]):
        split = fewshot_split(data["unseen"].user_ids, ns, r, test_pairs=cfg["data"]["unseen_test"])
        assert len(split.test[1]) == cfg["data"]["unseen_users"] * cfg["data"]["unseen_test"]
        split_acc.append(synthetic_run.oracle_accuracy(data["unseen"].subset(split.test[1]), truth, cfg["data"]["beta"])[0])
    assert out["oracle"]["new_test"] == pytest.approx(float(np.mean(split_acc)))
    for name in ("pal-a", "pal-b"):
        w = out["weights"][name]
        assert sorted(w["unseen_l1"]) == ns and all(0.0 <= x <= 2.0 for xs in w["unseen_l1"].values() for x in xs)
        assert np.array(out["scatter"][name]["true"]).shape == (cfg["data"]["seen_users"], k_true)


def test_match_prototypes_undoes_a_permutation_and_weight_errors_by_hand():
    rng = np.random.default_rng(0)
    true = rng.dirichlet([0.3] * 4, size=30)
    perm = np.array([2, 0, 3, 1])
    learned = np.empty_like(true)
    learned[:, perm] = true  # learned column perm[j] holds true column j
    assert list(synthetic_run.match_prototypes(learned, true)) == list(perm)
    err = synthetic_run.weight_errors(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[0.0, 1.0], [0.5, 0.5]]))
    assert err["l1"] == pytest.approx(1.0)  # (2 + 0) / 2 users
    assert err["corr"] == pytest.approx(-1.0)


def test_aggregate_uses_the_sample_std_and_selects_k_on_validation():
    cfg = {"data": {"k_true": 2}, "ks": [1, 2], "models": {"pal-b": {}}, "unseen": {"n": [1, 10]}}

    def seed(val1, val2, test1, test2, unseen_1, unseen_10):
        return {"oracle": {"test": 0.9}, "cpu_seconds": 1.0, "weights": {},
                "seen": {"pal-b-k1": {"val": val1, "test": test1}, "pal-b-k2": {"val": val2, "test": test2},
                         "single-rm": {"val": 0.6, "test": 0.6}},
                "unseen": {"pal-b-k2": {1: unseen_1, 10: unseen_10}}}

    res = synthetic_run.aggregate(cfg, [seed(0.70, 0.80, 0.60, 0.90, [0.5, 0.7], [0.9, 0.9]),
                                        seed(0.72, 0.70, 0.64, 0.70, [0.9], [0.8])])
    assert res["seen"]["pal-b"][2]["test"] == [0.8, 0.1414]  # sqrt(((0.9-0.8)^2 + (0.7-0.8)^2) / (2 - 1))
    assert res["unseen"]["pal-b-k2"][1] == [0.7, 0.2]  # over seeds x splits: 0.5, 0.7, 0.9
    assert res["selected_k"] == {"pal-b": 2}  # mean val 0.75 vs 0.71, whatever the test says
    assert res["checks"] == {"pal-b: K=2 beats K=1 on seen test": True,
                             "pal-b-k2: unseen accuracy rises with n (n=10 > n=1)": True}
    worse = synthetic_run.aggregate(cfg, [seed(0.7, 0.8, 0.9, 0.6, [0.9], [0.8])])
    assert set(worse["checks"].values()) == {False}


@pytest.mark.slow
def test_quick_command_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.synthetic.run", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("seen_vs_k.png", "unseen_vs_n.png", "weights.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (tmp_path / "results.md").read_text()
    assert "## (a) Seen users" in md and "## (b) Unseen users" in md and "## (c) Recovered user weights" in md
    res = json.loads((tmp_path / "results.json").read_text())
    ks, ns = [str(k) for k in res["config"]["ks"]], [str(n) for n in res["config"]["unseen"]["n"]]
    assert len(res["per_seed"]) == 1 and sorted(res["seen"]["pal-a"]) == sorted(ks)
    assert sorted(res["unseen"]["pal-b-k3"]) == sorted(ns)
    # a single model for a mixture of users is far from the Bayes rule; one seed has no spread
    assert res["oracle"]["test"][0] > res["single_rm"]["test"][0] + 0.05
    assert res["single_rm"]["test"][1] == 0.0
