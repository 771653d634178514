"""Encoder fine-tuning: frozen means frozen, --train-layers, a short fine-tune that learns,
token-level window weights against hand-computed values, and save/load of tuned weights."""

from __future__ import annotations

import pytest
import torch

from encoders import create_encoder
from encoders.testing import build_tiny_causal_lm
from encoders.errors import EncoderError
from pal_mm import PALConfig, PALModel, PalMMError, PreferenceData, TrainConfig, fit
from pal_mm.finetune import response_window, window_weights
from pal_mm.training import PairLoss

SHORT = ["a short summary", "hello world", "paris", "a cup of coffee"]
LONG = ["a long and detailed summary of the whole post with every point",
        "the quick brown fox jumps over the lazy dog and the lazy dog", "the capital of france is paris",
        "i prefer long answers with details about the rocket launch"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), hidden=32, layers=3)


@pytest.fixture
def encoder(lm_dir):
    return create_encoder("hf-text", model_name_or_path=str(lm_dir), batch_size=8, device="cpu")


def pairs(n_per_user: int = 8) -> PreferenceData:
    """u-short prefers the short response, u-long the long one (same prompts and pairs)."""
    rows = []
    for i in range(n_per_user):
        s, l = SHORT[i % 4], LONG[(i + 1) % 4]
        prompt = f"what is the capital of france {i}"
        rows.append({"user_id": "u-short", "prompt": prompt, "chosen": s, "rejected": l})
        rows.append({"user_id": "u-long", "prompt": prompt, "chosen": l, "rejected": s})
    return PreferenceData.from_rows(rows)


def quick(epochs: int = 6, **kw) -> TrainConfig:
    base = dict(epochs=epochs, batch_size=8, lr_encoder=1e-3, lr_projector=3e-3, patience=0, progress=False, cpu=True)
    return TrainConfig(**{**base, **kw})


def test_frozen_encoder_is_really_frozen(encoder, tmp_path):
    assert all(not p.requires_grad for p in encoder.parameters())
    assert encoder.trainable_parameters() == 0
    encoder.train()  # a parent switching to train mode must not re-enable dropout
    assert not encoder.training and not encoder.model.training
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fingerprint = encoder.fingerprint()
    model = fit(pairs(), None, encoder, PALConfig(k=2), quick(epochs=2))
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert model.encoder.fingerprint() == fingerprint
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "encoder.safetensors").exists()  # frozen: only the head is saved


def test_train_layers_leaves_only_top_n_trainable(encoder):
    n = encoder.set_trainable(1)
    names = [k for k, p in encoder.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in k for k in names), names
    assert n == sum(p.numel() for p in encoder.model.layers[2].parameters())
    encoder.set_trainable(2)
    layers = {k.split(".layers.")[1].split(".")[0] for k, p in encoder.named_parameters() if p.requires_grad}
    assert layers == {"1", "2"}
    assert not encoder.model.embed_tokens.weight.requires_grad
    assert encoder.set_trainable(None) == sum(p.numel() for p in encoder.parameters())
    assert encoder.set_trainable(0) == 0
    with pytest.raises(EncoderError, match="between 0 and 3"):
        encoder.set_trainable(4)


def test_short_finetune_learns_and_round_trips(encoder, tmp_path):
    frozen_fp = encoder.fingerprint()
    data = pairs()
    model = fit(data, data, encoder, PALConfig(k=2), quick(epochs=8, train_layers=2))
    losses = [r["train_loss"] for r in model.history]
    assert losses[-1] < losses[0] - 0.05, losses
    assert model.metrics["encoder_trainable_parameters"] == sum(
        p.numel() for layer in encoder.model.layers[1:] for p in layer.parameters())
    assert model.metrics["trainable_parameters"] > model.metrics["encoder_trainable_parameters"]
    assert not encoder.model.layers[0].self_attn.q_proj.weight.requires_grad
    assert model.encoder.fingerprint() != frozen_fp  # tuned weights never hit frozen cache entries
    rewards = model.reward("what is the capital of france 0", SHORT[:2], user="u-short")
    model.save_pretrained(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "encoder.safetensors").is_file()
    loaded = PALModel.from_pretrained(tmp_path / "tuned")
    assert loaded.reward("what is the capital of france 0", SHORT[:2], user="u-short") == pytest.approx(rewards, abs=1e-5)
    assert loaded.encoder.fingerprint() == model.encoder.fingerprint()


def test_window_weights_match_hand_computed_values():
    pad = 777  # whatever sits in pad positions must not matter
    chosen = torch.tensor([[5, 6, 7, 8, pad, pad], [5, 6, pad, pad, pad, pad], [3, 4, 5, pad, pad, pad]])
    c_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    rejected = torch.tensor([[5, 6, 9, 0, 0, 0], [5, 6, 7, 1, 1, 1], [3, 4, 5, 2, 2, 2]])
    r_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    div, end = response_window(chosen, c_mask, rejected, r_mask)
    # row 0: differ at 2, longer ends at 4; row 1: prefix, the longer one has a token at 2;
    # row 2: identical responses -> only the last position
    assert div.tolist() == [2, 2, 2] and end.tolist() == [4, 3, 3]
    w = window_weights(div, end, 6, "cumulative")
    expected = torch.tensor([[0, 0, 1 / 3, 2 / 3, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    assert torch.allclose(w, expected)
    # a longer window: L = 4 -> 1/10, 2/10, 3/10, 4/10
    w4 = window_weights(torch.tensor([1]), torch.tensor([5]), 6, "cumulative")
    assert torch.allclose(w4, torch.tensor([[0, 0.1, 0.2, 0.3, 0.4, 0]]))
    assert torch.allclose(window_weights(torch.tensor([1]), torch.tensor([5]), 6, "mean"), torch.tensor([[0, .25, .25, .25, .25, 0]]))
    assert torch.allclose(window_weights(torch.tensor([1]), torch.tensor([5]), 6, "last"), torch.tensor([[0, 0, 0, 0, 1.0, 0]]))


def test_token_loss_equals_weighted_sum_of_position_losses(encoder):
    data = pairs(2)
    model = fit(data, None, encoder, PALConfig(k=2), quick(epochs=1))
    step = PairLoss(model, token_level=True).eval()
    idx = model.user_index(data.user_ids)
    with torch.no_grad():
        loss = step(data.prompts, data.chosen, data.rejected, idx)
        states, mask, ids = encoder.token_states(list(data.prompts) + list(data.chosen) + list(data.rejected))
        b = len(data)
        total = 0.0
        for i in range(b):
            c_len, r_len = int(mask[b + i].sum()), int(mask[2 * b + i].sum())
            c_ids, r_ids = ids[b + i, :c_len].tolist(), ids[2 * b + i, :r_len].tolist()
            div = next((t for t in range(max(c_len, r_len)) if t >= min(c_len, r_len) or c_ids[t] != r_ids[t]), max(c_len, r_len) - 1)
            end, length = max(c_len, r_len), max(c_len, r_len) - div
            w = model.head.user_weights(idx[i : i + 1])
            for j, t in enumerate(range(div, end), start=1):
                m = model.head.margin(states[i, t][None], states[b + i, t][None], states[2 * b + i, t][None], w)
                total += j / (length * (length + 1) / 2) * float(model.head.loss(m))
    assert float(loss) == pytest.approx(total / b, rel=1e-4)


def test_token_level_finetune_runs_and_learns(encoder):
    data = pairs()
    model = fit(data, None, encoder, PALConfig(k=2), quick(epochs=6, token_level=True, micro_batch_size=4))
    losses = [r["train_loss"] for r in model.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    assert model.data_info["fine_tuned_encoder"]["token_level"] is True


def test_token_level_needs_pal_b_and_text(encoder):
    with pytest.raises(PalMMError, match="PAL-B"):
        fit(pairs(2), None, encoder, PALConfig(model_type="pal-a"), quick(epochs=1, token_level=True))


def test_image_text_encoder_finetunes_top_blocks(tmp_path):
    from encoders.testing import sample_images

    imgs = {p.stem: str(p) for p in sample_images(tmp_path / "img")}
    rows = [{"user_id": u, "prompt": "a picture", "chosen": imgs[a], "rejected": imgs[b]}
            for u, a, b in (("cats", "chelsea", "coffee"), ("drinks", "coffee", "chelsea"), ("cats", "chelsea", "rocket"))]
    data = PreferenceData.from_rows(rows)
    enc = create_encoder("effnet-minilm", batch_size=4, device="cpu")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    model = fit(data, None, enc, PALConfig(k=2), quick(epochs=2, lr_encoder=1e-3, train_layers=1))
    changed = {k for k, v in model.encoder.state_dict().items() if not torch.equal(v, before[k])}
    top_image = f"image.net.blocks.{len(enc.image.net.blocks) - 1}."
    top_text = f"text.model.encoder.layer.{len(enc.text.model.encoder.layer) - 1}."
    assert changed and all(k.startswith((top_image, top_text)) for k in changed), sorted(changed)[:5]
    assert any(k.startswith(top_image) for k in changed) and any(k.startswith(top_text) for k in changed)
    model.train()  # frozen blocks stay in eval mode: no BatchNorm statistics updates, no dropout
    assert not enc.image.net.blocks[0].training and not enc.image.net.bn2.training
    assert enc.image.net.blocks[-1].training
