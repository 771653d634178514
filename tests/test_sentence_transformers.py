"""The ``sentence-transformers`` encoder uses each model's own modules (pooling, normalisation):
tiny models saved in the test with different poolings, and the real all-MiniLM-L6-v2 package."""

from __future__ import annotations

import pytest
import torch

from encoders import create_encoder, encoder_from_config
from encoders.errors import EncoderError

pytest.importorskip("sentence_transformers")
from encoders.testing import build_tiny_bert, build_tiny_sentence_transformer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["hello world", "the capital of france is paris", "a", "a photo of a cat and a photo of a dog"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    return {"cls": build_tiny_sentence_transformer(root / "cls", pooling="cls"),
            "mean-norm": build_tiny_sentence_transformer(root / "mean-norm", pooling="mean", normalize=True)}


@pytest.mark.parametrize("kind, pooling, normalize", [("cls", "cls", False), ("mean-norm", "mean", True)])
def test_uses_the_models_own_pooling_and_normalisation(tiny, kind, pooling, normalize):
    enc = create_encoder("sentence-transformers", model_name_or_path=str(tiny[kind]), batch_size=2, device="cpu")
    v = enc.encode_prompts(TEXTS)
    assert v.shape == (4, 32) and enc.prompt_dim == enc.item_dim == 32
    # the same backbone pooled by hand (hf-text) gives the same vectors
    ref = create_encoder("hf-text", model_name_or_path=str(tiny[kind]), pooling=pooling, normalize=normalize, device="cpu")
    assert torch.allclose(v, ref.encode_prompts(TEXTS), atol=1e-5)
    assert torch.allclose(v.norm(dim=1), torch.ones(4), atol=1e-5) == normalize
    one_by_one = torch.cat([enc.encode_items([t]) for t in TEXTS])  # length-sorted batches, order restored
    assert torch.allclose(v, one_by_one, atol=1e-5)
    from sentence_transformers import SentenceTransformer

    library = SentenceTransformer(str(tiny[kind]), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(v, library.float(), atol=1e-5)


def test_config_fingerprint_card_and_differentiable_embed(tiny):
    a = create_encoder("sentence-transformers", model_name_or_path=str(tiny["cls"]), device="cpu")
    b = create_encoder("sentence-transformers", model_name_or_path=str(tiny["mean-norm"]), device="cpu")
    assert a.fingerprint() != b.fingerprint()  # other pooling module
    rebuilt = encoder_from_config("sentence-transformers", a.config(), device="cpu")
    assert rebuilt.fingerprint() == a.fingerprint()
    short = create_encoder("sentence-transformers", model_name_or_path=str(tiny["cls"]), max_length=4, device="cpu")
    assert short.fingerprint() != a.fingerprint() and short.config()["max_length"] == 4
    assert a.card_data()["tags"] == ["text", "sentence-transformers"] and a.base_model is None
    a.set_trainable(1)
    out = a.embed(TEXTS[:2], "item")
    out.sum().backward()
    assert out.requires_grad and any(p.grad is not None for p in a.parameters())


def test_not_a_sentence_transformers_directory(tmp_path):
    bert = build_tiny_bert(tmp_path / "bert")
    with pytest.raises(EncoderError, match="not a sentence-transformers model .*hf-text"):
        create_encoder("sentence-transformers", model_name_or_path=str(bert))
    with pytest.raises(EncoderError, match="not found"):
        create_encoder("sentence-transformers", model_name_or_path="./no/such/dir")
    with pytest.raises(EncoderError, match="model_name_or_path"):
        create_encoder("sentence-transformers")


def test_equals_minilm_on_the_packaged_model():
    from encoders.minilm import minilm_dir

    st = create_encoder("sentence-transformers", model_name_or_path=str(minilm_dir()), device="cpu")
    minilm = create_encoder("minilm", device="cpu")
    texts = ["A cat sits on the mat.", "Hi", "The stock market crashed today, and then it recovered."]
    assert st.prompt_dim == 384
    assert torch.allclose(st.encode_prompts(texts), minilm.encode_prompts(texts), atol=1e-5)
