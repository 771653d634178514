"""K chosen on validation data: PALConfig(k="auto"), select_k, `pal-mm train --k auto`."""

import json

import pytest
import torch

from data_scripts.synthetic import make_pairs, make_population
from encoders import create_encoder
from pal_mm import PALConfig, PreferenceData, TrainConfig, fit, select_k
from pal_mm.embedding import encode_data
from pal_mm.errors import PalMMError
from pal_mm.selection import accepts, fewshot_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_accepts_needs_two_standard_errors():
    # differences -0.03 and -0.01: mean -0.02, sd 0.01414, se 0.01 -> 2.0 standard errors: not more than 2
    current = torch.tensor([0.5, 0.5], dtype=torch.float64)
    ok, gain = accepts(torch.tensor([0.47, 0.49], dtype=torch.float64), current)
    assert not ok and gain == pytest.approx(2.0)
    ok, gain = accepts(torch.tensor([0.46, 0.49], dtype=torch.float64), current)  # mean -0.025, se 0.015: 1.67
    assert not ok and gain == pytest.approx(1.667, abs=1e-3)
    ok, gain = accepts(torch.tensor([0.40, 0.41, 0.40], dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64))
    assert ok and gain > 2  # mean -0.0967, se 0.00333: 29 standard errors
    assert accepts(current.clone(), current) == (False, None)  # the same losses: no evidence at all


def test_fewshot_rows_use_half_the_validation_pairs_per_user():
    from pal_mm.embedding import EncodedPairs

    ids = ["a"] * 8 + ["b"] * 8 + ["c"] * 2
    val = EncodedPairs(torch.zeros(18, 1), torch.zeros(18, 1), torch.zeros(18, 1), ids)
    n, fit_rows, test_rows = fewshot_rows(val, seed=0)
    assert n == 4  # median 8 pairs per user -> 4 to fit, the rest scored
    assert len(fit_rows) == 8 and len(test_rows) == 8  # user c (2 <= 4 pairs) is left out
    assert not set(fit_rows) & set(test_rows) and {ids[i] for i in fit_rows} == {"a", "b"}


def _mixture(k_true, seed):
    protos, w = make_population(k_true=k_true, dim=8, num_users=30, seed=seed, alpha=0.1)
    rows = {"train": make_pairs(protos, w, 60, seed=seed + 1, prompt_dim=4),
            "val": make_pairs(protos, w, 20, seed=seed + 2, prompt_dim=4)}
    return rows


def test_auto_k_finds_k_true(tmp_path):
    rows = _mixture(3, seed=11)
    enc = create_encoder("precomputed")
    data = {s: encode_data(enc, PreferenceData.from_rows(r)) for s, r in rows.items()}
    path = tmp_path / "metrics.jsonl"
    model = fit(data["train"], data["val"], enc, PALConfig(k="auto"), TrainConfig(progress=False), metrics_path=path)
    sel = model.metrics["k_selection"]
    assert model.config.k == sel["chosen"] == 3, sel["candidates"]
    assert [c["k"] for c in sel["candidates"]] == [1, 2, 3, 4, 5]  # stops after two misses
    assert [c["accepted"] for c in sel["candidates"]] == [True, True, True, False, False]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    summary = [r for r in records if "k_selection" in r]
    assert [r["k_selection"] for r in summary] == [c["k"] for c in sel["candidates"]]
    assert {"val_loss", "val_accuracy", "fewshot_loss", "fewshot_accuracy", "score", "gain_se"} <= set(summary[0])
    card = str(model.generate_model_card())  # the model card shows the Ks tried
    assert "## K chosen on validation" in card and "| 3 |" in card and "**K = 3**" in card


def test_auto_k_errors():
    rows = _mixture(2, seed=3)
    enc = create_encoder("precomputed")
    train = encode_data(enc, PreferenceData.from_rows(rows["train"]))
    with pytest.raises(PalMMError, match="give --val"):
        select_k(train, None, enc, PALConfig(k="auto"), TrainConfig(progress=False))
    with pytest.raises(PalMMError, match="prototypes"):
        select_k(train, train, enc, PALConfig(model_type="single-rm", k="auto"), TrainConfig(progress=False))
    with pytest.raises(PalMMError, match="pal_mm.fit"):
        from pal_mm.training import fit as fit_k

        fit_k(train, train, enc, PALConfig(k="auto"), TrainConfig(progress=False))
    with pytest.raises(PalMMError, match="'auto'"):
        PALConfig(k="three")


def test_cli_k_auto(tmp_path):
    from pal_mm.cli import main

    rows = _mixture(2, seed=7)
    for split, r in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in r))
    out = tmp_path / "model"
    code = main(["train", "--data", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"),
                 "--encoder", "precomputed", "--k", "auto", "--epochs", "6", "--out", str(out), "--quiet"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["metrics"]["k_selection"]["chosen"] == cfg["head"]["k"]
    assert "k_selection" in (out / "README.md").read_text()
    assert any("k_selection" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
