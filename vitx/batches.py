"""Batches of a dataset by lists of indices, decoded by DataLoader workers, with unreadable
images skipped (and named) instead of ending a long run.

Both dataset-scale commands need the same thing: `vitx evaluate` (the images of each global
batch, see vitx.distributed) and `vitx explain FOLDER` (one shard per batch). A
batch keeps its place even when some or all of its images cannot be read, so batch numbers,
shard numbers and the per-batch random seeds stay those of the plan.
"""
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import VitxError

# Images per forward pass, the one default of the library and of every command (explain,
# evaluate, inspect, the explorer, the sanity check): small enough for a ViT-B with gradients
# on a laptop CPU or a small GPU, large enough to keep a GPU busy on the tiny reference models.
DEFAULT_BATCH_SIZE = 16


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, C, H, W); B may be 0 when no image of the batch could be read
    labels: torch.Tensor  # (B,) int64
    indices: List[int]  # dataset index of each row
    errors: List[str]  # one message per skipped image


class _Guarded(Dataset):
    """dataset[i] as (i, pixels, label, None), or (i, None, None, message) when reading it
    raised a VitxError. Picklable, so it runs in DataLoader workers."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            pixels, label = self.dataset[index]
        except VitxError as exc:
            return index, None, None, str(exc)
        return index, pixels, int(label), None


def _collate(items) -> Batch:
    good = [(i, x, y) for i, x, y, error in items if error is None]
    errors = [error for *_, error in items if error is not None]
    if good:
        pixels = torch.stack([x for _, x, _ in good])
    else:  # keep the batch's place; its shape is unknown, so an empty (0,) tensor
        pixels = torch.zeros(0)
    return Batch(pixels, torch.tensor([y for _, _, y in good], dtype=torch.int64), [i for i, _, _ in good], errors)


def batch_loader(dataset, batches: Sequence[Sequence[int]], workers: int = 0,
                 skipped: Optional[List[str]] = None):
    """Yield one `Batch` per list of dataset indices in `batches`, in order, decoded by
    `workers` background processes (0: in this process). Each unreadable image is warned
    about and its message appended to `skipped`."""
    if workers < 0:
        raise VitxError(f"--workers must be 0 or more, got {workers}")
    loader = DataLoader(_Guarded(dataset), batch_sampler=[list(b) for b in batches], num_workers=workers,
                        collate_fn=_collate, persistent_workers=False)
    for batch in loader:
        for error in batch.errors:
            warnings.warn(f"skipped: {error}")
            if skipped is not None:
                skipped.append(error)
        yield batch
