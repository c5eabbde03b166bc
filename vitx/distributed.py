"""torch.distributed under torchrun: which rank this process is, which batches are its own,
and gathering the per-batch results on rank 0.

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE, LOCAL_RANK
and the rendezvous address; `init_world` joins the process group once (NCCL on GPUs, gloo
on CPUs). Without torchrun the world is one process and nothing here talks to anyone.

Sharding is by batch, not by image: the global list of batches (the same seed, images and
batch size as a single process would use) is dealt round-robin to the ranks. Every batch
is then computed exactly as a single process computes it (a batched forward can differ in
the last bits with the batch's composition), and rank 0 puts the per-batch results back in
batch order, so the gathered result is the single-process one.
"""
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

from .errors import VitxError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(device: Optional[str] = "auto") -> World:
    """Join torchrun's process group (once per process) and return this process's place in it.

    `device`: 'auto' or 'cuda' use NCCL with one GPU per local rank when GPUs exist; 'cpu' (or
    no GPU) uses gloo.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and str(device or "auto").split(":")[0] in ("auto", "cuda")
    if not dist.is_initialized():
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise VitxError(
                    f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): start at most "
                    "as many processes per node as GPUs (torchrun --nproc_per_node), or pass --device cpu"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        import atexit

        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def rank_device(world: World, device: Optional[str] = "auto") -> Optional[str]:
    """The device this rank computes on: its own GPU (cuda:LOCAL_RANK) under torchrun with
    GPUs, else what the user asked for."""
    if world.distributed and torch.cuda.is_available() and str(device or "auto").split(":")[0] in ("auto", "cuda"):
        return f"cuda:{world.local_rank}"
    return device


def batch_plan(indices: Sequence[int], batch_size: int) -> List[List[int]]:
    """The global batches: consecutive runs of `batch_size` dataset indices (the last may be short)."""
    if batch_size < 1:
        raise VitxError(f"batch size must be at least 1, got {batch_size}")
    indices = list(indices)
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def my_batch_ids(num_batches: int, world: World) -> List[int]:
    """Global batch numbers this rank computes: rank, rank + size, rank + 2 size, ..."""
    return list(range(world.rank, num_batches, world.size))


def gather_to_main(obj: Any, world: World) -> Optional[List[Any]]:
    """Every rank's `obj` as a list in rank order on rank 0; None on the other ranks."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()
