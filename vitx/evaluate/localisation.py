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
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError

POINTING_TOLERANCE = 15
MASK_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_SUFFIXES = MASK_SUFFIXES + (".jpg", ".jpeg", ".webp")


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


# ------------------------------------------------------------------------------ loaders


def mask_folder(folder) -> List[Tuple[Path, np.ndarray]]:
    """A folder with `images/` and `masks/`: each image's mask is the file with the same
    stem in `masks/` (any non-zero pixel = object). Images without a mask are an error."""
    from ..imaging import read_image

    folder = Path(folder)
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise VitxError(f"{folder} needs an images/ and a masks/ folder (same file stems)")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in MASK_SUFFIXES}
    pairs = []
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem not in by_stem:
            raise VitxError(f"no mask for {path.name} in {masks} (expected {path.stem}.png)")
        mask = np.asarray(read_image(by_stem[path.stem]).convert("L")) > 0
        if mask.shape != read_image(path).size[::-1]:
            raise VitxError(f"mask {by_stem[path.stem].name} is {mask.shape[1]}x{mask.shape[0]}, "
                            f"its image {path.name} is {read_image(path).size[0]}x{read_image(path).size[1]}")
        pairs.append((path, mask))
    if not pairs:
        raise VitxError(f"no images in {images}")
    return pairs


def gtsegs_ijcv(path, limit: Optional[int] = None) -> Iterator[Tuple[Image.Image, np.ndarray]]:
    """(image, mask) pairs of the ImageNet segmentation set `gtsegs_ijcv.mat` (Guillaumin et
    al. 2014; 4,276 images), as Chefer et al. read it.

    The file is MATLAB v7.3, i.e. HDF5 (needs `h5py`): `value/img` and `value/gt` are (n, 1)
    arrays of object references; image i is `f[f['value/img'][i, 0]]`, stored (3, W, H)
    uint8 -> transposed to (H, W, 3); its mask is `f[f[f['value/gt'][i, 0]][0, 0]]`, stored
    (W, H) -> transposed to (H, W), non-zero = object.
    """
    path = Path(path)
    if not path.is_file():
        raise VitxError(f"segmentation file not found: {path}")
    try:
        import h5py
    except ImportError:
        raise VitxError("reading gtsegs_ijcv.mat (MATLAB v7.3 = HDF5) needs h5py: pip install h5py") from None
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise VitxError(f"cannot read {path} as a MATLAB v7.3 / HDF5 file: {exc}") from None
    with handle:
        try:
            images, masks = handle["value/img"], handle["value/gt"]
        except KeyError:
            raise VitxError(f"{path} has no value/img and value/gt: not the gtsegs_ijcv.mat layout") from None
        count = images.shape[0] if limit is None else min(limit, images.shape[0])
        for index in range(count):
            image = np.array(handle[images[index, 0]]).transpose(2, 1, 0)
            mask = np.array(handle[handle[masks[index, 0]][0, 0]]).transpose(1, 0)
            yield Image.fromarray(np.ascontiguousarray(image.astype(np.uint8))), mask > 0


def localisation_command(model_name, checkpoint, device, masks, methods, count, batch_size, out_dir, options=None):
    """`vitx evaluate --masks PATH`: scores to localisation.json / localisation.md and the terminal."""
    import json
    from itertools import islice

    import click

    from ..markdown import markdown_table
    from ..models import load_model

    source = Path(masks)
    if not source.exists():
        raise VitxError(f"masks not found: {source}")
    pairs = gtsegs_ijcv(source, count) if source.is_file() else islice(mask_folder(source), count)
    model = load_model(model_name, checkpoint=checkpoint, device=device)
    results = evaluate_localisation(model, pairs, methods, batch_size=batch_size, options=options, progress=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "localisation.json").write_text(json.dumps({"masks": str(source), "results": results}, indent=1))
    header = ["method", "pixel accuracy", "mIoU", "mAP", "pointing game", "images"]
    table = markdown_table(header, [[m, f"{r['pixel_accuracy']:.4f}", f"{r['mIoU']:.4f}", f"{r['mAP']:.4f}",
                                     f"{r['pointing_game']:.4f}", r["count"]] for m, r in results.items()])
    (out / "localisation.md").write_text(f"Localisation on {source} (maps thresholded at their mean)\n\n{table}\n")
    click.echo(table)
    click.echo(f"-> {out / 'localisation.json'}")
