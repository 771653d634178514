"""What every experiment shares: config files with ``inherit:``, the ``--quick`` convention, mean +-
std (the library's one convention), logging, timing and output files.

**Configs.** Each experiment folder holds ``config.yaml`` (the full run) and ``quick.yaml`` (a smoke
run that starts with ``inherit: config.yaml`` and overrides only what it names; nested mappings are
merged key by key, lists are replaced). ``--config FILE`` runs any other file, ``--quick`` is short
for ``--config quick.yaml``. Numbers from a quick run are not results.

Run an experiment as a module from the repository root, e.g. ``python -m experiments.t2i.run``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path
from typing import Callable

import yaml

from encoders.atomic import write_json, write_text  # noqa: F401  (re-exported for the experiments)
from pal_mm.fewshot import mean_std  # noqa: F401  (the one mean +- std convention: sample std, ddof = 1)

__all__ = ["ROOT", "Clock", "add_config_args", "config_path", "deep_merge", "load_config", "machine", "make_log",
           "mean_std", "repo_path", "write_json", "write_text"]

ROOT = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: str | os.PathLike) -> dict:
    """A YAML config; ``inherit: other.yaml`` (relative to the file, may inherit again) is merged underneath."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"error: {path}: a config file holds a mapping")
    parent = cfg.pop("inherit", None)
    return deep_merge(load_config(path.parent / parent), cfg) if parent else cfg


def add_config_args(parser: argparse.ArgumentParser, here: Path) -> argparse.ArgumentParser:
    """``--config``, ``--quick`` and ``--out`` (default ``<here>/results``)."""
    parser.add_argument("--config", default=None, help=f"YAML config (default {here.name}/config.yaml)")
    parser.add_argument("--quick", action="store_true", help="smoke run: quick.yaml (small data, short training; not results)")
    parser.add_argument("--out", default=str(here / "results"), help=f"output directory (default experiments/{here.name}/results)")
    return parser


def config_path(args: argparse.Namespace, here: Path) -> Path:
    """The config file the arguments name: ``--config``, else quick.yaml with ``--quick``, else config.yaml."""
    if args.config and args.quick:
        raise SystemExit("error: give --config or --quick, not both (quick.yaml is a config file)")
    return Path(args.config) if args.config else here / ("quick.yaml" if args.quick else "config.yaml")


def repo_path(path: str | os.PathLike) -> Path:
    """``path`` as given when absolute, else relative to the repository root (configs name data that way)."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def make_log(tag: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{tag}] {msg}", flush=True)

    return log


class Clock:
    """Wall and process-CPU seconds of a block: ``with Clock() as c: ...``, then ``c.wall``, ``c.cpu``."""

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}


def run_in_processes(run_task: Callable, tasks: list[tuple], init_worker: Callable, initargs: tuple, jobs: int,
                     on_result: Callable[[dict], None]) -> list[dict]:
    """``run_task(*t)`` for every ``t`` in ``tasks``, in ``jobs`` spawned processes set up by
    ``init_worker(*initargs)`` (jobs <= 1: in this process, torch's thread count restored afterwards);
    results in task order, each passed to ``on_result`` as it arrives. ``run_task`` and ``init_worker``
    must be module-level functions (they are pickled by name)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    done = []
    if jobs <= 1:
        before = torch.get_num_threads()
        init_worker(*initargs)
        try:
            for t in tasks:
                done.append(run_task(*t))
                on_result(done[-1])
        finally:
            torch.set_num_threads(before)
        return done
    ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init_worker, initargs=initargs) as pool:
        for r in pool.map(run_task, *zip(*tasks)):
            done.append(r)
            on_result(r)
    return done
