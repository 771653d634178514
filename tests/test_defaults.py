"""The library defaults on small generated mixtures (data_scripts.synthetic, the paper's ideal-point
family): they reach a stated fraction of the correctly specified model's accuracy, and do not care
about the scale of the input vectors."""

import pytest
import torch

from data_scripts.synthetic import make_pairs, make_population
from encoders import create_encoder
from pal_mm import PALConfig, PreferenceData, TrainConfig, evaluate, fit
from pal_mm.config import DEFAULT_DIM
from pal_mm.embedding import EncodedPairs, encode_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mixture(k_true: int, users: int, seed: int, dim: int = 8, alpha: float = 0.3):
    protos, w = make_population(k_true=k_true, dim=dim, num_users=users, seed=seed, alpha=alpha)
    enc = create_encoder("precomputed")
    rows = {"train": make_pairs(protos, w, 60, seed=seed + 1, prompt_dim=4),
            "val": make_pairs(protos, w, 20, seed=seed + 2, prompt_dim=4),
            "test": make_pairs(protos, w, 40, seed=seed + 3, prompt_dim=4)}
    return {s: encode_data(enc, PreferenceData.from_rows(r)) for s, r in rows.items()}


@pytest.fixture(scope="module")
def mixture():
    return _mixture(k_true=3, users=24, seed=5)


QUIET = TrainConfig(progress=False)


def test_defaults_reach_93_percent_of_the_oracle_fit(mixture):
    d = mixture
    enc = create_encoder("precomputed")
    defaults = fit(d["train"], d["val"], enc, PALConfig(k=3), QUIET)
    # the generating family at the true K*: ideal points in item space, a linear map, no prompt
    oracle = fit(d["train"], d["val"], enc, PALConfig(model_type="pal-a", k=3, projector="linear", dim=8,
                                                       pal_a_use_prompt=False, loss="bt"),
                 TrainConfig(progress=False, epochs=60, patience=10))
    acc, ceiling = evaluate(defaults, d["test"])["accuracy"], evaluate(oracle, d["test"])["accuracy"]
    assert acc >= 0.93 * ceiling, (acc, ceiling)  # 0.94-0.98 on seeds 5-7 (24 users x 60 pairs)
    assert defaults.config.dim == DEFAULT_DIM  # the width rule, fixed when training starts


def _scaled(pairs: EncodedPairs, prompt: float, item: float) -> EncodedPairs:
    return EncodedPairs(pairs.prompt * prompt, pairs.chosen * item, pairs.rejected * item, pairs.user_ids)


def test_scale_invariance(mixture):
    """Prompt vectors x100 and item vectors x0.01 change accuracy by less than one point."""
    enc = create_encoder("precomputed")
    tc = TrainConfig(progress=False, epochs=8)
    plain = fit(mixture["train"], mixture["val"], enc, PALConfig(k=3), tc)
    s = {k: _scaled(v, 100.0, 0.01) for k, v in mixture.items()}
    scaled = fit(s["train"], s["val"], enc, PALConfig(k=3), tc)
    a, b = evaluate(plain, mixture["test"])["accuracy"], evaluate(scaled, s["test"])["accuracy"]
    assert abs(a - b) < 0.01, (a, b)
    assert a > 0.7  # and it did learn something
    # the standardised inputs the heads see are the same
    x = plain.head.item_norm(mixture["test"].chosen[:5])
    y = scaled.head.item_norm(s["test"].chosen[:5])
    assert torch.allclose(x, y, atol=1e-3)


def test_defaults_study_embedded_names_are_canonical():
    # `t2i-0.0` in a study config and the part file `t2i-0.json` are one data set (a config that spelt beta
    # with a trailing .0 used to drop that data set from the report)
    from experiments.defaults.run import embedded_names

    assert embedded_names({"embedded": ["summary", "t2i-0.0", "t2i-0.25", "t2i-1"]}) == ["summary", "t2i-0", "t2i-0.25", "t2i-1"]
    assert embedded_names({}) == []
    with pytest.raises(SystemExit, match="t2i-<beta>"):
        embedded_names({"embedded": ["t2i-high"]})


def test_split_evidence_study_halves_every_users_validation_pairs():
    # the nested study's A / B sets: each user's pairs split ceil / floor, disjoint, together all of val
    from experiments.defaults.split_evidence import halves

    users = ["a"] * 5 + ["b"] * 4 + ["c"]
    val = EncodedPairs(torch.arange(10.0)[:, None], torch.zeros(10, 1), torch.zeros(10, 1), users)
    a, b = halves(val, seed=0)
    rows_a, rows_b = a.prompt[:, 0].long().tolist(), b.prompt[:, 0].long().tolist()
    assert sorted(rows_a + rows_b) == list(range(10))
    assert [a.user_ids.count(u) for u in "abc"] == [3, 2, 1] and [b.user_ids.count(u) for u in "abc"] == [2, 2, 0]
    assert halves(val, seed=0)[0].prompt.tolist() == a.prompt.tolist()  # seeded
