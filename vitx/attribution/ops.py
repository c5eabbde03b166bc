"""Math shared by explainers: head fusion, discarding weak attention, rollout.

Kept in the core so that plugins (built-in or third-party) compose the same tested pieces
instead of importing each other.
"""
from typing import Sequence

import torch

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, heads, ...) -> (B, ...) by mean, max or min over heads."""
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    raise ValueError(f"unknown head fusion {how!r}; use one of {HEAD_FUSIONS}")


def discard_lowest(fused: torch.Tensor, ratio: float, query: torch.Tensor) -> torch.Tensor:
    """Zero the lowest `ratio` of each image's N x N attention entries.

    As in the original rollout script, the k = int(N*N*ratio) smallest entries are chosen
    and the explained token's own path (diagonal entries of the tokens in `query`'s
    support) is never removed. Returns a new tensor.
    """
    if ratio <= 0:
        return fused
    batch, n, _ = fused.shape
    flat = fused.reshape(batch, n * n)
    k = int(flat.shape[-1] * ratio)
    if k == 0:
        return fused
    # the k smallest by selection (kthvalue, O(N^2)) rather than a partial sort (topk, ~6x slower
    # at 1370 tokens): entries below the k-th value, then as many entries equal to it as make k
    threshold = flat.kthvalue(k, dim=-1, keepdim=True).values
    drop = flat < threshold
    ties = flat == threshold
    missing = k - drop.sum(dim=-1, keepdim=True)
    drop |= ties & (ties.cumsum(dim=-1) <= missing)
    protected = torch.nonzero(query.reshape(-1, n).amax(0) > 0).flatten() * (n + 1)
    drop[:, protected] = False
    return flat.masked_fill(drop, 0.0).reshape(batch, n, n)


def with_residual(fused: torch.Tensor) -> torch.Tensor:
    """(A + I) / 2, rows renormalised to sum to 1: the residual path of each block."""
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    mixed = (fused + eye) / 2
    return mixed / mixed.sum(dim=-1, keepdim=True)


def rollout_row(layers: Sequence[torch.Tensor], query: torch.Tensor, transform=None) -> torch.Tensor:
    """query^T (A_L ... A_1), computed as vector-matrix products from the last layer down.

    Equal to the explained token's row of the full rollout matrix A_L ... A_1, at O(L N^2)
    instead of O(L N^3). `layers` are (B, N, N) in forward order; returns (B, N), in float32
    at least (half-precision layers are promoted one at a time). `transform(layer, matrix)`,
    when given, turns each stored layer into its rollout factor just before it is used, so
    only one processed N x N per image exists at a time.
    """
    dtype = torch.promote_types(layers[0].dtype, torch.float32)
    row = query.expand(layers[0].shape[0], -1).unsqueeze(1).to(dtype)
    for index in reversed(range(len(layers))):
        matrix = layers[index].to(dtype)
        row = torch.bmm(row, matrix if transform is None else transform(index, matrix))
    return row.squeeze(1)
