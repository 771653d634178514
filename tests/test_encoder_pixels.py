"""Every built-in image encoder owns a differentiable ``encode_pixels`` that matches its
``encode_items`` on the same image file (real photos: the same vectors up to resampling)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from encoders import create_encoder
from encoders.errors import EncoderError
from encoders.images import open_rgb
from encoders.pixels import center_crop, check_pixels, pil_to_pixels, resize_center_crop_tensor
from encoders.testing import build_tiny_hf_clip, build_tiny_open_clip, sample_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_ENCODERS = ["effnet-minilm", "open-clip", "hf-clip"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixels")
    return {"images": sample_images(root / "images"), "open-clip": build_tiny_open_clip(root / "oc"),
            "hf-clip": build_tiny_hf_clip(root / "hf")}


def make(name: str, assets, **kw):
    if name == "effnet-minilm":
        return create_encoder("effnet-minilm", device="cpu", **kw)
    if name == "open-clip":
        return create_encoder("open-clip", model_name=str(assets["open-clip"]), device="cpu", **kw)
    return create_encoder("hf-clip", model_name_or_path=str(assets["hf-clip"]), device="cpu", **kw)


@pytest.mark.parametrize("name", IMAGE_ENCODERS)
def test_encode_pixels_matches_encode_items_on_real_files(assets, name):
    enc = make(name, assets)
    paths = [str(p) for p in assets["images"]]  # 451x300, 600x400, 427x640, 512x512 JPEG photos
    from_files = enc.encode_items(paths)
    for i, path in enumerate(paths):
        pixels = pil_to_pixels([open_rgb(path)])  # the decoded file, (1, 3, H, W) in [0, 1]
        v = enc.encode_pixels(pixels).detach().float()
        assert v.shape == (1, enc.item_dim)
        sims = F.cosine_similarity(v, from_files, dim=1)
        assert sims[i] > 0.995, (path, sims.tolist())  # resampling differs slightly from PIL's
        assert int(sims.argmax()) == i  # closest to its own file's vector, not another photo's
        if name != "effnet-minilm":  # tiny CLIPs: 64 px inputs, nearly identical after resizing
            assert torch.allclose(v[0], from_files[i], atol=2e-3)


@pytest.mark.parametrize("name", IMAGE_ENCODERS)
def test_encode_pixels_is_exact_without_resampling_and_differentiable(assets, name, tmp_path):
    from PIL import Image

    enc = make(name, assets, **({"image_size": 64} if name == "effnet-minilm" else {}))
    path = tmp_path / "cat.png"  # already the model's input size: no resize, no crop
    Image.open(assets["images"][0]).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC).save(path)
    pixels = pil_to_pixels([Image.open(path)])
    v = enc.encode_pixels(pixels)
    assert torch.allclose(v.detach().float(), enc.encode_items([str(path)]), atol=1e-4)
    x = F.interpolate(pixels, size=(80, 96), mode="bilinear").requires_grad_(True)
    (enc.encode_pixels(x) ** 2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in enc.parameters())  # frozen: only the pixels get gradients


def test_pixel_helpers_and_errors():
    x = torch.arange(2 * 3 * 6 * 9, dtype=torch.float32).reshape(2, 3, 6, 9)
    assert torch.equal(center_crop(x, 4), x[..., 1:5, 2:6])  # offsets rounded down
    assert resize_center_crop_tensor(torch.rand(1, 3, 30, 50), 20).shape == (1, 3, 20, 20)
    assert check_pixels(torch.rand(3, 5, 5)).shape == (1, 3, 5, 5)
    with pytest.raises(EncoderError, match=r"shape \(B, 3, H, W\)"):
        check_pixels(torch.rand(2, 1, 8, 8))
    with pytest.raises(EncoderError, match="float tensor"):
        check_pixels(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    from encoders.base import Encoder

    class Text(Encoder):
        prompt_modality = item_modality = "text"

    class ImageWithoutPixels(Encoder):
        prompt_modality, item_modality = "text", "image"

    with pytest.raises(EncoderError, match="text items, not images"):
        Text().encode_pixels(torch.rand(1, 3, 4, 4))
    with pytest.raises(EncoderError, match=r"no differentiable pixel path: give it an encode_pixels"):
        ImageWithoutPixels().encode_pixels(torch.rand(1, 3, 4, 4))


def test_score_pixels_uses_the_encoders_own_pixel_path():
    """No per-encoder code in the reward side: any image encoder with encode_pixels works."""
    from encoders.base import Encoder
    from pal_mm import PALConfig, PALModel
    from pal_mm.rlhf import score_pixels

    class Mean(Encoder):
        prompt_modality, item_modality = "text", "image"

        def _encode_prompt_batch(self, prompts):
            return torch.ones(len(prompts), 2)

        def encode_pixels(self, pixels):
            return pixels.mean(dim=(2, 3)).double()  # (B, 3)

    model = PALModel(PALConfig(model_type="pal-b", k=1, prompt_dim=2, item_dim=3, projector="linear"), Mean(), ["u"])
    pixels = torch.rand(2, 3, 4, 4, requires_grad=True)
    rewards = score_pixels(model, "a prompt", pixels, user="u")
    assert rewards.shape == (2,) and rewards.dtype == torch.float32
    rewards.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
