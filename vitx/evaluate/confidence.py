"""How sure is a faithfulness number? Percentile bootstrap over images, and rank agreement.

A perturbation AUC is a mean over images, so its uncertainty is that of a mean over a
small sample: resample the images with replacement (seeded), recompute, and take the
2.5 / 97.5 percentiles. Comparing two methods on the *same* images, the right interval is
the one of their per-image *difference* (paired bootstrap: one resample for both), which is
much narrower than two overlapping marginal intervals suggest. The AUC of the mean curve
is the mean of the per-image AUCs (the trapezoid rule is linear), so everything here works
on per-image AUCs.

Rank agreement: do two protocols (mean, blur, ROAD deletion) order the methods the same
way? Kendall's tau and Spearman's rho between the method scores of each pair of protocols.
"""
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from ..errors import VitxError


@dataclass(frozen=True)
class Interval:
    """A statistic with its percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    def excludes(self, point: float = 0.0) -> bool:
        return not (self.low <= point <= self.high)

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


# Beyond ~10^5 resamples a 95 % percentile interval moves by less than its own Monte Carlo
# error; the bound keeps `--bootstrap 1000000000` from running for hours (it once grew to 23 GB
# and was killed), and the resamples are drawn in chunks of at most CHUNK_VALUES indices.
MAX_RESAMPLES = 100_000
CHUNK_VALUES = 1 << 22


def check_resamples(count: int, resamples: int) -> None:
    if count < 1:
        raise VitxError("the bootstrap needs at least one image")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise VitxError(f"the bootstrap takes 1 to {MAX_RESAMPLES} resamples, got {resamples}")


def resample_indices(count: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, count) image indices drawn with replacement, reproducible for a seed (the
    same draws `resample_means` streams)."""
    check_resamples(count, resamples)
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def resample_means(values: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples,) means of `values` resampled with replacement: the rows of
    `resample_indices(len(values), resamples, seed)`, drawn a chunk at a time so memory stays
    bounded whatever the number of resamples and images."""
    check_resamples(len(values), resamples)
    generator = np.random.default_rng(seed)
    rows = max(1, CHUNK_VALUES // len(values))
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = values[generator.integers(0, len(values), size=(stop - start, len(values)))].mean(axis=1)
    return means


def bootstrap_mean(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95,
                   indices: Optional[np.ndarray] = None) -> Interval:
    """The mean of per-image `values` with its percentile-bootstrap interval at `level`
    (`indices`: resamples drawn by the caller, else `resample_means` streams them)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise VitxError(f"expected one value per image, got shape {values.shape}")
    means = resample_means(values, resamples, seed) if indices is None else values[indices].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """mean(a - b) over the same images, with the paired-bootstrap interval (one resample of
    the images for both): `a` beats `b` on a lower-is-better metric when the interval is < 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise VitxError(f"paired values need the same images: {a.shape} vs. {b.shape}")
    return bootstrap_mean(a - b, resamples, seed, level)


def per_image_auc(curves: np.ndarray, xs: Sequence[float]) -> np.ndarray:
    """(N, steps) per-image curves -> (N,) trapezoid AUCs over `xs`, divided by the x range
    (vitx.evaluate.metrics.auc applied to each row)."""
    curves, xs = np.asarray(curves, dtype=np.float64), np.asarray(xs, dtype=np.float64)
    return np.sum((curves[:, 1:] + curves[:, :-1]) * np.diff(xs), axis=1) / 2 / (xs[-1] - xs[0])


def rank_agreement(scores: Mapping[str, Mapping[str, float]]) -> Dict[str, Dict[str, float]]:
    """{"A vs. B": {"kendall": tau, "spearman": rho, "methods": n}} for each pair of protocols.

    scores: {protocol: {method: score}}, every score oriented the same way (e.g. all
    lower-is-better); only the methods every protocol scored are compared."""
    from scipy.stats import kendalltau, spearmanr

    out = {}
    for first, second in combinations(scores, 2):
        common = sorted(set(scores[first]) & set(scores[second]))
        if len(common) < 3:
            raise VitxError(f"rank agreement needs at least 3 methods in common ({first} vs. {second})")
        x = [scores[first][m] for m in common]
        y = [scores[second][m] for m in common]
        out[f"{first} vs. {second}"] = {"kendall": float(kendalltau(x, y)[0]), "spearman": float(spearmanr(x, y)[0]),
                                        "methods": len(common)}
    return out
