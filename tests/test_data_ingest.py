"""pal_mm.ingest (the one reader, the Hub-name rule, the tie rule), pal_mm.image_store and the
strict validation of pal_mm.data: every bad file is one DataError line naming file, row/line
and column."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from pal_mm.data import PreferenceData
from pal_mm.errors import DataError
from pal_mm.image_store import ImageStore, image_bytes
from pal_mm.ingest import is_hub_name, iter_rows, pickapic_winner, read_rows, source_kind

V = [0.5, -1.0, 2.0]
ROW = {"user_id": "u1", "prompt": V, "chosen": V, "rejected": V}


def load_text(tmp_path, text: str | bytes, name="d.jsonl") -> PreferenceData:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return PreferenceData.load(path)


def lines(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def fails(tmp_path, text, message, name="d.jsonl"):
    with pytest.raises(DataError) as e:
        load_text(tmp_path, text, name)
    msg = str(e.value)
    assert message in msg and len(msg.splitlines()) == 1 and name in msg, msg
    return msg


# ----- local path or Hub name -----------------------------------------------------------------
@pytest.mark.parametrize("text, hub", [
    ("yuvalkirstain/pickapic_v2", True), ("imdb", True), ("owner/name:validation", True), ("owner/name:train[:10%]", True),
    ("./data.jsonl", False), ("/abs/x", False), ("~/x", False), ("data/sub/x", False), ("x.parquet", False),
    ("a\\b", False), ("owner/na me", False), ("-bad/name", False), ("owner/..", False), ("", False),
])
def test_hub_name_rule(text, hub):
    assert is_hub_name(text) is hub


def test_source_kind(tmp_path):
    (tmp_path / "f.jsonl").write_text(lines(ROW))
    assert source_kind(tmp_path / "f.jsonl") == "file" and source_kind(tmp_path) == "dir"
    assert source_kind("owner/name") == "hub"
    for local in (str(tmp_path / "missing.jsonl"), "./nope", "data/sub/x"):
        with pytest.raises(DataError, match="no such file or directory"):
            source_kind(local)
    with pytest.raises(DataError, match="neither a local file"):
        source_kind("what is this")
    with pytest.raises(DataError, match="cannot access"):
        source_kind(str(tmp_path / ("x" * 300)) + "/y.jsonl")


def test_hub_loader_columns_and_parquet_fallback(monkeypatch):
    import datasets

    calls = []

    def fake(name, config=None, split=None, streaming=False, **kw):
        calls.append((name, config, split, streaming, kw))
        if "revision" not in kw:
            raise RuntimeError("loading scripts are not supported\nsecond line")
        return datasets.Dataset.from_list([{"user_id": "a", "label_0": 1, "label_1": 0, "jpg_0": b"x"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows, base, label = read_rows("owner/name:test", columns=["user_id", "label_0"], config="cfg")
    assert rows == [{"user_id": "a", "label_0": 1}] and base is None and label == "owner/name:test"
    assert [c[4] for c in calls] == [{"columns": ["user_id", "label_0"]}, {}, {"revision": "refs/convert/parquet"}]
    assert all(c[:4] == ("owner/name", "cfg", "test", False) for c in calls)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(DataError, match=r"owner/name: could not load Hub dataset split 'train' \(ConnectionError: offline\)"):
        PreferenceData.load("owner/name")


# ----- text encodings and strict JSON -----------------------------------------------------------
def test_bom_is_accepted_in_every_text_format(tmp_path):
    bom = b"\xef\xbb\xbf"
    assert len(load_text(tmp_path, bom + lines(ROW, ROW).encode())) == 2
    assert len(load_text(tmp_path, bom + json.dumps([ROW]).encode(), "d.json")) == 1
    csv_text = "user_id,prompt,chosen,rejected\nu,hello,a,b\n"
    assert load_text(tmp_path, bom + csv_text.encode(), "d.csv").user_ids == ["u"]


@pytest.mark.parametrize("name, text, message", [
    ("d.jsonl", lines(ROW).encode() + b'{"user_id": "\xff"}\n', "line 2: not valid UTF-8 (byte 0xff)"),
    ("d.json", b'[\n{"user_id": "\xc3"}]', "line 2: not valid UTF-8"),
    ("d.csv", b"user_id,prompt,chosen,rejected\nu,p,a,b\nu,\xfe,a,b\n", "line 3: not valid UTF-8 (byte 0xfe)"),
])
def test_non_utf8_bytes(tmp_path, name, text, message):
    fails(tmp_path, text, message, name)


def test_strict_json(tmp_path):
    fails(tmp_path, '{"user_id": "a", "user_id": "b", "prompt": "p", "chosen": "c", "rejected": "r"}\n', "line 1: invalid JSON (duplicate key 'user_id')")
    fails(tmp_path, lines(ROW) + '{"user_id": "u", "prompt": [' + "1" * 5000 + "]}\n", "line 2: invalid JSON (an integer of 5000 digits")
    fails(tmp_path, lines(ROW) + "[" * 3000 + "]" * 3000 + "\n", "line 2: invalid JSON (nested too deeply)")
    fails(tmp_path, "[" * 3000 + "]" * 3000, "line 1: invalid JSON (nested too deeply)", "d.json")
    fails(tmp_path, lines(ROW, [1, 2]), "line 2: expected a JSON object, got list")
    fails(tmp_path, json.dumps({"rows": []}), "a .json file must hold a list of rows", "d.json")


# ----- numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("1e309", "vector holds NaN or inf"),  # JSON reads it as inf
    ("1" + "0" * 320, "vector holds a value beyond float32 range"),  # an integer >= 1e309: no float holds it
    ("1e39", "vector holds 1e+39, beyond float32 range"),
    ("-3.5e38", "vector holds -3.5e+38, beyond float32 range"),
    ("NaN", "vector holds NaN or inf"),
    ("-Infinity", "vector holds NaN or inf"),
    ("true", "vector holds a non-number (bool)"),
    ('"1.5"', "vector holds a non-number (str)"),
    ("null", "vector holds a non-number (NoneType)"),
    ("[1]", "vector holds a non-number (list)"),
])
def test_vector_values(tmp_path, value, message):
    text = lines(ROW) + '{"user_id": "u", "prompt": [0.5, -1.0, 2.0], "chosen": [1.0, %s, 0.0], "rejected": [0, 1, 2]}\n' % value
    fails(tmp_path, text, f"row 2: column 'chosen': {message}")


def test_float32_range_edge_is_accepted(tmp_path):
    big = [3.4e38, -3.4028234e38, 1e-45]
    d = load_text(tmp_path, lines(ROW, {**ROW, "chosen": big, "rejected": [1, 2, 3]}))
    assert d.chosen[1] == big and d.rejected[1] == [1.0, 2.0, 3.0] and all(type(x) is float for x in d.rejected[1])


# ----- ids and columns ---------------------------------------------------------------------------
def test_user_ids_are_strings_or_a_whole_integer_column(tmp_path):
    assert load_text(tmp_path, lines({**ROW, "user_id": 0}, {**ROW, "user_id": 12})).user_ids == ["0", "12"]
    fails(tmp_path, lines({**ROW, "user_id": 0}, {**ROW, "user_id": "0"}), "row 2: column 'user_id': mixed types (string here, integer in earlier rows)")
    fails(tmp_path, lines({**ROW, "user_id": "0"}, {**ROW, "user_id": 0}), "row 2: column 'user_id': mixed types (integer here, string")
    for bad, kind in ((True, "bool"), (1.0, "float"), (["a"], "list"), ({"a": 1}, "dict")):
        fails(tmp_path, lines(ROW, {**ROW, "user_id": bad}), f"row 2: column 'user_id': expected a string or an integer, got {kind}")
    fails(tmp_path, lines({**ROW, "group": "g"}, {**ROW, "group": 1}), "row 2: column 'group': mixed types")


def test_a_column_in_some_rows_only(tmp_path):
    fails(tmp_path, lines(ROW, {**ROW, "group": "g"}), "row 2: column 'group': present here but missing in row 1")
    fails(tmp_path, lines({**ROW, "group": "g"}, ROW), "row 2: column 'group': missing here but present in row 1")
    fails(tmp_path, lines(ROW, {k: v for k, v in ROW.items() if k != "prompt"}), "row 2: column 'prompt': missing")


def test_csv_rules(tmp_path):
    head = "user_id,prompt,chosen,rejected\n"
    long = "x" * (200 * 1024)  # over csv's default 128 KiB field limit: accepted
    assert load_text(tmp_path, head + f"u,{long},a,b\n", "d.csv").prompts == [long]
    fails(tmp_path, head + "u,p,a,b\nu,p,a\n", "row 2: 3 fields, the header has 4", "d.csv")
    fails(tmp_path, "user_id,prompt,prompt,chosen,rejected\nu,p,q,a,b\n", "column 'prompt' appears more than once", "d.csv")
    fails(tmp_path, head + 'u,"p\nq"x,a,b\n', "line 3: invalid CSV", "d.csv")
    fails(tmp_path, head + "u,p,a,\n", "row 1: column 'rejected': empty or null", "d.csv")
    import csv

    assert csv.field_size_limit() == 131072  # the global limit is restored


# ----- binary formats ------------------------------------------------------------------------------
def test_parquet_and_saved_dataset_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([ROW, ROW]), good)
    data = good.read_bytes()
    for name, content, message in (("empty.parquet", b"", "not a readable parquet file"),
                                   ("garbage.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", "not a readable parquet file"),
                                   ("cut.parquet", data[: len(data) // 2], "not a readable parquet file")):
        fails(tmp_path, content, message, name)
    pq.write_table(pa.Table.from_pylist([ROW]).schema.empty_table(), tmp_path / "zero.parquet")
    with pytest.raises(DataError, match="zero.parquet: no rows"):
        PreferenceData.load(tmp_path / "zero.parquet")
    pq.write_table(pa.table({"user_id": pa.array([b"\xff\xfe"], pa.binary()), "prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}),
                   tmp_path / "bin.parquet")
    with pytest.raises(DataError, match="bin.parquet: row 1: column 'user_id': expected a string or an integer, got bytes"):
        PreferenceData.load(tmp_path / "bin.parquet")
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([ROW, ROW]).save_to_disk(str(saved))
    assert len(PreferenceData.load(saved)) == 2
    (next(saved.glob("*.arrow"))).write_bytes(b"garbage")
    with pytest.raises(DataError, match="saved: not a dataset saved with save_to_disk"):
        PreferenceData.load(saved)
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        PreferenceData.load(tmp_path)  # a plain folder


def test_columns_are_projected_and_rows_stream(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{**ROW, "extra": i} for i in range(600)]), tmp_path / "p.parquet")
    rows, base, label = iter_rows(tmp_path / "p.parquet", columns=["extra", "missing"])
    assert next(rows) == {"extra": 0} and base == tmp_path and label.endswith("p.parquet")
    assert sum(1 for _ in rows) == 599


# ----- images ---------------------------------------------------------------------------------------
def png(color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_paths(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    row = {"user_id": "u", "prompt": "p", "chosen": "a.png", "rejected": "a.png"}
    assert len(load_text(tmp_path, lines(row))) == 1
    msg = fails(tmp_path, lines(row, {**row, "rejected": "n" * 300 + ".png"}), "row 2: column 'rejected': cannot access image file")
    assert "File name too long" in msg
    fails(tmp_path, lines(row, {**row, "chosen": "gone.png"}), "row 2: column 'chosen': image file not found")
    fails(tmp_path, lines(row, {**row, "chosen": "bad\u0000.png"}), "row 2: column 'chosen': image file not found")
    (tmp_path / "dir.png").mkdir()
    fails(tmp_path, lines(row, {**row, "chosen": "dir.png"}), "image file not found")


def test_image_store(tmp_path):
    store = ImageStore(tmp_path / "img")
    a = store.put_bytes(png("red"))
    assert a.endswith(".png") and store.put_bytes(png("red")) == a and store.created == 1 and store.reused == 1
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(buf, format="TIFF")
    assert store.put_bytes(buf.getvalue()).endswith(".png")  # re-encoded
    with pytest.raises(DataError, match=r"row 3: column 'jpg_0': not a readable image"):
        store.put_bytes(b"\x89PNG\r\n\x1a\ngarbage", "row 3: column 'jpg_0'")
    made = []
    store.ensure("r.png", lambda: made.append(1) or png("green"))
    store.save_manifest()
    again = ImageStore(tmp_path / "img")
    again.ensure("r.png", lambda: made.append(1) or png("green"))
    assert made == [1]  # intact: reused
    (tmp_path / "img" / "r.png").write_bytes(b"corrupt")
    (tmp_path / "img" / "manifest.json").write_text("{not json")
    ImageStore(tmp_path / "img").ensure("r.png", lambda: made.append(1) or png("green"))
    assert made == [1, 1] and (tmp_path / "img" / "r.png").read_bytes() == png("green")
    assert image_bytes({"bytes": png(), "path": None}) == png()
    with pytest.raises(DataError, match="image file not found"):
        image_bytes({"bytes": "/etc/hostname-is-not-bytes", "path": "nope.png"}, tmp_path)
    with pytest.raises(DataError, match="invalid base64"):
        image_bytes("base64:!!!")


def test_pickapic_tie_rule():
    assert pickapic_winner(1, 0, "w") == 0 and pickapic_winner(0.0, 1.0, "w") == 1 and pickapic_winner("0", "1", "w") == 1
    assert pickapic_winner(0.5, 0.5, "w") is None and pickapic_winner("0.5", 0.5, "w") is None
    assert pickapic_winner(0.5, 0.5000001, "w") == 1  # compared exactly
    for bad in (float("nan"), True, None, "x", 1e400, [1]):
        with pytest.raises(DataError, match=r"w: column 'label_0': expected a (finite )?number"):
            pickapic_winner(bad, 0, "w")


def test_no_import_cycle_between_data_and_convert():
    code = ("import sys, pal_mm.data, pal_mm.splits; assert 'pal_mm.convert' not in sys.modules, 'data imports convert'; "
            "import pal_mm.ingest as i; assert not hasattr(i, 'PreferenceData')")
    subprocess.run([sys.executable, "-c", code], check=True)
