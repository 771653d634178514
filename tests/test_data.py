"""Loading and validating preference data: every bad input names file, row and column."""

import json

import pytest

from encoders.atomic import write_jsonl
from pal_mm.data import PreferenceData, split_rows_per_user
from pal_mm.errors import DataError

ROW = {"user_id": "u1", "prompt": "hello", "chosen": "a good answer", "rejected": "a bad answer"}


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    write_jsonl(path, rows)
    return path


def test_load_jsonl_csv_parquet_and_saved_dataset(tmp_path):
    rows = [dict(ROW, user_id=f"u{i % 3}", group="g") for i in range(6)]
    jl = PreferenceData.load(_write(tmp_path, rows))
    assert len(jl) == 6 and jl.kinds == {"prompt": "text", "chosen": "text", "rejected": "text"}
    assert jl.users == ["u0", "u1", "u2"] and jl.user_groups() == {"u0": "g", "u1": "g", "u2": "g"}
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader(); w.writerows(rows)
    assert PreferenceData.load(tmp_path / "d.csv").to_rows() == jl.to_rows()
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert PreferenceData.load(tmp_path / "d.parquet").to_rows() == jl.to_rows()
    ds.save_to_disk(str(tmp_path / "saved"))
    assert PreferenceData.load(tmp_path / "saved").to_rows() == jl.to_rows()


def test_vectors_and_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), "red").save(tmp_path / "b.png")
    d = PreferenceData.load(_write(tmp_path, [{"user_id": 1, "prompt": [0.1, 0.2, 0.3], "chosen": "a.png", "rejected": "b.png"}]))
    assert d.kinds == {"prompt": "vector", "chosen": "image", "rejected": "image"}
    assert d.user_ids == ["1"] and d.chosen[0] == str((tmp_path / "a.png").resolve())


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": None}, r"row 2: column 'chosen': empty or null"),
        ({"rejected": "   "}, r"row 2: column 'rejected': empty or null"),
        ({"user_id": ""}, r"row 2: column 'user_id': empty or null"),
        ({"prompt": [1.0, 2.0]}, r"row 2: column 'prompt': mixed types \(vector here, text in earlier rows\)"),
        ({"chosen": 5}, r"row 2: column 'chosen': expected text, an image path or a list of floats, got int"),
        ({"chosen": "missing.png"}, r"row 2: column 'chosen': mixed types \(image here, text in earlier rows\)"),
    ],
)
def test_bad_rows_name_file_row_column(tmp_path, bad, message):
    path = _write(tmp_path, [ROW, {**ROW, **bad}])
    with pytest.raises(DataError, match=message) as e:
        PreferenceData.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "second, message",
    [
        ([1.0, 2.0], r"row 2: column 'chosen': vector of length 2, expected 3"),
        ([1.0, float("nan"), 2.0], r"row 2: column 'chosen': vector holds NaN or inf"),
        ([1.0, "x", 2.0], r"row 2: column 'chosen': vector holds a non-number"),
    ],
)
def test_bad_vectors(tmp_path, second, message):
    v = [0.0, 1.0, 2.0]
    rows = [{"user_id": "u", "prompt": v, "chosen": v, "rejected": v}, {"user_id": "u", "prompt": v, "chosen": second, "rejected": v}]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows).replace("NaN", "NaN"))
    with pytest.raises(DataError, match=message):
        PreferenceData.load(path)


def test_missing_image_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    rows = [{"user_id": "u", "prompt": "p", "chosen": "a.png", "rejected": "a.png"},
            {"user_id": "u", "prompt": "p", "chosen": "a.png", "rejected": "gone.png"}]
    with pytest.raises(DataError, match=r"row 2: column 'rejected': image file not found: .*gone.png"):
        PreferenceData.load(_write(tmp_path, rows))


def test_missing_column_and_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"missing column\(s\) rejected"):
        PreferenceData.load(_write(tmp_path, [{"user_id": "u", "prompt": "p", "chosen": "c"}]))
    bad = tmp_path / "broken.jsonl"
    bad.write_text(json.dumps(ROW) + '\n{not json\n')
    with pytest.raises(DataError, match=r"broken.jsonl: line 2: invalid JSON"):
        PreferenceData.load(bad)
    with pytest.raises(DataError, match="no such file"):
        PreferenceData.load(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        PreferenceData.load(empty)


def test_split_per_user_is_deterministic_and_drops_small_users():
    rows = [dict(ROW, user_id="a", prompt=f"p{i}") for i in range(5)] + [dict(ROW, user_id="b", prompt=f"q{i}") for i in range(2)]
    train, test = split_rows_per_user(rows, n=2, seed=1)
    assert len(train) == 2 and len(test) == 3 and {r["user_id"] for r in train + test} == {"a"}
    assert split_rows_per_user(rows, n=2, seed=1) == (train, test)
    d = PreferenceData.from_rows(rows)
    tr, te = d.split_per_user(2, seed=1)
    assert [r["prompt"] for r in tr.to_rows()] == [r["prompt"] for r in train]


def test_conversational_rows_are_kept_as_messages_and_rendered_by_one_rule(tmp_path):
    from pal_mm.embedding import render_data

    msgs = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [{"user_id": "u", "prompt": [{"role": "user", "content": "Hi?"}], "chosen": msgs("Hello!"),
             "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": [{"type": "text", "text": "Go away."}]}]}]
    d = PreferenceData.load(_write(tmp_path, rows))
    assert d.kinds["chosen"] == "text"
    assert d.prompts[0] == [{"role": "user", "content": "Hi?"}]  # kept: the encoder renders it
    assert d.rejected[0][1] == {"role": "assistant", "content": "Go away."}  # content parts as text
    r = render_data(object(), d)  # an encoder without a chat template: role: content lines
    assert r.prompts == ["user: Hi?"] and r.chosen == ["Hello!"] and r.rejected == ["Go away."]  # a response is its reply
    assert d.to_rows()[0]["chosen"] == msgs("Hello!")
    empty = [{**rows[0], "chosen": msgs("  ")}]
    with pytest.raises(DataError, match="row 1: column 'chosen': empty or null value"):
        PreferenceData.from_rows(empty)
