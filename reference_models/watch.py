"""`vitx train --log tensorboard`: training you can watch while it runs.

Every finished epoch writes its train loss, test accuracy and learning rate as scalars and,
for a ViT or DeiT, the rollout of a few fixed test images (and the distillation token's map)
as images, through `torch.utils.tensorboard` into OUT/tensorboard (`tensorboard --logdir
OUT/tensorboard`). Logging must not change what is trained: the maps are computed under a
forked RNG, so a run with `--log tensorboard` and its resumed continuation give the same
weights as one without. On resume, events after the last saved epoch (written by a run
that was stopped before saving it) are purged, so each epoch appears once.
"""
import numpy as np
import torch

from vitx.errors import VitxError

LOGS = ("none", "tensorboard")
WATCHED_IMAGES = 4  # the first test images, the same every epoch


class NoLog:
    """`--log none`: nothing written."""

    def epoch(self, model, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorboardLog:
    def __init__(self, folder, images: torch.Tensor, start_epoch: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise VitxError("--log tensorboard needs the tensorboard package: pip install 'vitx[tensorboard]'") from None
        self.images = images
        self.writer = SummaryWriter(str(folder), purge_step=start_epoch + 1 if start_epoch else None)

    def epoch(self, model, row: dict) -> None:
        step = row["epoch"]
        self.writer.add_scalar("loss/train", row["train_loss"], step)
        self.writer.add_scalar("accuracy/test", row["test_accuracy"], step)
        self.writer.add_scalar("lr", row["lr"], step)
        for name, tiles in attention_tiles(model, self.images).items():
            self.writer.add_images(f"attention/{name}", np.stack(tiles), step, dataformats="NHWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def attention_tiles(model, images: torch.Tensor) -> dict:
    """{map name: [overlay (H, W, 3) uint8 per image]}: the cls token's rollout, and the
    dist token's for a DeiT; empty for a model without attention (the CNN teacher)."""
    from vitx.attribution.api import explain
    from vitx.imaging import overlay

    from .vit import ViT

    if not isinstance(model, ViT):
        return {}
    tokens = ("cls", "dist") if model.dist_token is not None else ("cls",)
    tiles = {}
    with torch.random.fork_rng(devices=[]):  # the training's RNG streams stay untouched
        for token in tokens:
            explanation = explain(model, images, method="rollout", token=token)
            tiles[f"rollout_{token}"] = [overlay(_upscaled(view), m.numpy())
                                         for view, m in zip(explanation.views, explanation.maps)]
    return tiles


def _upscaled(view, scale: int = 4):
    """Nearest-neighbour x4: a 28 px digit is too small to read in TensorBoard's image tab."""
    return np.repeat(np.repeat(view, scale, 0), scale, 1)


def open_log(kind: str, folder, test_set, start_epoch: int):
    """The logger of `--log kind` (validated before any training starts, see runs.py)."""
    if kind == "tensorboard":
        images = torch.stack([test_set[i][0] for i in range(min(WATCHED_IMAGES, len(test_set)))])
        return TensorboardLog(folder, images, start_epoch)
    return NoLog()
