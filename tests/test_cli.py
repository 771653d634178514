"""Every CLI command end to end on small vector data, and every bad-input case: exit code 2,
one line on stderr, no output directory left behind."""

import json

import pytest
import yaml

from pal_mm.cli import main

QUICK = ["--epochs", "3", "--quiet"]


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    rc = main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
               "--encoder", "precomputed", "--model", "pal-b", "--k", "3", "--seed", "0", "--out", str(out), "--report-to", "csv", *QUICK])
    assert rc == 0
    return out


def test_train_writes_model_dir(trained):
    names = sorted(p.name for p in trained.iterdir())
    assert names == ["README.md", "config.json", "metrics.csv", "metrics.jsonl", "model.safetensors", "run_config.yaml",
                     "timings.jsonl", "users.json"]
    import csv

    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert {"train_loss", "val_loss", "val_accuracy", "val_margin", "val_reward_mean", "val_reward_std", "logit_scale",
            "mixture_mass_0", "mixture_mass_2"} <= set(rows[0])
    cfg = yaml.safe_load((trained / "run_config.yaml").read_text())
    assert cfg["k"] == 3 and cfg["model"] == "pal-b" and cfg["encoder"] == "precomputed"
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # the K = 1 model the mixture starts from (3 epochs), then each of the two starts (epoch 0 = K = 1's copy)
    assert [r["epoch"] for r in records if r.get("stage") == "split-source"] == [1, 2, 3]
    assert max(r["epoch"] for r in records) == 3
    card = (trained / "README.md").read_text()
    assert "## Mixture" in card  # the card says whether the mixture was kept
    assert "| loss | Bradley-Terry, labels taken as flipped at rate 0.2 |" in card  # PAL-B's default loss
    assert json.loads((trained / "config.json").read_text())["head"]["label_noise"] == 0.2  # fixed at training


def test_train_says_when_a_mixture_stays_at_k1(synthetic_dir, tmp_path, capsys):
    # a bar no validation gain clears: the K = 2 model is its K = 1 start, and train says so on stdout
    rc = main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
               "--encoder", "precomputed", "--k", "2", "--split-evidence", "1000", "--out", str(tmp_path / "m"), *QUICK])
    out = capsys.readouterr().out
    assert rc == 0 and "mixture: the model is its K = 1 start" in out and "--split-evidence 1000" in out
    cfg = yaml.safe_load((tmp_path / "m" / "run_config.yaml").read_text())
    assert cfg["split_evidence"] == 1000


def test_train_pal_a(synthetic_dir, tmp_path):
    rc = main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--encoder", "precomputed", "--model", "pal-a",
               "--k", "2", "--out", str(tmp_path / "a"), *QUICK])
    assert rc == 0 and json.loads((tmp_path / "a" / "config.json").read_text())["head"]["model_type"] == "pal-a"


def test_train_label_noise_is_saved(synthetic_dir, tmp_path):
    rc = main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--encoder", "precomputed", "--k", "1",
               "--label-noise", "0.15", "--out", str(tmp_path / "m"), *QUICK])
    assert rc == 0 and json.loads((tmp_path / "m" / "config.json").read_text())["head"]["label_noise"] == 0.15
    assert "| loss | Bradley-Terry, labels taken as flipped at rate 0.15 |" in (tmp_path / "m" / "README.md").read_text()
    assert yaml.safe_load((tmp_path / "m" / "run_config.yaml").read_text())["label_noise"] == 0.15


def test_adapt_eval_score(trained, synthetic_dir, tmp_path, capsys):
    new = synthetic_dir / "new.jsonl"
    assert main(["adapt", "--model", str(trained), "--data", str(new), "--out", str(tmp_path / "m2")]) == 0
    assert main(["eval", "--model", str(tmp_path / "m2"), "--data", str(new), "--json", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"accuracy", "n_pairs", "per_user"} <= set(metrics)
    assert metrics["n_pairs"] == 6 * 60 and len(metrics["per_user"]) == 6
    row = json.loads(new.read_text().splitlines()[0])
    vec = lambda v: ",".join(str(x) for x in v)  # noqa: E731
    capsys.readouterr()
    assert main(["score", "--model", str(tmp_path / "m2"), "--user", row["user_id"], f"--prompt={vec(row['prompt'])}",
                 f"--response={vec(row['chosen'])}", f"--response={vec(row['rejected'])}", "--json"]) == 0
    rewards = json.loads(capsys.readouterr().out)["rewards"]
    assert len(rewards) == 2
    from pal_mm import PALModel

    expected = PALModel.from_pretrained(tmp_path / "m2").reward(row["prompt"], [row["chosen"], row["rejected"]], user=row["user_id"])
    assert rewards == pytest.approx(expected, rel=1e-6)


def test_encoders_lists_precomputed(capsys):
    assert main(["encoders"]) == 0
    assert "precomputed" in capsys.readouterr().out


def test_yaml_config_and_cli_precedence(synthetic_dir, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(synthetic_dir / "train.jsonl"), "k": 4, "epochs": 1, "model": "pal-b", "quiet": True}))
    out = tmp_path / "m"
    assert main(["train", "--config", str(cfg), "--k", "2", "--out", str(out)]) == 0
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["k"] == 2 and resolved["epochs"] == 1  # the flag wins, the file fills the rest


def _bad(capsys, argv, message, leftover=None):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert message in err, err
    if leftover is not None:
        assert not leftover.exists()
        assert not [p for p in leftover.parent.iterdir() if p.name.startswith(f".{leftover.name}")]


def test_bad_inputs(synthetic_dir, trained, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"user_id": "u", "prompt": [1.0], "chosen": [1.0], "rejected": None}) + "\n")
    _bad(capsys, ["train", "--data", str(bad), "--out", str(out)], "bad.jsonl: row 1: column 'rejected': empty or null", out)
    _bad(capsys, ["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(out)], "no such file", out)
    _bad(capsys, ["train", "--out", str(out)], "needs --data", out)
    _bad(capsys, ["train", "--data", str(synthetic_dir / "train.jsonl"), "--encoder", "nope", "--out", str(out)], "unknown encoder 'nope'", out)
    _bad(capsys, ["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "new.jsonl"), "--out", str(out), *QUICK],
         "absent from training", out)
    _bad(capsys, ["train", "--data", str(synthetic_dir / "train.jsonl"), "--out", str(out), "--projector", "mlp2-swish", *QUICK],
         "bad projector spec", out)
    _bad(capsys, ["train", "--data", str(synthetic_dir / "train.jsonl"), "--out", str(trained)], "output directory exists")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kk: 3\n")
    _bad(capsys, ["train", "--config", str(cfg)], "unknown key 'kk'")
    _bad(capsys, ["adapt", "--model", str(tmp_path), "--data", str(synthetic_dir / "new.jsonl"), "--out", str(out)], "not a pal-mm model directory", out)
    _bad(capsys, ["adapt", "--model", str(trained), "--data", str(synthetic_dir / "train.jsonl"), "--out", str(out)], "already in the model", out)
    _bad(capsys, ["eval", "--model", str(trained), "--data", str(synthetic_dir / "new.jsonl")], "unknown user(s)")
    _bad(capsys, ["score", "--model", str(trained), "--user", "nobody", "--prompt", "1,2,3,4", "--response", "1,2,3,4,5,6,7,8"], "unknown user(s): nobody")
    _bad(capsys, ["score", "--model", str(trained), "--user", "user000", "--prompt", "1,x", "--response", "1"], "comma-separated floats")
    _bad(capsys, ["score", "--model", str(trained), "--user", "user000", "--prompt", "1,2", "--response", "1,2"], "this model takes")


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "batch-size must be >= 1"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--epochs", "abc"], "argument --epochs: expected an integer"),
    (["--dim", "-3"], "dim must be an integer >= 1"),
    (["--k", "0"], "k must be an integer >= 1"),
    (["--label-noise", "0.5"], "label_noise must be a number in [0, 0.5)"),
    (["--lr-projector=-1e-3"], "lr-projector must be > 0"),
    (["--lr-users", "nan"], "expected a finite number"),
    (["--restarts", "0"], "restarts must be >= 1"),
    (["--patience", "-1"], "patience must be >= 0"),
    (["--mixed-precision", "fp8"], "invalid choice"),
    (["--encoder-arg", "x=!!python/object/apply:os.system ['echo hi']"], "--encoder-arg x: invalid value"),
    (["--encoder-arg", "nokey"], "expects KEY=VALUE"),
])
def test_bad_arguments_fail_before_any_work(synthetic_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    _bad(capsys, ["train", "--data", str(synthetic_dir / "train.jsonl"), "--out", str(out), *QUICK, *extra], message, out)


def test_bad_paths_are_one_line(synthetic_dir, trained, tmp_path, capsys):
    data = str(synthetic_dir / "train.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _bad(capsys, ["train", "--data", data, "--out", str(blocker / "m"), *QUICK], "cannot write there")
    _bad(capsys, ["train", "--data", data, "--out", str(tmp_path / ("x" * 300)), *QUICK], "output name too long")
    _bad(capsys, ["train", "--config", str(tmp_path)], "a directory, not a config file")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    _bad(capsys, ["train", "--config", str(unsafe)], "invalid YAML")
    _bad(capsys, ["eval", "--model", str(trained), "--data", str(synthetic_dir / "test.jsonl"), "--json", str(blocker / "m.json")],
         "cannot write")


def test_version_and_help_are_cheap(capsys):
    import subprocess
    import sys

    code = "import sys, pal_mm.cli as c; c.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("pal-mm ")
