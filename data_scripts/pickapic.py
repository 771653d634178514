"""Build pal-mm data from Pick-a-Pic (real text-to-image preferences; needs the data).

Input rows follow the ``yuvalkirstain/pickapic_v2`` schema: ``caption``, ``jpg_0``, ``jpg_1``
(encoded image bytes), ``label_0``, ``label_1`` in {0, 0.5, 1} and ``user_id``. The source is a
Hub dataset name (streamed), a local ``.parquet`` / ``.jsonl`` file (in JSON lines, image
fields are paths relative to the file) or a ``save_to_disk`` directory.

Steps:

1. read rows (``--max-rows``); ties (``label_0 == label_1``, i.e. 0.5/0.5) are counted in
   ``meta.json`` and dropped; ``chosen`` is the image whose label is higher;
2. images are written to ``OUT/images/`` under content-hash names (deduplicated);
3. users with at least ``--min-pairs`` pairs, ordered by pair count: the first ``--num-seen``
   are *seen*, the next ``--num-unseen`` *unseen* (disjoint);
4. (optional hook, used by :mod:`data_scripts.pick_a_filter`) modify the rows;
5. seen users' pairs are split train/val/test per user (seeded), unseen users' go to
   ``unseen.jsonl``;
6. with ``--encoder NAME`` the prompts and images are replaced by embeddings from that registered
   encoder (images then only live in a temporary folder).

Output: ``OUT/{seen_train,seen_val,seen_test,unseen}.jsonl`` (canonical pal-mm rows),
``OUT/images/`` and ``OUT/meta.json``.

    python -m data_scripts.pickapic --out data/pickapic --source yuvalkirstain/pickapic_v2 \
        --split train --max-rows 200000
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from encoders.atomic import write_json, write_jsonl

from .images import ImageStore, png_bytes

DEFAULT_SOURCE = "yuvalkirstain/pickapic_v2"
SPLIT_NAMES = ("seen_train", "seen_val", "seen_test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)

#: a hook run on the kept rows before splitting: (rows, base_dir, store) -> (rows, extra meta)
Transform = Callable[[list[dict], Path, ImageStore], tuple[list[dict], dict]]


# --------------------------------------------------------------------------------------------
# reading the source
# --------------------------------------------------------------------------------------------


def iter_source_rows(source: str, split: str = "train", max_rows: int | None = None) -> Iterator[dict]:
    """Yield raw Pick-a-Pic rows from a Hub name (streaming), a ``.parquet`` / ``.jsonl`` file or
    a ``save_to_disk`` directory. For ``.jsonl``, string image fields are resolved against the
    file's folder (see :func:`image_bytes`) and the key ``_base_dir`` is added to each row."""
    path = Path(source)
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):
            ds = ds[split]
        rows: Iterable[dict] = iter(ds)
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        rows = _iter_jsonl(path)
    elif path.is_file() and path.suffix.lower() == ".parquet":
        from datasets import load_dataset

        rows = iter(load_dataset("parquet", data_files=str(path), split="train", streaming=True))
    else:
        from datasets import load_dataset

        rows = iter(load_dataset(source, split=split, streaming=True))
    for i, row in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            break
        yield row


def _iter_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["_base_dir"] = str(path.parent)
                yield row


def image_bytes(value: Any, base_dir: str | None = None) -> bytes:
    """Encoded image bytes from the forms an image column takes: raw ``bytes``, a ``datasets``
    Image dict (``{"bytes": ..., "path": ...}``), a PIL image, a ``"base64:..."`` string or a
    file path (relative to ``base_dir``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        return image_bytes(value["path"], base_dir)
    if isinstance(value, str):
        if value.startswith("base64:"):
            return base64.b64decode(value[len("base64:"):])
        path = Path(value)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return path.read_bytes()
    if hasattr(value, "save"):  # PIL image
        return png_bytes(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def read_pairs(raw_rows: Iterable[dict], store: ImageStore, prefix: str = "images/") -> tuple[list[dict], dict]:
    """Raw Pick-a-Pic rows -> canonical rows (winner = ``chosen``) with images written to
    ``store``; ties are dropped. Returns (rows, counts)."""
    rows, counts = [], Counter()
    for raw in raw_rows:
        counts["rows_read"] += 1
        l0, l1 = float(raw["label_0"]), float(raw["label_1"])
        if l0 == l1:
            counts["ties_dropped"] += 1
            continue
        base_dir = raw.get("_base_dir")
        win, lose = ("jpg_0", "jpg_1") if l0 > l1 else ("jpg_1", "jpg_0")
        rows.append(
            {
                "user_id": str(raw["user_id"]),
                "prompt": str(raw["caption"]),
                "chosen": prefix + store.put_bytes(image_bytes(raw[win], base_dir)),
                "rejected": prefix + store.put_bytes(image_bytes(raw[lose], base_dir)),
            }
        )
    counts["pairs"] = len(rows)
    return rows, dict(counts)


# --------------------------------------------------------------------------------------------
# users and splits
# --------------------------------------------------------------------------------------------


def select_users(rows: list[dict], num_seen: int, num_unseen: int, min_pairs: int) -> tuple[list[str], list[str]]:
    """Users with ``>= min_pairs`` pairs, most pairs first (ties by id): the first ``num_seen``
    are seen, the next ``num_unseen`` unseen."""
    counts = Counter(r["user_id"] for r in rows)
    ranked = sorted((u for u, c in counts.items() if c >= min_pairs), key=lambda u: (-counts[u], u))
    return ranked[:num_seen], ranked[num_seen : num_seen + num_unseen]


def split_fractions(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Sizes for splitting ``n`` items by ``fractions`` (rounded; the last part takes the rest)."""
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return sizes


def split_seen(rows: list[dict], seed: int, fractions: tuple[float, ...] = DEFAULT_FRACTIONS) -> dict[str, list[dict]]:
    """Split each user's rows train/val/test (shuffled with a per-user seed); row order within a
    split follows the input order."""
    by_user: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_user.setdefault(r["user_id"], []).append(i)
    assign = [0] * len(rows)
    for user, idx in by_user.items():
        idx = idx[:]
        random.Random(f"{seed}:{user}").shuffle(idx)
        start = 0
        for part, size in enumerate(split_fractions(len(idx), fractions)):
            for i in idx[start : start + size]:
                assign[i] = part
            start += size
    return {name: [r for r, a in zip(rows, assign) if a == part] for part, name in enumerate(SPLIT_NAMES)}


# --------------------------------------------------------------------------------------------
# embeddings and writing
# --------------------------------------------------------------------------------------------


def _floats(vec) -> list[float]:
    return [round(float(v), 6) for v in vec]


def embed_rows(splits: dict[str, list[dict]], base_dir: Path, encoder) -> dict[str, list[dict]]:
    """Replace prompts and image paths by the encoder's embeddings (each unique prompt and image
    is encoded once)."""
    all_rows = [r for rows in splits.values() for r in rows]
    prompts = sorted({r["prompt"] for r in all_rows})
    images = sorted({r[k] for r in all_rows for k in ("chosen", "rejected")})
    p_emb = dict(zip(prompts, map(_floats, encoder.encode_prompts(prompts).tolist()))) if prompts else {}
    i_emb = encoder.encode_items([str(base_dir / p) for p in images]) if images else []
    i_emb = dict(zip(images, map(_floats, i_emb.tolist() if images else [])))
    out = {}
    for name, rows in splits.items():
        out[name] = [
            {**r, "prompt": p_emb[r["prompt"]], "chosen": i_emb[r["chosen"]], "rejected": i_emb[r["rejected"]]}
            for r in rows
        ]
    return out


def build(
    out: str | Path,
    source: str = DEFAULT_SOURCE,
    split: str = "train",
    max_rows: int | None = None,
    num_seen: int = 100,
    num_unseen: int = 50,
    min_pairs: int = 20,
    seed: int = 0,
    encoder: str | None = None,
    transform: Transform | None = None,
) -> dict:
    """Build the dataset in ``out`` (see the module docstring); returns the meta dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out)) if encoder else None
    base_dir = tmp if encoder else out
    try:
        store = ImageStore(base_dir / "images")
        rows, counts = read_pairs(iter_source_rows(source, split, max_rows), store)
        seen, unseen = select_users(rows, num_seen, num_unseen, min_pairs)
        keep = set(seen) | set(unseen)
        rows = [r for r in rows if r["user_id"] in keep]
        extra: dict = {}
        if transform is not None:
            rows, extra = transform(rows, base_dir, store)
        seen_set = set(seen)
        splits = split_seen([r for r in rows if r["user_id"] in seen_set], seed)
        splits["unseen"] = [r for r in rows if r["user_id"] not in seen_set]
        used = {Path(r[k]).name for r in rows for k in ("chosen", "rejected")}
        if encoder:
            import pal_mm  # noqa: F401  (import before encoders: avoids an import cycle)
            from encoders import create_encoder

            splits = embed_rows(splits, base_dir, create_encoder(encoder))
        else:
            store.prune(used)
            store.save_manifest()
        for name, split_rows in splits.items():
            write_jsonl(out / f"{name}.jsonl", split_rows)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "source": str(source),
        "split": split,
        "max_rows": max_rows,
        "rows_read": counts.get("rows_read", 0),
        "ties_dropped": counts.get("ties_dropped", 0),
        "pairs_without_ties": counts.get("pairs", 0),
        "min_pairs": min_pairs,
        "seed": seed,
        "users_seen": len(seen),
        "users_unseen": len(unseen),
        "pairs": {name: len(r) for name, r in splits.items()},
        "unique_images": len(used),
        "encoder": encoder,
        **extra,
    }
    write_json(out / "meta.json", meta)
    return meta


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_build_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with :mod:`data_scripts.pick_a_filter`."""
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="Hub name, .parquet/.jsonl file or save_to_disk folder")
    p.add_argument("--split", default="train")
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--num-seen", type=int, default=100)
    p.add_argument("--num-unseen", type=int, default=50)
    p.add_argument("--min-pairs", type=int, default=20, help="minimum pairs (after ties) for a user to be kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", default=None, help="store embeddings from this registered encoder instead of images")


def build_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        out=args.out, source=args.source, split=args.split, max_rows=args.max_rows, num_seen=args.num_seen,
        num_unseen=args.num_unseen, min_pairs=args.min_pairs, seed=args.seed, encoder=args.encoder,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_build_args(p)
    meta = build(**build_kwargs(p.parse_args(argv)))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
