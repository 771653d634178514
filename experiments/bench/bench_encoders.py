"""Embedding-extraction throughput: pal-mm's encoders (through a fresh embedding cache) next to a
raw batched forward of the same model on the same inputs, then a second run on the warm cache.

* MiniLM (``minilm``) on ~2,000 short texts; raw = AutoTokenizer + AutoModel, padding to the
  batch, mean pooling + L2 norm, in input order.
* EfficientNet-Lite0 (``effnet-minilm`` item tower) on ~300 images (bundled photos and random
  crops of them, saved as JPEG); raw = PIL + timm's eval transform + forward_features/head.

Both sides use the same batch size and ``torch.inference_mode``; each timing is the best of
``--repeats`` runs (the cold cache is a new temporary directory every time). Writes a markdown
table to stdout and experiments/bench/results/encoders.{md,json}.

    python -m experiments.bench.bench_encoders [--texts 2000] [--images 300] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoders import create_encoder
from encoders.cache import EmbeddingCache

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ("the a post summary author says that his her friend wants to move city job because rent is too high "
         "and they argue about money time family work school dog cat car trip plan weekend advice question "
         "long short really never always maybe after before while new old good bad help me my you").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct short texts, 4-40 words (a TL;DR summary is ~27 tokens)."""
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + ".")
    return sorted(out, key=lambda _: rng.random())


def make_images(n: int, directory: Path, seed: int = 0) -> list[str]:
    """Bundled photos plus random crops of them, saved as JPEG (distinct files)."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")]
    try:
        from sklearn.datasets import load_sample_images

        photos += list(load_sample_images().images)
    except Exception:
        pass
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        if i >= len(photos):
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            img = img[y : y + ch, x : x + cw]
        p = directory / f"img{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).convert("RGB").save(p, quality=90)
        paths.append(str(p))
    return paths


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ----- raw baselines --------------------------------------------------------------------------
def raw_minilm(texts: list[str], batch_size: int):
    from transformers import AutoModel, AutoTokenizer

    from encoders.minilm import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()

    @torch.inference_mode()
    def run():
        out = []
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    return run


def raw_effnet(paths: list[str], batch_size: int):
    import timm
    from PIL import Image

    from encoders.effnet import load_efficientnet_lite0

    model = load_efficientnet_lite0()
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)

    @torch.inference_mode()
    def run():
        out = []
        for s in range(0, len(paths), batch_size):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[s : s + batch_size]])
            out.append(model.forward_head(model.forward_features(x), pre_logits=True))
        return torch.cat(out)

    return run


# ----- ours -----------------------------------------------------------------------------------
def ours(encoder, tower: str, values: list, repeats: int):
    """(cold seconds, warm seconds, embeddings, cache stats of the warm run)."""
    cold_best, warm_best, emb, stats = float("inf"), float("inf"), None, None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            emb = EmbeddingCache(root).encode(encoder, tower, values)
            cold_best = min(cold_best, time.perf_counter() - t0)
            warm_cache = EmbeddingCache(root)  # a second run: only the disk is shared
            t0 = time.perf_counter()
            warm = warm_cache.encode(encoder, tower, values)
            warm_best = min(warm_best, time.perf_counter() - t0)
            assert torch.equal(warm, emb)
            stats = warm_cache.stats()
    return cold_best, warm_best, emb, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice); 1 avoids "
                    "OpenMP spin-waiting when the CPU is shared with other jobs")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    texts = make_texts(args.texts)
    enc = create_encoder("minilm", batch_size=args.batch_size, device="cpu")
    raw_fn = raw_minilm(texts, args.batch_size)
    raw_fn()  # warm-up (allocator, kernels)
    raw_s, raw_emb = timed(raw_fn, args.repeats)
    cold_s, warm_s, emb, stats = ours(enc, "item", texts, args.repeats)
    rows.append({"model": "all-MiniLM-L6-v2 (minilm)", "inputs": f"{len(texts)} texts", "n": len(texts), "raw_s": raw_s,
                 "ours_s": cold_s, "warm_s": warm_s, "max_abs_diff": float((emb - raw_emb).abs().max()), "warm_hits": stats["hits"]})

    with tempfile.TemporaryDirectory() as img_dir:
        paths = make_images(args.images, Path(img_dir))
        enc = create_encoder("effnet-minilm", batch_size=args.batch_size, device="cpu")
        raw_fn = raw_effnet(paths, args.batch_size)
        raw_fn(), enc.encode_items(paths[: args.batch_size])  # warm-up
        raw_s, raw_emb = timed(raw_fn, args.repeats)
        cold_s, warm_s, emb, stats = ours(enc, "item", paths, args.repeats)
        rows.append({"model": "EfficientNet-Lite0 (effnet-minilm items)", "inputs": f"{len(paths)} images", "n": len(paths),
                     "raw_s": raw_s, "ours_s": cold_s, "warm_s": warm_s,
                     "max_abs_diff": None, "warm_hits": stats["hits"]})  # different resize rule: not comparable

    for r in rows:
        r["raw_per_s"] = r["n"] / r["raw_s"]
        r["ours_per_s"] = r["n"] / r["ours_s"]
        r["ours_vs_raw"] = r["raw_s"] / r["ours_s"]
        r["warm_speedup"] = r["ours_s"] / r["warm_s"]
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "batch_size": args.batch_size,
           "repeats": args.repeats, "device": "cpu"}
    lines = ["| model | inputs | raw forward (/s) | ours, cold cache (/s) | ours / raw | warm cache (s) | warm speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['inputs']} | {r['raw_per_s']:.1f} | {r['ours_per_s']:.1f} | {r['ours_vs_raw']:.2f}x "
                     f"| {r['warm_s']:.3f} | {r['warm_speedup']:.0f}x |")
    table = "\n".join(lines)
    note = (f"\nCPU only, {env['cpu_count']} cores, torch {env['torch']} ({env['threads']} threads), batch {args.batch_size}, "
            f"best of {args.repeats}; 1-minute load average at the end: {env['load_avg_1m']}. 'ours' = encoder.encode_items "
            "through a fresh EmbeddingCache (hashing, length-sorted dynamic batches, writing the shards); 'warm' = a new "
            "EmbeddingCache on the same directory (index read, checksums verified, rows gathered). MiniLM max |ours - raw| = "
            f"{rows[0]['max_abs_diff']:.2e}. EffNet preprocessing differs (ours: shorter side to 224 + centre crop; raw: timm's "
            "eval transform, 248 + crop 224), so only timings are compared.\n")
    print(table + "\n" + note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoders.md").write_text("# Encoder throughput\n\n" + table + "\n" + note)
    (out / "encoders.json").write_text(json.dumps({"rows": rows, "env": env}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
