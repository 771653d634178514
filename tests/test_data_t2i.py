"""Text-to-image data builders: Pick-a-Pic, Pick-a-Filter and the offline default dataset."""

from __future__ import annotations

import io
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_scripts import pick_a_filter, pickapic, t2i_default
from data_scripts.images import blue_red_balance, cool_filter, open_rgb, warm_filter
from pal_mm.data import PreferenceData, split_rows_per_user
from pal_mm.splits import dataset_variants, is_dataset_dir, load_dataset, read_meta
from encoders import Encoder, register_encoder

SPLITS = ("seen_train", "seen_val", "seen_test", "unseen")

# --------------------------------------------------------------------------------------------
# fixture: a tiny Pick-a-Pic-schema dataset
# --------------------------------------------------------------------------------------------

#: user -> number of non-tie pairs; with min_pairs=5, num_seen=2, num_unseen=2: a, b seen;
#: c, d unseen; e dropped
USER_PAIRS = {"a": 12, "b": 10, "c": 8, "d": 6, "e": 2}


def _jpeg(rng: random.Random) -> bytes:
    """A 16x16 JPEG of a random greyish colour with some texture."""
    base = np.array([rng.randint(80, 170)] * 3) + np.array([rng.randint(-20, 20) for _ in range(3)])
    arr = np.clip(base + np.random.default_rng(rng.randint(0, 10**6)).integers(-15, 15, (16, 16, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _raw_rows() -> list[dict]:
    """Rows in Pick-a-Pic schema plus ``_winner`` (the bytes of the preferred image); the first
    row is a tie."""
    rng = random.Random(0)
    rows = [{"caption": "a tie", "jpg_0": _jpeg(rng), "jpg_1": _jpeg(rng), "label_0": 0.5, "label_1": 0.5, "user_id": 1}]
    uid = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    for user, n in USER_PAIRS.items():
        for i in range(n):
            img0, img1, first_wins = _jpeg(rng), _jpeg(rng), rng.random() < 0.5
            rows.append({
                "caption": f"prompt {user} {i}", "jpg_0": img0, "jpg_1": img1,
                "label_0": 1.0 if first_wins else 0.0, "label_1": 0.0 if first_wins else 1.0,
                "user_id": uid[user], "_winner": img0 if first_wins else img1,
            })
    return rows


@pytest.fixture(scope="module")
def raw_rows():
    return _raw_rows()


@pytest.fixture(scope="module")
def parquet_source(tmp_path_factory, raw_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("src") / "pickapic.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_winner"} for r in raw_rows]), path)
    return str(path)


BUILD = dict(num_seen=2, num_unseen=2, min_pairs=5, seed=0)


def _read(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in open(out / f"{s}.jsonl")] for s in SPLITS}


def _all(splits: dict[str, list[dict]]) -> list[dict]:
    return [r for s in SPLITS for r in splits[s]]


@pytest.fixture(scope="module")
def pickapic_out(tmp_path_factory, parquet_source):
    out = tmp_path_factory.mktemp("pickapic")
    meta = pickapic.build(out, source=parquet_source, **BUILD)
    return out, meta


# --------------------------------------------------------------------------------------------
# Pick-a-Pic
# --------------------------------------------------------------------------------------------


def test_pickapic_counts_ties_and_users(pickapic_out):
    out, meta = pickapic_out
    assert meta["rows_read"] == 1 + sum(USER_PAIRS.values())
    assert meta["ties_dropped"] == 1
    assert meta["users"] == {"seen": 2, "unseen": 2}
    assert meta["kind"] == "real" and is_dataset_dir(out)
    splits = _read(out)
    assert meta["splits"] == {s: len(splits[s]) for s in SPLITS}
    seen = {r["user_id"] for s in SPLITS[:3] for r in splits[s]}
    unseen = {r["user_id"] for r in splits["unseen"]}
    assert seen == {"1", "2"} and unseen == {"3", "4"}  # most pairs first, disjoint, "e" dropped
    counts = Counter(r["user_id"] for s in SPLITS[:3] for r in splits[s])
    assert counts == {"1": 12, "2": 10}  # the tie of user 1 is gone
    per_split = {s: Counter(r["user_id"] for r in splits[s]) for s in SPLITS[:3]}
    assert [per_split[s]["1"] for s in SPLITS[:3]] == [8, 1, 3]  # 70/10/20 of 12
    assert all(r["prompt"] != "a tie" for r in _all(splits))
    json.loads((out / "meta.json").read_text())


def test_pickapic_label_direction_and_images(pickapic_out, raw_rows):
    out, meta = pickapic_out
    winners = {r["caption"]: r["_winner"] for r in raw_rows if "_winner" in r}
    rows = _all(_read(out))
    for r in rows:
        assert (out / r["chosen"]).read_bytes() == winners[r["prompt"]]  # chosen = label-1 image
        assert (out / r["rejected"]).read_bytes() != winners[r["prompt"]]
        assert r["chosen"].startswith("images/") and r["chosen"].endswith(".jpg")
    used = {r[k] for r in rows for k in ("chosen", "rejected")}
    assert meta["unique_images"] == len(used) == len(list((out / "images").glob("*.jpg")))
    data = PreferenceData.load(out / "seen_train.jsonl")  # the core loader accepts the output
    assert data.item_kind == "image"


def test_pickapic_other_source_formats(tmp_path, raw_rows, pickapic_out):
    """A save_to_disk folder and a JSON-lines file (image paths) give the same pairs."""
    from datasets import Dataset

    clean = [{k: v for k, v in r.items() if k != "_winner"} for r in raw_rows]
    Dataset.from_list(clean).save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "img").mkdir()
    with open(tmp_path / "src.jsonl", "w") as f:
        for i, r in enumerate(clean):
            for k in ("jpg_0", "jpg_1"):
                (tmp_path / "img" / f"{i}_{k}.jpg").write_bytes(r[k])
            f.write(json.dumps({**r, "jpg_0": f"img/{i}_jpg_0.jpg", "jpg_1": f"img/{i}_jpg_1.jpg"}) + "\n")
    expected = _read(pickapic_out[0])
    for src in (tmp_path / "disk", tmp_path / "src.jsonl"):
        out = tmp_path / f"out_{src.name}"
        pickapic.build(out, source=str(src), **BUILD)
        assert _read(out) == expected


def test_pickapic_stores_only_selected_users_images(tmp_path, parquet_source, raw_rows, monkeypatch):
    """Users are selected before any image is stored: the dropped user's and the tie's images
    never reach the image store (not written and pruned later: never written)."""
    from pal_mm.image_store import ImageStore

    stored: list[bytes] = []
    put = ImageStore.put_bytes
    monkeypatch.setattr(ImageStore, "put_bytes", lambda self, data, where="image": stored.append(data) or put(self, data, where))
    pickapic.build(tmp_path / "sel", source=parquet_source, **BUILD)
    dropped = {r[k] for r in raw_rows if r["user_id"] == 5 or r["label_0"] == r["label_1"] for k in ("jpg_0", "jpg_1")}
    kept = {r[k] for r in raw_rows if r["user_id"] in (1, 2, 3, 4) and r["label_0"] != r["label_1"] for k in ("jpg_0", "jpg_1")}
    assert set(stored) == kept and not set(stored) & dropped


def test_pickapic_bad_source_is_one_line_and_leaves_nothing(tmp_path, raw_rows, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{k: v for k, v in r.items() if k != "_winner"} for r in raw_rows]
    rows[7] = {**rows[7], "jpg_1": b"not an image"}
    src = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out"
    argv = ["--out", str(out), "--source", str(src), "--num-seen", "2", "--num-unseen", "2", "--min-pairs", "5"]
    assert pickapic.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.parquet: row 8: column 'jpg_1': not a readable image" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]  # no output, no temporary folder
    rows[7] = {**rows[7], "jpg_1": rows[8]["jpg_1"], "label_0": float("nan")}
    pq.write_table(pa.Table.from_pylist(rows), src)
    assert pick_a_filter.main(argv) == 2
    assert "row 8: column 'label_0': expected a finite number" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert pickapic.main(["--out", str(blocker / "sub"), "--source", str(src)]) == 2  # an unwritable --out
    assert "cannot write" in capsys.readouterr().err


class _MeanColour(Encoder):
    """Fake encoder: a prompt -> [length, 1]; an image -> its mean RGB in [0, 1]."""

    prompt_modality, item_modality = "text", "image"

    def _encode_prompt_batch(self, prompts):
        return torch.tensor([[float(len(p)), 1.0] for p in prompts])

    def _encode_item_batch(self, items):
        return torch.from_numpy(np.stack([np.asarray(open_rgb(p), dtype=np.float32).mean(axis=(0, 1)) / 255.0 for p in items]))


register_encoder("test-mean-colour")(_MeanColour)


def test_pickapic_encoder_writes_embeddings(tmp_path, parquet_source, pickapic_out, raw_rows):
    out = tmp_path / "emb"
    meta = pickapic.build(out, source=parquet_source, encoder="test-mean-colour", **BUILD)
    assert meta["encoder"] == "test-mean-colour"
    assert not (out / "images").exists() and not list(out.glob(".build-*"))  # images were temporary
    emb, ref = _read(out), _read(pickapic_out[0])
    assert {s: len(v) for s, v in emb.items()} == {s: len(v) for s, v in ref.items()}
    winners = {r["caption"]: r["_winner"] for r in raw_rows if "_winner" in r}
    for r_emb, r_ref in zip(_all(emb), _all(ref)):
        assert r_emb["prompt"] == [float(len(r_ref["prompt"])), 1.0]
        mean = np.asarray(Image.open(io.BytesIO(winners[r_ref["prompt"]])).convert("RGB"), dtype=np.float32).mean((0, 1)) / 255
        assert np.allclose(r_emb["chosen"], mean, atol=1e-5)
        assert len(r_emb["rejected"]) == 3
    assert PreferenceData.load(out / "unseen.jsonl").item_kind == "vector"


# --------------------------------------------------------------------------------------------
# Pick-a-Filter
# --------------------------------------------------------------------------------------------


def test_colour_filters_move_balance():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    b = blue_red_balance(img)
    assert blue_red_balance(cool_filter(img)) > b + 0.1
    assert blue_red_balance(warm_filter(img)) < b - 0.1
    assert cool_filter(img).size == img.size and cool_filter(img).mode == "RGB"


def test_plan_is_nested_and_half_half():
    rows = [{"user_id": u} for u in "aaaaaaaabbbbbb"]
    plans = {beta: pick_a_filter.plan_modifications(rows, beta, seed=3) for beta in (0, 0.25, 0.5, 1.0)}
    assert plans[0] == [None] * len(rows)
    assert None not in plans[1.0]
    for lo, hi in ((0.25, 0.5), (0.5, 1.0)):  # modified sets are nested, same side
        assert all(p is None or p == q for p, q in zip(plans[lo], plans[hi]))
    for user, n in (("a", 8), ("b", 6)):
        acts = Counter(p for r, p in zip(rows, plans[1.0]) if r["user_id"] == user)
        assert acts == {"winner": n // 2, "loser": n // 2}
    groups = pick_a_filter.assign_groups(["x", "y", "z", "w", "x"], seed=1)
    assert sorted(groups.values()) == ["cool", "cool", "warm", "warm"]


def _build_filter(tmp_path, source, *betas) -> Path:
    out = tmp_path / "paf"
    assert pick_a_filter.main(["--out", str(out), "--source", source, "--beta", *map(str, betas), "--num-seen", "2",
                               "--num-unseen", "2", "--min-pairs", "5", "--seed", "0"]) == 0
    return out


def _from_root(rows: list[dict]) -> list[dict]:
    """A variant's rows with image paths relative to the root (``../images/x`` -> ``images/x``)."""
    return [{**r, "chosen": r["chosen"].removeprefix("../"), "rejected": r["rejected"].removeprefix("../")} for r in rows]


def test_pick_a_filter_beta_0_changes_nothing(tmp_path, parquet_source, pickapic_out):
    out = _build_filter(tmp_path, parquet_source, 0.0)
    assert list(dataset_variants(out)) == ["beta_0.0"]
    rows, ref = _from_root(_all(_read(out / "beta_0.0"))), _all(_read(pickapic_out[0]))
    assert [{k: v for k, v in r.items() if k != "group"} for r in rows] == ref
    assert {r["group"] for r in rows} == {"cool", "warm"}
    assert read_meta(out / "beta_0.0")["modified_pairs"] == 0


def test_pick_a_filter_beta_1_hits_winner_or_loser(tmp_path, parquet_source, pickapic_out):
    out = _build_filter(tmp_path, parquet_source, 1.0)
    ref_dir = pickapic_out[0]
    rows, ref = _from_root(_all(_read(out / "beta_1.0"))), _all(_read(ref_dir))
    assert len(rows) == len(ref)
    sides = Counter()
    for r, o in zip(rows, ref):
        liked, disliked = pick_a_filter.GROUP_FILTERS[r["group"]]
        changed = [k for k in ("chosen", "rejected") if r[k] != o[k]]
        assert len(changed) == 1  # exactly one image of every pair
        side = changed[0]
        filt = liked if side == "chosen" else disliked
        assert r[side] == pick_a_filter.filtered_path(o[side], filt)
        before, after = blue_red_balance(ref_dir / o[side]), blue_red_balance(out / r[side])
        assert (after > before + 0.05) if filt == "cool" else (after < before - 0.05)
        sides[r["user_id"], side] += 1
    for user, n in (("1", 12), ("2", 10), ("3", 8), ("4", 6)):
        assert sides[user, "chosen"] == sides[user, "rejected"] == n // 2
    assert read_meta(out / "beta_1.0")["modified_pairs"] == len(rows)


def test_builders_output_loads_variant_by_variant(tmp_path, parquet_source, pickapic_out):
    """What the builders write is what the experiments read: pal_mm.splits.load_dataset on every
    variant of Pick-a-Filter (several betas, shared images) and on plain Pick-a-Pic."""
    out = _build_filter(tmp_path, parquet_source, 0.0, 0.5, 1.0)
    root = read_meta(out)
    assert root["kind"] == "real" and root["variants"] == ["beta_0.0", "beta_0.5", "beta_1.0"]
    assert root["users"] == {"seen": 2, "unseen": 2, "cool": 2, "warm": 2}  # the keys of the t2i default's meta
    assert sorted(p.name for p in out.iterdir()) == ["beta_0.0", "beta_0.5", "beta_1.0", "images", "meta.json"]
    variants = dataset_variants(out)
    assert list(variants) == root["variants"]
    for name, directory in variants.items():
        ds = load_dataset(directory)
        assert ds.kind == "real" and ds.meta["beta"] == float(name.removeprefix("beta_"))
        assert {s: len(ds[s]) for s in SPLITS} == ds.meta["splits"] == root["betas"][str(ds.meta["beta"])]["pairs"]
        assert ds["seen_train"].item_kind == "image" and set(ds["unseen"].users) == {"3", "4"}
        assert all(Path(p).parent == (out / "images").resolve() for s in SPLITS for p in ds[s].chosen + ds[s].rejected)
    plain = dataset_variants(pickapic_out[0])
    assert list(plain.values()) == [pickapic_out[0]]
    ds = load_dataset(pickapic_out[0])
    assert ds.kind == "real" and len(ds["seen_train"]) == pickapic_out[1]["splits"]["seen_train"]
    # only the selected users' images were ever stored: 4 users x their pairs, 2 images each
    n_pairs = sum(USER_PAIRS[u] for u in "abcd")
    assert len(list((pickapic_out[0] / "images").glob("*.jpg"))) == 2 * n_pairs


# --------------------------------------------------------------------------------------------
# the offline default dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "quick"
    meta = t2i_default.build(out, seed=0, quick=True, log=lambda *a: None)
    return out, meta


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_counts_and_paths(default_out):
    out, meta = default_out
    assert meta["users"]["seen"] == 20 and meta["users"]["unseen"] == 10
    assert meta["unique_images"] == len(list((out / "images").glob("*.png")))
    assert meta["kind"] == "default" and list(dataset_variants(out)) == [f"beta_{float(b)}" for b in t2i_default.BETAS]
    for beta in t2i_default.BETAS:
        d = out / f"beta_{float(beta)}"
        splits = _read(d)
        assert meta["betas"][str(float(beta))]["pairs"] == {s: len(v) for s, v in splits.items()}
        assert read_meta(d)["beta"] == beta and read_meta(d)["kind"] == "default"
        seen_counts = Counter(r["user_id"] for s in SPLITS[:3] for r in splits[s])
        unseen_counts = Counter(r["user_id"] for r in splits["unseen"])
        assert len(seen_counts) == 20 and len(unseen_counts) == 10 and not set(seen_counts) & set(unseen_counts)
        assert all(60 <= c <= 100 for c in seen_counts.values())
        assert all(c >= 60 for c in unseen_counts.values())
        for r in _all(splits):
            assert r["group"] in ("cool", "warm")
            assert r["chosen"].startswith("../images/") and (d / r["chosen"]).is_file() and (d / r["rejected"]).is_file()
        n_mod = meta["betas"][str(float(beta))]["modified_pairs"]
        assert abs(n_mod / len(_all(splits)) - beta) < 0.02
    data = PreferenceData.load(out / "beta_0.5" / "unseen.jsonl")
    train, test = split_rows_per_user(data.to_rows(), 50, seed=0)
    assert len({r["user_id"] for r in test}) == 10  # n = 50 leaves test pairs for every user
    with Image.open(out / "images" / Path(_read(out / "beta_0.0")["seen_train"][0]["chosen"]).name) as im:
        assert im.size == (224, 224) and im.mode == "RGB"


def test_default_group_preference_at_beta_1(default_out):
    out, _ = default_out
    rows = _all(_read(out / "beta_1.0"))
    paths = {r[k] for r in rows for k in ("chosen", "rejected")}
    balance = {p: blue_red_balance(out / "beta_1.0" / p) for p in paths}  # each image once
    diff = {"cool": [], "warm": []}
    for r in rows:
        diff[r["group"]].append(balance[r["chosen"]] - balance[r["rejected"]])
    assert np.mean(diff["cool"]) > 0.05  # cool users' chosen images are bluer
    assert np.mean(diff["warm"]) < -0.05  # warm users' chosen images are redder


def test_default_population_preference(default_out):
    """At beta = 0 the image matching the caption wins about 90 % of the mismatched pairs."""
    out, _ = default_out
    photo_of = {c: Path(p).stem for p, (_, caps) in t2i_default.PHOTOS.items() for c in caps}
    def photo(path):
        return re.match(r"(.+)_\d{3}_", Path(path).name).group(1)

    wins = [photo(r["chosen"]) == photo_of[r["prompt"]]
            for r in _all(_read(out / "beta_0.0")) if photo(r["chosen"]) != photo(r["rejected"])]
    assert 0.8 < np.mean(wins) < 0.97


def test_default_is_deterministic_and_cached(default_out, tmp_path):
    out, meta = default_out
    other = tmp_path / "again"
    t2i_default.build(other, seed=0, quick=True, log=lambda *a: None)
    assert _files(other) == _files(out)
    victim = next((other / "images").glob("*_cool.png"))
    victim.write_bytes(b"corrupt")
    t0 = time.time()
    t2i_default.build(other, seed=0, quick=True, log=lambda *a: None)
    assert time.time() - t0 < 5
    assert _files(other) == _files(out)  # the corrupted file was rebuilt, the rest reused
