"""Code execution is opt-in: a model directory whose own Python code would run on import is
refused with one line naming the flag unless trust_remote_code=True is passed explicitly, and no
saved config or --encoder-arg can switch it on. The payload of the test models writes a marker
file when imported: the marker proves whether any of it ran."""

from __future__ import annotations

import json

import pytest

from encoders import accepts_option, create_encoder, encoder_from_config
from encoders.errors import EncoderError
from encoders.testing import add_remote_code, build_tiny_causal_lm
from encoders.trust import sentence_transformers_code, transformers_code

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def custom(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    return {"dir": add_remote_code(build_tiny_causal_lm(tmp_path / "custom-lm"), marker), "marker": marker}


def one_line_refusal(excinfo, directory) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and str(directory) in text
    assert "--trust-remote-code" in text and "trust_remote_code=True" in text and "nothing of it was run" in text
    return text


@pytest.mark.parametrize("name", ["hf-text", "hf-clip"])
def test_custom_code_is_refused_and_never_runs(custom, name):
    with pytest.raises(EncoderError) as excinfo:
        create_encoder(name, model_name_or_path=str(custom["dir"]))
    assert "modeling_custom.py" in one_line_refusal(excinfo, custom["dir"])
    assert not custom["marker"].exists()


def test_the_libraries_own_refusal_gives_the_same_line(custom, monkeypatch):
    """Without pal-mm's own inspection, transformers refuses (it runs nothing with
    trust_remote_code=False); its error becomes the same one line."""
    import encoders.hf_text as hf_text

    monkeypatch.setattr(hf_text, "transformers_code", lambda directory: None)
    with pytest.raises(EncoderError) as excinfo:
        create_encoder("hf-text", model_name_or_path=str(custom["dir"]))
    one_line_refusal(excinfo, custom["dir"])
    assert not custom["marker"].exists()


def test_explicit_trust_runs_the_code_and_is_not_saved(custom):
    enc = create_encoder("hf-text", model_name_or_path=str(custom["dir"]), trust_remote_code=True, device="cpu")
    assert custom["marker"].exists()  # the payload is real: this is what the refusals prevent
    assert enc.encode_prompts(["hello world"]).shape == (1, 32)
    assert "trust_remote_code" not in enc.config()
    assert "trust_remote_code" not in json.dumps(enc.fingerprint_parts())
    custom["marker"].unlink()
    with pytest.raises(EncoderError):  # rebuilt from its saved config: refused again
        encoder_from_config("hf-text", enc.config())
    assert not custom["marker"].exists()


def test_configs_and_encoder_args_cannot_enable_code(custom):
    hostile = {"model_name_or_path": str(custom["dir"]), "trust_remote_code": True}
    for value in (True, "yes", 1):
        with pytest.raises(EncoderError, match=r"is not taken from configs or --encoder-arg.*--trust-remote-code"):
            encoder_from_config("hf-text", {**hostile, "trust_remote_code": value})
    assert not custom["marker"].exists()
    with pytest.raises(EncoderError, match="must be True or False"):
        create_encoder("hf-text", model_name_or_path=str(custom["dir"]), trust_remote_code="yes")
    with pytest.raises(EncoderError, match="JSON object"):
        encoder_from_config("hf-text", ["not", "a", "dict"])
    with pytest.raises(EncoderError, match="identifiers"):
        encoder_from_config("hf-text", {"1bad": 2})
    assert not custom["marker"].exists()


def test_saved_false_is_accepted_and_the_flag_reaches_only_encoders_that_take_it(tmp_path):
    lm = build_tiny_causal_lm(tmp_path / "lm")
    old_style = {"model_name_or_path": str(lm), "pooling": "mean", "trust_remote_code": False}  # pal-mm <= 0.1 saved this
    enc = encoder_from_config("hf-text", old_style, device="cpu")
    assert enc.pooling == "mean" and enc.trust_remote_code is False
    assert accepts_option("hf-text", "trust_remote_code") and accepts_option("sentence-transformers", "trust_remote_code")
    assert not accepts_option("minilm", "trust_remote_code") and not accepts_option("precomputed", "trust_remote_code")
    vec = encoder_from_config("precomputed", {"prompt_dim": 2, "item_dim": 3}, trust_remote_code=True)  # ignored there
    assert (vec.prompt_dim, vec.item_dim) == (2, 3)


def test_inspection_rules(tmp_path):
    lm = build_tiny_causal_lm(tmp_path / "lm")
    assert transformers_code(lm) is None
    cfg = json.loads((lm / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_llama_custom.LlamaModel"}  # a known model type: transformers' own class is used
    (lm / "config.json").write_text(json.dumps(cfg))
    assert transformers_code(lm) is None
    cfg["model_type"] = "unknown-type"
    (lm / "config.json").write_text(json.dumps(cfg))
    assert transformers_code(lm) == "config.json auto_map -> modeling_llama_custom.py"
    st = tmp_path / "st"
    st.mkdir()
    (st / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "my_pkg.EvilModule"}]))
    assert sentence_transformers_code(st) == "modules.json module 'my_pkg.EvilModule'"
    (st / "modules.json").write_text("{broken")
    assert sentence_transformers_code(st) is None  # unreadable: the library's own error follows


def test_sentence_transformers_custom_module_is_refused(tmp_path):
    pytest.importorskip("sentence_transformers")
    from encoders.testing import build_tiny_sentence_transformer

    marker = tmp_path / "PAYLOAD_RAN"
    st = build_tiny_sentence_transformer(tmp_path / "st", pooling="mean")
    (st / "evil_module.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                       "import torch\nclass Evil(torch.nn.Module):\n    pass\n")
    modules = json.loads((st / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "", "type": "evil_module.Evil"})
    (st / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EncoderError) as excinfo:
        create_encoder("sentence-transformers", model_name_or_path=str(st))
    assert "evil_module.Evil" in one_line_refusal(excinfo, st)
    assert not marker.exists()
