"""Several processes training one model, as SageMaker's PyTorch container starts them: ``torchrun``.

With ``sagemaker_torch_distributed_enabled``, AWS's training toolkit runs ``torchrun --nnodes <hosts>
--nproc_per_node <GPUs per host> train.py ...``; torchrun gives each process ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` and the rendezvous address. Each process trains a ``DistributedDataParallel`` copy on
its shard of every batch (``batch-size`` is the global batch, split between the processes, so the
learning rate means what it means with one process); rank 0 alone prints the metric lines and writes
files. Without torchrun's variables there is one process and nothing here does anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from trainlib.errors import TrainingError

T = TypeVar("T")

# A collective that waits longer than this has lost a process: the job fails rather than hangs (torchrun
# also ends every process once one fails). Longer than any one step or evaluation pass between two.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes; ``World()`` is a job of one."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Whether this process prints and writes for the job (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


# A job of one process: the default wherever a world is asked for.
ALONE = World()


def join(device_type: str, environ: dict[str, str] | None = None) -> World:
    """The world torchrun started this process in (NCCL between GPUs, gloo on CPUs), or ``World()``."""
    environ = dict(os.environ) if environ is None else environ
    size = int(environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return ALONE
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    world = World(size, rank, local_rank, backend)
    # One write of the whole line: the processes share torchrun's output, and print's separate writes of
    # the text and its newline interleaved with another process's line.
    sys.stdout.flush()
    line = f"distributed: world size {size}, rank {rank}, local rank {local_rank}, backend {backend}\n"
    os.write(sys.stdout.fileno(), line.encode())
    return world


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(batch_size: int, world: World) -> int:
    """Each process's share of the global batch."""
    if batch_size < world.size:
        raise TrainingError(
            f"batch-size {batch_size} is the batch of all {world.size} processes together; "
            f"it must be at least {world.size}"
        )
    return batch_size // world.size


def shard(items: Sequence[T], world: World) -> list[T]:
    """This process's share of ``items`` for a pass that every item must see once (evaluation)."""
    return list(items[world.rank :: world.size])


def unshard(parts: list[list[T]]) -> list[T]:
    """Every process's ``shard`` back in the original order."""
    out: list[T] = []
    for index in range(max((len(p) for p in parts), default=0)):
        out.extend(part[index] for part in parts if index < len(part))
    return out


def gather(world: World, items: list[Any]) -> list[list[Any]]:
    """Every process's ``items``, in rank order (each process gets them all)."""
    if not world.distributed:
        return [items]
    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, items)
    return parts


def total(world: World, *values: float) -> list[float]:
    """The sums over every process of each of ``values``."""
    if not world.distributed:
        return list(values)
    # NCCL reduces only tensors on the GPU; gloo, on the CPU.
    device = torch.device("cuda", world.local_rank) if world.backend == "nccl" else torch.device("cpu")
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()
