"""Embedding-extraction throughput: every built-in encoder with packaged weights (through a fresh
embedding cache) next to a plain batched transformers / timm forward of the same model on the same
inputs, in one run; then CPU options that cut SmolLM2's cost, with their effect on the vectors.

Inputs are the embedded defaults' real data, built on the fly into a temporary folder:
``data_scripts.summary_default`` (drug-review posts and their candidate summaries) and
``data_scripts.t2i_default`` (photo variants and their captions), limited by ``--posts``,
``--summaries``, ``--images`` and ``--captions`` so that the benchmark takes a few minutes.

* ``minilm`` (posts, summaries), ``smollm2`` (posts, summaries), ``effnet-minilm`` (images: the
  EfficientNet-Lite0 item tower; captions: the MiniLM prompt tower).
* raw text forward: AutoTokenizer + AutoModel, tokenised once, sorted by length, each batch padded to
  its longest text (a strong plain baseline), pooled as the encoder pools (MiniLM: mean + L2 norm;
  SmolLM2: last token), in input order. Raw image forward: PIL + timm's eval transform +
  forward_features / forward_head.
* Timings alternate raw and ours ``--repeats`` times and keep the fastest; ours / raw = raw seconds /
  our seconds (>1: ours is faster). Both sides run ``torch.inference_mode`` at the same batch size.
* SmolLM2 options on the posts (the costly part of the summary budget): fp32 (default), bf16
  (``dtype=bfloat16``), dynamic int8 linear layers (``torch.ao.quantization.quantize_dynamic``) and a
  shorter truncation (``max_length=256``): seconds and the cosine of each vector to the fp32 one.
  hf-clip, open-clip and sentence-transformers need weights from the Hub (not present offline).

    python -m experiments.bench.bench_encoders [--posts 60 --summaries 240 --images 120 --captions 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from encoders import create_encoder
from encoders.cache import EmbeddingCache

RESULTS = Path(__file__).resolve().parent / "results"


# ----- the embedded defaults' inputs ----------------------------------------------------------
def default_texts(root: Path, posts: int, summaries: int) -> tuple[list[str], list[str]]:
    """Distinct posts and summaries of the summary default (file order, first ``posts`` / ``summaries``)."""
    from data_scripts import summary_default

    out = root / "summary_default"
    summary_default.build(str(out))
    p, s = {}, {}
    for f in sorted(out.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            p.setdefault(row["prompt"], None)
            s.setdefault(row["chosen"], None)
            s.setdefault(row["rejected"], None)
    return list(p)[:posts], list(s)[:summaries]


def default_images(root: Path, images: int, captions: int) -> tuple[list[str], list[str]]:
    """Image files and distinct captions of the t2i default."""
    from data_scripts import t2i_default

    out = root / "t2i_default"
    t2i_default.build(out, quick=False, log=lambda *_: None)
    paths = sorted(str(p) for p in (out / "images").glob("*.png"))[:images]
    caps = {}
    for f in sorted(out.rglob("*.jsonl")):
        for line in f.read_text().splitlines():
            caps.setdefault(json.loads(line)["prompt"], None)
    return paths, list(caps)[:captions]


# ----- raw baselines ----------------------------------------------------------------------------
def raw_text(model_dir: str, texts: list[str], batch_size: int, max_length: int, pooling: str, model=None):
    """A plain transformers forward: tokenise once, length-sorted batches, dynamic padding."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = model if model is not None else AutoModel.from_pretrained(model_dir).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))

    @torch.inference_mode()
    def run():
        out = torch.empty(len(texts), model.config.hidden_size)
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            t = max(len(ids[i]) for i in rows)
            x = torch.full((len(rows), t), pad)
            m = torch.zeros((len(rows), t), dtype=torch.long)
            for j, i in enumerate(rows):
                x[j, : len(ids[i])], m[j, : len(ids[i])] = torch.as_tensor(ids[i]), 1
            h = model(input_ids=x, attention_mask=m).last_hidden_state.float()
            if pooling == "mean":
                v = F.normalize((h * m[..., None]).sum(1) / m.sum(1, keepdim=True), dim=-1)
            else:  # last token (right padding)
                v = h[torch.arange(len(rows)), m.sum(1) - 1]
            out[torch.as_tensor(rows)] = v
        return out

    return run


def raw_effnet(paths: list[str], batch_size: int):
    import timm
    from PIL import Image

    from encoders.effnet import load_efficientnet_lite0

    model = load_efficientnet_lite0()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

    @torch.inference_mode()
    def run():
        out = []
        for s in range(0, len(paths), batch_size):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[s : s + batch_size]])
            out.append(model.forward_head(model.forward_features(x), pre_logits=True))
        return torch.cat(out)

    return run


# ----- timing -----------------------------------------------------------------------------------
def ours_cold(encoder, tower: str, values: list):
    """A fresh cache each call: hashing, length-sorted batches, forward, writing the shards."""
    def run():
        with tempfile.TemporaryDirectory() as root:
            return EmbeddingCache(root, progress=False).encode(encoder, tower, values)
    return run


def race(raw, ours, repeats: int) -> dict:
    """Alternate raw and ours, keep each one's fastest (wall seconds) and their last outputs."""
    best = {"raw": float("inf"), "ours": float("inf")}
    outs = {}
    for _ in range(repeats):
        for name, fn in (("raw", raw), ("ours", ours)):
            t0 = time.perf_counter()
            outs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {"raw_s": best["raw"], "ours_s": best["ours"], "ours_vs_raw": best["raw"] / best["ours"], "outputs": outs}


def cosine(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = F.cosine_similarity(a.float(), b.float(), dim=-1)
    return {"mean": round(float(c.mean()), 6), "min": round(float(c.min()), 6)}


# ----- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=60)
    ap.add_argument("--summaries", type=int, default=240)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--captions", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--only", nargs="+", default=None, metavar="ENCODER/WHAT",
                    help="run only these rows, e.g. smollm2/summaries minilm/posts (default: all)")
    ap.add_argument("--no-options", action="store_true", help="skip the SmolLM2 CPU options")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows, options = [], []
    with tempfile.TemporaryDirectory() as tmp:
        posts, summaries = default_texts(Path(tmp), args.posts, args.summaries)
        paths, captions = default_images(Path(tmp), args.images, args.captions)
        minilm = create_encoder("minilm", device="cpu")
        smol = create_encoder("smollm2", device="cpu")
        effnet = create_encoder("effnet-minilm", device="cpu")
        cases = [("minilm", minilm, "prompt", "posts", posts), ("minilm", minilm, "item", "summaries", summaries),
                 ("smollm2", smol, "prompt", "posts", posts), ("smollm2", smol, "item", "summaries", summaries),
                 ("effnet-minilm (EfficientNet-Lite0 items)", effnet, "item", "images", paths),
                 ("effnet-minilm (MiniLM prompts)", effnet, "prompt", "captions", captions)]
        for name, enc, tower, what, values in cases:
            if args.only and f"{name.split()[0]}/{what}" not in args.only:
                continue
            if what == "images":
                batch = enc.batch_size
                raw = raw_effnet(values, batch)
            else:
                text = enc.text if name.startswith("effnet") else enc  # effnet-minilm's prompts go through its MiniLM
                batch = text.batch_size
                raw = raw_text(text.model_name_or_path, values, batch, text.max_length, text.pooling)
            raw(), ours_cold(enc, tower, values[:batch])()  # warm-up (allocator, kernels)
            r = race(raw, ours_cold(enc, tower, values), args.repeats)
            outs = r.pop("outputs")
            same = what != "images"  # EffNet: ours resizes the shorter side to 224 + centre crop, timm 248 + crop 224
            row = {"encoder": name, "inputs": f"{len(values)} {what}", "n": len(values), "batch_size": batch, **r,
                   "raw_per_s": len(values) / r["raw_s"], "ours_per_s": len(values) / r["ours_s"],
                   "max_abs_diff": float((outs["ours"] - outs["raw"]).abs().max()) if same else None,
                   "load_1m": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.no_options:
            options = smollm2_options(smol, posts, args.repeats)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_1m_start": round(load_start, 2), "load_1m_end": round(os.getloadavg()[0], 2),
           "repeats": args.repeats, "device": "cpu", "runtime_s": round(time.perf_counter() - t_start, 1)}
    text = markdown(rows, options, env)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoders.md").write_text(text)
    (out / "encoders.json").write_text(json.dumps({"rows": rows, "smollm2_options": options, "env": env}, indent=2) + "\n")
    return 0


def smollm2_options(fp32, posts: list[str], repeats: int) -> list[dict]:
    """SmolLM2 on the posts: fp32, bf16, dynamic int8 linears, max_length 256 (seconds, cosine to fp32)."""
    variants = [("fp32 (default)", fp32), ("bf16 (dtype=bfloat16)", create_encoder("smollm2", device="cpu", dtype="bfloat16"))]
    int8 = create_encoder("smollm2", device="cpu")  # a separate encoder: its model is replaced in place
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    variants += [("dynamic int8 linears", int8), ("max_length=256", create_encoder("smollm2", device="cpu", max_length=256))]
    out, ref = [], None
    for name, enc in variants:
        enc.encode_prompts(posts[:2])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            v = enc.encode_prompts(posts)
            best = min(best, time.perf_counter() - t0)
        ref = v if ref is None else ref
        row = {"option": name, "seconds": round(best, 2), "posts_per_s": round(len(posts) / best, 2),
               "speedup": round(out[0]["seconds"] / best, 2) if out else 1.0, "cosine_to_fp32": cosine(v, ref),
               "load_1m": round(os.getloadavg()[0], 2)}
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def markdown(rows: list[dict], options: list[dict], env: dict) -> str:
    md = ["# Encoder throughput", "",
          f"CPU only, {env['cpu_count']} cores shared with other jobs (1-minute load average {env['load_1m_start']} at the start, "
          f"{env['load_1m_end']} at the end; per row below), torch {env['torch']} ({env['threads']} threads), best of "
          f"{env['repeats']}, raw and ours alternating in one run; whole benchmark {env['runtime_s']:.0f} s. Inputs: the embedded "
          "defaults' real posts, summaries, photos and captions.", "",
          "| encoder | inputs | batch | raw forward (/s) | ours, cold cache (/s) | ours / raw | max abs diff | load |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        md.append(f"| {r['encoder']} | {r['inputs']} | {r['batch_size']} | {r['raw_per_s']:.1f} | {r['ours_per_s']:.1f} | "
                  f"**{r['ours_vs_raw']:.2f}x** | {diff} | {r['load_1m']} |")
    md += ["", "'ours' = the encoder through a fresh EmbeddingCache (hashing, length-sorted dynamic batches, writing the "
           "shards); raw = a plain batched forward, also length-sorted with dynamic padding. EffNet preprocessing differs "
           "(ours: shorter side to 224 + centre crop; raw: timm's eval transform), so only its timings are compared."]
    if options:
        md += ["", "## SmolLM2 CPU options (posts)", "",
               "| option | seconds | posts/s | speed-up | cosine to fp32: mean | min | load |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for o in options:
            md.append(f"| {o['option']} | {o['seconds']:.2f} | {o['posts_per_s']:.2f} | {o['speedup']:.2f}x | "
                      f"{o['cosine_to_fp32']['mean']:.4f} | {o['cosine_to_fp32']['min']:.4f} | {o['load_1m']} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
