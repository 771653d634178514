"""Head-training and adaptation speed of pal-mm, next to a minimal plain-torch loop, at every width,
alone and beside busy processes.

    python -m experiments.bench.bench_heads              # make bench (~10 min on 2 shared CPU cores)
    python -m experiments.bench.bench_heads --quick      # d = 64 only, fewer pairs (~1 min)
    python -m experiments.bench.bench_heads --breakdown  # + loops adding fit's pieces one at a time

Random Gaussian embeddings (speed does not depend on the labels), batch 64, PAL-B K=2 and PAL-A K=2
heads with the default ``mlp2-gelu`` projectors of width d = input width.

(a) **Shared CPU**: the case of issue 16 (PAL-B K = 3, 9,000 pairs of 16/24-d vectors, one epoch):
    ``fit`` alone, then beside two CPU-burning processes started by the bench, with the library's
    thread policy (``pal_mm.threads``: one intra-op thread for small heads) and with torch's default
    thread count forced (``PAL_MM_HEAD_THREADS=<cores>``: what the library did before). slowdown =
    busy / alone seconds of the training loop.
(b) **Training throughput per width**, pairs/s: ``raw`` = a hand-written loop with plain
    ``nn.Sequential`` MLPs of identical shapes over pre-shuffled tensors (slice a batch, forward, loss,
    zero_grad, backward, AdamW.step), run under the same thread count as ``fit`` picks; ``fit_loop`` =
    ``fit``'s own per-epoch timing of its training loop; ``fit_total`` = pairs trained / time of the
    whole ``fit`` call (setup, accelerate, per-epoch validation, best-state copies, and the prior /
    calibration fitted after training). ratio = ours / raw, in one run; wall and process CPU clocks.
(c) **adapt**: ``--adapt-users`` new users x ``--adapt-pairs`` pairs in one call, with the
    ``AdaptConfig`` defaults (the prior: Gauss-Newton MAP + Laplace) and plain Adam (``prior=False``).

Writes ``experiments/bench/results/heads.md`` and ``heads.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
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
from pal_mm.threads import ENV as THREADS_ENV
from pal_mm.threads import for_head, head_step_work
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
    work = head_step_work(batch, train.prompt.shape[1], train.chosen.shape[1], d, k)
    with for_head(work), Clock() as c:  # the thread count fit picks for this head
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
class LoopClock:
    """Stands in for the ``time`` module inside ``pal_mm.training`` during a bench ``fit``: its
    ``perf_counter`` (read by the epoch loop at its start and end only) also notes the process CPU
    time, so fit's own loop gets a CPU clock next to its wall clock."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def perf_counter(self) -> float:
        self.marks.append((time.perf_counter(), time.process_time()))
        return self.marks[-1][0]

    def loop_seconds(self) -> dict:
        starts, ends = self.marks[0::2], self.marks[1::2]
        return {"wall": sum(e[0] - s[0] for s, e in zip(starts, ends)), "cpu": sum(e[1] - s[1] for s, e in zip(starts, ends))}


@contextlib.contextmanager
def timed_fit_loops():
    """A :class:`LoopClock` standing in for ``pal_mm.training``'s ``time`` module for the block: it times
    every epoch loop the block's ``fit`` calls run (the K = 1 start and every restart)."""
    import pal_mm.training as training

    clock, real_time = LoopClock(), training.time
    training.time = clock
    try:
        yield clock
    finally:
        training.time = real_time


def fit_rates(model_type, train, val, enc, d, k, epochs, batch, seed):
    """{fit_loop, fit_total} rates and the trained model."""
    pc = PALConfig(model_type=model_type, k=k, dim=d)
    # one initialisation of the K model (no K = 1 start, no restart): the same model as the raw loop
    tc = TrainConfig(epochs=epochs, batch_size=batch, patience=0, seed=seed, progress=False, cpu=True, k_init="random",
                     restarts=1)
    with timed_fit_loops() as clock, Clock() as c:
        model = fit(train, val, enc, pc, tc)
    pairs = len(train) * (len(clock.marks) // 2)  # every epoch fit ran (K = 1 start, restarts) trains on all pairs
    loop = clock.loop_seconds()
    return {"fit_loop": {clk: pairs / max(v, 1e-9) for clk, v in loop.items()}, "fit_total": rate(pairs, c)}, model


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


def bench_adapt(model, users: int, pairs: int, dim: int, seed: int) -> dict:
    """``adapt`` with the prior (default) and plain (``prior=False``) on the same new users, same run
    (the reduced forms both use are tested equal to the direct loss in tests/test_new_users.py)."""
    new = random_pairs(users * pairs, users, dim, seed + 1, prefix="new")
    out = {"users": users, "pairs_per_user": pairs, "load_1m": round(os.getloadavg()[0], 2)}
    for name, cfg in (("prior", AdaptConfig()), ("plain", AdaptConfig(prior=False))):
        m = copy.deepcopy(model)
        with Clock() as c:
            adapt(m, new, cfg)
        out[name] = {"wall_s": round(c.wall, 3), "cpu_s": round(c.cpu, 3), "cpu_ms_per_user": round(1e3 * c.cpu / users, 3)}
    return out


# --------------------------------------------------------------------------------------------
# (a) the shared CPU
# --------------------------------------------------------------------------------------------
def burners(n: int) -> list[subprocess.Popen]:
    """``n`` processes that keep one core busy each (pure Python loops), until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def shared_cpu(enc, epochs: int = 1) -> dict:
    """fit alone and beside 2 busy processes, with the thread policy and with torch's default threads."""
    g = torch.Generator().manual_seed(0)
    uid = [f"u{i % 60:03d}" for i in range(9000)]
    train = EncodedPairs(torch.randn(9000, 16, generator=g), torch.randn(9000, 24, generator=g), torch.randn(9000, 24, generator=g), uid)
    val = EncodedPairs(train.prompt[:1000] + 0.1, train.chosen[:1000], train.rejected[:1000], uid[:1000])
    pc, tc = PALConfig(model_type="pal-b", k=3), TrainConfig(epochs=epochs, patience=0, progress=False, cpu=True)
    out = {"case": "PAL-B K=3, 9000 pairs, prompt 16-d / item 24-d, batch 64", "epochs": epochs}
    default_threads = torch.get_num_threads()
    for busy in (False, True):
        procs = burners(2) if busy else []
        try:
            time.sleep(1.0 if busy else 0.0)
            for policy in ("policy", "torch_default"):
                saved = os.environ.get(THREADS_ENV)
                if policy == "torch_default":
                    os.environ[THREADS_ENV] = str(default_threads)
                try:
                    with timed_fit_loops() as clock, Clock() as c:  # the K = 1 start and both restarts
                        fit(train, val, enc, pc, tc)
                finally:
                    os.environ.pop(THREADS_ENV, None) if saved is None else os.environ.__setitem__(THREADS_ENV, saved)
                loop = clock.loop_seconds()["wall"]
                out[f"{policy}_{'busy' if busy else 'alone'}"] = {"loop_s": round(loop, 3), "fit_s": round(c.wall, 3),
                                                                  "load_1m": round(os.getloadavg()[0], 2)}
                print(json.dumps({policy: out[f"{policy}_{'busy' if busy else 'alone'}"], "busy": busy}), flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    for policy in ("policy", "torch_default"):
        out[f"{policy}_slowdown"] = round(out[f"{policy}_busy"]["loop_s"] / out[f"{policy}_alone"]["loop_s"], 2)
    out["torch_default_threads"] = default_threads
    return out


# --------------------------------------------------------------------------------------------
def auto_pairs(d: int) -> int:
    """Training pairs at width d: 20,000 up to d = 128, fewer for wider heads (a few seconds per loop)."""
    return min(20000, int(2.56e6 / d))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--pairs", type=int, default=None, help="training pairs (default: 20,000 up to d = 128, then 2.56e6 / d)")
    ap.add_argument("--val-pairs", type=int, default=1000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeat each timing (alternating loops), keep the fastest")
    ap.add_argument("--breakdown", action="store_true", help="also time loops that add fit's pieces one at a time")
    ap.add_argument("--adapt-users", type=int, default=1000)
    ap.add_argument("--adapt-pairs", type=int, default=20)
    ap.add_argument("--adapt-dims", type=int, nargs="+", default=[64])
    ap.add_argument("--no-shared", action="store_true", help="skip (a), the run beside busy processes")
    ap.add_argument("--quick", action="store_true", help="d = 64, 3000 pairs, 1 epoch, 200 new users, no (a)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args(argv)
    if a.quick:
        a.dims, a.pairs, a.val_pairs, a.epochs, a.adapt_users, a.adapt_dims, a.no_shared = [64], 3000, 500, 1, 200, [64], True
    enc = create_encoder("precomputed")
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    # cold start: the first fit in a process pays one-off imports (accelerate state, torch._dynamo
    # pulled in by the first optimizer); measured once here and kept out of the timings below
    warm = random_pairs(256, 8, 16, 99)
    with Clock() as cold:
        fit(warm, warm, enc, PALConfig(k=2), TrainConfig(epochs=1, progress=False, cpu=True))

    shared = None if a.no_shared else shared_cpu(enc)
    rows, adapt_rows = [], []
    for d in a.dims:
        pairs = a.pairs or auto_pairs(d)
        train = random_pairs(pairs, a.users, d, 0)
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
            row = {"model": mt, "k": a.k, "dim": d, "pairs": pairs, "load_1m": round(os.getloadavg()[0], 2),
                   "pairs_per_s": {n: {c: round(v, 1) for c, v in r.items()} for n, r in best.items()},
                   "ratio": {n: {c: round(v / best["raw"][c], 3) for c, v in r.items()} for n, r in best.items() if n != "raw"}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if d in a.adapt_dims:
                adapt_rows.append({"model": mt, "k": a.k, "dim": d,
                                   **bench_adapt(model, a.adapt_users, a.adapt_pairs, d, 0)})
                print(json.dumps(adapt_rows[-1]), flush=True)

    result = {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "torch": torch.__version__,
              "torch_threads_default": torch.get_num_threads(), "cpus": os.cpu_count(), "load_at_start": [round(x, 2) for x in load_start],
              "load_at_end": [round(x, 2) for x in os.getloadavg()], "cold_start_s": round(cold.wall, 2), "shared_cpu": shared,
              "train": rows, "adapt": adapt_rows, "runtime_s": round(time.perf_counter() - t_start, 1)}
    text = markdown(result, a)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.md").write_text(text)
    (out / "heads.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(res: dict, a) -> str:
    md = ["# Head benchmark", "",
          f"torch {res['torch']}, {res['cpus']} CPUs shared with other jobs (1-minute load average {res['load_at_start'][0]} at the "
          f"start, {res['load_at_end'][0]} at the end; each section states its own), batch {a.batch}, projectors mlp2-gelu of "
          f"width d. Cold start of the first `fit` in a process (not counted): {res['cold_start_s']:.1f} s. Whole benchmark: "
          f"{res['runtime_s']:.0f} s.", ""]
    sh = res["shared_cpu"]
    if sh:
        md += ["## (a) Shared CPU: training alone and beside two busy processes", "",
               f"{sh['case']}, {sh['epochs']} epoch; seconds of fit's training loops (the K = 1 start and both starts of K = 3, the library default; whole fit call in brackets); the busy "
               "runs have two CPU-burning processes started by the bench next to them.", "",
               "| threads | alone (s) | beside 2 busy (s) | slowdown | load alone / busy |", "|---|---|---|---|---|"]
        for policy, label in (("policy", "library policy (1 thread for small heads)"),
                              ("torch_default", f"torch default ({sh['torch_default_threads']} threads; before)")):
            al, bu = sh[f"{policy}_alone"], sh[f"{policy}_busy"]
            md.append(f"| {label} | {al['loop_s']:.2f} ({al['fit_s']:.1f}) | {bu['loop_s']:.2f} ({bu['fit_s']:.1f}) | "
                      f"{sh[f'{policy}_slowdown']:.2f}x | {al['load_1m']} / {bu['load_1m']} |")
        md.append("")
    md += ["## (b) Training throughput per width, pairs/s (ratio = ours / raw torch, same run)", "",
           f"{a.epochs} epoch(s), {a.val_pairs} val pairs, {a.users} users, fastest of {a.repeats}; raw torch runs under the "
           "thread count `fit` picks (one thread for all these heads).", ""]
    stages = [s for s in ("head_sliced", "dataloader", "accelerate") if s in res["train"][0]["pairs_per_s"]]
    md += ["| model | K | d | pairs | clock | raw torch | fit loop | fit total | ratio loop | ratio total | load |" +
           "".join(f" {s} (ratio) |" for s in stages), "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(stages)]
    for r in res["train"]:
        p, q = r["pairs_per_s"], r["ratio"]
        for clk in ("wall", "cpu"):
            loop, rloop = f"{p['fit_loop'][clk]:.0f}", f"**{q['fit_loop'][clk]:.2f}**"
            md.append(f"| {r['model']} | {r['k']} | {r['dim']} | {r['pairs']} | {clk} | {p['raw'][clk]:.0f} | {loop} | "
                      f"{p['fit_total'][clk]:.0f} | {rloop} | {q['fit_total'][clk]:.2f} | {r['load_1m']} |" +
                      "".join(f" {p[s][clk]:.0f} ({q[s][clk]:.2f}) |" for s in stages))
    md += ["", "- fit loop: `fit`'s training loop, timed by fit itself (wall) and by the process CPU clock; fit total: pairs / time of the "
           "whole `fit` call, which also fits the prior and calibration after training (a fixed cost that weighs most on "
           "short runs).", "- cpu rows: pairs / process CPU seconds (waiting for a busy core is not counted): the steadier ratio on a shared "
           "machine, since every loop here runs on one thread.", "",
           f"## (c) adapt: {a.adapt_users} new users x {a.adapt_pairs} pairs, one call", "",
           "| model | K | d | with prior: wall (s) | CPU (s) | plain Adam: wall (s) | CPU (s) | load |", "|---|---|---|---|---|---|---|---|"]
    for r in res["adapt"]:
        md.append(f"| {r['model']} | {r['k']} | {r['dim']} | **{r['prior']['wall_s']:.2f}** | {r['prior']['cpu_s']:.2f} | "
                  f"{r['plain']['wall_s']:.2f} | {r['plain']['cpu_s']:.2f} | {r['load_1m']} |")
    md += ["", "- with prior: the `AdaptConfig` default for models trained with a prior (Gauss-Newton MAP under the "
           "seen users' prior, then the Laplace precision); plain: 300 Adam steps on the reduced-form loss.",
           "- Wall time on a shared machine: beside other jobs the wall clock runs ahead of the CPU clock."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
