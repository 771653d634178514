"""How many CPU threads torch uses while a small preference head is trained or new users are fitted.

A head is a few small MLPs on embedding vectors: its matrices are too small to gain much from
splitting them over cores, and torch's OpenMP worker threads spin-wait between operations. When
the CPU is shared with other processes (a laptop, a CI machine, two jobs on one server) the spinning
threads fight for the cores: measured on 2 shared cores, a PAL-B head with two intra-op threads
trained 14-40x slower beside two busy processes than with one thread, at every width from 32 to
1024 (``experiments/bench/results/heads.md``). One thread costs at most ~1.6x on an *idle* machine
(d = 512-1024), so below :data:`WORK_LIMIT` the library runs heads on one intra-op thread and puts
torch's setting back afterwards. Bigger work (wide heads at large batches, fine-tuned encoders)
keeps torch's setting.

``PAL_MM_HEAD_THREADS=N`` forces N intra-op threads for heads (``0``: leave torch's setting alone).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from .errors import PalMMError

#: multiply-adds of one forward step (see :func:`head_step_work`) below which heads use one thread;
#: PAL-B, K = 8, d = 1024, batch 64 is ~1.8e9
WORK_LIMIT = 2**31
#: pairs per step assumed for adaptation (it runs many small batched steps over all new users' pairs)
STEP_PAIRS = 64
ENV = "PAL_MM_HEAD_THREADS"


def head_step_work(batch: int, prompt_dim: int, item_dim: int, width: int, k: int) -> int:
    """About the multiply-adds of one forward step of a head with ``mlp2`` projectors: ``k + 1`` maps
    (PAL-B's item map and K prototype maps) of ``in x d + 2 d x d`` weights each, per pair."""
    return int(batch) * (int(k) + 1) * (max(int(prompt_dim), int(item_dim)) + 2 * int(width)) * int(width)


def head_threads(work: int | None) -> int | None:
    """Intra-op threads for head work of ``work`` multiply-adds per step (None: unknown or large);
    None means "keep torch's setting"."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        try:
            n = int(forced)
        except ValueError:
            n = -1
        if n < 0:
            raise PalMMError(f"{ENV} must be a whole number of threads >= 0, got {forced!r}")
        return n or None
    return 1 if work is not None and work < WORK_LIMIT else None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged); the previous number is
    restored afterwards, also after an error."""
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def for_head(work: int | None):
    """``with for_head(work):`` - the thread policy above for one block of head work."""
    return torch_threads(head_threads(work))
