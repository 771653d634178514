"""Work split across the processes of a ``torch.distributed`` run (``accelerate launch`` or
``torchrun``): each process encodes its share of the inputs and every process ends with all the
vectors. Outside such a run (one process) every helper is a no-op."""

from __future__ import annotations

from typing import Any


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) when no process group is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable Python object; stays in memory)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
