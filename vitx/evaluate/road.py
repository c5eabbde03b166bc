"""ROAD: Remove And Debias (Rong, Leemann et al., ICML 2022), noisy linear imputation.

Removing pixels by painting them a constant (black, the mean) leaves the *shape* of the
removed region in the image: a model can read the mask itself, so a perturbation curve
partly measures how the map's shape leaks, not how relevant the removed content was. ROAD
fills every removed pixel with the weighted mean of its 8 neighbours (direct neighbours 1/6,
diagonal ones 1/12; neighbours outside the image do not count), where neighbours that are
themselves removed are unknowns too: one sparse linear system per image and mask,

    d_i x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j     (d_i = sum of i's weights),

solved exactly (scipy's sparse LU, one factorisation for all channels), then adds Gaussian
noise (std `noise`, in [0, 1] pixel units) to the filled pixels so that the smooth fill
itself is not a tell-tale either. The fill is the discrete harmonic interpolation of the
kept pixels, so it is invariant to the per-channel normalisation of the model's input: it
is solved directly on the normalised pixels (the noise is scaled by the channel's std).
"""
from typing import Optional, Sequence

import numpy as np
import torch

NEIGHBOURS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
              ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))
DEFAULT_NOISE = 0.01


def linear_system(removed: np.ndarray, image: np.ndarray):
    """(A (n, n) sparse CSC, b (n, C)) of the imputation system for the `removed` (H, W) bool
    pixels of a (C, H, W) image; unknowns in row-major order of the removed pixels."""
    from scipy.sparse import coo_matrix

    height, width = removed.shape
    rows, cols = np.nonzero(removed)
    count = len(rows)
    unknown = -np.ones(removed.shape, dtype=np.int64)
    unknown[rows, cols] = np.arange(count)
    diagonal = np.zeros(count)
    b = np.zeros((count, image.shape[0]))
    a_rows, a_cols, a_values = [], [], []
    for (dr, dc), weight in NEIGHBOURS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        ids, r, c = np.nonzero(inside)[0], r[inside], c[inside]
        diagonal[ids] += weight
        neighbour = unknown[r, c]
        free = neighbour >= 0
        a_rows.append(ids[free])
        a_cols.append(neighbour[free])
        a_values.append(np.full(int(free.sum()), -weight))
        kept = ~free
        b[ids[kept]] += weight * image[:, r[kept], c[kept]].T
    a_rows.append(np.arange(count))
    a_cols.append(np.arange(count))
    a_values.append(diagonal)
    matrix = coo_matrix((np.concatenate(a_values), (np.concatenate(a_rows), np.concatenate(a_cols))),
                        shape=(count, count)).tocsc()
    return matrix, b


def impute(image: torch.Tensor, removed: torch.Tensor, noise_std: Optional[Sequence[float]] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One (C, H, W) image with its `removed` (H, W) pixels filled by noisy linear imputation.

    noise_std: per-channel standard deviation of the added noise, in the image's own units
    (None: no noise, the exact solution of the system)."""
    from scipy.sparse.linalg import splu

    mask = removed.detach().cpu().numpy().astype(bool)
    out = image.detach().cpu().double().clone()
    if not mask.any():
        return out.to(image)
    values = out.numpy()
    if mask.all():  # nothing to interpolate from: ROAD's system is singular; keep the image's mean
        values[:] = values.mean(axis=(1, 2), keepdims=True)
    else:
        matrix, b = linear_system(mask, values)
        # the matrix is symmetric (w_ij = w_ji) and diagonally dominant: no pivoting needed
        solution = splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": True}).solve(b)  # (n, C)
        values[:, mask] = solution.T
    filled = torch.from_numpy(values)
    if noise_std is not None:
        std = torch.as_tensor(noise_std, dtype=torch.float64).view(-1, 1)
        noise = torch.randn((image.shape[0], int(mask.sum())), generator=generator, dtype=torch.float64) * std
        filled[:, torch.from_numpy(mask)] += noise
    return filled.to(image)


def road_images(pixels: torch.Tensor, masks: torch.Tensor, config: dict, noise: float = DEFAULT_NOISE,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, C, H, W) normalised images with the pixels where `masks` (B, 1, H, W) is 1 imputed.

    noise is in [0, 1] pixel units (the paper's 0.01), divided by the model's per-channel std."""
    std = [noise / s for s in config.get("std", [1.0] * pixels.shape[1])] if noise else None
    return torch.stack([impute(image, mask[0] > 0.5, std, generator) for image, mask in zip(pixels, masks)])
