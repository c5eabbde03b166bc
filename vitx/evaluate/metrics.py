"""Faithfulness of explanations: does removing what a map calls relevant hurt the model?

- Perturbation tests (Chefer et al., CVPR 2021): for p = 0.1 ... 0.9 remove the most
  relevant (positive test: lower AUC is better) or least relevant (negative test: higher
  is better) fraction of patches, replaced by a baseline; record top-1 accuracy and the
  target-class probability.
- Deletion / insertion (Petsiuk et al. 2018, RISE): remove (insert) patches from most to
  least relevant, 0 ... 100%, and integrate the target-class probability (deletion: lower
  is better; insertion: higher is better).
The score is the target-class probability for a classifier, or any `Target`'s score (e.g.
the projection of an embedding on the unperturbed image's, SimilarityTarget(...,
measure="projection"), whose gradient, unlike the cosine's, does not vanish at the unperturbed
image: vitx.attribution.targets) for a headless model; then there is no accuracy curve. Removed patches become a baseline
(black, the mean, a blur) or, with the ROAD protocol (vitx.evaluate.road), a noisy linear
imputation from the kept pixels, which does not leave the removed shape in the image.
Every perturbation step of a batch is one forward pass. A random map is always evaluated
alongside, so a number means something.
"""
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..baselines import BASELINES, DEFAULT_BASELINE, baseline_images
from ..errors import VitxError

if TYPE_CHECKING:
    from .confidence import Interval

PERTURBATION_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
DELETION_STEPS = 10
PROTOCOLS = BASELINES + ("road",)
TESTS = ("positive", "negative", "deletion", "insertion")


def auc(values: Sequence[float], xs: Sequence[float]) -> float:
    """Area under a curve by the trapezoid rule, divided by the x range (so it is in the
    units of the values: a constant curve c has AUC c)."""
    values, xs = np.asarray(values, dtype=np.float64), np.asarray(xs, dtype=np.float64)
    if len(xs) < 2:
        return float(values[0]) if len(values) else float("nan")
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(xs)) / 2)
    return area / float(xs[-1] - xs[0])


def removal(pixels: torch.Tensor, protocol: str, config: dict, generator: Optional[torch.Generator] = None):
    """fn(masks (B, 1, H, W), 1 = removed) -> the images with those pixels removed by `protocol`:
    a baseline image (BASELINES) pasted in, or ROAD's noisy linear imputation."""
    if protocol == "road":
        from .road import road_images

        return lambda masks: road_images(pixels, masks, config, generator=generator).to(pixels)
    fill = baseline_images(pixels, protocol, config)
    return lambda masks: pixels * (1 - masks) + fill * masks


def patch_order(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, h, w) maps -> (B, h*w) patch indices from most to least relevant (ties broken
    at random, deterministically for a seeded generator)."""
    flat = maps.flatten(1).float()
    jitter = torch.rand(flat.shape, generator=generator) * 1e-6 * (flat.abs().amax(1, keepdim=True) + 1e-12)
    return torch.argsort(flat + jitter.to(flat.device), dim=1, descending=True)


def _masks(order: torch.Tensor, counts: Sequence[int], grid, size) -> torch.Tensor:
    """(steps, B, 1, H, W) masks, 1 where the first `count` patches of `order` are."""
    batch, patches = order.shape
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(patches, device=order.device).expand(batch, -1))
    stacked = torch.stack([(ranks < c).float() for c in counts])  # (steps, B, h*w)
    stacked = stacked.view(len(counts) * batch, 1, *grid)
    return F.interpolate(stacked, size=size, mode="nearest").view(len(counts), batch, 1, *size)


@torch.no_grad()
def _curve(model, remove, masks, labels, targets, target=None):
    """(accuracy (B, steps) or None, score (B, steps)): the class accuracy and probability of
    `targets`, or, given a `Target`, its score and no accuracy."""
    from ..attribution.targets import as_logits

    accuracy, score = [], []
    for mask in masks:
        output = model(remove(mask))
        if target is not None:
            score.append(target.score(output).float())
            continue
        logits = as_logits(output)
        accuracy.append((logits.argmax(-1) == labels).float())
        score.append(logits.float().softmax(-1).gather(1, targets[:, None])[:, 0])
    return (torch.stack(accuracy, 1) if accuracy else None), torch.stack(score, 1)


@dataclass
class Curves:
    """Per-image curves of one method: (B, steps) tensors for each test."""

    positive_accuracy: List[torch.Tensor] = field(default_factory=list)
    positive_probability: List[torch.Tensor] = field(default_factory=list)
    negative_accuracy: List[torch.Tensor] = field(default_factory=list)
    negative_probability: List[torch.Tensor] = field(default_factory=list)
    deletion: List[torch.Tensor] = field(default_factory=list)
    insertion: List[torch.Tensor] = field(default_factory=list)

    def mean(self) -> Dict[str, List[float]]:
        return {name: torch.cat(parts).mean(0).tolist() for name, parts in vars(self).items() if parts}


def perturbation_curves(model, pixels, maps, labels, targets, config, baseline=DEFAULT_BASELINE, curves=None, target=None,
                        tests: Sequence[str] = TESTS) -> Curves:
    """Add one batch's curves to `curves`. maps: (B, h, w) on any device; baseline: one of
    PROTOCOLS; target: a `Target` whose score is recorded instead of the class probability
    (then labels and targets are unused and there are no accuracy curves); tests: a subset
    of TESTS (ROAD's imputation is costly)."""
    curves = curves or Curves()
    grid, size = tuple(maps.shape[-2:]), tuple(pixels.shape[-2:])
    patches = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(0)
    order = patch_order(maps, generator).to(pixels.device)
    remove = removal(pixels, baseline, config, torch.Generator().manual_seed(0))
    counts = [round(p * patches) for p in PERTURBATION_FRACTIONS]
    steps = [round(i * patches / DELETION_STEPS) for i in range(DELETION_STEPS + 1)]
    runs = {"positive": (order, counts, False), "negative": (order.flip(1), counts, False),
            "deletion": (order, steps, False), "insertion": (order, steps, True)}
    for test in tests:
        ranked, amounts, invert = runs[test]
        masks = _masks(ranked, amounts, grid, size)
        accuracy, score = _curve(model, remove, 1 - masks if invert else masks, labels, targets, target)
        if test in ("deletion", "insertion"):
            getattr(curves, test).append(score.cpu())
            continue
        getattr(curves, f"{test}_probability").append(score.cpu())
        if accuracy is not None:
            getattr(curves, f"{test}_accuracy").append(accuracy.cpu())
    return curves


def _xs(test: str):
    """The x positions of a curve: perturbation fractions, or deletion/insertion steps."""
    return PERTURBATION_FRACTIONS if test.startswith(("positive", "negative")) else \
        [i / DELETION_STEPS for i in range(DELETION_STEPS + 1)]


def summarise(curves: Curves) -> Dict[str, float]:
    """AUCs of the mean curves (positive/deletion: lower is better; negative/insertion: higher),
    for the tests that were run ("positive_probability_auc" holds a Target's score when one
    was given)."""
    return {f"{test}_auc": auc(values, _xs(test)) for test, values in curves.mean().items()}


def intervals(curves: Curves, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Dict[str, "Interval"]:
    """{metric: Interval}: each AUC of `summarise` with its percentile-bootstrap interval over
    images (vitx.evaluate.confidence; the same seeded resamples for every method and metric,
    streamed in bounded memory)."""
    from .confidence import bootstrap_mean, per_image_auc

    out = {}
    for test, parts in vars(curves).items():
        if parts:
            values = per_image_auc(torch.cat(parts).double().numpy(), _xs(test))
            out[f"{test}_auc"] = bootstrap_mean(values, resamples, seed, level)
    return out


def per_image_aucs(curves: Curves) -> Dict[str, list]:
    """{metric: per-image AUCs} (their mean is `summarise`'s AUC): for paired comparisons."""
    from .confidence import per_image_auc

    return {f"{test}_auc": per_image_auc(torch.cat(parts).double().numpy(), _xs(test)).tolist()
            for test, parts in vars(curves).items() if parts}


def _timed(device, function):
    """(result, seconds) of `function()`, waiting for the device to finish."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def _merge(parts, names) -> Dict[str, Curves]:
    """Per-batch curves, in batch order, into one Curves per method."""
    curves = {name: Curves() for name in names}
    for _, per_method in sorted(parts, key=lambda part: part[0]):
        for name in names:
            for test, values in vars(per_method[name]).items():
                getattr(curves[name], test).extend(values)
    return curves


def _with_baseline(methods, options, baseline) -> Dict[str, dict]:
    """Each method's options, with the evaluation's baseline for every method that takes one
    and was not given its own: a method that removes pixels one way and is scored removing them
    another is measured on the mismatch (vitx.baselines)."""
    from ..registry import get_explainer

    merged = {}
    for name in methods:
        own = dict(options.get(name, {}))
        if baseline == "road":  # an imputation, not a baseline image: methods keep their own default
            merged[name] = own
            continue
        if "baseline" not in own and any(o.name == "baseline" for o in get_explainer(name).cls.options):
            own["baseline"] = baseline
        merged[name] = own
    return merged


def evaluate_methods(model, batches, methods: Sequence[str], baseline=DEFAULT_BASELINE, seed=0, progress=False,
                     options: Optional[Dict[str, dict]] = None, costs: Optional[dict] = None,
                     batch_ids: Optional[Iterable[int]] = None, world=None, bootstrap: int = 0):
    """Faithfulness of each method (and of a random map) on labelled batches.

    batches: iterable of (pixels (B, C, H, W) preprocessed, labels (B,)). Targets are the
    model's predicted classes (the class each map explains). Returns
    {method: {"auc": {...}, "curves": {...}}}, deterministic for a fixed seed. `costs`, when
    given, is filled with {method: {"seconds_per_image", "cost"}}: the time per image of each
    explanation and its ratio to a plain (no-grad) forward of the same batches (timings vary
    from run to run, so they are kept out of the deterministic result).

    baseline: one of PROTOCOLS ("road": noisy linear imputation, vitx.evaluate.road).
    bootstrap: when > 0, each result also has "interval": {metric: [low, high]}, the 95 %
    percentile-bootstrap interval over images with that many resamples (seeded by `seed`).

    Distributed (vitx.distributed): each rank passes its own batches with their
    global numbers (`batch_ids`) and its `world`; rank 0 gathers every rank's per-batch
    curves (and timings), puts them in batch order and returns the result, the other ranks
    return None. The random map of batch i is drawn from a generator seeded with (seed, i),
    so it does not depend on which rank computes the batch.
    """
    from tqdm import tqdm

    from ..attribution.api import explain
    from ..capture.model_state import evaluation_mode
    from ..models import model_device
    from ..registry import data_config

    if not methods:
        raise VitxError("no methods to evaluate")
    from ..unwrap import unwrap

    model = unwrap(model)
    options = _with_baseline(methods, options or {}, baseline)
    config = data_config(model)
    device = model_device(model)
    names = list(methods) + ["random"]
    parts = []
    ids = itertools.count() if batch_ids is None else iter(batch_ids)
    seconds = dict.fromkeys(list(methods) + ["forward"], 0.0)
    images = 0
    with evaluation_mode(model):
        for pixels, labels in tqdm(batches, desc="evaluate", disable=not progress, leave=False):
            batch_id = next(ids)
            if len(pixels) == 0:  # no image of this batch could be read (vitx.batches)
                continue
            pixels, labels = pixels.to(device), labels.to(device)
            images += len(pixels)
            with torch.no_grad():
                seconds["forward"] += _timed(device, lambda: model(pixels))[1]
            explanations = {}
            for m in methods:
                explanations[m], took = _timed(device, lambda m=m: explain(
                    model, pixels, method=m, batch_size=len(pixels), **options.get(m, {})))
                seconds[m] += took
            first = explanations[methods[0]]
            targets = first.targets.to(device)  # every map explains the predicted class
            maps = {m: e.maps for m, e in explanations.items()}
            generator = torch.Generator().manual_seed(seed * 1_000_003 + batch_id)
            maps["random"] = torch.rand(first.maps.shape, generator=generator)
            per_method = {name: Curves() for name in names}
            for name in names:
                perturbation_curves(model, pixels, maps[name].to(device), labels, targets, config, baseline,
                                    per_method[name])
            parts.append((batch_id, per_method))
    if world is not None and world.distributed:
        from ..distributed import gather_to_main

        gathered = gather_to_main((parts, seconds, images), world)
        if not world.is_main:
            return None
        parts = [part for rank_parts, _, _ in gathered for part in rank_parts]
        seconds = {key: sum(rank_seconds[key] for _, rank_seconds, _ in gathered) for key in seconds}
        images = sum(rank_images for _, _, rank_images in gathered)
    if costs is not None and images:
        for m in methods:
            costs[m] = {"seconds_per_image": seconds[m] / images, "cost": seconds[m] / max(seconds["forward"], 1e-12)}
    curves = _merge(parts, names)
    results = {name: {"auc": summarise(c), "curves": c.mean()} for name, c in curves.items()}
    if bootstrap:
        for name, c in curves.items():
            results[name]["interval"] = {k: [ci.low, ci.high] for k, ci in intervals(c, bootstrap, seed).items()}
    return results
