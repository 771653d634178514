"""The text-to-image data, read through :mod:`pal_mm.splits`: one dataset directory per variant.

Layouts read (image paths are relative to each split file, as in every dataset directory):

* **variants** (the offline default, Pick-a-Filter builds): ``ROOT/meta.json`` names its variants
  (``"variants": ["beta_0.0", "beta_0.25", ...]``, sub-folder names); each is a dataset directory
  whose ``meta.json`` carries ``"beta"``. Older builds of the default wrote only the root
  ``meta.json``: then every ``beta_<float>/`` sub-folder with the four split files is a variant.
* **one dataset directory** (a plain Pick-a-Pic build): run as a single variant.

A variant's key is ``str(float(beta))`` when its beta is known (``"0.25"``), else its folder name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pal_mm.splits import SPLITS, Dataset, is_dataset_dir, load_dataset, read_meta


@dataclass
class Variant:
    key: str
    beta: float | None
    dataset: Dataset


def _has_splits(d: Path) -> bool:
    return all((d / f"{s}.jsonl").is_file() for s in SPLITS)


def variant_dirs(root: Path) -> list[tuple[Path, float | None]]:
    """(directory, beta) of every variant under ``root``, in the order the data names them
    (legacy ``beta_*`` folders: by beta)."""
    if is_dataset_dir(root):
        return [(root, _beta(read_meta(root)))]
    meta = read_meta(root)
    if "variants" in meta:
        dirs = [root / str(v) for v in meta["variants"]]
        missing = [str(d) for d in dirs if not _has_splits(d)]
        if missing:
            raise SystemExit(f"error: {root / 'meta.json'}: variant folder(s) without the four split files: {', '.join(missing)}")
        return [(d, _beta(read_meta(d), d)) for d in dirs]
    legacy = sorted((d for d in root.glob("beta_*") if _has_splits(d)), key=lambda d: float(d.name[len("beta_"):]))
    if not legacy:
        raise SystemExit(f"error: {root}: neither a dataset directory nor a folder of variants (meta.json 'variants' or beta_*/)")
    return [(d, float(d.name[len("beta_"):])) for d in legacy]


def _beta(meta: dict, d: Path | None = None) -> float | None:
    if "beta" in meta:
        return float(meta["beta"])
    if d is not None and d.name.startswith("beta_"):
        return float(d.name[len("beta_"):])
    return None


def load_variants(root: Path, keys: list[str] | None = None) -> list[Variant]:
    """The variants of ``root`` (only ``keys`` when given and the data has several), loaded and validated."""
    found = [(d, b, str(float(b)) if b is not None else d.name) for d, b in variant_dirs(root)]
    if keys is not None and len(found) > 1:
        unknown = sorted(set(keys) - {k for _, _, k in found})
        if unknown:
            raise SystemExit(f"error: {root}: no variant(s) {unknown}; the data has {[k for _, _, k in found]}")
        found = [f for f in found if f[2] in keys]
    return [Variant(key, beta, load_dataset(d)) for d, beta, key in found]


def ensure_data(path: Path, quick: bool, seed: int, log: Callable[[str], None]) -> Path:
    """Build the offline default into ``path`` when it holds no data; refuse a default of the other size."""
    meta = read_meta(path)
    if not meta and not is_dataset_dir(path):
        from data_scripts import t2i_default

        log(f"building {path} (quick={quick}) ...")
        t2i_default.build(path, seed=seed, quick=quick, log=log)
        meta = read_meta(path)
    if "quick" in meta and bool(meta["quick"]) != bool(quick):
        raise SystemExit(f"{path} holds the {'quick' if meta['quick'] else 'full'} dataset; "
                         f"pass --data DIR for the {'quick' if quick else 'full'} one")
    return path


def describe(root: Path, variants: list[Variant]) -> dict:
    """Users, groups, images and pairs per split of the loaded data (for details.json and results.md)."""
    first = variants[-1].dataset
    groups = {**first["seen_train"].user_groups(), **first["unseen"].user_groups()}
    counts = {g: sum(x == g for x in groups.values()) for g in sorted(set(groups.values()))}
    images = {tuple(x) if isinstance(x, list) else x for v in variants for s in SPLITS
              for x in (*v.dataset[s].chosen, *v.dataset[s].rejected)}
    meta = read_meta(root)

    def extra(v: Variant) -> dict:  # what the builder counted (legacy: the root meta's "betas" block)
        vm = {**meta.get("betas", {}).get(v.key, {}), **v.dataset.meta}
        return {k: vm[k] for k in ("modified_pairs", "filtered_images") if k in vm}

    return {
        "dir": str(root),
        "kind": first.kind,
        "users": {"seen": len(first["seen_train"].users), "unseen": len(first["unseen"].users), **counts},
        "unique_images": meta.get("unique_images", len(images)),
        "pairs": {v.key: {"pairs": {s: len(v.dataset[s]) for s in SPLITS}, **extra(v)} for v in variants},
    }
