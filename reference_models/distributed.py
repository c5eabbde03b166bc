"""DDP for `vitx train` under torchrun: one process per GPU (or CPU slot), gradients averaged
across ranks, checkpoints written by rank 0 only.

Kept apart from the trainer so train.py only asks four questions: where am I (`setup`),
what do I run forward (`wrap`), which images are mine (`loader_order`), and what is the
loss of the whole step (`mean_across`). Without torchrun every answer is the single-process
one and nothing is communicated.

Same global batch, same samples: the single process shuffles with a DataLoader generator
seeded `seed * 1000 + epoch`; under DDP `RankOrder` draws that very permutation and gives
rank r the r-th slice of each global batch, so global batch k holds the same images either
way (each rank takes batch_size / W of them) and the averaged gradient is the
single-process gradient up to float summation order (tests/test_distributed.py).
"""
from typing import Tuple

import torch
from torch.utils.data import Sampler

from vitx.errors import VitxError
from vitx.distributed import World, barrier, init_world, rank_device


def setup(device: str) -> Tuple[World, torch.device]:
    """Join torchrun's group (if launched by it); this rank's device (its own GPU when present)."""
    world = init_world(device)
    return world, torch.device(rank_device(world, device) if world.distributed else device)


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module to run forward: DDP around `model` under torchrun, else `model` itself.
    Save, evaluate and EMA the unwrapped `model` (same parameters)."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def local_batch_size(batch_size: int, world: World) -> int:
    if batch_size % world.size:
        raise VitxError(f"--batch-size {batch_size} is the global batch: it must divide by the {world.size} processes")
    return batch_size // world.size


class RankOrder(Sampler):
    """This rank's images of one epoch, in the single-process order.

    A single-process DataLoader(shuffle=True, generator=g) first draws its workers' base seed
    from g, then the permutation; this sampler draws the same two. Global batch k is
    order[k*B:(k+1)*B] (incomplete last batch dropped) and rank r takes its r-th slice of
    B / W images, so a DistributedSampler's strided split (same images per step, but not
    the single-process permutation) is not used.
    """

    def __init__(self, size: int, world: World, seed: int, epoch: int, batch_size: int):
        self.size, self.world, self.seed, self.epoch, self.batch_size = size, world, seed, epoch, batch_size

    def _order(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base-seed draw
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        order, local = self._order(), self.batch_size // self.world.size
        for start in range(0, self.size - self.batch_size + 1, self.batch_size):
            yield from order[start + self.world.rank * local:start + (self.world.rank + 1) * local]

    def __len__(self):
        return (self.size // self.batch_size) * (self.batch_size // self.world.size)


def loader_order(dataset, world: World, seed: int, epoch: int, batch_size: int) -> dict:
    """DataLoader keyword arguments that shuffle epoch `epoch` (see the module docstring);
    `batch_size` is the global batch."""
    if not world.distributed:
        return {"shuffle": True, "generator": torch.Generator().manual_seed(seed * 1000 + epoch)}
    return {"sampler": RankOrder(len(dataset), world, seed, epoch, batch_size)}


def mean_across(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar over the ranks (e.g. the summed loss, for the history)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.size


__all__ = ["RankOrder", "World", "barrier", "local_batch_size", "loader_order", "mean_across", "setup", "wrap"]
