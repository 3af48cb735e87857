"""Distributed data parallel: one process per GPU (or CPU rank), started by torchrun.

torchrun (or srun + torchrun on a cluster) sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; without them the run is a single process and nothing here initialises a process
group. NCCL joins GPU ranks, gloo CPU ones. Rank 0 alone prepares the cache and folds and writes
checkpoints and logs; the others wait at a barrier and learn of any data error from rank 0, so a
bad case stops every rank with the same message instead of leaving them hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from brats_cli.errors import BratsError, InputError


@dataclass(frozen=True)
class Context:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> Context:
    """The process's rank and device; joins the process group when launched by torchrun.

    `device` is "cpu" or "cuda" (already resolved); each CUDA rank takes GPU LOCAL_RANK."""
    if not launched_by_torchrun():
        return Context(0, 0, 1, torch.device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)
        resolved = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        resolved = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=resolved if device == "cuda" else None)
    return Context(rank, local_rank, world, resolved)


def stop(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def share(context: Context, value: Any) -> Any:
    """Rank 0's `value` on every rank (plain picklable data)."""
    if not context.distributed:
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_outcome(context: Context, value: Any, error: BratsError | None) -> Any:
    """Rank 0's result, or rank 0's error raised again on every rank."""
    outcome = share(context, (value, None if error is None else (type(error).__name__, str(error))))
    result, failure = outcome
    if failure is not None:
        if error is not None:
            raise error
        raise InputError(failure[1])
    return result


def sum_across_ranks(context: Context, values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64, on the rank's device for NCCL)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()
