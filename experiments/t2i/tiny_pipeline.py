"""A tiny, randomly initialised Stable Diffusion pipeline saved to a local directory, so that
``pal-mm generate`` can be exercised offline (no diffusion weights ship in any package).

Its images are noise: this checks the sampling, scoring and contact-sheet path, not image quality.
The CLIP tokenizer is rebuilt from open_clip's bundled BPE vocabulary (identical ids to CLIP's).

    python -m experiments.t2i.tiny_pipeline --out /tmp/tiny-sd      # ~16 MB, a few seconds
"""

from __future__ import annotations

import argparse
import tempfile


def clip_tokenizer(max_length: int = 77):
    """A ``CLIPTokenizer`` rebuilt from open_clip's bundled BPE vocabulary (same ids as CLIP's)."""
    from transformers import CLIPTokenizer

    from encoders.testing import clip_tokenizer_files

    with tempfile.TemporaryDirectory() as d:
        vocab, merges = clip_tokenizer_files(d)
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length)


def build_tiny_pipeline(seed: int = 0, sample_size: int = 16):
    """A ``StableDiffusionPipeline`` with tiny random components (latents ``sample_size`` x
    ``sample_size``, images 8x larger) and no safety checker."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=32))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory to save the pipeline to")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    build_tiny_pipeline(args.seed).save_pretrained(args.out)
    print(f"saved a tiny random StableDiffusionPipeline to {args.out}")


if __name__ == "__main__":
    main()
