"""`pal-mm convert` (PAL-reference and Pick-a-Pic rows to canonical pal-mm rows) and the
conversation helpers, on hand-made rows whose preferred side is known."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from pal_mm import PalMMError, PreferenceData
from pal_mm.cli import main
from pal_mm.conversation import flatten_conversation, last_assistant_text
from pal_mm.convert import convert_pal_reference


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def assert_one_line_error(capsys, argv, message):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


# ----- PAL reference layout ----------------------------------------------------------------------
REFERENCE_ROWS = [
    {"uid": "u1", "prompt": "Summarise the post.", "left": "short", "right": "a much longer summary", "y": -1},
    {"uid": "u1", "prompt": "Summarise the post.", "left": "short", "right": "a much longer summary", "y": 1},
    {"uid": 7, "prompt": "Another post.", "left": "A", "right": "B", "y": 0},
    {"uid": "u2", "prompt": "Another post.", "left": "A", "right": "B", "y": -1.0},
]


def test_pal_reference_direction_and_ties(tmp_path, capsys):
    src = write_jsonl(tmp_path / "ref.jsonl", REFERENCE_ROWS)
    out = tmp_path / "out" / "pairs.jsonl"
    assert main(["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 pairs" in printed and "4 rows read, 1 ties dropped" in printed
    rows = read_jsonl(out)
    assert rows == [
        {"user_id": "u1", "prompt": "Summarise the post.", "chosen": "short", "rejected": "a much longer summary"},  # y=-1: left
        {"user_id": "u1", "prompt": "Summarise the post.", "chosen": "a much longer summary", "rejected": "short"},  # y=+1: right
        {"user_id": "u2", "prompt": "Another post.", "chosen": "A", "rejected": "B"},
    ]
    data = PreferenceData.load(out)
    assert len(data) == 3 and data.kinds["chosen"] == "text"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_pal_reference_from_csv_with_user_id_and_vectors(tmp_path):
    src = tmp_path / "ref.csv"
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["user_id", "prompt", "left", "right", "y"])
        w.writeheader()
        w.writerow({"user_id": "a", "prompt": "p", "left": "L", "right": "R", "y": "1"})
        w.writerow({"user_id": "b", "prompt": "p", "left": "L", "right": "R", "y": "-1"})
    out = tmp_path / "pairs.jsonl"
    assert main(["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)]) == 0
    assert [(r["user_id"], r["chosen"]) for r in read_jsonl(out)] == [("a", "R"), ("b", "L")]
    rows, counts = convert_pal_reference([{"uid": "v", "prompt": [0.1, 0.2], "left": [1.0], "right": [2.0], "y": 1}])
    assert rows == [{"user_id": "v", "prompt": [0.1, 0.2], "chosen": [2.0], "rejected": [1.0]}]
    assert counts == {"rows_read": 1, "pairs": 1}


def test_pal_reference_relative_image_paths_follow_the_output(tmp_path):
    (tmp_path / "in" / "img").mkdir(parents=True)
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        (tmp_path / "in" / "img" / name).write_bytes(png_bytes(color))
    src = write_jsonl(tmp_path / "in" / "ref.jsonl", [{"uid": "u", "prompt": "a tomato", "left": "img/a.png", "right": "img/b.png", "y": -1}])
    out = tmp_path / "elsewhere" / "pairs.jsonl"
    assert main(["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)]) == 0
    data = PreferenceData.load(out)  # the rewritten relative paths resolve from the new folder
    assert Path(data.chosen[0]).read_bytes() == png_bytes("red")
    assert data.kinds["chosen"] == "image"


def test_pal_reference_bad_rows(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    cases = [
        ([{"uid": "u", "prompt": "p", "left": "L", "right": "R", "y": 2}], "row 1: column 'y': expected -1 (left preferred) or +1"),
        ([{"uid": "u", "prompt": "p", "left": "L", "right": "R", "y": 1}, {"uid": "u", "prompt": "p", "left": "L", "y": 1}],
         "row 2: missing column(s) right"),
        ([{"uid": "u", "prompt": "p", "left": "", "right": "R", "y": 1}], "column 'left': empty"),
        ([{"uid": "u", "prompt": "p", "left": "L", "right": "R", "y": 0}], "no comparisons left to write"),
    ]
    for rows, message in cases:
        src = write_jsonl(tmp_path / "bad.jsonl", rows)
        assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)], message)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert_one_line_error(capsys, ["convert", "--from", "reddit", "--data", str(src), "--out", str(out)], "--from must be one of")
    assert_one_line_error(capsys, ["convert", "--data", str(src), "--out", str(out)], "needs --from")
    assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(src), "--out", str(tmp_path / "x.csv")], ".jsonl file")
    assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(tmp_path / "nope.jsonl"), "--out", str(out)],
                          "no such file")
    good = write_jsonl(tmp_path / "good.jsonl", REFERENCE_ROWS)
    assert main(["convert", "--from", "pal-reference", "--data", str(good), "--out", str(out)]) == 0
    assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(good), "--out", str(out)], "--overwrite")
    assert main(["convert", "--from", "pal-reference", "--data", str(good), "--out", str(out), "--overwrite", "--max-rows", "1"]) == 0
    assert len(read_jsonl(out)) == 1


# ----- Pick-a-Pic ---------------------------------------------------------------------------------
def pickapic_rows() -> list[dict]:
    red, blue, green, grey = jpg_bytes("red"), png_bytes("blue"), png_bytes("green"), png_bytes("grey")
    return [
        {"caption": "a red apple", "jpg_0": red, "jpg_1": blue, "label_0": 1.0, "label_1": 0.0, "user_id": 11},
        {"caption": "the sea", "jpg_0": red, "jpg_1": blue, "label_0": 0.0, "label_1": 1.0, "user_id": 12},
        {"caption": "a tie", "jpg_0": green, "jpg_1": grey, "label_0": 0.5, "label_1": 0.5, "user_id": 11},
        {"caption": "grass", "jpg_0": {"bytes": green, "path": None}, "jpg_1": grey, "label_0": 1, "label_1": 0, "user_id": 13},
    ]


def test_pickapic_parquet_direction_ties_and_images(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pickapic_rows()
    for r in rows:
        r["jpg_0"] = r["jpg_0"]["bytes"] if isinstance(r["jpg_0"], dict) else r["jpg_0"]
    src = tmp_path / "pickapic.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "data" / "pap.jsonl"
    assert main(["convert", "--from", "pickapic", "--data", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 pairs" in printed and "1 ties dropped" in printed and "4 images" in printed
    converted = read_jsonl(out)
    assert [(r["user_id"], r["prompt"]) for r in converted] == [("11", "a red apple"), ("12", "the sea"), ("13", "grass")]
    images = tmp_path / "data" / "pap_images"
    assert images.is_dir() and len(list(images.iterdir())) == 4  # red, blue, green, grey; deduplicated
    data = PreferenceData.load(out)
    assert data.kinds["chosen"] == "image"
    assert Path(data.chosen[0]).read_bytes() == jpg_bytes("red") and Path(data.chosen[0]).suffix == ".jpg"  # label_0 = 1
    assert Path(data.chosen[1]).read_bytes() == png_bytes("blue")  # label_1 = 1
    assert Path(data.rejected[1]).read_bytes() == jpg_bytes("red")
    assert Path(data.chosen[2]).read_bytes() == png_bytes("green")
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


def test_pickapic_jsonl_with_paths(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x.png").write_bytes(png_bytes("white"))
    (tmp_path / "raw" / "y.png").write_bytes(png_bytes("black"))
    src = write_jsonl(tmp_path / "raw" / "rows.jsonl", [
        {"caption": "night", "jpg_0": "x.png", "jpg_1": "y.png", "label_0": 0, "label_1": 1, "user_id": "u"}])
    out = tmp_path / "pap.jsonl"
    assert main(["convert", "--from", "pickapic", "--data", str(src), "--out", str(out), "--images-dir", str(tmp_path / "imgs")]) == 0
    data = PreferenceData.load(out)
    assert Path(data.chosen[0]).read_bytes() == png_bytes("black")
    assert Path(data.chosen[0]).parent == (tmp_path / "imgs").resolve()


def test_pickapic_bad_rows_leave_nothing_behind(tmp_path, capsys):
    rows = pickapic_rows()[:1] + [{"caption": "broken", "jpg_0": b"not an image", "jpg_1": png_bytes("blue"),
                                   "label_0": 1, "label_1": 0, "user_id": 5}]
    (tmp_path / "in").mkdir()
    from pal_mm.convert import convert_pickapic  # raw bytes cannot go in JSON: the library directly

    with pytest.raises(PalMMError, match="row 2: column 'jpg_0': not a readable image"):
        convert_pickapic(rows, tmp_path / "imgs")
    missing = write_jsonl(tmp_path / "in" / "m.jsonl", [{"caption": "c", "jpg_0": "nope.png", "jpg_1": "nope2.png",
                                                          "label_0": 1, "label_1": 0, "user_id": "u"}])
    out = tmp_path / "out" / "pap.jsonl"
    assert_one_line_error(capsys, ["convert", "--from", "pickapic", "--data", str(missing), "--out", str(out)], "image file not found")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    no_label = write_jsonl(tmp_path / "in" / "n.jsonl", [{"caption": "c", "jpg_0": "a.png", "jpg_1": "b.png", "user_id": "u"}])
    assert_one_line_error(capsys, ["convert", "--from", "pickapic", "--data", str(no_label), "--out", str(out)],
                          "missing column(s) label_0, label_1")


# ----- conversations -------------------------------------------------------------------------------
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]


def test_flatten_conversation_plain_and_chat_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    assert flatten_conversation(CONV) == "system: Be brief.\nuser: Hi?\nassistant: Hello."
    assert flatten_conversation("already text") == "already text"
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    assert flatten_conversation(CONV, tok) == flatten_conversation(CONV)  # no chat template: plain join
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    assert flatten_conversation(CONV, tok) == "<|system|>Be brief.\n<|user|>Hi?\n<|assistant|>Hello.\n"
    assert flatten_conversation(CONV[:2], tok, add_generation_prompt=True).endswith("<|assistant|>")
    with pytest.raises(PalMMError, match="list of"):
        flatten_conversation([{"text": "no role"}])
    assert last_assistant_text(CONV) == "Hello."
    assert last_assistant_text([{"role": "user", "content": "only user"}]) == "only user"
    assert last_assistant_text("plain") == "plain"


# ----- what convert writes is valid data; output paths -------------------------------------------
def test_converted_rows_are_validated_under_the_input_names(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "pairs.jsonl"
    cases = [
        ({"left": [1e39, 0.0]}, "row 2: column 'left': vector holds 1e+39, beyond float32 range"),
        ({"right": [1.0]}, "row 2: column 'right': vector of length 1, expected 2"),
        ({"uid": 7}, "row 2: column 'uid': mixed types (integer here, string in earlier rows)"),
        ({"prompt": {"text": "p"}}, "row 2: column 'prompt': expected text, an image path or a list of floats, got dict"),
        ({"y": True}, "row 2: column 'y': expected -1 (left preferred) or +1 (right preferred), got 'True'"),
    ]
    first = {"uid": "u", "prompt": "p", "left": [0.5, 1.0], "right": [1.0, 0.5], "y": 1}
    for change, message in cases:
        src = write_jsonl(tmp_path / "in.jsonl", [first, {**first, **change}])
        assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)], message)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # the folders it would have made are gone too
    mixed = [{"caption": "c", "jpg_0": png_bytes("red"), "jpg_1": png_bytes("blue"), "label_0": 1, "label_1": 0, "user_id": u}
             for u in ("a", 0)]
    from pal_mm.convert import convert_pickapic

    with pytest.raises(PalMMError, match="row 2: column 'user_id': mixed types"):
        convert_pickapic(mixed, tmp_path / "imgs")


def test_pickapic_ids_stay_strings_and_integer_columns_convert_whole(tmp_path):
    from pal_mm.convert import convert_pickapic

    rows, counts = convert_pickapic(pickapic_rows(), tmp_path / "imgs", "imgs/")
    assert [r["user_id"] for r in rows] == ["11", "12", "13"] and counts["ties_dropped"] == 1


def test_unwritable_output_paths(tmp_path, capsys):
    src = write_jsonl(tmp_path / "ref.jsonl", REFERENCE_ROWS)
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "file" / "o.jsonl", "cannot write"), (tmp_path / ("o" * 300 + ".jsonl"), "File name too long")):
        assert_one_line_error(capsys, ["convert", "--from", "pal-reference", "--data", str(src), "--out", str(out)], message)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(pickapic_rows()[:2]), tmp_path / "p.parquet")
    assert_one_line_error(capsys, ["convert", "--from", "pickapic", "--data", str(tmp_path / "p.parquet"), "--out",
                                   str(tmp_path / "ok" / "o.jsonl"), "--images-dir", str(tmp_path / "file" / "imgs")], "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "p.parquet", "ref.jsonl"]
