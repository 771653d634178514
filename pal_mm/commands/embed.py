"""``pal-mm embed``: precompute embeddings of a data set into the on-disk cache, so later
``train`` / ``eval`` / ``adapt`` runs with the same encoder find them there."""

from __future__ import annotations

import time

from . import _common as c


def add_parser(sub):
    p = sub.add_parser("embed", help="precompute embeddings into the cache ($PAL_MM_CACHE)")
    c.add_config_flag(p)
    p.add_argument("--data", nargs="+", help="one or more data files (file, save_to_disk dir, or Hub dataset name)")
    c.add_encoder_flags(p, default=None)
    p.add_argument("--cache-dir", default=None, help="cache root (default: $PAL_MM_CACHE or ~/.cache/pal-mm)")
    return p


def run(args) -> int:
    from encoders.cache import EmbeddingCache

    from ..embedding import encode_data

    c.require(args, "data", "encoder")
    files = [args.data] if isinstance(args.data, str) else list(args.data)
    encoder = c.make_encoder(args)
    if encoder.name == "precomputed":
        print("encoder 'precomputed' reads vectors from the data; nothing to cache")
        return 0
    cache = EmbeddingCache(args.cache_dir)
    t0 = time.perf_counter()
    for path in files:
        before = cache.stats()
        data = c.load_data(path)
        encode_data(encoder, data, cache)
        enc, hit = cache.misses - before["misses"], cache.hits - before["hits"]
        print(f"{path}: {len(data)} pairs; encoded {enc}, found {hit} cached")
    seconds = time.perf_counter() - t0
    print(f"{encoder.name} (prompt {encoder.prompt_dim}-d, item {encoder.item_dim}-d, fingerprint {encoder.fingerprint()}): "
          f"{cache.summary()} in {seconds:.1f}s; cache at {cache.root}")
    return 0
