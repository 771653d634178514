"""Ground-truth mixture data for the defaults study: users who are mixtures of K* true tastes.

Two generating families, both with a low-dimensional latent space seen through random linear maps
(as embeddings are: a few directions carry the signal, at any width and any scale):

* ``reward`` (PAL-B's family): prototype k is a bilinear reward ``r_k(q, z) = z^T M_k [q; 1]`` of the
  latent prompt ``q`` (``prompt_latent``-d) and item ``z`` (``latent``-d, on the unit sphere); user u
  scores ``r_u = shared * r_0 + sum_k w_uk r_k`` (``r_0``: a taste everybody shares, e.g. "the
  sharper image"). The correctly specified model is PAL-B with linear projectors at width ``latent``.
* ``ideal`` (PAL-A's family, the paper's synthetic study): K* true points ``p_k`` on the unit sphere,
  user ideal point ``a_u = sum_k w_uk p_k``, ``r_u(z) = -|z - a_u|``; prompts carry no signal. The
  correctly specified model is PAL-A with a linear item map at width ``latent``, items only.

Labels: ``P(first wins) = sigmoid(beta * (r_u(first) - r_u(second)))``, then a fraction ``flip`` of
labels flipped. User weights ``w_u ~ Dirichlet(alpha)``. Observed vectors:
``x = item_scale * (m_x + A z + noise)`` (``item_dim``-d) and ``p = prompt_scale * (m_p + B q + noise)``
(``prompt_dim``-d), with random maps A, B, random offsets m and isotropic noise. The Bayes rule (the
true reward) is scored on the same test pairs as the models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pal_mm.embedding import EncodedPairs


@dataclass
class Spec:
    """One generated data set (see the module docstring)."""

    name: str
    family: str = "reward"
    k_true: int = 3
    prompt_dim: int = 64
    item_dim: int = 64
    latent: int = 8
    prompt_latent: int = 4
    prompt_scale: float = 1.0
    item_scale: float = 1.0
    beta: float = 8.0
    flip: float = 0.0
    shared: float = 1.0
    alpha: float = 0.3
    users: int = 100
    pairs: int = 100                  # training pairs per seen user
    val_pairs: int | None = None      # default max(5, pairs // 4)
    test_pairs: int | None = None     # default: at least 3,000 test pairs in all (20-300 per user)
    new_users: int = 40
    new_train: int = 20               # pairs a new user is fitted on (few-shot)
    new_test: int = 40
    prompts: int = 400                # distinct prompts
    seed: int = 0
    notes: str = field(default="")

    def sizes(self) -> dict:
        val = self.val_pairs if self.val_pairs is not None else max(5, self.pairs // 4)
        test = self.test_pairs if self.test_pairs is not None else int(min(300, max(20, -(-3000 // self.users))))
        return {"train": self.pairs, "val": val, "test": test}

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Population:
    """The true tastes and users of one :class:`Spec`; :meth:`pairs` draws labelled comparisons."""

    def __init__(self, spec: Spec):
        self.spec = s = spec
        rng = np.random.default_rng([s.seed, 7])
        k = s.k_true
        self.weights = rng.dirichlet([s.alpha] * k, size=s.users + s.new_users) if k > 1 else np.ones((s.users + s.new_users, 1))
        if s.family == "reward":
            self.m = rng.normal(size=(k + 1, s.latent, s.prompt_latent + 1)) / np.sqrt(s.prompt_latent + 1)
        elif s.family == "ideal":
            self.points = _unit(rng, k, s.latent)
        else:
            raise ValueError(f"unknown family {s.family!r}")
        # observation maps: latent -> embedding width, plus an offset and isotropic noise
        self.a = rng.normal(size=(s.latent, s.item_dim)) / np.sqrt(s.latent)
        self.b = rng.normal(size=(s.prompt_latent, s.prompt_dim)) / np.sqrt(s.prompt_latent)
        self.mx, self.mp = rng.normal(size=s.item_dim), rng.normal(size=s.prompt_dim)
        self.q = _unit(rng, s.prompts, s.prompt_latent)
        self.p_obs = s.prompt_scale * (self.mp + self.q @ self.b + 0.1 * rng.normal(size=(s.prompts, s.prompt_dim)))

    def rewards(self, users: np.ndarray, q: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(n,) true rewards of items z (n, latent) under prompts q (n, prompt_latent) for user rows ``users``."""
        w = self.weights[users]
        if self.spec.family == "reward":
            q1 = np.concatenate([q, np.ones((len(q), 1))], axis=1)
            per_proto = np.einsum("nd,kde,ne->nk", z, self.m, q1)  # (n, K*+1)
            return self.spec.shared * per_proto[:, 0] + (w * per_proto[:, 1:]).sum(1)
        ideal = w @ self.points
        return -np.linalg.norm(z - ideal, axis=1)

    def pairs(self, users: np.ndarray, per_user: int, stream: int, prefix: str, first_user: int = 0):
        """EncodedPairs for ``per_user`` comparisons of each user row in ``users``, and (n,) booleans:
        does the Bayes rule (higher true reward) agree with the label?"""
        s = self.spec
        rng = np.random.default_rng([s.seed, stream])
        rows = np.repeat(users, per_user)
        n = len(rows)
        pi = rng.integers(0, s.prompts, size=n)
        z1, z2 = _unit(rng, n, s.latent), _unit(rng, n, s.latent)
        r1, r2 = self.rewards(rows, self.q[pi], z1), self.rewards(rows, self.q[pi], z2)
        first = rng.random(n) < 1 / (1 + np.exp(-s.beta * (r1 - r2)))
        first ^= rng.random(n) < s.flip
        chosen_z, rejected_z = np.where(first[:, None], z1, z2), np.where(first[:, None], z2, z1)
        bayes = np.where(first, r1 > r2, r2 > r1)

        def observe(z):
            return s.item_scale * (self.mx + z @ self.a + 0.1 * rng.normal(size=(len(z), s.item_dim)))

        ids = [f"{prefix}{u - first_user:04d}" for u in rows]
        t = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
        return EncodedPairs(t(self.p_obs[pi]), t(observe(chosen_z)), t(observe(rejected_z)), ids), bayes


def make_data(spec: Spec) -> tuple[dict[str, EncodedPairs], dict[str, float]]:
    """Splits ``train`` / ``val`` / ``test`` (seen users), ``new`` (new users: ``new_train`` + ``new_test``
    pairs each, the first ``new_train`` of a user for fitting) and the Bayes rule's accuracy per split."""
    pop = Population(spec)
    sizes = spec.sizes()
    seen = np.arange(spec.users)
    new = np.arange(spec.users, spec.users + spec.new_users)
    data, bayes = {}, {}
    for stream, (split, per_user) in enumerate(sizes.items(), start=1):
        data[split], ok = pop.pairs(seen, per_user, stream, "u")
        bayes[split] = float(ok.mean())
    data["new"], ok = pop.pairs(new, spec.new_train + spec.new_test, 9, "n", first_user=spec.users)
    per = spec.new_train + spec.new_test
    test_rows = np.arange(len(ok)) % per >= spec.new_train
    bayes["new_test"] = float(ok[test_rows].mean())
    return data, bayes


def new_user_split(spec: Spec) -> tuple[list[int], list[int]]:
    """Row indices of ``data["new"]``: (fitting rows, test rows)."""
    per = spec.new_train + spec.new_test
    rows = range(spec.new_users * per)
    return [i for i in rows if i % per < spec.new_train], [i for i in rows if i % per >= spec.new_train]


def oracle_head(spec: Spec) -> dict:
    """PALConfig fields of the correctly specified model (the generating family at the true K*)."""
    if spec.family == "reward":
        return {"model_type": "pal-b", "k": spec.k_true, "dim": spec.latent, "projector": "linear"}
    return {"model_type": "pal-a", "k": spec.k_true, "dim": spec.latent, "projector": "linear",
            "pal_a_use_prompt": False, "loss": "bt"}
