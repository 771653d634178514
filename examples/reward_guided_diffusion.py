"""Reward-guided diffusion fine-tuning with a personal image reward (DRaFT / AlignProp style): sample
with a Stable Diffusion-style pipeline, decode, score the pixels with
:func:`pal_mm.rlhf.score_pixels` (differentiable: the image encoder's preprocessing runs in torch)
and back-propagate the user's reward through the last denoising step(s) into the UNet.

    pip install "pal-mm[image,diffusion]"
    pal-mm export --model runs/t2i --user alice --out rm_alice           # an image-text reward model
    python -m examples.reward_guided_diffusion --pipeline stabilityai/sd-turbo --reward rm_alice \\
        --prompt "a cat on a sofa" --steps 200 --inference-steps 1 --out runs/sd_alice
    python -m examples.reward_guided_diffusion --tiny --out /tmp/rgd_tiny       # offline smoke run on the CPU

``--tiny`` builds everything offline: the tiny random pipeline of ``experiments/t2i/tiny_pipeline.py``
(it draws noise) and a PAL-B reward model on a tiny random CLIP, trained on the spot so that user
``warm`` prefers reddish images. Only the wiring and the direction of the update are checked there:
the warm user's reward of images sampled from fixed noise goes up.

Memory: the gradient flows through ``--grad-steps`` UNet calls and the VAE decoder; on a real pipeline
use a GPU, ``--grad-steps 1`` and few inference steps (sd-turbo: 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def prompt_embeddings(pipe, prompt: str, n: int) -> torch.Tensor:
    """(n, tokens, width) text conditioning of ``pipe`` (no classifier-free guidance)."""
    embeds, _ = pipe.encode_prompt(prompt, pipe.device, n, do_classifier_free_guidance=False)
    return embeds.detach()


def sample_pixels(pipe, embeds: torch.Tensor, noise: torch.Tensor, inference_steps: int, grad_steps: int) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) to images (B, 3, H, W) in [0, 1]; only the last ``grad_steps``
    UNet calls and the VAE decoder keep a graph."""
    sched = pipe.scheduler
    sched.set_timesteps(inference_steps, device=noise.device)
    latents = noise * sched.init_noise_sigma
    timesteps = sched.timesteps
    for i, t in enumerate(timesteps):
        with torch.set_grad_enabled(i >= len(timesteps) - grad_steps):
            pred = pipe.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=embeds).sample
            latents = sched.step(pred, t, latents).prev_sample
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def latent_noise(pipe, n: int, seed: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
    size = pipe.unet.config.sample_size
    h, w = (height or size * pipe.vae_scale_factor) // pipe.vae_scale_factor, (width or size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(n, pipe.unet.config.in_channels, h, w, generator=g).to(pipe.device, pipe.unet.dtype)


@torch.no_grad()
def mean_reward(pipe, reward_model, prompt: str, noise: torch.Tensor, inference_steps: int, **who) -> float:
    from pal_mm.rlhf import score_pixels

    pixels = sample_pixels(pipe, prompt_embeddings(pipe, prompt, len(noise)), noise, inference_steps, 0)
    return float(score_pixels(reward_model, prompt, pixels.float(), **who).mean())


def reward_guided_finetune(pipe, reward_model, prompt: str, *, user: str | None = None, steps: int = 100,
                           batch_size: int = 2, inference_steps: int = 4, grad_steps: int = 1, lr: float = 1e-5,
                           seed: int = 0, eval_images: int = 4) -> dict:
    """Fine-tune ``pipe.unet`` in place to raise the reward of its samples for ``prompt``;
    ``reward_model``: an exported reward model, or a PAL model with ``user``. Returns the mean reward
    of ``eval_images`` images from fixed noise before and after, and the training rewards."""
    from pal_mm.rlhf import score_pixels

    who = {"user": user} if user is not None else {}
    for module in (pipe.vae, pipe.text_encoder, reward_model):
        module.requires_grad_(False)
    unet = pipe.unet
    unet.requires_grad_(True).train()
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    eval_noise = latent_noise(pipe, eval_images, seed=10_000 + seed)
    before = mean_reward(pipe, reward_model, prompt, eval_noise, inference_steps, **who)
    embeds = prompt_embeddings(pipe, prompt, batch_size)
    history = []
    for step in range(steps):
        pixels = sample_pixels(pipe, embeds, latent_noise(pipe, batch_size, seed + step), inference_steps, grad_steps)
        reward = score_pixels(reward_model, prompt, pixels.float(), **who)
        opt.zero_grad()
        (-reward.mean()).backward()
        opt.step()
        history.append(float(reward.detach().mean()))
    unet.eval()
    after = mean_reward(pipe, reward_model, prompt, eval_noise, inference_steps, **who)
    return {"before": before, "after": after, "train_rewards": history}


def tiny_setup(work: str | Path, seed: int = 0):
    """(pipeline, reward model, user) built offline in ``work`` (see the module doc)."""
    import numpy as np

    from encoders import create_encoder
    from encoders.testing import build_tiny_hf_clip
    from experiments.t2i.tiny_pipeline import build_tiny_pipeline
    from pal_mm import PALConfig, PreferenceData, TrainConfig, fit

    from PIL import Image

    work = Path(work)
    (work / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(12):  # reddish and bluish noise
        base = np.array([200, 80, 60] if i % 2 == 0 else [60, 80, 200])
        paths.append(work / "images" / f"{i:02d}.png")
        Image.fromarray(np.clip(base + rng.integers(-50, 50, (64, 64, 3)), 0, 255).astype(np.uint8)).save(paths[-1])
    rows = []
    for j in range(48):
        warm, cool = paths[2 * (j % 6)], paths[2 * ((j + 1) % 6) + 1]
        user = "warm" if j % 2 == 0 else "cool"
        chosen, rejected = (warm, cool) if user == "warm" else (cool, warm)
        rows.append({"user_id": user, "prompt": "a photo", "chosen": str(chosen), "rejected": str(rejected)})
    encoder = create_encoder("hf-clip", model_name_or_path=str(build_tiny_hf_clip(work / "clip", seed=seed)))
    reward_model = fit(PreferenceData.from_rows(rows), None, encoder, PALConfig(model_type="pal-b", k=2, dim=16),
                       TrainConfig(epochs=5, patience=0, seed=seed, progress=False, cpu=True))
    return build_tiny_pipeline(seed=seed), reward_model, "warm"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", help="diffusers Stable Diffusion-style pipeline: Hub id or folder")
    p.add_argument("--reward", help="exported image reward model, or a PAL model with --user")
    p.add_argument("--user", default=None, help="the user of a multi-user PAL model")
    p.add_argument("--prompt", default="a photo", help="the prompt to fine-tune for")
    p.add_argument("--out", required=True, help="output folder (the fine-tuned pipeline)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: 100; 4 with --tiny)")
    p.add_argument("--batch-size", type=int, default=2, help="images per step")
    p.add_argument("--inference-steps", type=int, default=4, help="denoising steps per sample")
    p.add_argument("--grad-steps", type=int, default=1, help="last denoising steps the gradient flows through")
    p.add_argument("--lr", type=float, default=None, help="UNet learning rate (default: 1e-5; 1e-3 with --tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="cuda, cpu... (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="offline smoke run: tiny random pipeline and reward model")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    if a.tiny:
        pipe, reward, user = tiny_setup(Path(a.out) / "tiny", a.seed)
        steps, lr, device = a.steps or 4, a.lr or 1e-3, "cpu"
    else:
        if not (a.pipeline and a.reward):
            p.error("--pipeline and --reward are required (or --tiny)")
        from pal_mm.export import load_reward_model
        from pal_mm.generation import load_pipeline

        device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(a.pipeline, device=device, dtype="float32", progress=None)
        reward, user, steps, lr = load_reward_model(a.reward, device=device), a.user, a.steps or 100, a.lr or 1e-5
    pipe.to(device)
    result = reward_guided_finetune(pipe, reward, a.prompt, user=user, steps=steps, batch_size=a.batch_size,
                                    inference_steps=a.inference_steps, grad_steps=a.grad_steps, lr=lr, seed=a.seed)
    pipe.save_pretrained(Path(a.out) / "pipeline")
    print(f"mean reward of fixed-noise samples: {result['before']:+.4f} -> {result['after']:+.4f} "
          f"({steps} steps); pipeline saved to {Path(a.out) / 'pipeline'}")
    return result


if __name__ == "__main__":
    main()
