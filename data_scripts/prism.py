"""PRISM (Kirk et al., NeurIPS 2024 D&B) with LoRe's seen/unseen user split.

**Source.** The Hub dataset ``HannahRoseKirk/prism-alignment``, configurations ``survey`` (one row per
participant: ``user_id``, ``num_completed_conversations``, ...) and ``conversations`` (one row per
conversation: ``conversation_id``, ``user_id``, ``conversation_turns``, ``conversation_history`` = a
list of utterances ``{"turn", "role": "user" | "model", "content", "if_chosen", ...}``), or a local
folder holding ``survey.jsonl`` and ``conversations.jsonl`` (the Hub's files), read through
:mod:`pal_mm.ingest`.

**Pairs.** In every turn of a conversation the participant rated several model replies and one is
marked ``if_chosen``; each other reply of that turn gives one pair (chosen, rejected). The prompt is
the conversation up to that turn as chat messages: the participant's messages and, for every earlier
turn, the chosen reply (role ``assistant``). A turn without a participant message, a chosen reply or a
rejected reply gives no pair.

**Split** (the one LoRe uses, reproduced from its description): participants with at least one
completed conversation, in survey order; a conversation in which no turn gives a pair is dropped, and a
participant left with none too. The ids are shuffled by ``numpy.random.RandomState(123)``; the first
80 % are seen candidates, the rest unseen candidates; only participants with more than 5 conversations
are kept. The same generator then shuffles each kept participant's conversations (seen candidates first,
then unseen, in shuffled order): the first half (rounded down) are *train* conversations, the rest *test*.

**Output** (a :mod:`pal_mm.splits` dataset directory, ``kind: real``): ``seen_train`` / ``seen_val`` =
the seen participants' train-conversation pairs split 90/10 per user (seed 42), ``seen_test`` = their
test-conversation pairs, ``unseen`` = every pair of the unseen participants (train conversations first),
and LoRe's split of those: ``unseen_train.jsonl`` / ``unseen_test.jsonl``. Rows carry the
conversation id (``conversation_id``) and turn; prompts are message lists (pal-mm renders them with the
encoder's chat template).

    python -m data_scripts.prism --out data/prism [--source HannahRoseKirk/prism-alignment | DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from pal_mm.errors import DataError
from pal_mm.ingest import iter_rows, source_kind

from .cli import run_builder
from .layout import message, split_train_val, write_splits

HUB_NAME = "HannahRoseKirk/prism-alignment"
SEED = 123  # LoRe's
SEEN_FRACTION = 0.8
MIN_CONVERSATIONS = 6  # "more than 5"


def _rows(source: str, config: str) -> Iterator[tuple[str, dict]]:
    if source_kind(source) == "dir":
        f = Path(source).expanduser() / f"{config}.jsonl"
        if not f.is_file():
            raise DataError(f"{source}: no {config}.jsonl (expected the Hub's survey.jsonl and conversations.jsonl)")
        rows, _, label = iter_rows(f)
    else:
        rows, _, label = iter_rows(source, "train", config=config, streaming=False)
    for i, row in enumerate(rows, 1):
        yield f"{label}: row {i}", row


def _field(row: dict, name: str, kind, where: str):
    value = row.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        got = "missing" if name not in row else type(value).__name__
        raise DataError(f"{where}: field '{name}': expected {getattr(kind, '__name__', kind)}, got {got}")
    return value


def conversation_pairs(row: dict, where: str) -> list[dict]:
    """The pairs of one conversation row (see the module docstring), in turn order."""
    history = _field(row, "conversation_history", list, where)
    turns: dict[int, dict] = defaultdict(lambda: {"user": [], "chosen": [], "rejected": []})
    for j, u in enumerate(history):
        at = f"{where}: conversation_history[{j}]"
        if not isinstance(u, dict):
            raise DataError(f"{at}: expected an object, got {type(u).__name__}")
        turn = _field(u, "turn", int, at)
        msg = message(u.get("role"), u.get("content"), at)
        if msg["role"] == "user":
            turns[turn]["user"].append(msg)
        else:
            turns[turn]["chosen" if u.get("if_chosen") is True else "rejected"].append(msg["content"])
    pairs, context = [], []
    for t in sorted(turns):
        parts = turns[t]
        context = context + parts["user"]
        if parts["user"] and parts["chosen"] and parts["rejected"]:
            for rejected in parts["rejected"]:
                pairs.append({"prompt": list(context), "chosen": parts["chosen"][0], "rejected": rejected, "turn": t})
        if parts["chosen"]:
            context = context + [{"role": "assistant", "content": parts["chosen"][0]}]
    return pairs


def read_prism(source: str) -> tuple[list[str], dict[str, list[str]], dict[str, list[dict]]]:
    """(participant ids in survey order, their conversation ids in file order, pairs per conversation)."""
    users = []
    for where, row in _rows(source, "survey"):
        n = _field(row, "num_completed_conversations", int, where)
        if n > 0:
            users.append(str(_field(row, "user_id", str, where)))
    known = set(users)
    conversations: dict[str, list[str]] = {u: [] for u in users}
    pairs: dict[str, list[dict]] = {}
    for where, row in _rows(source, "conversations"):
        cid, user = str(_field(row, "conversation_id", str, where)), str(_field(row, "user_id", str, where))
        if user not in known:
            raise DataError(f"{where}: user_id {user!r} has no completed conversation in the survey")
        found = conversation_pairs(row, where)
        if found:  # a conversation without one complete turn is dropped
            conversations[user].append(cid)
            pairs[cid] = [{"user_id": user, "conversation_id": cid, **p} for p in found]
    return [u for u in users if conversations[u]], conversations, pairs


def lore_split(users: list[str], conversations: dict[str, list[str]]) -> tuple[dict, dict]:
    """({user: (train conversation ids, test ids)} for seen users, the same for unseen users)."""
    rng = np.random.RandomState(SEED)
    order = np.array(users)
    rng.shuffle(order)
    cut = int(len(order) * SEEN_FRACTION)
    out = []
    for part in (order[:cut], order[cut:]):
        kept = {}
        for u in part.tolist():
            convs = np.array(conversations[u])
            if len(convs) >= MIN_CONVERSATIONS:
                rng.shuffle(convs)
                half = int(len(convs) * 0.5)
                kept[u] = (convs[:half].tolist(), convs[half:].tolist())
        out.append(kept)
    return out[0], out[1]


def build(source: str, out_dir: str) -> dict:
    users, conversations, pairs = read_prism(source)
    seen, unseen = lore_split(users, conversations)
    rows = lambda ids: [p for c in ids for p in pairs[c]]  # noqa: E731
    seen_train, seen_val = split_train_val([p for u in seen for p in rows(seen[u][0])])
    unseen_train = [p for u in unseen for p in rows(unseen[u][0])]
    unseen_test = [p for u in unseen for p in rows(unseen[u][1])]
    files = {"seen_train.jsonl": seen_train, "seen_val.jsonl": seen_val,
             "seen_test.jsonl": [p for u in seen for p in rows(seen[u][1])],
             "unseen.jsonl": unseen_train + unseen_test, "unseen_train.jsonl": unseen_train, "unseen_test.jsonl": unseen_test}
    meta = {"name": "prism", "kind": "real", "source": source,
            "protocol": {"pairs": "each non-chosen reply of a turn vs the chosen one; prompt = the conversation so far",
                         "split": f"LoRe's: RandomState({SEED}) shuffles participants, {int(SEEN_FRACTION * 100)} % seen "
                                  f"candidates, > {MIN_CONVERSATIONS - 1} conversations kept, conversations halved "
                                  "into train / test per participant; seen train pairs 90/10 train/val (seed 42)"},
            "users": {"participants": len(users), "seen": len(seen), "unseen": len(unseen)}}
    return write_splits(out_dir, files, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_scripts.prism", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output dataset directory")
    ap.add_argument("--source", default=HUB_NAME, help=f"Hub name or a folder with survey.jsonl and conversations.jsonl (default {HUB_NAME})")
    args = ap.parse_args(argv)

    def body():
        meta = build(args.source, args.out)
        print(f"wrote {args.out}: {meta['users']['seen']} seen / {meta['users']['unseen']} unseen participants; "
              + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))

    return run_builder(body)


if __name__ == "__main__":
    sys.exit(main())
