"""pal_mm.splits: dataset directories, data sets with variants, meta.json."""

from __future__ import annotations

import json

import pytest

from pal_mm.errors import DataError
from pal_mm.splits import (SPLITS, dataset_variants, is_dataset_dir, load_dataset, load_variants, read_meta, write_dataset,
                           write_variants_meta)

ROW = {"user_id": "u", "prompt": [0.0, 1.0], "chosen": [1.0, 0.0], "rejected": [0.5, 0.5]}


def splits(n: int = 2) -> dict[str, list[dict]]:
    return {s: [dict(ROW, user_id=f"{s}{i}") for i in range(n)] for s in SPLITS}


def test_write_and_load_a_dataset_directory(tmp_path):
    d = write_dataset(tmp_path / "d", splits(), {"name": "x", "kind": "default"}, extra_files={"unseen_n1_train.jsonl": [ROW]})
    assert is_dataset_dir(d) and (d / "unseen_n1_train.jsonl").is_file()
    meta = read_meta(d)
    assert meta == {"kind": "default", "name": "x", "splits": {s: 2 for s in SPLITS}}
    ds = load_dataset(d)
    assert ds.kind == "default" and ds["unseen"].users == ["unseen0", "unseen1"]
    assert read_meta(write_dataset(tmp_path / "c", splits(), {"name": "y"}))["kind"] == "custom"  # the default kind
    with pytest.raises(DataError, match="meta kind 'synthetic'"):
        write_dataset(tmp_path / "e", splits(), {"kind": "synthetic"})
    with pytest.raises(DataError, match="unknown split"):
        write_dataset(tmp_path / "e", {"train": []}, {})


def test_rewriting_removes_the_old_meta_first(tmp_path, monkeypatch):
    d = write_dataset(tmp_path / "d", splits(), {"kind": "real"})
    import pal_mm.splits as sp

    def broken(path, rows):  # the disk fills up while the splits are rewritten
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sp, "write_jsonl", broken)
    with pytest.raises(OSError):
        write_dataset(d, splits(3), {"kind": "real"})
    assert not is_dataset_dir(d)  # no meta.json: the half-written directory does not pass as complete


def test_variants(tmp_path):
    root = tmp_path / "root"
    for beta in (0.0, 0.5):
        write_dataset(root / f"beta_{beta}", splits(), {"kind": "real", "beta": beta})
    write_variants_meta(root, ["beta_0.0", "beta_0.5"], {"name": "paf", "kind": "real"})
    assert read_meta(root)["variants"] == ["beta_0.0", "beta_0.5"] and not is_dataset_dir(root)
    variants = dataset_variants(root)
    assert variants == {"beta_0.0": root / "beta_0.0", "beta_0.5": root / "beta_0.5"}
    loaded = load_variants(root, splits=("seen_train",))
    assert [ds.meta["beta"] for ds in loaded.values()] == [0.0, 0.5] and list(loaded["beta_0.5"].splits) == ["seen_train"]
    plain = write_dataset(tmp_path / "plain", splits(), {"kind": "custom"})
    assert dataset_variants(plain) == {"plain": plain}  # a plain directory is its own single variant
    with pytest.raises(DataError, match="not complete dataset directories"):
        write_variants_meta(root, ["beta_0.0", "beta_1.0"], {"kind": "real"})
    (root / "meta.json").write_text(json.dumps({"variants": ["../plain"]}))
    with pytest.raises(DataError, match="'variants' must be a list of sub-folder names"):
        dataset_variants(root)
    (root / "meta.json").write_text(json.dumps({"variants": ["beta_0.0", "gone"]}))
    with pytest.raises(DataError, match="variant\\(s\\) gone are not complete"):
        dataset_variants(root)
    with pytest.raises(DataError, match="neither a dataset directory nor a folder of variants"):
        dataset_variants(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"{not json", "invalid JSON"), (b'{"a": 1, "a": 2}', "duplicate key"), (b"\xff\xfe", "invalid JSON"),
    (b"[" * 5000, "invalid JSON"), (b"[1, 2]", "expected a JSON object"),
])
def test_bad_meta_json(tmp_path, content, message):
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_meta(tmp_path)
    assert len(str(e.value).splitlines()) == 1
    assert read_meta(tmp_path / "nowhere") == {}
