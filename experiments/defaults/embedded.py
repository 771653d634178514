"""The two embedded defaults as data sets of the study: the summary default with MiniLM embeddings and
the text-to-image default (offline Pick-a-Filter) with effnet-minilm embeddings, one data set per
beta. Both build offline when missing (``data_scripts.summary_default``, ``data_scripts.t2i_default``)
and encode through the experiments' embedding caches, so a second run reads vectors only.

Each loader returns the same splits as :func:`experiments.defaults.generate.make_data`: ``train`` /
``val`` / ``test`` of the seen users and ``new`` (unseen users), with the new users' fitting and
test rows from the library's few-shot protocol (:func:`pal_mm.fewshot.fewshot_split`, seed 0).
"""

from __future__ import annotations

from pathlib import Path

from pal_mm.embedding import EncodedPairs, encode_data
from pal_mm.fewshot import fewshot_split

from ..common import ROOT, repo_path

SUMMARY_DIR = "data/summary_default"
T2I_DIR = "data/t2i_default"


def _new_split(new: EncodedPairs, n: int, test_pairs: int | None) -> tuple[list[int], list[int]]:
    split = fewshot_split(new.user_ids, [n], seed=0, test_pairs=test_pairs)
    return split.train[n], split.test[n]


def load_summary(n_new: int, log=print) -> dict:
    """MiniLM embeddings of ``data/summary_default`` (built when missing)."""
    from encoders import create_encoder
    from encoders.cache import EmbeddingCache
    from pal_mm.splits import SPLITS, load_dataset

    root = repo_path(SUMMARY_DIR)
    if not all((root / f"{s}.jsonl").is_file() for s in SPLITS):
        from data_scripts.summary_default import build

        log(f"building {root}")
        build(str(root))
    ds = load_dataset(root)
    encoder = create_encoder("minilm")
    cache = EmbeddingCache()
    enc = {s: encode_data(encoder, ds[s], cache) for s in SPLITS}
    data = {"train": enc["seen_train"], "val": enc["seen_val"], "test": enc["seen_test"], "new": enc["unseen"]}
    return {"data": data, "new_rows": _new_split(enc["unseen"], n_new, None), "k": 2,
            "widths": [encoder.prompt_dim, encoder.item_dim], "encoder": "minilm"}


def load_t2i(betas: list[float], n_new: int, log=print) -> dict[float, dict]:
    """effnet-minilm embeddings of ``data/t2i_default`` (built when missing), one entry per beta."""
    from encoders import create_encoder
    from encoders.cache import EmbeddingCache

    from ..t2i.data import ensure_data, load_variants
    from ..t2i.run import SPLITS, encode_tables

    root = ensure_data(repo_path(T2I_DIR), False, 0, log)
    variants = load_variants(root, [str(float(b)) for b in betas])
    splits = {(v.key, s): v.dataset[s] for v in variants for s in SPLITS}
    encoder = create_encoder("effnet-minilm")
    tables = encode_tables(encoder, splits, EmbeddingCache(Path(ROOT / "experiments" / "t2i" / "cache")))
    out = {}
    for v in variants:
        data = {"train": tables.pairs(v.key, "seen_train"), "val": tables.pairs(v.key, "seen_val"),
                "test": tables.pairs(v.key, "seen_test"), "new": tables.pairs(v.key, "unseen")}
        out[float(v.key)] = {"data": data, "new_rows": _new_split(data["new"], n_new, 30), "k": 2,
                             "widths": [encoder.prompt_dim, encoder.item_dim], "encoder": "effnet-minilm"}
    return out
