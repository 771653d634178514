"""The benchmark's data sets: which are present, how they are loaded and encoded (once, through the
embedding cache, the same vectors for every method), and the candidate sets of the best-of-N check.

Data-set entries of ``config.yaml`` (``datasets: {name: spec}``):

* ``kind: synthetic``: generated in memory by :mod:`data_scripts.synthetic` (``k_true`` prototypes on
  the unit sphere, Dirichlet users, Bradley-Terry label noise; one population per data set, seed
  ``data_seed``); the Bayes rule of the true model is scored on the same test pairs (``oracle``).
* ``kind: dir``: a dataset directory (:mod:`pal_mm.splits`) encoded with ``encoder``. ``build:
  summary_default | t2i_default`` builds an offline default when it is missing; any other entry is used
  only when its directory exists (the real data sets, written by ``data_scripts`` with Hub access). A
  folder of variants (Persona: one per K*) becomes one data set per variant (``NAME/VARIANT``);
  ``variant:`` keeps one.
* ``downstream: summary_length | t2i_filter``: the candidate sets of the best-of-N check (see
  :mod:`experiments.benchmark.downstream`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from data_scripts import synthetic
from pal_mm.data import PreferenceData
from pal_mm.embedding import EncodedPairs, encode_data, encode_values
from pal_mm.splits import SPLITS, dataset_variants, load_dataset

from ..common import ROOT, repo_path


@dataclass
class Candidates:
    """Best-of-N sets: ``prompts`` (S, dp), ``items`` (S, N, di), ``best[group]`` (S,) the index of the
    candidate that group's ground truth prefers, ``keys`` (S,) a prompt key per set (a user's own
    training prompts are left out for them)."""

    prompts: torch.Tensor
    items: torch.Tensor
    best: dict[str, torch.Tensor]
    keys: list[str]
    rule: str


@dataclass
class BenchData:
    """One data set, encoded: the four splits as :class:`EncodedPairs`, every user's group, the
    few-shot protocol (``ns``, ``test_pairs``), the oracle (synthetic data) and best-of-N candidates."""

    name: str
    kind: str
    description: str
    splits: dict[str, EncodedPairs]
    groups: dict[str, str]
    ns: list[int]
    test_pairs: int | None
    oracle: dict | None = None
    candidates: Candidates | None = None
    prompt_keys: dict[str, list[str]] = field(default_factory=dict)  # split -> prompt key per row

    @property
    def dims(self) -> tuple[int, int]:
        return self.splits["seen_train"].prompt.shape[1], self.splits["seen_train"].chosen.shape[1]

    def sizes(self) -> dict:
        return {s: {"pairs": len(p), "users": len(set(p.user_ids))} for s, p in self.splits.items()}


# --------------------------------------------------------------------------------------------
# synthetic mixtures
# --------------------------------------------------------------------------------------------
def synthetic_data(name: str, spec: dict, protocol: dict) -> BenchData:
    """A ground-truth ideal-point mixture with ``spec["k_true"]`` prototypes, encoded (vectors)."""
    k, dim, seed = int(spec["k_true"]), int(spec.get("dim", 16)), int(spec.get("data_seed", 0))
    n_seen, n_new = int(spec.get("seen_users", 40)), int(spec.get("unseen_users", 30))
    protos, w = synthetic.make_population(k, dim, n_seen + n_new, seed, alpha=float(spec.get("alpha", 0.3)))
    kw = {"prompt_dim": int(spec.get("prompt_dim", 8)), "beta": float(spec.get("beta", 20.0))}
    s = 1000 * seed
    rows = {
        "seen_train": synthetic.make_pairs(protos, w[:n_seen], int(spec.get("train_pairs", 60)), s + 1, **kw),
        "seen_val": synthetic.make_pairs(protos, w[:n_seen], int(spec.get("val_pairs", 15)), s + 2, **kw),
        "seen_test": synthetic.make_pairs(protos, w[:n_seen], int(spec.get("seen_test_pairs", 25)), s + 3, **kw),
        "unseen": synthetic.make_pairs(protos, w[n_seen:], int(spec.get("unseen_pairs", 80)), s + 4, user_prefix="new", **kw),
    }
    from encoders import create_encoder

    enc = create_encoder("precomputed")
    data = {sp: PreferenceData.from_rows(r, source=f"{name}:{sp}") for sp, r in rows.items()}
    splits = {sp: encode_data(enc, d) for sp, d in data.items()}
    ideal = {**synthetic.ideal_points_by_id(protos, w[:n_seen]), **synthetic.ideal_points_by_id(protos, w[n_seen:], "new")}
    oracle = {}
    for sp in ("seen_test", "unseen"):
        p = splits[sp]
        correct, expected = synthetic.bayes_correct(ideal, p.user_ids, p.chosen.numpy(), p.rejected.numpy(), kw["beta"])
        oracle[sp] = {"accuracy": float(correct.mean()), "expected": expected}
    desc = (f"synthetic ideal-point mixture, K* = {k}: {n_seen} seen / {n_new} new users, {dim}-d items on the sphere, "
            f"noise prompts, Bradley-Terry labels (beta {kw['beta']:g})")
    return BenchData(name, "synthetic", desc, splits, _groups(data), *_protocol(protocol, spec), oracle=oracle)


# --------------------------------------------------------------------------------------------
# dataset directories
# --------------------------------------------------------------------------------------------
def _groups(data: dict[str, PreferenceData]) -> dict[str, str]:
    return {u: g for d in data.values() for u, g in d.user_groups().items()}


def _protocol(protocol: dict, spec: dict) -> tuple[list[int], int | None]:
    p = {**protocol, **spec.get("unseen", {})}
    return [int(n) for n in p["ns"]], (None if p.get("test_pairs") is None else int(p["test_pairs"]))


def ensure_built(spec: dict, log: Callable[[str], None]) -> Path | None:
    """The data set's folder; an offline default (``build``) is built when missing; None when absent."""
    root = repo_path(spec["dir"])
    if (root / "meta.json").is_file():
        return root
    build = spec.get("build")
    if build == "summary_default":
        from data_scripts import summary_default

        log(f"building {root} (data_scripts.summary_default)")
        summary_default.build(str(root))
    elif build == "t2i_default":
        from data_scripts import t2i_default

        log(f"building {root} (data_scripts.t2i_default)")
        t2i_default.build(root, seed=0, quick=bool(spec.get("quick_data", False)), log=log)
    else:
        return None
    return root


def dir_data(name: str, spec: dict, protocol: dict, encoder_factory, cache, log) -> list[BenchData]:
    """Every variant of one dataset directory (or folder of variants), encoded; [] when absent."""
    root = ensure_built(spec, log)
    if root is None:
        return []
    variants = dataset_variants(root)
    if spec.get("variant"):
        variants = {spec["variant"]: variants[spec["variant"]]}
    encoder = encoder_factory(spec["encoder"], spec.get("encoder_args", {}))
    out = []
    for vname, vdir in variants.items():
        ds = load_dataset(vdir)
        full = name if len(variants) == 1 else f"{name}/{vname}"
        splits = {s: encode_data(encoder, ds[s], cache) for s in SPLITS}
        kind = {"default": "default", "real": "real"}.get(ds.kind, "custom")
        where = vdir.relative_to(ROOT) if vdir.is_relative_to(ROOT) else vdir
        desc = f"{ds.meta.get('name', vdir.name)} ({kind}, {where}), encoder {spec['encoder']}"
        bench = BenchData(full, kind, desc, splits, _groups(ds.splits), *_protocol(protocol, spec),
                          prompt_keys={s: [str(p) for p in ds[s].prompts] for s in SPLITS})
        rule = spec.get("downstream")
        if rule == "summary_length":
            bench.candidates = summary_candidates(ds.splits, encoder, cache)
        elif rule == "t2i_filter":
            bench.candidates = t2i_candidates(vdir, encoder, cache, int(spec.get("downstream_sets", 150)))
        out.append(bench)
        log(f"{full}: " + ", ".join(f"{s} {v['pairs']} ({v['users']} users)" for s, v in bench.sizes().items()))
    return out


# --------------------------------------------------------------------------------------------
# best-of-N candidate sets
# --------------------------------------------------------------------------------------------
def summary_sets(data: dict[str, PreferenceData]) -> list[tuple[str, list[str], int, int]]:
    """(post, its four candidate summaries, index of the longest, index of the shortest) for every
    test-pool post (seen_test and unseen prompts) whose four candidates have distinct lengths."""
    responses: dict[str, set[str]] = {}
    for d in data.values():
        for p, c, r in zip(d.prompts, d.chosen, d.rejected):
            responses.setdefault(p, set()).update((c, r))
    sets = []
    for p in sorted(set(data["seen_test"].prompts) | set(data["unseen"].prompts)):
        cands = sorted(responses[p])
        lengths = [len(c) for c in cands]
        if len(cands) == 4 and len(set(lengths)) == 4:
            sets.append((p, cands, lengths.index(max(lengths)), lengths.index(min(lengths))))
    return sets


def summary_candidates(data: dict[str, PreferenceData], encoder, cache) -> Candidates:
    """:func:`summary_sets`, encoded: the majority's best is the longest summary, the minority's the
    shortest (the data's length rule)."""
    sets = summary_sets(data)
    prompts = encode_values(encoder, [p for p, *_ in sets], "prompt", cache)
    items = encode_values(encoder, [c for _, cands, *_ in sets for c in cands], "item", cache).reshape(len(sets), 4, -1)
    best = {"majority": torch.tensor([b for *_, b, _ in sets]), "minority": torch.tensor([b for *_, b in sets])}
    return Candidates(prompts, items, best, [p for p, *_ in sets], "summary_length")


_IMAGE = re.compile(r"^(?P<stem>.+)_\d{3}_[0-9a-f]{10}\.png$")


def t2i_sets(variant_dir: Path, max_sets: int) -> list[tuple[str, list[str]]]:
    """(caption, [plain, cool-filtered, warm-filtered] image paths) for base images that exist in all
    three versions (up to ``max_sets``: a seeded choice, in name order); the caption is the first one
    of the image's photo."""
    from data_scripts.t2i_default import PHOTOS

    captions = {Path(photo).stem: caps[0] for photo, (_, caps) in PHOTOS.items()}
    images = (variant_dir / ".." / "images").resolve()
    bases = []
    for f in sorted(images.glob("*.png")):
        m = _IMAGE.match(f.name)
        if m and m["stem"] in captions and (images / f"{f.stem}_cool.png").is_file() and (images / f"{f.stem}_warm.png").is_file():
            bases.append((captions[m["stem"]], f))
    random.Random(0).shuffle(bases)
    bases = sorted(bases[:max_sets], key=lambda b: b[1].name)
    return [(c, [str(images / f"{f.stem}{suffix}.png") for suffix in ("", "_cool", "_warm")]) for c, f in bases]


def t2i_candidates(variant_dir: Path, encoder, cache, max_sets: int) -> Candidates:
    """:func:`t2i_sets`, encoded: a cool user's best is the cool version, a warm user's the warm one
    (the Pick-a-Filter rule of the data)."""
    sets = t2i_sets(variant_dir, max_sets)
    prompts = encode_values(encoder, [c for c, _ in sets], "prompt", cache)
    items = encode_values(encoder, [p for _, paths in sets for p in paths], "item", cache).reshape(len(sets), 3, -1)
    n = len(sets)
    best = {"cool": torch.full((n,), 1), "warm": torch.full((n,), 2)}
    return Candidates(prompts, items, best, [c for c, _ in sets], "t2i_filter")


# --------------------------------------------------------------------------------------------
def load_all(cfg: dict, log, encoder_factory, cache, only: set[str] | None = None) -> list[BenchData]:
    """Every data set of the config that is present (in config order)."""
    out = []
    only = only or set(cfg.get("run") or ())
    for name, spec in cfg["datasets"].items():
        if only and name not in only:
            continue
        if spec["kind"] == "synthetic":
            out.append(synthetic_data(name, spec, cfg["unseen"]))
        elif spec["kind"] == "dir":
            found = dir_data(name, spec, cfg["unseen"], encoder_factory, cache, log)
            if not found:
                log(f"{name}: {spec['dir']} is absent (skipped; build it with data_scripts)")
            out += found
        else:
            raise SystemExit(f"error: data set {name}: unknown kind {spec['kind']!r} (synthetic or dir)")
    return out
