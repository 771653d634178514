"""GPU readiness (`make bench-gpu`): one script, a few minutes on one H100/H200, every figure beside the
raw forward of the same model.

1. **TL;DR-scale text run**: 20,969 training pairs (synthetic posts and summaries of TL;DR lengths), an
   OPT-350m-sized encoder (24 layers, hidden 1024, output 512; random weights unless ``--text-model``
   names real ones) encoded once in bf16 through pal-mm's ``hf-text`` encoder and the embedding cache,
   next to a plain batched transformers forward of the same model (same batch size, last-token
   pooling). Then 20 epochs of a PAL-B head on the cached embeddings, and 100,000 new users x 20
   pairs adapted. The reference pattern (three frozen 512-token forwards per step at batch 4) is
   timed too, for a few steps, and extrapolated to 20 epochs.
2. **A CLIP ViT-H/14-sized image tower** (open_clip ``ViT-H-14``, random weights) in bf16: pal-mm's
   ``open-clip`` encoder on synthetic 224 px images vs ``model.encode_image`` on the same batches.

Writes experiments/bench/results/gpu.{md,json}. ``--tiny`` shrinks everything for a CPU smoke run
(it is what the test suite runs; its numbers mean nothing)::

    python -m experiments.bench.bench_gpu            # on a GPU
    python -m experiments.bench.bench_gpu --tiny --device cpu --out /tmp/bench_gpu
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from encoders.cache import EmbeddingCache

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ("i my we friend boyfriend girlfriend job work rent money family school move city weekend advice help "
         "really never always think feel want need said told about because after before while new old good bad "
         "long short time year month week day night home car dog cat trip plan question answer").split()
FULL = {"pairs": 20969, "posts": 7000, "post_words": (150, 400), "summary_words": (8, 40), "epochs": 20,
        "new_users": 100_000, "shots": 20, "images": 2048, "batch": 64, "opt": dict(hidden_size=1024, num_hidden_layers=24,
        ffn_dim=4096, num_attention_heads=16, word_embed_proj_dim=512), "clip": "ViT-H-14"}
TINY = {"pairs": 256, "posts": 64, "post_words": (20, 60), "summary_words": (4, 12), "epochs": 2, "new_users": 200,
        "shots": 5, "images": 16, "batch": 16, "opt": dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128,
        num_attention_heads=4, word_embed_proj_dim=32), "clip": None}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(fn, device: str):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# ----- data ------------------------------------------------------------------------------------
def make_text(rng: random.Random, lo_hi: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*lo_hi))).capitalize() + "."


def make_pairs(size: dict, seed: int = 0):
    rng = random.Random(seed)
    posts = [make_text(rng, size["post_words"]) for _ in range(size["posts"])]
    rows = []
    for i in range(size["pairs"]):
        rows.append({"user_id": f"w{i % 10}", "prompt": posts[i % len(posts)],
                     "chosen": make_text(rng, size["summary_words"]), "rejected": make_text(rng, size["summary_words"])})
    return rows


def build_opt(directory: Path, size: dict) -> Path:
    """An OPT model of the given size with random weights and a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rng = random.Random(1)
    tok.train_from_iterator([make_text(rng, (20, 60)) for _ in range(2000)], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", model_max_length=2048)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=2048, pad_token_id=0, eos_token_id=1,
                       bos_token_id=1, **size["opt"])
    OPTForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


# ----- 1. text extraction -------------------------------------------------------------------------
def raw_text_forward(model_dir: str, texts: list[str], batch: int, device: str, dtype: torch.dtype):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def run():
        out = []
        for s in range(0, len(texts), batch):
            enc = tok(texts[s : s + batch], padding=True, truncation=True, max_length=512, return_tensors="pt").to(device)
            h = model(**enc).last_hidden_state
            last = enc["attention_mask"].sum(1) - 1
            out.append(h[torch.arange(h.shape[0], device=device), last].float().cpu())
        return torch.cat(out)

    return run


def bench_text(size: dict, device: str, model_dir: str | None, work: Path) -> tuple[dict, object]:
    from encoders import create_encoder
    from pal_mm.data import PreferenceData
    from pal_mm.embedding import encode_data

    model_dir = model_dir or str(build_opt(work / "opt", size))
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    rows = make_pairs(size)
    data = PreferenceData.from_rows(rows)
    texts = list(dict.fromkeys(data.prompts + data.chosen + data.rejected))
    enc = create_encoder("hf-text", model_name_or_path=model_dir, pooling="last-token", batch_size=size["batch"],
                         device=device, dtype=dtype, max_length=512)
    raw = raw_text_forward(model_dir, texts, size["batch"], device, getattr(torch, dtype))
    raw(), enc.encode_prompts(texts[: size["batch"]])  # warm-up: kernels, allocator
    raw_s, _ = clock(raw, device)
    ours_s, pairs = clock(lambda: encode_data(enc, data, EmbeddingCache(work / "cache", progress=False)), device)
    out = {"texts": len(texts), "raw_s": raw_s, "ours_s": ours_s, "ours_vs_raw": raw_s / ours_s,
           "model_parameters": sum(p.numel() for p in enc.parameters()), "dtype": dtype}
    return out, (pairs, enc)


# ----- 1b. heads and new users --------------------------------------------------------------------
def bench_heads(size: dict, device: str, pairs, encoder) -> dict:
    from pal_mm import AdaptConfig, PALConfig, TrainConfig, adapt, fit
    from pal_mm.embedding import EncodedPairs

    tc = TrainConfig(epochs=size["epochs"], patience=0, progress=False, cpu=not device.startswith("cuda"))
    fit_s, model = clock(lambda: fit(pairs, None, encoder, PALConfig(model_type="pal-b", k=2), tc), device)
    n_users, shots = size["new_users"], size["shots"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(pairs), (n_users * shots,), generator=g)
    new = EncodedPairs(pairs.prompt[idx], pairs.chosen[idx], pairs.rejected[idx],
                       [f"new{i // shots}" for i in range(n_users * shots)])
    adapt_s, _ = clock(lambda: adapt(model, new, AdaptConfig()), device)
    epochs = len(model.history)
    return {"train_pairs": len(pairs), "epochs": epochs, "fit_s": fit_s, "fit_pairs_per_s": len(pairs) * epochs / fit_s,
            "new_users": n_users, "shots": shots, "adapt_s": adapt_s}


def bench_reference_pattern(size: dict, device: str, encoder, pairs_rows: list[dict], steps: int = 5) -> dict:
    """The reference code's step: three frozen forwards of 512-token padded sequences at batch 4."""
    tok, model = encoder.tokenizer, encoder.model
    rows = pairs_rows[: 4 * steps]

    @torch.inference_mode()
    def run():
        for s in range(0, len(rows), 4):
            for col in ("prompt", "chosen", "rejected"):
                enc = tok([r[col] for r in rows[s : s + 4]], padding="max_length", truncation=True, max_length=512,
                          return_tensors="pt").to(device)
                model(**enc)

    run()
    seconds, _ = clock(run, device)
    per_s = len(rows) / seconds
    return {"pairs_per_s": per_s, "hours_for_20_epochs": size["pairs"] * 20 / per_s / 3600}


# ----- 2. image tower ----------------------------------------------------------------------------
def bench_image(size: dict, device: str, work: Path) -> dict | None:
    if not size["clip"]:
        return None
    import numpy as np
    import open_clip
    from PIL import Image

    from encoders import create_encoder

    rng = np.random.default_rng(0)
    paths = []
    for i in range(size["images"]):
        p = work / f"img{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    enc = create_encoder("open-clip", model_name=size["clip"], pretrained=None, batch_size=size["batch"], device=device,
                         dtype=dtype)
    model, preprocess = enc.model, enc.preprocess

    @torch.inference_mode()
    def raw():
        out = []
        for s in range(0, len(paths), size["batch"]):
            x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[s : s + size["batch"]]])
            out.append(model.encode_image(x.to(device, getattr(torch, dtype))).float().cpu())
        return torch.cat(out)

    raw(), enc.encode_items(paths[: size["batch"]])
    raw_s, _ = clock(raw, device)
    ours_s, _ = clock(lambda: EmbeddingCache(work / "img_cache", progress=False).encode(enc, "item", paths), device)
    return {"model": size["clip"], "images": len(paths), "raw_s": raw_s, "ours_s": ours_s, "ours_vs_raw": raw_s / ours_s,
            "vision_parameters": sum(p.numel() for p in model.visual.parameters()), "open_clip": open_clip.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="small sizes for a CPU smoke run")
    ap.add_argument("--text-model", default=None, help="a local OPT-350m (or any causal LM) directory instead of random weights")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    size = TINY if args.tiny else FULL
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text, (pairs, encoder) = bench_text(size, args.device, args.text_model, work)
        heads = bench_heads(size, args.device, pairs, encoder)
        reference = bench_reference_pattern(size, args.device, encoder, make_pairs(size))
        image = bench_image(size, args.device, work)
    total = time.perf_counter() - t_all
    env = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny, "total_s": total}
    report = {"text": text, "heads": heads, "reference_pattern": reference, "image": image, "env": env}
    lines = ["| step | ours | raw forward | ours / raw |", "| --- | --- | --- | --- |",
             f"| encode {text['texts']:,} texts once ({text['dtype']}) | {text['ours_s']:.1f} s | {text['raw_s']:.1f} s "
             f"| {text['ours_vs_raw']:.2f}x |",
             f"| PAL-B K=2, {heads['epochs']} epochs on {heads['train_pairs']:,} pairs | {heads['fit_s']:.1f} s "
             f"({heads['fit_pairs_per_s']:,.0f} pairs/s) | reference pattern: {reference['pairs_per_s']:.0f} pairs/s, "
             f"{reference['hours_for_20_epochs']:.1f} h for 20 epochs | |",
             f"| adapt {heads['new_users']:,} new users x {heads['shots']} pairs | {heads['adapt_s']:.1f} s | | |"]
    if image:
        lines.append(f"| {image['model']} image tower, {image['images']:,} images | {image['ours_s']:.1f} s | {image['raw_s']:.1f} s "
                     f"| {image['ours_vs_raw']:.2f}x |")
    text_run = text["ours_s"] + heads["fit_s"] + heads["adapt_s"]
    note = (f"\nDevice {env['gpu'] or args.device}, torch {env['torch']}; whole TL;DR-scale run (encode + train + adapt): "
            f"{text_run:.1f} s; script total {total:.0f} s.{' TINY SMOKE RUN: numbers mean nothing.' if args.tiny else ''}\n")
    print("\n".join(lines) + "\n" + note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.md").write_text("# GPU readiness\n\n" + "\n".join(lines) + "\n" + note)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
