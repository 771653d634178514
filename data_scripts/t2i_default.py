"""The offline default text-to-image dataset: Pick-a-Filter on photos that ship with packages.

Nothing is downloaded. The photos are the natural images bundled with scikit-image
(``skimage.data``), scikit-learn (``load_sample_image``) and matplotlib (``grace_hopper.jpg``),
twelve in all, each with three hand-written captions (:data:`PHOTOS`).

**Candidate "generations".** Each photo gets ``n_variants`` 224x224 RGB PNG variants: variant 0
is the clean centre square; every other one is a random crop / zoom followed by one degradation
(Gaussian blur, Gaussian pixel noise or JPEG compression) at a random level ``d`` in
[0.05, 1]. A variant's latent quality is ``1 - d`` (1 for the clean one).

**Population preference (shared by all users).** A pair is a caption plus two candidates: either
two variants of the caption's photo, or (with probability ``MISMATCH_PROB``) one of them and one
of another photo. Score = ``MATCH_BONUS * [photo matches the caption] + quality``: the matching
image always beats a non-matching one, and the cleaner of two matching images wins. The winner is
then swapped with probability ``LABEL_NOISE`` (label noise).

**Group preference.** On top, :mod:`data_scripts.pick_a_filter` assigns each user to ``cool``
or ``warm`` (seeded, balanced) and filters a fraction beta of each user's pairs, for beta in
:data:`BETAS`. Base candidates are shared between betas; the modified pairs are nested in beta so
each filtered image is made once.

**Users.** 60 seen users (60-100 pairs each, split 70/10/20 train/val/test per user) and 30 unseen
users (80-100 pairs each, so that n in 1, 2, 5, 10, 20, 50 few-shot pairs leaves test pairs);
``--quick`` makes 20 seen / 10 unseen users and far fewer images (for tests).

Output: a data set with one variant per beta (:mod:`pal_mm.splits`; image paths relative to each
jsonl file), written by :func:`data_scripts.pick_a_filter.write_variants` like Pick-a-Filter's::

    OUT/images/*.png               (shared; manifest.json holds their SHA-256)
    OUT/beta_{0.0,0.25,0.5,0.75,1.0}/{seen_train,seen_val,seen_test,unseen}.jsonl + meta.json ("beta")
    OUT/meta.json                  ("kind": "default", "variants": [...])

The build is deterministic (same seed, same files). Images are cached: a rebuild re-creates
only missing or corrupted files, so a second run takes seconds.

    python -m data_scripts.t2i_default --out data/t2i_default [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pal_mm.image_store import ImageStore

from . import pick_a_filter
from .cli import run_builder
from .images import add_noise, crop_zoom, gaussian_blur, jpeg_degrade, open_rgb, png_bytes, to_rgb

DEFAULT_OUT = "data/t2i_default"
BETAS = pick_a_filter.BETAS
IMAGE_SIZE = 224
MATCH_BONUS = 2.0
MISMATCH_PROB = 0.5
LABEL_NOISE = 0.1
DEGRADATIONS = ("blur", "noise", "jpeg")

#: photo name -> (package it ships in, three captions)
PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "astronaut": ("skimage", (
        "portrait of a smiling astronaut in an orange spacesuit",
        "an astronaut posing with her helmet in front of the american flag",
        "official NASA photo of a female astronaut next to a space shuttle model",
    )),
    "chelsea": ("skimage", (
        "close-up of a tabby cat with green eyes",
        "a ginger cat with long white whiskers",
        "portrait of a curious domestic cat",
    )),
    "coffee": ("skimage", (
        "a cup of espresso on a red saucer",
        "top view of a coffee cup with a spoon on a wooden table",
        "a red cup of coffee with crema",
    )),
    "rocket": ("skimage", (
        "a rocket on the launch pad at dusk",
        "a space rocket between launch towers under a deep blue sky",
        "a rocket ready for launch lit by floodlights",
    )),
    "hubble_deep_field": ("skimage", (
        "a deep field image of thousands of distant galaxies",
        "colourful galaxies scattered across black space",
        "the night sky full of stars and galaxies",
    )),
    "immunohistochemistry": ("skimage", (
        "a microscope image of stained tissue",
        "a histology slide with brown and blue stained cells",
        "immunohistochemistry of glandular tissue under a microscope",
    )),
    "retina": ("skimage", (
        "a fundus photograph of a human retina",
        "the back of an eye with red blood vessels",
        "an orange retina image with the optic disc",
    )),
    "camera": ("skimage", (
        "a black and white photo of a man with a camera on a tripod",
        "a photographer taking a picture on a lawn",
        "vintage monochrome photo of a cameraman",
    )),
    "coins": ("skimage", (
        "a collection of old coins on a dark background",
        "black and white photo of ancient coins in rows",
        "rows of worn silver coins",
    )),
    "china.jpg": ("sklearn", (
        "a traditional chinese pagoda on a hill",
        "a colourful chinese temple tower above a lake",
        "an ornate tower surrounded by green trees",
    )),
    "flower.jpg": ("sklearn", (
        "an orange dahlia flower in a garden",
        "close-up of a blooming orange flower against green leaves",
        "a dahlia in full bloom",
    )),
    "grace_hopper.jpg": ("matplotlib", (
        "portrait of a navy officer in uniform in front of the american flag",
        "an elderly woman in a navy uniform and cap",
        "official portrait of rear admiral grace hopper",
    )),
}


@dataclass(frozen=True)
class Config:
    """Sizes of the build; :meth:`default` and :meth:`quick` are the two presets."""

    num_seen: int
    num_unseen: int
    n_variants: int
    seen_pairs: tuple[int, int]
    unseen_pairs: tuple[int, int]

    @classmethod
    def default(cls) -> "Config":
        return cls(num_seen=60, num_unseen=30, n_variants=50, seen_pairs=(60, 100), unseen_pairs=(80, 100))

    @classmethod
    def quick(cls) -> "Config":
        return cls(num_seen=20, num_unseen=10, n_variants=6, seen_pairs=(60, 100), unseen_pairs=(80, 100))


@dataclass(frozen=True)
class Variant:
    """Recipe of one candidate image: crop (``frac``, ``cx``, ``cy``), one degradation of
    ``kind`` at ``level`` d, and the latent ``quality = 1 - d``."""

    photo: str
    index: int
    frac: float
    cx: float
    cy: float
    kind: str
    level: float

    @property
    def quality(self) -> float:
        return 1.0 - self.level

    @property
    def file_name(self) -> str:
        """Name derived from the recipe, so a changed recipe never reuses a stale file."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{Path(self.photo).stem}_{self.index:03d}_{digest}.png"


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def load_photo(name: str) -> Image.Image:
    """One of :data:`PHOTOS` as an RGB image, from the package that bundles it."""
    package = PHOTOS[name][0]
    if package == "skimage":
        import skimage.data

        return to_rgb(getattr(skimage.data, name)())
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return to_rgb(load_sample_image(name))
    from matplotlib import cbook

    return open_rgb(cbook.get_sample_data(name, asfileobj=False))


def make_variants(seed: int, n_variants: int) -> list[Variant]:
    """The candidate recipes, ``n_variants`` per photo (variant 0 is clean)."""
    variants = []
    for p, photo in enumerate(PHOTOS):
        for v in range(n_variants):
            if v == 0:
                variants.append(Variant(photo, 0, 1.0, 0.5, 0.5, "clean", 0.0))
                continue
            rng = np.random.default_rng([seed, p, v])
            frac, cx, cy = (round(float(x), 4) for x in (rng.uniform(0.6, 1.0), rng.uniform(), rng.uniform()))
            kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
            variants.append(Variant(photo, v, frac, cx, cy, kind, round(float(rng.uniform(0.05, 1.0)), 4)))
    return variants


def render_variant(var: Variant, seed: int) -> Image.Image:
    """Draw a candidate: crop / zoom to 224x224, then the degradation at its level ``d``:
    blur sigma ``0.3 + 3.5 d`` px, noise sigma ``5 + 40 d`` (0-255 scale), or JPEG quality
    ``round(60 - 55 d)``."""
    img = crop_zoom(load_photo(var.photo), var.frac, var.cx, var.cy, IMAGE_SIZE)
    d = var.level
    if var.kind == "blur":
        return gaussian_blur(img, 0.3 + 3.5 * d)
    if var.kind == "noise":
        return add_noise(img, 5.0 + 40.0 * d, seed=[seed, list(PHOTOS).index(var.photo), var.index])
    if var.kind == "jpeg":
        return jpeg_degrade(img, int(round(60 - 55 * d)))
    return img


# --------------------------------------------------------------------------------------------
# users and pairs
# --------------------------------------------------------------------------------------------


def make_users(cfg: Config, seed: int) -> tuple[dict[str, int], list[str], list[str]]:
    """User ids with their pair counts, seen ids and unseen ids."""
    rng = random.Random(f"users:{seed}")
    seen = [f"u{i:03d}" for i in range(cfg.num_seen)]
    unseen = [f"u{i:03d}" for i in range(cfg.num_seen, cfg.num_seen + cfg.num_unseen)]
    counts = {u: rng.randint(*cfg.seen_pairs) for u in seen}
    counts.update({u: rng.randint(*cfg.unseen_pairs) for u in unseen})
    return counts, seen, unseen


def make_pairs(user: str, n: int, variants: list[Variant], seed: int) -> list[dict]:
    """``n`` labelled pairs for one user under the shared population preference."""
    rng = random.Random(f"pairs:{seed}:{user}")
    by_photo: dict[str, list[Variant]] = {}
    for v in variants:
        by_photo.setdefault(v.photo, []).append(v)
    captions = [(photo, c) for photo, (_, caps) in PHOTOS.items() for c in caps]
    rows = []
    for _ in range(n):
        photo, caption = rng.choice(captions)
        if rng.random() < MISMATCH_PROB:
            a = rng.choice(by_photo[photo])
            b = rng.choice(by_photo[rng.choice([p for p in by_photo if p != photo])])
        else:
            a, b = rng.sample(by_photo[photo], 2)

        def score(v: Variant) -> float:
            return MATCH_BONUS * (v.photo == photo) + v.quality

        win, lose = (a, b) if score(a) > score(b) else (b, a)
        if rng.random() < LABEL_NOISE:
            win, lose = lose, win
        rows.append({"user_id": user, "prompt": caption, "chosen": f"images/{win.file_name}", "rejected": f"images/{lose.file_name}"})
    return rows


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


def build(out: str | Path = DEFAULT_OUT, seed: int = 0, quick: bool = False, log=print) -> dict:
    """Build (or refresh) the dataset in ``out``; returns the meta dict."""
    t0 = time.time()
    out = Path(out)
    cfg = Config.quick() if quick else Config.default()
    variants = make_variants(seed, cfg.n_variants)
    counts, seen, unseen = make_users(cfg, seed)
    rows = [r for u in seen + unseen for r in make_pairs(u, counts[u], variants, seed)]
    groups = pick_a_filter.assign_groups(counts, seed)

    store = ImageStore(out / "images")
    used_base = {Path(r[k]).name for r in rows for k in ("chosen", "rejected")}
    for var in variants:
        if var.file_name in used_base:
            store.ensure(var.file_name, lambda var=var: png_bytes(render_variant(var, seed)))
    n_base = len(used_base)

    beta_variants, jobs = pick_a_filter.filter_variants(rows, BETAS, seed, groups, store, out)
    store.prune(used_base | {Path(dst).name for _, _, dst in jobs})
    store.save_manifest()

    meta = {
        "name": "t2i_default",
        "kind": "default",
        "seed": seed,
        "quick": quick,
        "config": asdict(cfg),
        "photos": list(PHOTOS),
        "captions": sum(len(c) for _, c in PHOTOS.values()),
        "image_size": IMAGE_SIZE,
        "population_preference": {"match_bonus": MATCH_BONUS, "mismatch_prob": MISMATCH_PROB, "label_noise": LABEL_NOISE},
        "users": {
            "seen": len(seen),
            "unseen": len(unseen),
            "cool": sum(g == "cool" for g in groups.values()),
            "warm": sum(g == "warm" for g in groups.values()),
        },
        "unique_images": len(store.manifest),
        "base_images": n_base,
        "filtered_images": len(jobs),
    }
    pick_a_filter.write_variants(out, beta_variants, seen, seed, meta)
    meta = json.loads((out / "meta.json").read_text())
    log(f"t2i_default: {len(store.manifest)} images ({store.created} made, {store.reused} reused), "
        f"{len(rows)} pairs per beta, {len(seen)} seen + {len(unseen)} unseen users -> {out} in {time.time() - t0:.1f}s")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small version for tests (20 seen / 10 unseen users)")
    args = p.parse_args(argv)
    return run_builder(lambda: build(args.out, args.seed, args.quick))


if __name__ == "__main__":
    sys.exit(main())
