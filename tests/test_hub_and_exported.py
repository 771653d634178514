"""Hub and exported models in daily use: `PALModel.push_to_hub` and `pal-mm push` (a fake HfApi, as in
test_export), `from_pretrained(..., revision=, token=)` (a fake snapshot download), and exported one-user
models accepted by `pal-mm eval` and `pal-mm adapt` (the image commands are in test_generate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pal_mm import PALModel, PreferenceData
from pal_mm.cli import main
from pal_mm.export import PersonalRewardModel, as_pal_model, load_reward_model

QUICK = ["--quiet", "--seed", "0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "m"
    assert main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
                 "--k", "2", "--epochs", "3", "--out", str(out), *QUICK]) == 0
    return out


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    user = PALModel.from_pretrained(model_dir).users[3]
    out = tmp_path_factory.mktemp("exported") / "rm"
    assert main(["export", "--model", str(model_dir), "--user", user, "--out", str(out)]) == 0
    return out, user


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, private, self.token))
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        FakeApi.calls.append(("upload_folder", repo_id, revision, commit_message, files))
        return f"https://huggingface.co/{repo_id}/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub
    import huggingface_hub.hub_mixin as hub_mixin

    FakeApi.calls = []
    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi.calls


def test_pal_model_push_to_hub(model_dir, fake_hub):
    model = PALModel.from_pretrained(model_dir)
    assert model.push_to_hub("me/pal", private=True, token="tok", branch="dev").endswith("/commit/abc")
    (_, repo, private, token), (_, _, revision, _, files) = fake_hub
    assert (repo, private, token, revision) == ("me/pal", True, "tok", "dev")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "users.json"]
    assert files["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()


def test_pal_mm_push_uploads_the_verified_model_files_without_local_paths(model_dir, exported, tmp_path, fake_hub, capsys):
    assert (model_dir / "run_config.yaml").is_file() and (model_dir / "metrics.jsonl").is_file()  # run files, local
    assert main(["push", "--model", str(model_dir), "--repo-id", "me/pal", "--private", "--token", "tok",
                 "--commit-message", "first"]) == 0
    assert capsys.readouterr().out.strip() == f"pushed {model_dir} to me/pal: https://huggingface.co/me/pal/commit/abc"
    (_, repo, private, token), (_, _, revision, message, files) = fake_hub
    assert (repo, private, token, revision, message) == ("me/pal", True, "tok", None, "first")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "users.json"]  # no run files
    local = json.loads((model_dir / "config.json").read_text())
    assert "train_file" in local["data"]
    pushed = json.loads(files["config.json"])
    assert "train_file" not in pushed["data"] and "val_file" not in pushed["data"]
    assert pushed["files"] == local["files"] and pushed["head"] == local["head"]
    # what was pushed loads (checksums hold) and gives the same rewards
    hub = tmp_path / "hub-copy"
    hub.mkdir()
    for name, blob in files.items():
        (hub / name).write_bytes(blob)
    x, p = [[0.1, 0.2, 0.3, 0.4]], [[0.5] * 8]
    user = PALModel.from_pretrained(model_dir).users[0]
    assert PALModel.from_pretrained(hub).reward(x, p, user=user) == PALModel.from_pretrained(model_dir).reward(x, p, user=user)
    fake_hub.clear()
    rm_dir, _ = exported
    assert main(["push", "--model", str(rm_dir), "--repo-id", "me/rm", "--branch", "v2"]) == 0
    assert sorted(fake_hub[1][4]) == ["README.md", "config.json", "model.safetensors"] and fake_hub[1][2] == "v2"


def test_pal_mm_push_refuses_bad_input_in_one_line(model_dir, tmp_path, fake_hub, capsys):
    def bad(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    bad(["push", "--model", str(model_dir)], "needs --repo-id")
    bad(["push", "--model", str(tmp_path / "none"), "--repo-id", "me/x"], "no such model directory")
    bad(["push", "--model", str(model_dir), "--repo-id", "not a repo"], "must look like OWNER/NAME")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "users.json").write_text('{"users": [], "groups": {}}')
    bad(["push", "--model", str(broken), "--repo-id", "me/x"], "checksum mismatch")
    assert fake_hub == []  # nothing was uploaded


def test_from_pretrained_passes_revision_and_token_to_the_hub(model_dir, exported, monkeypatch):
    import huggingface_hub

    seen = []
    rm_dir, user = exported

    def fake_snapshot(repo_id, revision=None, token=None, **kwargs):
        seen.append(("snapshot", repo_id, revision, token))
        return str(rm_dir if repo_id == "me/rm" else model_dir)

    def fake_file(repo_id, filename, revision=None, token=None, **kwargs):
        seen.append(("file", repo_id, revision, token))
        return str((rm_dir if repo_id == "me/rm" else model_dir) / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    model = PALModel.from_pretrained("me/pal", revision="v1", token="secret")
    assert seen == [("snapshot", "me/pal", "v1", "secret")] and len(model.users) == 16
    seen.clear()
    rm = load_reward_model("me/rm", revision="abc123", token="t")
    assert isinstance(rm, PersonalRewardModel) and rm.user == user
    assert seen == [("file", "me/rm", "abc123", "t"), ("snapshot", "me/rm", "abc123", "t")]
    seen.clear()
    PersonalRewardModel.from_pretrained("me/rm", revision="r2")
    assert seen == [("snapshot", "me/rm", "r2", None)]


def test_eval_and_adapt_accept_an_exported_model(model_dir, exported, synthetic_dir, tmp_path, capsys):
    rm_dir, user = exported
    test = synthetic_dir / "test.jsonl"
    assert main(["eval", "--model", str(model_dir), "--data", str(test), "--json", "--quiet"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", str(rm_dir), "--data", str(test), "--json", "--quiet"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["per_user"][user] == full["per_user"][user]  # the exported user: the same numbers
    assert one["n_pairs"] == full["n_pairs"] and set(one["per_user"]) == set(full["per_user"])
    # adapt on an exported model: new users are fitted on its prototypes, exactly as on the full model
    new = synthetic_dir / "new.jsonl"
    assert main(["adapt", "--model", str(model_dir), "--data", str(new), "--out", str(tmp_path / "a_full"), "--quiet"]) == 0
    assert main(["adapt", "--model", str(rm_dir), "--data", str(new), "--out", str(tmp_path / "a_rm"), "--quiet"]) == 0
    a_full, a_rm = PALModel.from_pretrained(tmp_path / "a_full"), PALModel.from_pretrained(tmp_path / "a_rm")
    new_users = PreferenceData.load(new).users
    assert a_rm.users == [user, *new_users]
    for u in [user, *new_users]:
        assert a_rm.user_weights(u) == pytest.approx(a_full.user_weights(u), abs=1e-6)


def test_as_pal_model_reproduces_weights_and_prototype_exports(model_dir):
    from pal_mm.export import export_personal_model

    x, items = [[0.1, -0.2, 0.3, 0.4]] * 3, [[0.5] * 8, [-0.5] * 8, [0.1 * i for i in range(8)]]
    for kwargs in ({"weights": [0.3, 0.7]}, {"prototype": 1}, {"logits": [0.2, -1.0]}):
        rm = export_personal_model(model_dir, **kwargs)
        pal = as_pal_model(rm, users=["a", "b"])
        assert pal.users == ["a", "b"]
        assert pal.reward(x, items, user="b") == pytest.approx(rm.reward(x, items), abs=1e-5)
    assert as_pal_model(export_personal_model(model_dir, prototype=0)).users == []  # no user of its own


def test_exported_model_keeps_its_users_beliefs(model_dir, exported):
    """The export carries the source's calibration, prior and the user's posterior precision; its
    probabilities are sigmoid(a * margin) with the source's inverse temperature a."""
    import torch

    rm_dir, user = exported
    full, rm = PALModel.from_pretrained(model_dir), load_reward_model(rm_dir)
    assert full.beliefs is not None and rm.beliefs is not None
    assert rm.inv_temperature == full.beliefs.inv_temperature != 1.0
    i = full.users.index(user)
    assert torch.equal(rm.beliefs.precision[0], full.beliefs.precision[i])
    assert torch.equal(rm.beliefs.prior_means, full.beliefs.prior_means)
    x = [[0.1, -0.2, 0.3, 0.4]] * 2
    a, b = [[0.5] * 8, [0.1 * k for k in range(8)]], [[-0.5] * 8, [0.2] * 8]
    margin = torch.tensor(rm.reward(x, a), dtype=torch.float64) - torch.tensor(rm.reward(x, b), dtype=torch.float64)
    assert rm.predict_preference(x, a, b) == pytest.approx(torch.sigmoid(rm.inv_temperature * margin).tolist(), abs=1e-6)
    # explicit weights: the same calibration and prior, a point posterior
    from pal_mm.export import export_personal_model

    by_weights = export_personal_model(model_dir, weights=[0.5, 0.5])
    assert by_weights.inv_temperature == rm.inv_temperature
    assert torch.allclose(by_weights.beliefs.precision[0], 1e6 * torch.eye(by_weights.beliefs.precision.shape[-1]))
