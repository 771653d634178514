"""``pal-mm embed``: precompute embeddings of a data set into the on-disk cache, so later
``train`` / ``eval`` / ``adapt`` runs with the same encoder find them there. Conversations are
rendered exactly as those commands render them (:mod:`pal_mm.conversation`), so they hit the cache."""

from __future__ import annotations

import time

from . import _common as c

EXAMPLES = """\
  pal-mm embed --data train.jsonl val.jsonl test.jsonl --encoder minilm
  pal-mm embed --data pairs.jsonl --encoder hf-text --encoder-arg model_name_or_path=facebook/opt-350m --device cuda
"""


def add_parser(sub):
    p = c.add_command(sub, "embed", "precompute embeddings into the cache ($PAL_MM_CACHE)", EXAMPLES)
    p.add_argument("--data", nargs="+", help="one or more data files (file, save_to_disk dir, or Hub dataset name)")
    c.add_encoder_flags(p, default=None)
    c.add_runtime_flags(p)
    return p


def run(args) -> int:
    from ..embedding import encode_data

    c.require(args, "data", "encoder")
    files = [args.data] if isinstance(args.data, str) else list(args.data)
    encoder = c.make_encoder(args)
    if not encoder.uses_cache:
        print(f"encoder {encoder.name!r} reads vectors from the data; nothing to cache")
        return 0
    cache = c.make_cache(args)
    if cache is None:
        print("--no-cache: nothing to do")
        return 0
    t0 = time.perf_counter()
    for path in files:
        before = cache.stats()
        data = c.load_data(path, encoder)
        encode_data(encoder, data, cache)
        enc, hit = cache.misses - before["misses"], cache.hits - before["hits"]
        print(f"{path}: {len(data)} pairs; encoded {enc}, found {hit} cached")
    seconds = time.perf_counter() - t0
    print(f"{encoder.name} (prompt {encoder.prompt_dim}-d, item {encoder.item_dim}-d, fingerprint {encoder.fingerprint()}): "
          f"{cache.summary()} in {seconds:.1f}s; cache at {cache.root}")
    return 0
