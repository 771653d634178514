"""The benchmark data builders (PRISM, PersonalRewardBench, Persona, PersonalLLM), each on a small
fixture written by hand in the source's schema, read offline through pal_mm.ingest."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_scripts import persona, personal_llm, personal_reward_bench, prism
from pal_mm.splits import dataset_variants, load_dataset, read_meta


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------
# PRISM (HannahRoseKirk/prism-alignment: survey.jsonl + conversations.jsonl)
# ------------------------------------------------------------------------------------------
def prism_conversation(cid: str, user: str, turns: int, rejected_per_turn=(3, 1, 1)) -> dict:
    """A conversation in the Hub schema: per turn a user message, a chosen reply and some rejected ones."""
    history = []
    for t in range(turns):
        history.append({"turn": t, "role": "user", "content": f"{cid} question {t}", "if_chosen": None, "within_turn_id": None})
        replies = 1 + rejected_per_turn[min(t, len(rejected_per_turn) - 1)]
        for j in range(replies):
            history.append({"turn": t, "role": "model", "content": f"{cid} reply {t}.{j}", "if_chosen": j == 1,
                            "within_turn_id": j, "model_name": "m", "score": 50 + j})
    return {"conversation_id": cid, "user_id": user, "conversation_type": "unguided", "conversation_turns": turns,
            "conversation_history": history, "open_feedback": "ok"}


@pytest.fixture(scope="module")
def prism_source(tmp_path_factory):
    d = tmp_path_factory.mktemp("prism_src")
    survey, conversations = [], []
    n_convs = {f"user{i}": 6 + i % 3 for i in range(10)} | {"user10": 4, "user11": 0}
    for user, n in n_convs.items():
        survey.append({"user_id": user, "num_completed_conversations": n, "age": "25-34", "order_stated_prefs": {}})
        for c in range(n):
            conversations.append(prism_conversation(f"c{user[4:]}_{c}", user, turns=1 + c % 2))
    # a conversation whose only turn has no rejected reply gives no pair: dropped
    conversations.append(prism_conversation("c0_bad", "user0", turns=1, rejected_per_turn=(0,)))
    write_jsonl(d / "survey.jsonl", survey)
    write_jsonl(d / "conversations.jsonl", conversations)
    return d, n_convs


def test_prism_pairs_of_one_conversation_by_hand():
    pairs = prism.conversation_pairs(prism_conversation("cx", "u", turns=2), "row 1")
    assert [(p["turn"], p["chosen"], p["rejected"]) for p in pairs] == [
        (0, "cx reply 0.1", "cx reply 0.0"), (0, "cx reply 0.1", "cx reply 0.2"), (0, "cx reply 0.1", "cx reply 0.3"),
        (1, "cx reply 1.1", "cx reply 1.0")]
    assert pairs[3]["prompt"] == [{"role": "user", "content": "cx question 0"},
                                  {"role": "assistant", "content": "cx reply 0.1"},
                                  {"role": "user", "content": "cx question 1"}]


def test_prism_lore_split(prism_source, tmp_path):
    src, n_convs = prism_source
    out = tmp_path / "prism"
    assert prism.main(["--out", str(out), "--source", str(src)]) == 0
    meta = read_meta(out)
    # the rule, spelled out: survey order, RandomState(123), 80 % seen, > 5 conversations, halves
    users = [u for u, n in n_convs.items() if n > 0]
    order = np.array(users)
    rng = np.random.RandomState(123)
    rng.shuffle(order)
    seen = [u for u in order[:int(len(order) * 0.8)] if n_convs[u] > 5]
    unseen = [u for u in order[int(len(order) * 0.8):] if n_convs[u] > 5]
    assert meta["users"] == {"participants": 11, "seen": len(seen), "unseen": len(unseen)}
    ds = load_dataset(out)  # message prompts validate and render
    assert set(ds["seen_train"].users) | set(ds["seen_val"].users) == set(seen) == set(ds["seen_test"].users)
    assert set(ds["unseen"].users) == set(unseen) and "user10" not in ds["unseen"].users + ds["seen_test"].users
    unseen_rows = read_jsonl(out / "unseen.jsonl")
    parts = read_jsonl(out / "unseen_train.jsonl") + read_jsonl(out / "unseen_test.jsonl")
    assert unseen_rows == parts
    every = [r for f in ("seen_train", "seen_val", "seen_test", "unseen") for r in read_jsonl(out / f"{f}.jsonl")]
    assert "c0_bad" not in {r["conversation_id"] for r in every}
    for user in seen + unseen:  # each participant's conversations are halved, never shared between halves
        convs = {r["conversation_id"] for r in every if r["user_id"] == user}
        assert len(convs) == n_convs[user]
    for u in seen:
        train = {r["conversation_id"] for r in ds_rows(out, ("seen_train", "seen_val")) if r["user_id"] == u}
        test = {r["conversation_id"] for r in read_jsonl(out / "seen_test.jsonl") if r["user_id"] == u}
        assert len(train) == n_convs[u] // 2 and not train & test


def ds_rows(out: Path, names) -> list[dict]:
    return [r for n in names for r in read_jsonl(out / f"{n}.jsonl")]


def test_prism_bad_row_is_one_line(prism_source, tmp_path, capsys):
    src, _ = prism_source
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "survey.jsonl").write_bytes((src / "survey.jsonl").read_bytes())
    rows = read_jsonl(src / "conversations.jsonl")
    rows[2]["conversation_history"][1]["role"] = "robot"
    write_jsonl(bad / "conversations.jsonl", rows)
    assert prism.main(["--out", str(tmp_path / "o"), "--source", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conversations.jsonl: row 3" in err and "role" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------
# PersonalRewardBench (MichaelR207/{chatbot_arena,prism}_personalized_0125)
# ------------------------------------------------------------------------------------------
def prb_rows() -> list[dict]:
    rows = []
    for u in range(10):
        for i, split in enumerate(["train"] * 3 + ["val"] + ["test"] * 2):
            rows.append({"conversation_id": f"c{u}_{i}", "user_id": f"user{u}",
                         "context": [{"role": "user", "content": f"prompt {u}.{i}"}],
                         "chosen": {"role": "model", "content": f"good {u}.{i}"},
                         "rejected": {"role": "model", "content": f"bad {u}.{i}"},
                         "split": split, "chosen_score": 80, "rejected_score": 20, "agreement": 1.0})
    return rows


def test_personal_reward_bench(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    rows = prb_rows()
    pq.write_table(pa.Table.from_pylist(rows[:30]), src / "part-0.parquet")
    write_jsonl(src / "part-1.jsonl", rows[30:])
    out = tmp_path / "arena"
    assert personal_reward_bench.main(["--subset", "chatbot_arena", "--out", str(out), "--source", str(src)]) == 0
    meta = read_meta(out)
    order = sorted({r["user_id"] for r in rows})
    random.Random(0).shuffle(order)
    unseen = set(order[:2])
    assert meta["users"] == {"all": 10, "seen": 8, "unseen": 2, "paper": 131}
    ds = load_dataset(out)
    for split, name in (("train", "seen_train"), ("val", "seen_val"), ("test", "seen_test")):
        expected = Counter(r["user_id"] for r in rows if r["split"] == split and r["user_id"] not in unseen)
        assert Counter(ds[name].user_ids) == expected
    assert set(ds["unseen"].users) == unseen
    assert Counter(r["user_id"] for r in read_jsonl(out / "unseen_train.jsonl")) == {u: 4 for u in unseen}
    assert Counter(r["user_id"] for r in read_jsonl(out / "unseen_test.jsonl")) == {u: 2 for u in unseen}
    first = read_jsonl(out / "seen_train.jsonl")[0]
    assert first["prompt"][0]["role"] == "user" and first["chosen"].startswith("good") and first["rejected"].startswith("bad")
    rows[5]["split"] = "dev"
    write_jsonl(src / "part-1.jsonl", rows[30:])
    pq.write_table(pa.Table.from_pylist(rows[:30]), src / "part-0.parquet")
    with pytest.raises(Exception, match=r"part-0.parquet: row 6: field 'split'"):
        personal_reward_bench.build(str(src), str(tmp_path / "o"), "chatbot_arena")


# ------------------------------------------------------------------------------------------
# Persona (kitkatdafu/persona_in_pal: k-{K}_seen / k-{K}_unseen)
# ------------------------------------------------------------------------------------------
def test_persona_variants(tmp_path):
    src = tmp_path / "src"
    ref = lambda u, i, y: {"uid": u, "prompt": f"q{i}", "left": f"L{i}", "right": f"R{i}", "y": y}  # noqa: E731
    seen_users, new_users = [f"s{j}" for j in range(4)], [f"n{j}" for j in range(2)]
    # K* = 2 in the PAL reference layout (y = -1: left preferred, 0: a tie), with a test split
    write_jsonl(src / "k-2_seen" / "train.jsonl", [ref(u, i, -1 if i % 2 else 1) for u in seen_users for i in range(20)]
                + [ref("s0", 99, 0)])
    write_jsonl(src / "k-2_seen" / "test.jsonl", [ref(u, 100 + i, 1) for u in seen_users for i in range(5)])
    write_jsonl(src / "k-2_unseen" / "train.jsonl", [ref(u, 200 + i, -1) for u in new_users for i in range(12)])
    # K* = 3 in canonical columns, no test split (10 % of each user's train rows become the test)
    canon = lambda u, i: {"user_id": u, "prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"}  # noqa: E731
    write_jsonl(src / "k-3_seen" / "train-00000.jsonl", [canon(u, i) for u in seen_users for i in range(30)])
    write_jsonl(src / "k-3_unseen" / "train.jsonl", [canon(u, i) for u in new_users for i in range(15)])
    out = tmp_path / "persona"
    assert persona.main(["--out", str(out), "--source", str(src), "--k", "2", "3"]) == 0
    variants = dataset_variants(out)
    assert list(variants) == ["k2", "k3"] and read_meta(out)["k_true"] == [2, 3]
    k2 = read_meta(out / "k2")
    assert k2["k_true"] == 2 and k2["ties_dropped"] == 1
    rows = read_jsonl(out / "k2" / "seen_train.jsonl") + read_jsonl(out / "k2" / "seen_val.jsonl")
    assert len(rows) == 80
    for r in rows:  # y = -1 -> left chosen
        i = int(r["prompt"][1:])
        assert r["chosen"] == (f"L{i}" if i % 2 else f"R{i}")
    assert len(read_jsonl(out / "k2" / "seen_test.jsonl")) == 20
    k3 = load_dataset(out / "k3")
    assert len(k3["seen_train"]) + len(k3["seen_val"]) + len(k3["seen_test"]) == 120 and len(k3["seen_test"]) == 12
    assert set(k3["unseen"].users) == set(new_users)
    write_jsonl(src / "k-3_seen" / "train-00000.jsonl", [{"a": 1}])
    with pytest.raises(Exception, match="neither pal-mm's"):
        persona.build(str(src), str(tmp_path / "o"), ks=[3])


# ------------------------------------------------------------------------------------------
# PersonalLLM (namkoong-lab/PersonalLLM: prompt, response_1..8, response_{i}_{model})
# ------------------------------------------------------------------------------------------
def pllm_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for p in range(n):
        row = {"prompt": f"prompt {seed}.{p}"}
        for i in range(1, 9):
            row[f"response_{i}"] = f"response {seed}.{p}.{i}"
            for m in personal_llm.MODEL_NAMES:
                row[f"response_{i}_{m}"] = rng.uniform(-5, 5)
        rows.append(row)
    return rows


def test_personal_llm_best_vs_worst(tmp_path):
    src = tmp_path / "src"
    train, test = pllm_rows(40, 1), pllm_rows(20, 2)
    train[3]["response_2_gemma_7b"] = None  # a missing score: the prompt is skipped
    write_jsonl(src / "train.jsonl", train)
    write_jsonl(src / "test.jsonl", test)
    out = tmp_path / "pllm"
    assert personal_llm.main(["--out", str(out), "--source", str(src), "--seen-users", "6", "--unseen-users", "3",
                              "--train-fraction", "0.25", "--unseen-fraction", "0.1", "--test-pairs", "5"]) == 0
    meta = read_meta(out)
    assert meta["prompts"] == {"train": 39, "test": 20, "skipped": {"train": 1, "test": 0}}
    weights = np.random.default_rng(0).dirichlet([0.1] * 10, size=9)  # the builder's first draw
    by_prompt = {r["prompt"]: r for r in train + test}
    ds = load_dataset(out)
    assert len(ds["seen_train"].users) == 6 and len(ds["unseen"].users) == 3
    for name in ("seen_train", "seen_val", "seen_test", "unseen"):
        for r in read_jsonl(out / f"{name}.jsonl"):
            u = int(r["user_id"][4:]) if r["user_id"].startswith("user") else 6 + int(r["user_id"][3:])
            src_row = by_prompt[r["prompt"]]
            scores = np.array([[src_row[f"response_{i}_{m}"] for m in personal_llm.MODEL_NAMES] for i in range(1, 9)]) @ weights[u]
            assert r["chosen"] == src_row[f"response_{int(np.argmax(scores)) + 1}"]
            assert r["rejected"] == src_row[f"response_{int(np.argmin(scores)) + 1}"]
            assert r["group"] == "rm_" + personal_llm.MODEL_NAMES[int(np.argmax(weights[u]))]
    assert Counter(r["user_id"] for r in read_jsonl(out / "unseen_train.jsonl")) == {f"new{j:04d}": 3 for j in range(3)}
    assert Counter(ds["seen_test"].user_ids) == {f"user{j:04d}": 5 for j in range(6)}
