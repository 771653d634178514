"""`pal-mm export` / PersonalRewardModel (one user's standard reward model), the Hub-ready
layout, the TRL-style reward function and the differentiable image score.

Acceptance: the exported model reproduces the PAL model's rewards for its user on 100 held-out
pairs (max |diff| < 1e-4) for a text model (the real `minilm` encoder) and an image model (a
tiny image encoder registered here), and `pal-mm score` prints the same numbers on both."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from encoders import Encoder, list_encoders, register_encoder
from pal_mm import PALConfig, PALModel, PalMMError
from pal_mm.cli import main
from pal_mm.export import PersonalRewardModel, export_personal_model, is_personal_model_dir
from pal_mm.rlhf import as_ddpo_reward_function, as_reward_function, score_pixels

QUICK = ["--quiet", "--seed", "0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- a tiny image encoder (text: hashed bag of words; images: a fixed random projection) -----
class TinyImageEncoder(Encoder):
    prompt_modality = "text"
    item_modality = "image"
    weights_source = "test: fixed random projection"
    dims = "8/6"

    def __init__(self, size: int = 8, batch_size: int = 32, device: str | None = None, dtype: str = "float32"):
        super().__init__(batch_size=batch_size, device="cpu", dtype=dtype)
        self.size = int(size)
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(3 * self.size * self.size, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 3 * self.size * self.size, generator=g) * 2 / self.size)
            self.proj.bias.copy_(torch.randn(6, generator=g) * 0.1)
        self.freeze()
        self.prompt_dim, self.item_dim = 8, 6

    def _encode_prompt_batch(self, prompts):
        rows = []
        for p in prompts:
            v = torch.zeros(8)
            for tok in str(p).lower().split():
                v[int(hashlib.md5(tok.encode()).hexdigest(), 16) % 8] += 1.0
            rows.append(v)
        return torch.stack(rows)

    def _encode_item_batch(self, items):
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in items]
        return self.encode_pixels(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:  # differentiable tensor path
        if tuple(pixels.shape[-2:]) != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return torch.tanh(self.proj(pixels.flatten(1)))

    def config(self):
        return {"size": self.size, "batch_size": self.batch_size, "dtype": self.dtype_name}


if "test-tiny-image" not in list_encoders():
    register_encoder("test-tiny-image")(TinyImageEncoder)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Two float32 paths to the same rewards (other batch sizes, paddings, thread counts or kernels) agree to
# about 1e-6 here, not bit for bit; a wrong user, model or input changes rewards by 1e-2 or more.
TOL = 1e-4


def max_diff(a, b) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max(abs(x - y) for x, y in zip(a, b))


def bad(capsys, argv, message, leftover: Path | None = None):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    if leftover is not None:
        assert not leftover.exists()
        assert not [p for p in leftover.parent.iterdir() if p.name.startswith(f".{leftover.name}")]


# ----- fixtures: a text model (minilm), an image model, vector models -----------------------
PROMPTS = ["What is the capital of France?", "Why is the sky blue?", "How do I boil an egg?",
           "What should I drink?", "Is it going to rain?", "How far is the moon?"]
SHORT = ["Paris.", "Scattering.", "Ten minutes.", "Tea.", "Maybe.", "Far."]
LONG = ["The capital of France is Paris, a large city on the Seine.",
        "The sky looks blue because air scatters short wavelengths of sunlight the most.",
        "Put the egg in boiling water and leave it there for about ten minutes.",
        "A cup of green tea, brewed for three minutes, is a good choice.",
        "The forecast says there is a fair chance of light rain this afternoon.",
        "The moon is about three hundred and eighty thousand kilometres away."]
EXTRA = ["I do not know.", "Please ask someone else, thanks.", "Yes.", "No.", "It depends on many things, really.",
         "Here is a long and careful answer with every detail you could want."]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """PAL-B on the real minilm encoder: users who like short / long answers."""
    root = tmp_path_factory.mktemp("text")
    rows = []
    for i, p in enumerate(PROMPTS):
        for j in (i, (i + 1) % 6):
            rows.append({"user_id": "terse", "prompt": p, "chosen": SHORT[j], "rejected": LONG[j]})
            rows.append({"user_id": "verbose", "prompt": p, "chosen": LONG[j], "rejected": SHORT[j]})
            rows.append({"user_id": "mixed", "prompt": p, "chosen": LONG[j] if j % 2 else SHORT[j], "rejected": SHORT[j] if j % 2 else LONG[j]})
    data = write_jsonl(root / "train.jsonl", rows)
    out = root / "model"
    assert main(["train", "--encoder", "minilm", "--data", str(data), "--out", str(out), "--k", "2", "--epochs", "4",
                 "--batch-size", "8", *QUICK]) == 0
    seen = {(r["prompt"], r["chosen"], r["rejected"]) for r in rows}
    pool = SHORT + LONG + EXTRA
    rng = random.Random(0)
    held_out = []
    while len(held_out) < 100:
        p, a, b = rng.choice(PROMPTS), rng.choice(pool), rng.choice(pool)
        if a != b and (p, a, b) not in seen and (p, b, a) not in seen:
            held_out.append((p, a, b))
    return {"dir": out, "held_out": held_out}


def make_images(directory: Path, n: int = 24, size: int = 12) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.uniform(0, 1, size=3)
        arr = np.clip(base[None, None, :] + 0.25 * rng.standard_normal((size, size, 3)), 0, 1)
        p = directory / f"img{i:02d}.png"
        Image.fromarray((arr * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def redness(path: Path) -> float:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return float(a[..., 0].mean() - a[..., 2].mean())


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """PAL-B on the tiny image encoder: users who like red / blue images."""
    root = tmp_path_factory.mktemp("images")
    images = make_images(root / "img")
    prompts = ["a photo", "a painting of a tree", "a cat"]
    rng = random.Random(1)
    rows = []
    for _ in range(40):
        a, b = rng.sample(images[:16], 2)
        red, blue = (a, b) if redness(a) > redness(b) else (b, a)
        p = rng.choice(prompts)
        rows.append({"user_id": "red", "prompt": p, "chosen": str(red), "rejected": str(blue)})
        rows.append({"user_id": "blue", "prompt": p, "chosen": str(blue), "rejected": str(red)})
    data = write_jsonl(root / "train.jsonl", rows)
    out = root / "model"
    assert main(["train", "--encoder", "test-tiny-image", "--data", str(data), "--out", str(out), "--k", "2",
                 "--epochs", "15", "--batch-size", "16", "--dim", "8", *QUICK]) == 0
    held = [(rng.choice(prompts + ["a new prompt"]), str(a), str(b)) for a, b in itertools.permutations(images, 2)]
    held_out = random.Random(2).sample(held, 100)
    return {"dir": out, "held_out": held_out, "images": images}


@pytest.fixture(scope="module")
def vector_models(synthetic_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vec")
    out = {}
    for model_type in ("pal-b", "pal-a", "single-rm"):
        out[model_type] = root / model_type
        assert main(["train", "--data", str(synthetic_dir / "train.jsonl"), "--val", str(synthetic_dir / "val.jsonl"),
                     "--encoder", "precomputed", "--model", model_type, "--k", "3", "--epochs", "2",
                     "--out", str(out[model_type]), *QUICK]) == 0
    return out


def test_text_export_reproduces_user_rewards(text_model, tmp_path, capsys):
    src, held = text_model["dir"], text_model["held_out"]
    out = tmp_path / "terse"
    assert main(["export", "--model", str(src), "--user", "terse", "--out", str(out)]) == 0
    assert "reward model for user terse" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # no encoder weights
    pal = PALModel.from_pretrained(src)
    rm = PersonalRewardModel.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"]["name"] == "minilm" and cfg["encoder"]["fingerprint"] == pal.encoder.fingerprint()
    assert cfg["mixture"]["user"] == "terse" and rm.user == "terse"
    assert rm.weights == pytest.approx(pal.user_weights("terse"), abs=0)
    prompts, a, b = (list(x) for x in zip(*held))
    for responses in (a, b):
        expected = pal.reward(prompts, responses, user="terse")
        assert max_diff(rm(prompts, responses), expected) < TOL
        assert max_diff(rm.reward(prompts, responses, batch_size=40), expected) < TOL
    # the exported model keeps the user's preference: short answers win for "terse"
    r = rm.reward(PROMPTS[0], [SHORT[0], LONG[0]])
    assert r[0] > r[1]


def test_score_prints_the_same_numbers_on_the_exported_model(text_model, tmp_path, capsys):
    src = text_model["dir"]
    out = tmp_path / "verbose"
    assert main(["export", "--model", str(src), "--user", "verbose", "--out", str(out)]) == 0
    assert is_personal_model_dir(out) and not is_personal_model_dir(src)
    args = ["--prompt", PROMPTS[1], "--response", SHORT[1], "--response", LONG[1], "--response", EXTRA[4]]
    capsys.readouterr()
    assert main(["score", "--model", str(src), "--user", "verbose", *args]) == 0
    original = capsys.readouterr().out
    assert main(["score", "--model", str(out), *args]) == 0
    assert capsys.readouterr().out == original and len(original.splitlines()) == 3
    assert main(["score", "--model", str(src), "--user", "verbose", *args, "--json"]) == 0
    a = json.loads(capsys.readouterr().out)["rewards"]
    assert main(["score", "--model", str(out), *args, "--json"]) == 0
    b = json.loads(capsys.readouterr().out)["rewards"]
    assert max_diff(a, b) < TOL
    bad(capsys, ["score", "--model", str(out), "--user", "terse", *args], "drop --user/--weights")


def test_image_export_reproduces_user_rewards(image_model, tmp_path, capsys):
    src, held = image_model["dir"], image_model["held_out"]
    out = tmp_path / "red"
    assert main(["export", "--model", str(src), "--user", "red", "--out", str(out)]) == 0
    pal = PALModel.from_pretrained(src)
    rm = PersonalRewardModel.from_pretrained(out)
    assert rm.encoder.item_modality == "image"
    prompts, a, b = (list(x) for x in zip(*held))
    ra, rb = rm(prompts, a), rm(prompts, b)
    assert max_diff(ra, pal.reward(prompts, a, user="red")) < TOL
    assert max_diff(rb, pal.reward(prompts, b, user="red")) < TOL
    # the "red" user's model prefers the redder image on most held-out pairs
    agree = np.mean([(x > y) == (redness(Path(p)) > redness(Path(q))) for x, y, (_, p, q) in zip(ra, rb, held)])
    assert agree > 0.75
    capsys.readouterr()
    args = ["--prompt", "a photo", "--response", str(a[0]), "--response", str(b[0])]
    assert main(["score", "--model", str(src), "--user", "red", *args]) == 0
    original = capsys.readouterr().out
    assert main(["score", "--model", str(out), *args]) == 0
    assert capsys.readouterr().out == original
    card = (out / "README.md").read_text()
    assert "text-to-image" in yaml.safe_load(card.split("---")[1])["tags"]


@pytest.mark.parametrize("model_type", ["pal-b", "pal-a", "single-rm"])
def test_export_every_head_with_user_weights_logits_prototype(vector_models, synthetic_dir, tmp_path, model_type):
    src = vector_models[model_type]
    pal = PALModel.from_pretrained(src)
    rows = [json.loads(line) for line in (synthetic_dir / "test.jsonl").read_text().splitlines()][:100]
    prompts, items = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    user = pal.users[3]
    cases = {
        "user": (["--user", user], dict(user=user)),
        "weights": (["--weights", "0.2,0.5,0.3"], dict(weights=[0.2, 0.5, 0.3])),
        "prototype": (["--prototype", "2"], dict(weights=[0.0, 0.0, 1.0])),
        "logits": (["--logits", "1,0,-1"], dict(weights=torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0).tolist())),
    }
    for name, (flags, kwargs) in cases.items():
        out = tmp_path / name
        assert main(["export", "--model", str(src), *flags, "--out", str(out)]) == 0
        rm = PersonalRewardModel.from_pretrained(out)
        assert rm.mixture["source"] == name
        assert max_diff(rm(prompts, items), pal.reward(prompts, items, **kwargs)) < TOL
    # in memory, from a PALModel (the encoder instance is shared, not rebuilt)
    rm = export_personal_model(pal, user=user)
    assert rm.encoder is pal.encoder
    assert max_diff(rm(prompts, items), pal.reward(prompts, items, user=user)) < TOL


def test_export_tolerates_rounding_on_the_simplex(vector_models, tmp_path):
    pal = PALModel.from_pretrained(vector_models["pal-b"])
    rm = export_personal_model(vector_models["pal-b"], weights="0.333333,0.333333,0.333334")
    assert rm.weights == pytest.approx([0.333333, 0.333333, 0.333334])
    w = pal.user_weights(pal.users[0])  # softmax output: sums to 1 only up to float error
    rm = export_personal_model(pal, weights=w)
    assert rm.weights == pytest.approx(w, abs=0)


def test_single_rm_exports_without_a_user(vector_models, tmp_path, capsys):
    out = tmp_path / "srm"
    assert main(["export", "--model", str(vector_models["single-rm"]), "--out", str(out)]) == 0
    assert "population" in capsys.readouterr().out


def test_export_bad_inputs(vector_models, tmp_path, capsys):
    src = str(vector_models["pal-b"])
    out = tmp_path / "out"
    cases = [
        (["--user", "nobody"], "unknown user 'nobody'"),
        (["--weights", "0.5,0.5"], "weights must have K=3 entries"),
        (["--weights", "0.3,0.3,0.3"], "must lie on the simplex"),
        (["--weights", "1.2,-0.2,0"], "must lie on the simplex"),
        (["--weights", "a,b,c"], "expected comma-separated numbers"),
        (["--weights", "nan,0.5,0.5"], "expected finite numbers"),
        (["--logits", "1,2"], "logits must have K=3 entries"),
        (["--prototype", "3"], "out of range"),
        (["--prototype", "-1"], "out of range"),
        (["--prototype", "x"], "prototype must be an integer"),
        (["--user", "user000", "--prototype", "0"], "give only one of"),
        ([], "choose whose reward model to export"),
    ]
    for flags, message in cases:
        bad(capsys, ["export", "--model", src, *flags, "--out", str(out)], message, leftover=out)
    bad(capsys, ["export", "--model", str(tmp_path / "missing"), "--user", "u", "--out", str(out)], "no such model directory", leftover=out)
    bad(capsys, ["export", "--user", "u", "--out", str(out)], "needs --model")
    out.mkdir()
    bad(capsys, ["export", "--model", src, "--prototype", "0", "--out", str(out)], "output directory exists")
    assert main(["export", "--model", src, "--prototype", "0", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    bad(capsys, ["export", "--model", str(out), "--prototype", "0", "--out", str(tmp_path / "o2")], "already an exported")
    with pytest.raises(PalMMError, match="not an exported pal-mm reward model.*PALModel.from_pretrained"):
        PersonalRewardModel.from_pretrained(src)
    with pytest.raises(PalMMError, match="no such model directory"):
        PersonalRewardModel.from_pretrained(tmp_path / "nope")


def test_fine_tuned_encoder_is_bundled(tmp_path, capsys):
    from encoders.testing import build_tiny_causal_lm

    lm = build_tiny_causal_lm(tmp_path / "lm", hidden=16, layers=2)
    rows = [{"user_id": u, "prompt": f"question {i}", "chosen": c, "rejected": r}
            for i in range(3) for u, c, r in (("a", "hello world", "a photo of a dog"), ("b", "a photo of a dog", "hello world"))]
    data = write_jsonl(tmp_path / "ft.jsonl", rows)
    src, out = tmp_path / "ft", tmp_path / "ft-a"
    assert main(["train", "--encoder", "hf-text", "--encoder-arg", f"model_name_or_path={lm}", "--data", str(data),
                 "--out", str(src), "--epochs", "1", "--batch-size", "4", "--train-layers", "1", "--lr-encoder", "1e-3", *QUICK]) == 0
    assert (src / "encoder.safetensors").is_file()
    assert main(["export", "--model", str(src), "--user", "a", "--out", str(out)]) == 0
    assert "fine-tuned weights bundled" in capsys.readouterr().out
    assert (out / "encoder.safetensors").read_bytes() == (src / "encoder.safetensors").read_bytes()
    pal, rm = PALModel.from_pretrained(src), PersonalRewardModel.from_pretrained(out)
    prompts, items = ["question 1", "question 7"], ["hello world", "a photo of a cat"]
    assert max_diff(rm(prompts, items), pal.reward(prompts, items, user="a")) < TOL
    rm.save_pretrained(tmp_path / "resaved")  # the loaded encoder's weights are written back
    assert (tmp_path / "resaved" / "encoder.safetensors").is_file()
    assert max_diff(PersonalRewardModel.from_pretrained(tmp_path / "resaved")(prompts, items), rm(prompts, items)) == 0


# ----- Hub-ready folders ------------------------------------------------------------------------
def front_matter(readme: Path) -> dict:
    from huggingface_hub import ModelCard

    card = ModelCard(readme.read_text())
    assert card.data.library_name == "pal-mm"
    return card.data.to_dict()


def test_model_cards_are_hub_ready(text_model, vector_models, tmp_path):
    meta = front_matter(text_model["dir"] / "README.md")  # PALModel.save_pretrained / train output
    assert meta["license"] == "apache-2.0" and "reward-model" in meta["tags"]
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pal"]["k"] == 2 and meta["pal"]["num_users"] == 3
    meta = front_matter(vector_models["pal-b"] / "README.md")
    assert "val_accuracy" in meta["pal"]["metrics"]
    result = meta["model-index"][0]["results"][0]  # the validation accuracy as a Hub evaluation result
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(meta["pal"]["metrics"]["val_accuracy"])
    pal = PALModel.from_pretrained(text_model["dir"])
    pal.save_pretrained(tmp_path / "resaved")
    assert front_matter(tmp_path / "resaved" / "README.md")["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"

    rm = export_personal_model(text_model["dir"], user="mixed")
    rm.save_pretrained(tmp_path / "exp")
    meta = front_matter(tmp_path / "exp" / "README.md")
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"reward-model", "personal-reward-model", "pal-b", "text"} <= set(meta["tags"])
    assert meta["pal"]["k"] == 2 and meta["pal"]["num_users"] == 3
    assert meta["pal"]["exported_for"] == {"source": "user", "user": "mixed", "logits": pytest.approx(pal.head.user_logits[2].tolist())}
    assert meta["pal"]["weights"] == pytest.approx(pal.user_weights("mixed"), abs=1e-7)
    meta = front_matter(_exported(vector_models["pal-b"], tmp_path / "vec") / "README.md")
    assert meta["model-index"][0]["results"] and "base_model" not in meta  # precomputed vectors: no base model
    cfg = json.loads((tmp_path / "vec" / "config.json").read_text())
    assert not any(k.endswith("_file") for k in cfg["source_model"]["data"])  # no local paths in a Hub file


def _exported(src: Path, out: Path) -> Path:
    export_personal_model(src, prototype=1).save_pretrained(out)
    return out


def test_push_to_hub_is_wired(vector_models, tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin as hub_mixin

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id))
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    rm = export_personal_model(vector_models["pal-a"], prototype=0)
    assert callable(PALModel.save_pretrained) and callable(rm.push_to_hub)
    assert rm.push_to_hub("me/pal-proto0").endswith("/commit/0")
    assert calls == [("create_repo", "me/pal-proto0"), ("upload_folder", "me/pal-proto0", ["README.md", "config.json", "model.safetensors"])]
    calls.clear()
    rm.save_pretrained(tmp_path / "pal-proto0", push_to_hub=True)
    assert calls[0] == ("create_repo", "pal-proto0") and (tmp_path / "pal-proto0" / "config.json").is_file()


def test_save_pretrained_is_atomic_and_round_trips(vector_models, tmp_path):
    rm = export_personal_model(vector_models["pal-b"], prototype=1)
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    rm.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    again = PersonalRewardModel.from_pretrained(target)
    x = [[0.1, 0.2, 0.3, 0.4]] * 2
    items = [[0.5] * 8, [-0.5] * 8]
    assert again(x, items) == rm(x, items)
    assert again.mixture == rm.mixture and not any(p.requires_grad for p in again.parameters())


# ----- TRL-style reward function ---------------------------------------------------------------
def test_reward_function_has_trls_signature(text_model, tmp_path):
    out = tmp_path / "terse"
    assert main(["export", "--model", str(text_model["dir"]), "--user", "terse", "--out", str(out)]) == 0
    fn = as_reward_function(out, batch_size=3)
    assert fn.__name__ == "pal_terse" and not isinstance(fn, nn.Module)
    params = inspect.signature(fn).parameters
    assert {"prompts", "completions"} <= set(params) and any(p.kind == p.VAR_KEYWORD for p in params.values())
    prompts = PROMPTS[:4] * 2
    completions = SHORT[:4] + LONG[:4]
    rewards = fn(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * 8, trainer_state=None, user_id=["x"] * 8)
    assert isinstance(rewards, list) and len(rewards) == 8 and all(isinstance(r, float) for r in rewards)
    rm = PersonalRewardModel.from_pretrained(out)
    assert max_diff(rewards, rm(prompts, completions)) < TOL
    # conversational format: the last assistant message is scored, prompts are flattened
    conv_completions = [[{"role": "assistant", "content": c}] for c in completions]
    assert max_diff(fn(prompts=prompts, completions=conv_completions), rewards) < TOL
    conv_prompts = [[{"role": "system", "content": "Be helpful."}, {"role": "user", "content": p}] for p in prompts]
    flat = [f"system: Be helpful.\nuser: {p}" for p in prompts]
    assert max_diff(fn(prompts=conv_prompts, completions=conv_completions), rm(flat, completions)) < TOL
    with pytest.raises(PalMMError, match="exported for user terse"):
        as_reward_function(rm, user="verbose")


def test_reward_function_scores_each_row_for_its_user(text_model):
    pal = PALModel.from_pretrained(text_model["dir"])
    fn = as_reward_function(pal, batch_size=4)
    assert fn.__name__ == "pal_per_user"
    users = ["terse", "verbose", "mixed"] * 3
    prompts, completions = PROMPTS[:3] * 3, (SHORT[:3] + LONG[:3] + EXTRA[:3])
    rewards = fn(prompts, completions, user_id=users)
    for u in set(users):
        idx = [i for i, x in enumerate(users) if x == u]
        expected = pal.reward([prompts[i] for i in idx], [completions[i] for i in idx], user=u)
        assert max_diff([rewards[i] for i in idx], expected) < TOL
    with pytest.raises(PalMMError, match="give a 'user_id' column"):
        fn(prompts, completions)
    with pytest.raises(PalMMError, match="unknown user"):
        fn(prompts[:1], completions[:1], user_id=["nobody"])
    fixed = as_reward_function(pal, user="verbose")
    assert fixed.__name__ == "pal_verbose"
    assert max_diff(fixed(prompts, completions), pal.reward(prompts, completions, user="verbose")) < TOL


# ----- differentiable image scores ------------------------------------------------------------
def ascend(score, pixels: torch.Tensor, steps: int = 5, lr: float = 0.05):
    pixels = pixels.clone().requires_grad_(True)
    first = None
    for _ in range(steps):
        s = score(pixels)
        first = s.detach().clone() if first is None else first
        (grad,) = torch.autograd.grad(s.sum(), pixels)
        with torch.no_grad():
            pixels += lr * grad / (grad.abs().amax() + 1e-12)
            pixels.clamp_(0, 1)
    return first, score(pixels).detach()


def test_score_pixels_is_differentiable_and_matches_files(image_model, tmp_path):
    out = tmp_path / "blue"
    assert main(["export", "--model", str(image_model["dir"]), "--user", "blue", "--out", str(out)]) == 0
    rm = PersonalRewardModel.from_pretrained(out)
    paths = image_model["images"][:4]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for p in paths])
    x = pixels.clone().requires_grad_(True)
    s = rm.score_pixels("a photo", x)
    assert s.shape == (4,) and s.requires_grad
    assert max_diff(s.tolist(), rm("a photo", [str(p) for p in paths])) < TOL  # same numbers as the file path
    s.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    before, after = ascend(lambda px: rm.score_pixels("a photo", px), pixels)
    assert (after > before).all()
    # larger inputs are resized in torch; the PAL model with a user gives the same scores
    pal = PALModel.from_pretrained(image_model["dir"])
    big = F.interpolate(pixels, size=(32, 32), mode="nearest")
    assert torch.allclose(score_pixels(pal, "a photo", big, user="blue"), rm.score_pixels("a photo", big), atol=TOL)
    with pytest.warns(DeprecationWarning, match="TRL has removed DDPO"):
        ddpo = as_ddpo_reward_function(rm)
    rewards, meta = ddpo(big, ["a photo"] * 4, [{}] * 4)
    assert rewards.shape == (4,) and meta == {} and not rewards.requires_grad
    with pytest.raises(PalMMError, match=r"shape \(B, 3, H, W\)"):
        rm.score_pixels("a photo", torch.rand(2, 1, 8, 8))
    with pytest.raises(PalMMError, match="not images"):
        score_pixels(export_personal_model(_vector_pal(), prototype=0), "x", pixels)


def _vector_pal() -> PALModel:
    from encoders import create_encoder

    enc = create_encoder("precomputed", prompt_dim=2, item_dim=2)
    return PALModel(PALConfig(model_type="pal-b", k=2, prompt_dim=2, item_dim=2), enc, users=["u"])


def _png(path: Path, size: int = 64) -> Path:
    from skimage import data

    Image.fromarray(data.chelsea()).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def image_encoders(tmp_path_factory):
    """The built-in image encoders with their torch pixel paths: real effnet-minilm weights (at
    64 px for speed) and tiny random open-clip / hf-clip models."""
    from encoders import create_encoder
    from encoders.testing import build_tiny_hf_clip, build_tiny_open_clip

    root = tmp_path_factory.mktemp("clip")
    return {
        "effnet-minilm": lambda: create_encoder("effnet-minilm", image_size=64),
        "open-clip": lambda: create_encoder("open-clip", model_name=str(build_tiny_open_clip(root / "oc"))),
        "hf-clip": lambda: create_encoder("hf-clip", model_name_or_path=str(build_tiny_hf_clip(root / "hf"))),
    }


@pytest.mark.parametrize("name", ["effnet-minilm", "open-clip", "hf-clip"])
def test_builtin_image_encoders_have_a_differentiable_pixel_path(image_encoders, name, tmp_path):
    enc = image_encoders[name]()
    torch.manual_seed(0)
    config = PALConfig(model_type="pal-b", k=2, prompt_dim=enc.prompt_dim, item_dim=enc.item_dim, dim=16,
                       projector="mlp1-gelu", normalize_inputs=False)
    pal = PALModel(config, enc, users=["u", "v"])
    path = _png(tmp_path / "cat.png")
    rm = export_personal_model(pal, user="u")
    pixels = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    s = rm.score_pixels("a cat", pixels)
    assert abs(s.item() - rm("a cat", [str(path)])[0]) < 1e-4  # same preprocessing as the PIL path
    x = F.interpolate(pixels, size=(80, 96), mode="bilinear").requires_grad_(True)
    rm.score_pixels(["a cat"], x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    before, after = ascend(lambda px: rm.score_pixels("a cat", px), pixels, steps=3)
    assert after.item() > before.item()
