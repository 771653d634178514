"""A simulated person for the demo: a member of one group of seen users answers the pairs the demo
asks the way that group does (the mean weights of its seen users), deterministically or sampling each
answer from the group's calibrated P(a preferred). Used by the end-to-end test and by answers_needed.py."""

from __future__ import annotations

import random


def answer_as(demo, pair: dict, weights, rng: random.Random | None = None) -> str:
    """``"a"`` or ``"b"``: the choice of a person with ``weights`` on ``pair`` ({"prompt", "a", "b"})."""
    p = demo.preference(pair["prompt"], pair["a"], pair["b"], weights)
    if rng is None:
        return "a" if p >= 0.5 else "b"
    return "a" if rng.random() < p else "b"


def run_person(demo, group: str, answers: int, rng: random.Random | None = None) -> list[dict]:
    """One person of ``group`` answering ``answers`` pairs through the demo's callbacks; per number of
    answers (0 .. answers): the ranking agreement with the group's ranking and the distance to its weights."""
    target = demo.group_weights()[group]
    s = demo.start()
    curve = []
    for n in range(answers + 1):
        view = demo.view(s)
        agree = demo.agreement(view["weights"], target)
        curve.append({"answers": n, **agree, "distance": view["distance_to_groups"][group], "closest": view["closest_group"]})
        if n == answers or view["pair"] is None:
            break
        s = demo.answer(s, answer_as(demo, view["pair"], target, rng))
    return curve
