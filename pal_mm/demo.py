"""The browser demo's logic (``pal-mm demo``), as plain Python: no gradio here.

:class:`Demo` holds a trained PAL model (simplex users with a prior: pal-a, pal-b, lore) and a
**pool** of unlabelled pairs (:mod:`pal_mm.query`). A visitor is a *session*, a small dict the web
page keeps per browser tab::

    demo = Demo(model, read_pool("pool.jsonl"))
    s = demo.start()                       # a new user id; the first pair to ask
    s = demo.answer(s, "a")                # "a", "b" or "skip": update_user, then the next pair
    demo.view(s)                           # weights +- std, closest group, the pair, top items
    demo.export_zip(s, "out/")             # a one-user reward model folder, zipped

Pairs are chosen by expected information gain under the session user's current beliefs
(:func:`pal_mm.query.select_queries`); every answer refines the weights online
(:meth:`pal_mm.model.PALModel.update_user`). The **ranking** of a prompt's items for the user is the
pool's distinct responses to that prompt sorted by reward under the user's weights; the demo lists it
for one prompt and measures it against a group's ranking (the mean weights of the seen users of
that group) over all ranked prompts (:meth:`Demo.agreement`, Kendall's tau and top-1 agreement).

The model is shared by all sessions (each a new user id ``demo-XXXXXXXX`` in its user table); one
lock serialises every call that reads or changes it. The gradio page is :mod:`pal_mm.demo_app`.
"""

from __future__ import annotations

import random
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch

from .beliefs import user_basis
from .embedding import encode_values
from .errors import PalMMError
from .posterior import covariance, weight_covariance
from .query import Pool, pair_key, select_queries

CHOICES = ("a", "b", "skip")
MAX_RANKED_PROMPTS = 20
GROUPLESS = "seen users"


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-a of two score lists (pairs tied in either count as neither concordant nor discordant)."""
    n = len(x)
    if n < 2:
        return 1.0
    def sign(v: float) -> int:
        return (v > 0) - (v < 0)

    s = sum(sign(x[i] - x[j]) * sign(y[i] - y[j]) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def show(value: Any, limit: int = 400) -> str:
    """A pool value as text for the page: text as is (cut), a vector as its first numbers."""
    if isinstance(value, (list, tuple)):
        head = ", ".join(f"{float(v):.3g}" for v in value[:6])
        return f"vector of {len(value)}: [{head}{', ...' if len(value) > 6 else ''}]"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Demo:
    """The demo's state shared by all visitors: the model, the pool's distinct pairs, the ranked prompts."""

    def __init__(self, model, pool: Pool, max_pairs: int = 400, seed: int = 0, cache=None):
        if not model.has_posterior:
            raise PalMMError("the demo needs a model with a prior over users (simplex users: pal-a, pal-b, lore; trained with "
                             "this pal-mm version)")
        self.model = model.eval()
        self.cache = cache
        self.lock = threading.Lock()
        self.seen_users = list(model.users)
        data = pool.data
        self.kind = data.kinds["chosen"]
        self.prompt_kind = data.kinds["prompt"]
        keys, rows = set(), []
        for i in range(len(data)):  # distinct pairs; the pool's user ids do not matter here
            key = pair_key("", data.prompts[i], data.chosen[i], data.rejected[i])
            if key not in keys and key[2] != key[3]:
                keys.add(key)
                rows.append(i)
        if not rows:
            raise PalMMError(f"{pool.source}: the pool has no pair of two different responses")
        if len(rows) > max_pairs:
            rows = sorted(random.Random(seed).sample(rows, max_pairs))
        self.pairs = data.subset(rows)
        self._ranked = self._ranked_prompts()

    def file_dirs(self) -> list[str]:
        """Folders of the pool's image files (the web page may serve files from these only)."""
        cols = [c for k, c in ((self.prompt_kind, self.pairs.prompts), (self.kind, self.pairs.chosen + self.pairs.rejected))
                if k == "image"]
        return sorted({str(Path(x).parent) for col in cols for x in col})

    # ----- what the model knows ---------------------------------------------------------------
    def _ranked_prompts(self) -> list[dict]:
        """Prompts with the most distinct responses in the pool (at least 2), their items and embeddings."""
        items: dict[Any, dict] = {}
        for p, a, b in zip(self.pairs.prompts, self.pairs.chosen, self.pairs.rejected):
            entry = items.setdefault(_key(p), {"prompt": p, "items": {}})
            for x in (a, b):
                entry["items"].setdefault(_key(x), x)
        best = sorted(items.values(), key=lambda e: -len(e["items"]))
        keep = [e for e in best if len(e["items"]) >= min(3, len(best[0]["items"]))][:MAX_RANKED_PROMPTS]
        out = []
        with torch.no_grad():
            for e in keep:
                values = list(e["items"].values())
                out.append({"prompt": e["prompt"], "items": values,
                            "p": encode_values(self.model.encoder, [e["prompt"]], "prompt", self.cache),
                            "x": encode_values(self.model.encoder, values, "item", self.cache)})
        return out

    @property
    def ranked_prompts(self) -> list[str]:
        """Labels of the prompts the demo ranks items for (the page's dropdown)."""
        return [f"{i + 1}: {show(r['prompt'], 90)}" for i, r in enumerate(self._ranked)]

    def prior_weights(self) -> tuple[list[float], list[float]]:
        """(weights, std) of a user the model has seen nothing of: the prior's mean and spread."""
        head, b = self.model.head, self.model.beliefs
        basis = user_basis(head.state_dim, head.simplex_users)
        mean, prec = b.collapsed_prior()
        w = head.weights_from_logits((mean[None].float() @ basis.T).to(head.user_logits))[0]
        cov = weight_covariance(mean[None].double(), covariance(prec)[None], basis, head.simplex_users)[0]
        return w.tolist(), torch.diagonal(cov).clamp_min(0).sqrt().tolist()

    def weights(self, user: str) -> tuple[list[float], list[float]]:
        """(weights, posterior std) of a session user (the prior before the first answer)."""
        with self.lock:  # another session may be growing the user table
            if self.model._position(user) is None:
                return self.prior_weights()
            return self.model.user_weights(user), self.model.user_weight_std([user])[0].tolist()

    def group_weights(self) -> dict[str, list[float]]:
        """Mean weights of the seen users per group (all seen users as one group when the model has none)."""
        m = self.model
        if not self.seen_users:
            return {}
        with self.lock, torch.no_grad():
            w = m.head.user_weights(m.user_index(self.seen_users).to(m.head.user_logits.device)).cpu()
        groups = [m.user_groups.get(u, GROUPLESS) for u in self.seen_users]
        return {g: w[[i for i, x in enumerate(groups) if x == g]].mean(0).tolist() for g in sorted(set(groups))}

    @torch.no_grad()
    def rewards(self, weights: Sequence[float], prompt_index: int) -> list[float]:
        r = self._ranked[prompt_index]
        n = r["x"].shape[0]
        return self.model.reward_embeddings(r["p"].expand(n, -1), r["x"], weights=list(weights)).tolist()

    def top_items(self, weights: Sequence[float], prompt_index: int = 0, k: int = 5) -> tuple[Any, list[tuple[Any, float]]]:
        """(prompt, [(item, reward), ...]): the ``k`` best pool responses to one ranked prompt for ``weights``."""
        if not self._ranked:
            return None, []
        prompt_index = min(max(int(prompt_index), 0), len(self._ranked) - 1)
        with self.lock:
            r = self.rewards(weights, prompt_index)
        order = sorted(range(len(r)), key=lambda i: -r[i])[:k]
        return self._ranked[prompt_index]["prompt"], [(self._ranked[prompt_index]["items"][i], r[i]) for i in order]

    def agreement(self, weights: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
        """How well the ranking for ``weights`` matches the one for ``reference``, over the ranked
        prompts: mean Kendall tau and the fraction of prompts with the same best item."""
        taus, top1 = [], []
        with self.lock:
            for i in range(len(self._ranked)):
                x, y = self.rewards(weights, i), self.rewards(reference, i)
                taus.append(kendall_tau(x, y))
                top1.append(float(max(range(len(x)), key=x.__getitem__) == max(range(len(y)), key=y.__getitem__)))
        n = max(len(taus), 1)
        return {"tau": sum(taus) / n, "top1": sum(top1) / n}

    def preference(self, prompt: Any, a: Any, b: Any, weights: Sequence[float]) -> float:
        """P(a preferred to b) for explicit weights (calibrated)."""
        with self.lock:
            return self.model.predict_preference([prompt], [a], [b], weights=list(weights))[0]

    # ----- a session --------------------------------------------------------------------------
    def start(self) -> dict:
        """A new visitor: a fresh user id, nothing answered, the first pair picked."""
        s = {"user": f"demo-{uuid.uuid4().hex[:8]}", "asked": [], "answers": 0, "pair": None, "history": []}
        return self._next(s)

    def _next(self, s: dict) -> dict:
        left = [i for i in range(len(self.pairs)) if i not in set(s["asked"])]
        if not left:
            s["pair"] = None
            return s
        candidates = self.pairs.subset(left)
        candidates.user_ids = [s["user"]] * len(left)
        with self.lock:
            picked = select_queries(self.model, candidates, 1, cache=self.cache)[s["user"]]
        s["pair"] = left[picked[0]]
        return s

    def answer(self, s: dict | None, choice: str) -> dict:
        """Record the answer to the current pair (``a``, ``b`` or ``skip``), update the user's weights
        online, and pick the next pair. A missing session starts one."""
        if not s or "user" not in s:
            return self.start()
        if choice not in CHOICES:
            raise PalMMError(f"answer must be one of {', '.join(CHOICES)}, got {choice!r}")
        s = dict(s, asked=list(s["asked"]), history=list(s["history"]))
        i = s["pair"]
        if i is None:
            return s
        s["asked"].append(i)
        if choice != "skip":
            p, a, b = self.pairs.prompts[i], self.pairs.chosen[i], self.pairs.rejected[i]
            chosen, rejected = (a, b) if choice == "a" else (b, a)
            with self.lock:
                w = self.model.update_user(s["user"], p, chosen, rejected)
            s["answers"] += 1
            s["history"].append(w)
        return self._next(s)

    def current_pair(self, s: dict) -> tuple[Any, Any, Any] | None:
        """(prompt, response a, response b) now asked, or None when the pool is used up."""
        i = (s or {}).get("pair")
        return None if i is None else (self.pairs.prompts[i], self.pairs.chosen[i], self.pairs.rejected[i])

    def view(self, s: dict) -> dict:
        """What the page shows for a session (JSON-ready): the user, answers, weights +- std, the
        distance to every group's mean weights and the closest group, the current pair."""
        w, std = self.weights(s["user"])
        groups = self.group_weights()
        dist = {g: sum((x - y) ** 2 for x, y in zip(w, gw)) ** 0.5 for g, gw in groups.items()}
        pair = self.current_pair(s)
        return {"user": s["user"], "answers": s["answers"], "asked": len(s["asked"]), "weights": [round(x, 4) for x in w],
                "std": [round(x, 4) for x in std], "distance_to_groups": {g: round(d, 4) for g, d in dist.items()},
                "closest_group": min(dist, key=dist.get) if dist else None,
                "pair": None if pair is None else {"prompt": pair[0], "a": pair[1], "b": pair[2]}}

    def export_zip(self, s: dict, out_dir: str | Path) -> Path:
        """The session user's one-user reward model (:mod:`pal_mm.export`) saved under ``out_dir`` and
        zipped; returns the zip's path."""
        from .export import export_personal_model

        if not s or self.model._position(s.get("user", "")) is None:
            raise PalMMError("answer at least one pair first: there is no reward model for you yet")
        folder = Path(out_dir) / f"pal-reward-model-{s['user']}"
        with self.lock:
            export_personal_model(self.model, user=s["user"]).save_pretrained(folder)
        return Path(shutil.make_archive(str(folder), "zip", root_dir=folder.parent, base_dir=folder.name))

    # ----- the score tab ----------------------------------------------------------------------
    def score(self, prompt: Any, responses: Sequence[Any], users: Sequence[str] = (), weights: str | Sequence[float] | None = None
              ) -> dict:
        """Rewards and ranks of ``responses`` to ``prompt`` for each of ``users`` and for a mixture
        ``weights`` (K numbers, a comma-separated string is accepted). Returns ``{"headers": [...],
        "data": [[response, reward, rank, ...], ...]}``."""
        if isinstance(weights, str):
            text = weights.strip()
            try:
                weights = [float(x) for x in text.replace(";", ",").split(",")] if text else None
            except ValueError:
                raise PalMMError(f"weights: expected {self.model.config.k} comma-separated numbers, got {text!r}") from None
        responses = [r for r in responses if not (isinstance(r, str) and not r.strip())]
        if not responses:
            raise PalMMError("give at least one response (one per line) or image")
        if not users and weights is None:
            raise PalMMError("choose at least one user or type mixture weights")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise PalMMError("give a prompt")
        prompt = _parse(prompt, self.prompt_kind, "prompt")
        responses = [_parse(r, self.kind, f"response {i + 1}") for i, r in enumerate(responses)]
        columns = []
        with self.lock:
            for u in users:
                columns.append((u, self.model.reward(prompt, list(responses), user=str(u))))
            if weights is not None:
                columns.append(("weights " + ", ".join(f"{x:g}" for x in weights), self.model.reward(prompt, list(responses),
                                                                                                       weights=weights)))
        headers = ["response"]
        data = [[Path(r).name if self.kind == "image" and isinstance(r, str) else show(r, 120)] for r in responses]
        for name, r in columns:
            headers += [f"{name}: reward", f"{name}: rank"]
            ranks = {i: n + 1 for n, i in enumerate(sorted(range(len(r)), key=lambda i: -r[i]))}
            for i, row in enumerate(data):
                row += [round(r[i], 4), ranks[i]]
        return {"headers": headers, "data": data}


    # ----- pictures ---------------------------------------------------------------------------
    def position_figure(self, s: dict | None = None):
        """A matplotlib Figure: the seen users (groups coloured) and the session user with its
        posterior std. K = 2: the weight on prototype 1 (a line); K = 3: the simplex triangle
        (the session's path drawn); larger K: the user's weights against every group's mean."""
        from matplotlib.figure import Figure

        m = self.model
        k = m.config.k
        with self.lock, torch.no_grad():
            seen = m.head.user_weights(m.user_index(self.seen_users).to(m.head.user_logits.device)).cpu().numpy() \
                if self.seen_users else None
        groups = [m.user_groups.get(u, GROUPLESS) for u in self.seen_users]
        names = sorted(set(groups))
        w, std = self.weights(s["user"]) if s else self.prior_weights()
        history = (s or {}).get("history", [])
        fig = Figure(figsize=(6, 3.6) if k != 3 else (5.4, 4.8))
        ax = fig.add_subplot()
        colours = [f"C{i % 10}" for i in range(len(names))]
        if k == 2:
            for gi, g in enumerate(names):
                xs = [seen[i, 1] for i, x in enumerate(groups) if x == g]
                ax.scatter(xs, [gi + 1] * len(xs), color=colours[gi], alpha=0.7, s=25, label=f"{g} ({len(xs)})")
            ax.scatter([h[1] for h in history], [0] * len(history), color="grey", s=10, alpha=0.5)
            ax.errorbar([w[1]], [0], xerr=[std[1]], fmt="*", ms=16, color="black", capsize=4, label="you (+- std)")
            ax.set_yticks(range(len(names) + 1), ["you", *names])
            ax.set_xlim(-0.05, 1.05)
            ax.set_ylim(-0.7, len(names) + 0.7)
            ax.set_xlabel("weight on prototype 1  (0 = prototype 0, 1 = prototype 1)")
        elif k == 3:
            corners = [[0.0, 0.0], [1.0, 0.0], [0.5, 3 ** 0.5 / 2]]
            ax.plot([c[0] for c in corners + corners[:1]], [c[1] for c in corners + corners[:1]], color="black", lw=1)
            for i, c in enumerate(corners):
                ax.annotate(f"prototype {i}", c, textcoords="offset points", xytext=(0, -12 if i < 2 else 6), ha="center")

            def plane(v):
                return sum(v[i] * corners[i][0] for i in range(3)), sum(v[i] * corners[i][1] for i in range(3))

            for gi, g in enumerate(names):
                pts = [plane(seen[i]) for i, x in enumerate(groups) if x == g]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colours[gi], alpha=0.7, s=25, label=f"{g} ({len(pts)})")
            path = [plane(h) for h in history]
            if path:
                ax.plot([p[0] for p in path], [p[1] for p in path], color="grey", lw=1, alpha=0.6)
            x, y = plane(w)
            sx = (sum((std[i] * corners[i][0]) ** 2 for i in range(3))) ** 0.5  # independent-coordinate approximation
            sy = (sum((std[i] * corners[i][1]) ** 2 for i in range(3))) ** 0.5
            ax.errorbar([x], [y], xerr=[sx], yerr=[sy], fmt="*", ms=16, color="black", capsize=4, label="you (+- std)")
            ax.set_aspect("equal")
            ax.axis("off")
        else:
            gw = self.group_weights()
            width = 0.8 / (len(gw) + 1)
            for gi, (g, v) in enumerate(gw.items()):
                ax.bar([i + gi * width for i in range(k)], v, width, color=colours[gi % len(colours)], label=f"{g} (mean)")
            ax.bar([i + len(gw) * width for i in range(k)], w, width, yerr=std, color="black", alpha=0.8, label="you (+- std)")
            ax.set_xticks([i + 0.4 for i in range(k)], [f"prototype {i}" for i in range(k)])
            ax.set_ylim(0, 1)
        n = (s or {}).get("answers", 0)
        ax.set_title(f"where you sit among the seen users ({n} answer{'s' * (n != 1)})", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2 if k != 3 else 0.0), ncol=4, frameon=False)
        fig.tight_layout()
        return fig

    def users_report(self, png_path: str | Path) -> str:
        """The ``inspect`` view of the seen users: its text, and its picture written to ``png_path``."""
        from .inspection import describe, plot_users, text_report

        with self.lock:
            info = describe(self.model)
            seen = set(self.seen_users)
            for key in ("users", "users_std", "groups"):
                if info.get(key):
                    info[key] = {u: v for u, v in info[key].items() if u in seen}
            info["num_users"] = len(self.seen_users)
            cov = self.model.user_weight_covariance(self.seen_users) if self.seen_users else None
        plot_users(info, png_path, cov)
        return text_report(info)


def _parse(value: Any, kind: str, what: str) -> Any:
    """Typed text as the model's input: for vector inputs, comma-separated numbers (brackets allowed)."""
    if kind != "vector" or not isinstance(value, str):
        return value
    try:
        return [float(x) for x in value.strip().strip("[]").split(",")]
    except ValueError:
        raise PalMMError(f"{what}: this model reads vectors: type comma-separated numbers") from None


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
