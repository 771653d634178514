"""Train (or reuse) the models `make demo` serves, on the two embedded offline defaults, and write
their candidate pools (settings: config.yaml; everything under its ``cache_dir``).

    python -m experiments.demo.prepare --task summary      # prints the model folder and the pool file

A pool is the unseen users' pairs with their labels dropped and the two responses in a seeded random
order (response_a is not the chosen one more often than by chance); image paths are absolute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from encoders import create_encoder
from encoders.atomic import write_jsonl
from experiments.common import load_config, make_log, repo_path
from pal_mm import PALConfig, PALModel, TrainConfig, fit
from pal_mm.embedding import encode_data

HERE = Path(__file__).resolve().parent
log = make_log("demo")


def load_splits(name: str, tc: dict, cache_dir: Path) -> dict:
    """The task's dataset splits (built offline into the cache folder when missing)."""
    from pal_mm.splits import load_dataset

    if tc["source"] == "summary_default":
        from data_scripts.summary_default import build

        root = cache_dir / "summary_data"
        if not (root / "unseen.jsonl").is_file():
            log(f"building {root} (data_scripts.summary_default)")
            build(str(root))
        return dict(load_dataset(root).splits)
    from experiments.t2i.data import ensure_data, load_variants

    root = ensure_data(cache_dir / "t2i_data", False, 0, log)
    return dict(load_variants(root, [str(float(tc["beta"]))])[0].dataset.splits)


def pool_rows(unseen, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for u, p, c, r in zip(unseen.user_ids, unseen.prompts, unseen.chosen, unseen.rejected):
        a, b = (c, r) if rng.random() < 0.5 else (r, c)
        rows.append({"user_id": u, "prompt": p, "response_a": a, "response_b": b})
    return rows


def prepare(name: str, cfg: dict | None = None) -> tuple[Path, Path]:
    """(model folder, pool file) of one task, trained and written when missing or when its settings (the
    task's, resolved against the library defaults) changed."""
    cfg = cfg or load_config(HERE / "config.yaml")
    tc = cfg["tasks"][name]
    out = repo_path(cfg["cache_dir"]) / name
    # the task's settings resolved against the library's defaults: a new default retrains the model
    resolved = {"task": tc, "head": PALConfig(**tc["head"]).to_dict(), "train": asdict(TrainConfig(**tc.get("train", {})))}
    stamp = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model_dir, pool_file, stamp_file = out / "model", out / "pool.jsonl", out / "settings.sha"
    if model_dir.is_dir() and pool_file.is_file() and stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        log(f"{name}: reusing {model_dir}")
        return model_dir, pool_file
    splits = load_splits(name, tc, repo_path(cfg["cache_dir"]))
    encoder = create_encoder(tc["encoder"])
    from encoders.cache import EmbeddingCache

    cache = EmbeddingCache() if encoder.uses_cache else None
    torch.set_num_threads(2)  # encoding may use both cores; the head one (threads spin-wait on a shared CPU)
    enc = {k: encode_data(encoder, splits[k], cache) for k in ("seen_train", "seen_val")}
    torch.set_num_threads(1)
    groups = {**splits["seen_train"].user_groups(), **splits["unseen"].user_groups()}
    torch.manual_seed(0)
    log(f"{name}: training {tc['head']} on {len(splits['seen_train'])} pairs of {len(splits['seen_train'].users)} users")
    model: PALModel = fit(enc["seen_train"], enc["seen_val"], encoder, PALConfig(**tc["head"]),
                          TrainConfig(**{**tc.get("train", {}), "progress": False}), user_groups=groups)
    model.save_pretrained(model_dir)
    write_jsonl(pool_file, pool_rows(splits["unseen"]))
    stamp_file.write_text(stamp + "\n")
    log(f"{name}: model -> {model_dir}, pool ({len(splits['unseen'])} pairs) -> {pool_file}")
    return model_dir, pool_file


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["summary", "t2i"], help="which embedded default")
    a = ap.parse_args(argv)
    model_dir, pool_file = prepare(a.task)
    print(model_dir)
    print(pool_file)


if __name__ == "__main__":
    main()
