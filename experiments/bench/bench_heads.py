"""Head-training and adaptation speed of pal-mm, next to a minimal plain-torch loop.

    python -m experiments.bench.bench_heads              # make bench (~6 min on 2 CPU cores)
    python -m experiments.bench.bench_heads --breakdown  # + where the time goes (~15 min; results/heads.md)
    python -m experiments.bench.bench_heads --quick --breakdown   # d = 64, 3000 pairs: ~30 s
    python -m experiments.bench.bench_heads --dims 768 --pairs 20000 --epochs 3 --threads 2

Random Gaussian embeddings (speed does not depend on the labels), ``--pairs`` training pairs from
``--users`` users, batch 64, PAL-B K=2 and PAL-A K=2 heads with the default ``mlp2-gelu`` projectors
of width d = input width (384 and 768 by default).

(a) Training throughput, pairs/s:
    * ``raw``         - a hand-written loop with plain ``nn.Sequential`` MLPs of identical shapes over
      pre-shuffled tensors: slice a batch, forward, loss, ``zero_grad``, ``backward``, ``AdamW.step``;
    * ``fit_loop``    - ``fit``'s own per-epoch timing of its training loop (wall clock only);
    * ``fit_total``   - pairs trained / time of the whole ``fit`` call (model setup, accelerate,
      per-epoch validation on ``--val-pairs`` pairs, best-state copies);
    * ``--breakdown``: hand-written loops that add fit's pieces one at a time, to show where time goes:
      ``head_sliced`` (PALHead + fit's optimizer groups, pre-shuffled slices), ``dataloader``
      (+ fit's DataLoader and collate), ``accelerate`` (+ ``accelerator.prepare``, autocast,
      ``accelerator.backward``, ``loss.item()``: fit's inner loop).
    ``ratio`` = ours / raw. The CPU is shared with other processes, so every timing is taken both as
    wall time and as process CPU time (with one torch thread, CPU time ignores time spent waiting
    for a core), each loop is repeated ``--repeats`` times, alternating, and the fastest run is kept.
(b) ``adapt``: ``--adapt-users`` new users x ``--adapt-pairs`` pairs, one batched call with the
    ``AdaptConfig`` defaults, on the trained heads: total seconds and milliseconds per user, next to
    a direct loop (the same optimisation without the reduced form) in the same run.

Writes ``experiments/bench/results/heads.md`` and ``heads.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from encoders import create_encoder
from pal_mm.adaptation import adapt
from pal_mm.config import AdaptConfig, PALConfig, TrainConfig
from pal_mm.embedding import EncodedPairs
from pal_mm.training import build_model, fit, optimizer_groups

from ..common import Clock


def rate(pairs: int, c: Clock) -> dict:
    return {"wall": pairs / c.wall, "cpu": pairs / max(c.cpu, 1e-9)}


def random_pairs(n: int, users: int, dim: int, seed: int, prefix: str = "u") -> EncodedPairs:
    g = torch.Generator().manual_seed(seed)
    uid = [f"{prefix}{i % users:04d}" for i in range(n)]
    return EncodedPairs(torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g),
                        torch.randn(n, dim, generator=g), uid)


# --------------------------------------------------------------------------------------------
# the plain-torch reference: the shapes of PALHead with projector mlp2-gelu
# --------------------------------------------------------------------------------------------
def mlp2(i: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))


class RawPALB(nn.Module):
    def __init__(self, dp, di, d, k, users):
        super().__init__()
        self.f = mlp2(di, d)
        self.g = nn.ModuleList(mlp2(dp, d) for _ in range(k))
        self.s = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.W = nn.Parameter(torch.randn(users, k))

    def forward(self, p, c, r, u):
        w = torch.softmax(self.W[u], -1)
        ideal = (w[:, :, None] * torch.stack([g(p) for g in self.g], 1)).sum(1)
        s = self.s.exp().clamp(max=100)
        m = s * (F.cosine_similarity(ideal, self.f(c), dim=-1) - F.cosine_similarity(ideal, self.f(r), dim=-1))
        return F.softplus(-m).mean()


class RawPALA(nn.Module):  # pal_a_use_prompt=True (the default): f sees [prompt ; item]
    def __init__(self, dp, di, d, k, users):
        super().__init__()
        self.f = mlp2(dp + di, d)
        self.P = nn.Parameter(torch.randn(k, dp + di))
        self.W = nn.Parameter(torch.randn(users, k))

    def forward(self, p, c, r, u):
        a = self.f(torch.softmax(self.W[u], -1) @ self.P)
        m = (self.f(torch.cat([p, r], -1)) - a).norm(dim=-1) - (self.f(torch.cat([p, c], -1)) - a).norm(dim=-1)
        return F.relu(1 - m).mean()


def raw_loop(model_type: str, train: EncodedPairs, d: int, k: int, epochs: int, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    users = sorted(set(train.user_ids))
    index = {u: i for i, u in enumerate(users)}
    uidx = torch.as_tensor([index[u] for u in train.user_ids])
    model = (RawPALB if model_type == "pal-b" else RawPALA)(train.prompt.shape[1], train.chosen.shape[1], d, k, len(users))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    n = len(train)
    with Clock() as c:
        for _ in range(epochs):
            perm = torch.randperm(n)
            p, ch, r, u = train.prompt[perm], train.chosen[perm], train.rejected[perm], uidx[perm]
            for s in range(0, n, batch):
                loss = model(p[s:s + batch], ch[s:s + batch], r[s:s + batch], u[s:s + batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return rate(n * epochs, c)


# --------------------------------------------------------------------------------------------
# ours: fit, and the breakdown loops
# --------------------------------------------------------------------------------------------
def fit_rates(model_type, train, val, enc, d, k, epochs, batch, seed):
    """{fit_loop, fit_total} rates and the trained model."""
    pc = PALConfig(model_type=model_type, k=k, dim=d)
    tc = TrainConfig(epochs=epochs, batch_size=batch, patience=0, seed=seed, progress=False, cpu=True)
    with Clock() as c:
        model = fit(train, val, enc, pc, tc)
    loop_s = sum(h["epoch_seconds"] for h in model.history)
    return {"fit_loop": {"wall": len(train) * len(model.history) / loop_s}, "fit_total": rate(len(train) * len(model.history), c)}, model


def breakdown(model_type: str, train: EncodedPairs, enc, d: int, k: int, epochs: int, batch: int, seed: int) -> dict:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    tc = TrainConfig(batch_size=batch, seed=seed, cpu=True)
    n = len(train)
    out = {}
    for stage in ("head_sliced", "dataloader", "accelerate"):
        torch.manual_seed(seed)
        model = build_model(train, enc, PALConfig(model_type=model_type, k=k, dim=d))
        head = model.head.train()
        opt = torch.optim.AdamW(optimizer_groups(model, tc))
        tensors = (train.prompt, train.chosen, train.rejected, model.user_index(train.user_ids))
        loader = DataLoader(range(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed),
                            collate_fn=lambda idx: tuple(t[torch.as_tensor(idx)] for t in tensors))  # as in fit
        acc = None
        if stage == "accelerate":
            acc = Accelerator(cpu=True)
            model, opt, loader = acc.prepare(model, opt, loader)
            head = acc.unwrap_model(model).head
        with Clock() as c:
            for _ in range(epochs):
                if stage == "head_sliced":
                    perm = torch.randperm(n)
                    shuffled = [t[perm] for t in tensors]
                    batches = (tuple(t[s:s + batch] for t in shuffled) for s in range(0, n, batch))
                else:
                    batches = loader
                for p, ch, r, u in batches:
                    if acc is None:
                        loss = head.loss(head.margin(p, ch, r, head.user_weights(u)))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                    else:
                        with acc.autocast():
                            loss = head.loss(head.margin(p, ch, r, head.user_weights(u)))
                        opt.zero_grad(set_to_none=True)
                        acc.backward(loss)
                    opt.step()
                    if acc is not None:
                        loss.item()
        out[stage] = rate(n * epochs, c)
    return out


def direct_adapt_logits(model, pairs, cfg: AdaptConfig) -> torch.Tensor:
    """The straightforward adapt loop, for reference: every step recomputes the ideal points and
    ``head.score`` on (pairs, d) item points (what ``pal_mm.adaptation`` did before its reduced form)."""
    head = model.head.eval()
    users = list(dict.fromkeys(pairs.user_ids))
    uidx = torch.as_tensor([users.index(u) for u in pairs.user_ids])
    counts = torch.bincount(uidx, minlength=len(users)).float()
    with torch.no_grad():
        item_c = head.item_embedding(pairs.prompt, pairs.chosen)
        item_r = head.item_embedding(pairs.prompt, pairs.rejected)
        protos = head.prototypes(pairs.prompt) if model.config.model_type == "pal-b" else None
    logits = torch.zeros(len(users), model.config.k, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=cfg.lr)
    for q in head.parameters():
        q.requires_grad_(False)
    for _ in range(cfg.steps):
        w = torch.softmax(logits, dim=-1)
        ideal = head.ideal_point(None, w)[uidx] if protos is None else head.ideal_point(None, w[uidx], protos=protos)
        per_pair = head.loss(head.score(ideal, item_c) - head.score(ideal, item_r), reduction="none")
        loss = (torch.zeros(len(users)).index_add(0, uidx, per_pair) / counts).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for q in head.parameters():
        q.requires_grad_(True)
    return logits.detach()


def bench_adapt(model, users: int, pairs: int, dim: int, seed: int) -> dict:
    """``adapt`` (library) vs :func:`direct_adapt_logits` on the same new users, same run."""
    new = random_pairs(users * pairs, users, dim, seed + 1, prefix="new")
    cfg = AdaptConfig()
    m = copy.deepcopy(model)
    with Clock() as c:
        adapt(m, new, cfg)
    with Clock() as d:
        ref = direct_adapt_logits(copy.deepcopy(model), new, cfg)
    weight_diff = float((torch.softmax(ref, -1) - torch.tensor([m.user_weights(u) for u in dict.fromkeys(new.user_ids)])).abs().max())
    return {"users": users, "pairs_per_user": pairs, "steps": cfg.steps, "total_s": round(c.wall, 3), "total_cpu_s": round(c.cpu, 3),
            "ms_per_user": round(1e3 * c.wall / users, 2), "cpu_ms_per_user": round(1e3 * c.cpu / users, 2),
            "direct_s": round(d.wall, 3), "direct_cpu_s": round(d.cpu, 3), "speedup_cpu": round(d.cpu / max(c.cpu, 1e-9), 2),
            "max_weight_diff": weight_diff}


# --------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--val-pairs", type=int, default=2000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeat each timing (alternating loops), keep the fastest")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: CPU time is then comparable, and a shared 2-core machine is not oversubscribed)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time loops that add fit's pieces one at a time (where the time goes; ~2.5x longer)")
    ap.add_argument("--adapt-users", type=int, default=100)
    ap.add_argument("--adapt-pairs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="d = 64, 3000 pairs, 1 epoch, 1 repeat (~30 s)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    if a.quick:
        a.dims, a.pairs, a.val_pairs, a.epochs, a.repeats = [64], 3000, 500, 1, 1
    torch.set_num_threads(a.threads)
    enc = create_encoder("precomputed")
    t_start = time.perf_counter()

    # cold start: the first fit in a process pays one-off imports (accelerate state, torch._dynamo
    # pulled in by the first optimizer); measured once here and kept out of the timings below
    warm = random_pairs(256, 8, 16, 99)
    with Clock() as cold:
        fit(warm, warm, enc, PALConfig(k=2), TrainConfig(epochs=1, progress=False, cpu=True))

    rows, adapt_rows = [], []
    for d in a.dims:
        train = random_pairs(a.pairs, a.users, d, 0)
        val = random_pairs(a.val_pairs, a.users, d, 1)
        for mt in ("pal-b", "pal-a"):
            runs = defaultdict(list)  # loop -> [{"wall", "cpu"}, ...]
            for rep in range(a.repeats):  # alternate the loops so that load changes hit all of them
                timing, model = fit_rates(mt, train, val, enc, d, a.k, a.epochs, a.batch, rep)
                timing["raw"] = raw_loop(mt, train, d, a.k, a.epochs, a.batch, rep)
                if a.breakdown:
                    timing.update(breakdown(mt, train, enc, d, a.k, a.epochs, a.batch, rep))
                for name, r in timing.items():
                    runs[name].append(r)
            best = {name: {clk: max(r[clk] for r in rs) for clk in rs[0]} for name, rs in runs.items()}
            row = {"model": mt, "k": a.k, "dim": d, "pairs_per_s": {n: {c: round(v, 1) for c, v in r.items()} for n, r in best.items()},
                   "ratio": {n: {c: round(v / best["raw"][c], 3) for c, v in r.items()} for n, r in best.items() if n != "raw"}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            adapt_rows.append({"model": mt, "k": a.k, "dim": d, **bench_adapt(model, a.adapt_users, a.adapt_pairs, d, 0)})
            print(json.dumps(adapt_rows[-1]), flush=True)

    result = {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "cold_start_s": round(cold.wall, 2), "train": rows, "adapt": adapt_rows,
              "runtime_s": round(time.perf_counter() - t_start, 1)}
    text = markdown(result, a)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.md").write_text(text)
    (out / "heads.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(res: dict, a) -> str:
    stages = [s for s in ("head_sliced", "dataloader", "accelerate") if s in res["train"][0]["pairs_per_s"]]
    md = ["# Head benchmark", "",
          f"torch {res['torch']}, {res['threads']} torch thread(s), {res['cpus']} CPUs shared with other processes; {a.pairs} random "
          f"train pairs from {a.users} users, {a.val_pairs} val pairs, batch {a.batch}, {a.epochs} epoch(s), fastest of {a.repeats}; "
          f"projectors mlp2-gelu of width d. Cold start of the first `fit` in a process (one-off imports, not counted below): "
          f"{res['cold_start_s']:.1f} s. Whole benchmark: {res['runtime_s']:.0f} s.", "",
          "## (a) Training throughput, pairs/s (ratio = ours / raw torch)", "",
          "| model | K | d | clock | raw torch | fit loop | fit total | ratio loop | ratio total |" + "".join(f" {s} (ratio) |" for s in stages),
          "|---|---|---|---|---|---|---|---|---|" + "---|" * len(stages)]
    for r in res["train"]:
        p, q = r["pairs_per_s"], r["ratio"]
        for clk in ("wall", "cpu"):
            loop = f"{p['fit_loop'][clk]:.0f}" if clk in p["fit_loop"] else "-"
            rloop = f"{q['fit_loop'][clk]:.2f}" if clk in q["fit_loop"] else "-"
            md.append(f"| {r['model']} | {r['k']} | {r['dim']} | {clk} | {p['raw'][clk]:.0f} | {loop} | {p['fit_total'][clk]:.0f} | {rloop} | "
                      f"{q['fit_total'][clk]:.2f} |" + "".join(f" {p[s][clk]:.0f} ({q[s][clk]:.2f}) |" for s in stages))
    md += ["", "- raw torch: plain nn.Sequential MLPs of the same shapes, pre-shuffled tensor slices, forward + backward + AdamW.",
           "- fit loop: `fit`'s own per-epoch timing of its training loop (wall clock only); fit total: pairs / time of the whole "
           "`fit` call (model setup, accelerate, per-epoch validation, best-state copies).",
           "- breakdown (hand-written loops, each adds one piece of `fit`): head_sliced = PALHead + fit's optimizer groups on "
           "pre-shuffled slices; dataloader = + fit's DataLoader/collate; accelerate = + accelerator.prepare, autocast, "
           "accelerator.backward and loss.item() (= fit's inner loop).",
           "- cpu rows: pairs / process CPU seconds (one torch thread, so waiting for a busy core is not counted).",
           "", f"## (b) adapt: {a.adapt_users} new users x {a.adapt_pairs} pairs, one batched call (AdaptConfig defaults)", "",
           "| model | K | d | steps | adapt wall (s) | adapt CPU (s) | CPU per user (ms) | direct loop CPU (s) | speedup (CPU) | max weight diff |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["adapt"]:
        md.append(f"| {r['model']} | {r['k']} | {r['dim']} | {r['steps']} | {r['total_s']:.2f} | {r['total_cpu_s']:.2f} | "
                  f"{r['cpu_ms_per_user']:.1f} | {r['direct_cpu_s']:.2f} | {r['speedup_cpu']:.1f}x | {r['max_weight_diff']:.1e} |")
    md += ["", "- adapt: the library (reduced form of the loss, frozen parts computed once); direct loop: the same Adam "
           "steps recomputing ideal points and scores on (pairs, d) item points every step (the library's previous path). "
           "Both from the same initial logits; the weights differ by float rounding, which the hinge loss of PAL-A (flat regions where Adam keeps stepping) can grow to ~1e-2."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
