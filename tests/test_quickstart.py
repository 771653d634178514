"""`pal-mm split` (seen users' per-user train/val/test, held-out new users, nested few-shot files) and
the README's "your own data in three commands" quickstart, run as written on a tiny file built around
the README's literal example row (the real `minilm` encoder)."""

from __future__ import annotations

import json
import random
import re
import shlex
from pathlib import Path

import pytest

from pal_mm.cli import main
from pal_mm.data import PreferenceData
from pal_mm.splits import SPLITS, is_dataset_dir, load_dataset

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quickstart() -> tuple[dict, list[str]]:
    """The README quickstart's example row and its commands."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart: your own data in three commands"):]
    section = section[: section.index("\n## ", 5)]
    row = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    commands = [line for line in re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).splitlines() if line.strip()]
    return row, commands


PAIRS = 20
SUMMARIES = [
    ("Summarise: The library will close for two weeks in August while the roof is repaired.",
     "The library closes for two weeks in August.",
     "Because its roof needs repairs, the library will be closed for a period of two weeks during August."),
    ("Summarise: Heavy rain flooded the main road, so buses took a longer route all morning.",
     "Rain flooded the road; buses were diverted.",
     "After heavy rain flooded the main road, the buses had to take a longer route for the whole morning."),
    ("Summarise: The school choir won the regional contest and will sing at the national final.",
     "The choir won and goes to the final.",
     "The school choir won the regional contest, which means it will now sing at the national final."),
    ("Summarise: A new bakery opened on Main Street and sold out of bread by noon.",
     "New bakery sold out by noon.",
     "A bakery that has just opened on Main Street had already sold all of its bread by midday."),
    ("Summarise: The museum extended its opening hours on Fridays until nine in the evening.",
     "Museum open until 9pm on Fridays.",
     "On Fridays the museum will now stay open longer, until nine o'clock in the evening."),
    ("Summarise: Volunteers planted two hundred trees along the river on Saturday.",
     "Volunteers planted 200 trees.",
     "On Saturday a group of volunteers planted two hundred new trees along the banks of the river."),
]


def toy_rows(example: dict) -> list[dict]:
    """The README row plus 10 users (alice and 5 more like short summaries, 4 like long ones), 12 pairs each."""
    rng = random.Random(0)
    pool = SUMMARIES + [(example["prompt"], example["chosen"], example["rejected"])]
    rows = [example]
    users = [("alice", "short")] + [(f"short_{i}", "short") for i in range(5)] + [(f"long_{i}", "long") for i in range(4)]
    for user, taste in users:
        for _ in range(PAIRS if user != "alice" else PAIRS - 1):
            prompt, short, long = rng.choice(pool)
            chosen, rejected = (short, long) if taste == "short" else (long, short)
            rows.append({"user_id": user, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                         **({"group": taste} if "group" in example else {})})
    return rows


def test_the_readme_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    row, commands = quickstart()
    assert set(row) == {"user_id", "prompt", "chosen", "rejected"}
    PreferenceData.from_rows([row])  # the literal row is valid data
    assert len(commands) == 3 and all(c.startswith("pal-mm ") for c in commands)
    monkeypatch.chdir(tmp_path)
    Path("pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_rows(row)))
    outputs = []
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
        outputs.append(capsys.readouterr().out)
    assert is_dataset_dir("data") and (Path("runs/m") / "model.safetensors").is_file()
    lines = outputs[-1].splitlines()
    # the flow and its report; how well the defaults learn this toy file is issue 11's business (with the
    # defaults of this commit early stopping ends training at epoch ~3 here; --patience 0 reaches 100%)
    seen = re.fullmatch(r"seen users: accuracy ([\d.]+) on (\d+) test pairs of 8 users", lines[0])
    assert seen and 0 <= float(seen.group(1)) <= 1 and int(seen.group(2)) == 8 * 4  # 20 pairs: 4 to test
    assert lines[1] == "new users (adapted on n pairs each, tested on the rest):"
    new = [re.fullmatch(r"  n=(\d+): accuracy ([\d.]+) on (\d+) pairs of 2 users", line) for line in lines[2:]]
    assert [(m.group(1), m.group(3)) for m in new] == [("1", "38"), ("5", "30"), ("10", "20")]
    # the same numbers step by step, as the README says: adapt on the 5-shot file, eval on its test file
    assert main(["eval", "--model", "runs/m", "--data", "data/", "--json", "all.json", "--quiet"]) == 0
    assert main(["adapt", "--model", "runs/m", "--data", "data/unseen_n5_train.jsonl", "--out", "runs/m_new", "--quiet"]) == 0
    assert main(["eval", "--model", "runs/m_new", "--data", "data/unseen_n5_test.jsonl", "--json", "n5.json"]) == 0
    by_hand = json.loads(Path("n5.json").read_text())
    every = json.loads(Path("all.json").read_text())
    assert every["new_users"]["5"]["accuracy"] == pytest.approx(by_hand["accuracy"], abs=1e-9)
    assert every["seen"]["n_users"] == 8 and every["new_users"]["5"]["n_pairs"] == by_hand["n_pairs"]


def test_split_layout_and_protocol(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "data"
    src = synthetic_dir / "new.jsonl"  # 6 users x 60 pairs
    assert main(["split", "--data", str(src), "--out", str(out), "--new-users", "2", "--val", "0.1", "--test", "0.2",
                 "--shots", "2,5", "--seed", "3"]) == 0
    assert "4 seen users, 2 new users" in capsys.readouterr().out
    ds = load_dataset(out)
    meta = ds.meta
    assert meta["kind"] == "custom" and meta["few_shot"]["shots"] == [2, 5] and meta["splits"]["unseen"] == 120
    new = set(meta["users"]["new"])
    assert len(new) == 2 and set(ds["unseen"].users) == new
    original = PreferenceData.load(src)
    seen_users = set(original.users) - new
    for split in ("seen_train", "seen_val", "seen_test"):
        assert set(ds[split].users) == seen_users  # every seen user in every split (60 pairs: 42 / 6 / 12)
        assert all(ds[split].user_ids.count(u) == {"seen_train": 42, "seen_val": 6, "seen_test": 12}[split] for u in seen_users)
    key = lambda d: sorted(zip(d.user_ids, map(tuple, d.prompts), map(tuple, d.chosen), map(tuple, d.rejected)))  # noqa: E731
    everything = PreferenceData(*(sum((getattr(ds[s], f) for s in SPLITS), []) for f in ("user_ids", "prompts", "chosen", "rejected")))
    assert key(everything) == key(original)  # a partition of the input rows
    # the few-shot files are the project's protocol: nested training sets, disjoint from their tests
    from pal_mm.fewshot import fewshot_rows

    rows = [json.loads(line) for line in (out / "unseen.jsonl").read_text().splitlines()]
    for n, (train, test) in fewshot_rows(rows, [2, 5], 3).items():
        assert [json.loads(x) for x in (out / f"unseen_n{n}_train.jsonl").read_text().splitlines()] == train
        assert [json.loads(x) for x in (out / f"unseen_n{n}_test.jsonl").read_text().splitlines()] == test
    two = (out / "unseen_n2_train.jsonl").read_text().splitlines()
    five = (out / "unseen_n5_train.jsonl").read_text().splitlines()
    assert len(two) == 4 and len(five) == 10 and set(two) <= set(five)  # nested
    assert not set(five) & set((out / "unseen_n5_test.jsonl").read_text().splitlines())
    # the same seed gives the same files; another seed other users
    assert main(["split", "--data", str(src), "--out", str(tmp_path / "again"), "--new-users", "2", "--shots", "2,5",
                 "--seed", "3", "--quiet"]) == 0
    assert all((out / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in ("seen_train.jsonl", "unseen.jsonl"))


def test_split_keeps_conversations_and_rebases_image_paths(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    (src / "img").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4), "red").save(src / "img" / name)
    conv = [{"role": "user", "content": "Hi?"}]
    rows = [{"user_id": f"u{i % 4}", "prompt": conv, "chosen": "img/a.png", "rejected": "img/b.png"} for i in range(40)]
    (src / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "elsewhere" / "data"
    assert main(["split", "--data", str(src / "pairs.jsonl"), "--out", str(out), "--new-users", "0.25", "--quiet"]) == 0
    first = json.loads((out / "seen_train.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == conv and first["chosen"] == "../../in/img/a.png"
    ds = load_dataset(out)
    assert Path(ds["seen_test"].chosen[0]).resolve() == (src / "img" / "a.png").resolve()


@pytest.mark.parametrize("extra, message", [
    (["--new-users", "1.5"], "--new-users must be a fraction in [0, 1) or a whole count"),
    (["--new-users", "6"], "at least one must stay seen"),
    (["--val", "0.5", "--test", "0.5"], "--val + --test must leave training pairs"),
    (["--test", "-0.1"], "--test must be a fraction in [0, 1)"),
    (["--shots", "0,2"], "--shots must be positive integers"),
    (["--shots", "a,b"], "--shots expects comma-separated integers"),
])
def test_split_bad_arguments_are_one_line_and_write_nothing(synthetic_dir, tmp_path, capsys, extra, message):
    assert main(["split", "--data", str(synthetic_dir / "new.jsonl"), "--out", str(tmp_path / "d"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
