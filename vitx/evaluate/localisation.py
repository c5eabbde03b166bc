"""Localisation: does a method's map cover the object? (segmentation masks as ground truth)

The protocol of Chefer et al. (CVPR 2021, their `imagenet_seg_eval.py`), on the ImageNet
segmentation set of Guillaumin et al. (`gtsegs_ijcv.mat`) or any folder of images and masks:

1. explain the predicted class; upsample the patch map to the mask's size (bilinear,
   align_corners=False) and min-max normalise it to [0, 1] per image;
2. threshold it at its mean: foreground where map > mean, background elsewhere;
3. pixel accuracy = correct pixels / all pixels, summed over the data set; IoU of the
   background and of the foreground class, each = total intersection / total union over the
   data set, mIoU = their mean;
4. AP per image: average precision of the two-class soft prediction (1 - map for background,
   map for foreground) against the one-hot mask, all pixels of both channels together
   (sklearn's `average_precision_score` definition: sum over thresholds of
   (R_n - R_(n-1)) P_n); mAP = mean over images;
5. pointing game (Zhang et al. 2016): a hit when the map's maximum lies within `tolerance`
   pixels (15 in the paper, in mask pixels) of the mask; images with an empty mask are skipped.

Masks go through the same resize / crop as the image (the model's eval transform, with
nearest-neighbour interpolation), so map and mask share the frame of the view.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError

POINTING_TOLERANCE = 15


def normalised_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, h, w) patch maps -> (B, H, W) upsampled bilinearly, min-max normalised per image."""
    up = F.interpolate(maps[:, None].double(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = up.flatten(1).amin(1)[:, None, None]
    high = up.flatten(1).amax(1)[:, None, None]
    return (up - low) / torch.where(high > low, high - low, torch.ones_like(high))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall step curve: sum_n (R_n - R_(n-1)) P_n over the
    distinct score thresholds, from high to low (sklearn's definition; nan without positives)."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = labels.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each run of equal scores
    true_positives = np.cumsum(labels)[last]
    predicted = last + 1
    precision = true_positives / predicted
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pointing_hit(score: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Is the maximum of `score` (first one in row-major order) within `tolerance` pixels of the mask?"""
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    ys, xs = np.nonzero(mask)
    return bool(((ys - y) ** 2 + (xs - x) ** 2).min() <= tolerance ** 2)


@dataclass
class LocalisationMeter:
    """Sums over a data set (pixel accuracy, IoU) and per-image values (AP, pointing game)."""

    tolerance: float = POINTING_TOLERANCE
    correct: int = 0
    labelled: int = 0
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2))
    precisions: List[float] = field(default_factory=list)
    hits: List[bool] = field(default_factory=list)

    def add(self, maps: torch.Tensor, masks: Sequence[np.ndarray]) -> "LocalisationMeter":
        """maps: (B, h, w) patch maps; masks: B boolean (H, W) arrays (one size per image allowed)."""
        for patch_map, mask in zip(maps, masks):
            mask = np.asarray(mask).astype(bool)
            score = normalised_maps(patch_map[None], mask.shape)[0].numpy()
            predicted = score > score.mean()
            self.correct += int((predicted == mask).sum())
            self.labelled += mask.size
            for k, (p, t) in enumerate(((~predicted, ~mask), (predicted, mask))):
                self.intersection[k] += (p & t).sum()
                self.union[k] += (p | t).sum()
            labels = np.stack([~mask, mask]).astype(np.float64)
            scores = np.stack([1 - score, score])
            self.precisions.append(np.nan_to_num(average_precision(labels, scores)))
            if mask.any():
                self.hits.append(pointing_hit(score, mask, self.tolerance))
        return self

    def result(self) -> Dict[str, float]:
        iou = self.intersection / (np.spacing(1) + self.union)
        return {"pixel_accuracy": self.correct / (np.spacing(1) + self.labelled), "iou_background": float(iou[0]),
                "iou_foreground": float(iou[1]), "mIoU": float(iou.mean()),
                "mAP": float(np.mean(self.precisions)) if self.precisions else float("nan"),
                "pointing_game": float(np.mean(self.hits)) if self.hits else float("nan"),
                "count": len(self.precisions)}


def mask_transform(config: dict):
    """The model's resize / crop for masks: nearest-neighbour, so labels stay 0 / 1."""
    from ..inputs import split_transform

    geometric, _ = split_transform({**config, "interpolation": "nearest"})
    return lambda mask: np.asarray(geometric(Image.fromarray(np.uint8(mask) * 255, "L"))) > 127


def evaluate_localisation(model, samples: Iterable[Tuple[object, np.ndarray]], methods: Sequence[str],
                          batch_size: int = DEFAULT_BATCH_SIZE, tolerance: float = POINTING_TOLERANCE, progress: bool = False,
                          options: Optional[Dict[str, dict]] = None) -> Dict[str, Dict[str, float]]:
    """Localisation scores of each method (and of a random map) on (image, mask) pairs.

    image: a path, PIL image or array; mask: (H, W) booleans in the image's frame. Maps
    explain the predicted class. Returns {method: {pixel_accuracy, mIoU, mAP, pointing_game, ...}}.
    """
    from tqdm import tqdm

    from ..attribution.api import explain
    from ..registry import data_config

    if not methods:
        raise VitxError("no methods to evaluate")
    options = options or {}
    to_frame = mask_transform(data_config(model))
    meters = {name: LocalisationMeter(tolerance) for name in list(methods) + ["random"]}
    generator = torch.Generator().manual_seed(0)
    batch: List[tuple] = []

    def flush():
        images = [image for image, _ in batch]
        masks = [to_frame(mask) for _, mask in batch]
        for method in methods:
            exp = explain(model, images, method=method, batch_size=batch_size, **options.get(method, {}))
            meters[method].add(exp.maps, masks)
            shape = exp.maps.shape
        meters["random"].add(torch.rand(shape, generator=generator), masks)
        batch.clear()

    for sample in tqdm(samples, desc="localisation", disable=not progress, leave=False):
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if meters["random"].labelled == 0:
        raise VitxError("no images with masks to evaluate")
    return {name: meter.result() for name, meter in meters.items()}
