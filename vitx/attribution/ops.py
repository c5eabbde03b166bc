"""Math shared by explainers: head fusion, discarding weak attention, rollout.

Kept in the core so that plugins (built-in or third-party) compose the same tested pieces
instead of importing each other.
"""
from typing import Sequence

import torch

from ..capture.stages import StageLayer, lowest  # noqa: F401 (lowest: shared with the stage layers)

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


def discard_lowest(fused, ratio: float, query: torch.Tensor):
    """Zero the lowest `ratio` of each image's N x N attention entries.

    As in the original rollout script, the k = int(N*N*ratio) smallest entries are chosen
    and the explained token's own path (diagonal entries of the tokens in `query`'s
    support) is never removed. Returns a new tensor.

    A layer of a hierarchical model (`StageLayer`, vitx.capture.stages) chooses among the
    entries it can have, as its kind defines (`StageLayer.discard_lowest`).
    """
    if ratio <= 0:
        return fused
    if isinstance(fused, StageLayer):
        return fused.discard_lowest(ratio)
    batch, n, _ = fused.shape
    flat = fused.reshape(batch, n * n)
    k = int(flat.shape[-1] * ratio)
    if k == 0:
        return fused
    drop = lowest(flat, k)
    protected = torch.nonzero(query.reshape(-1, n).amax(0) > 0).flatten() * (n + 1)
    drop[:, protected] = False
    return flat.masked_fill(drop, 0.0).reshape(batch, n, n)


def add_identity(fused):
    """A + I (a stage layer's own identity: its residual path, `StageLayer.add_identity`)."""
    if isinstance(fused, StageLayer):
        return fused.add_identity()
    return fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)


def with_residual(fused):
    """(A + I) / 2, rows renormalised to sum to 1: the residual path of each block."""
    if isinstance(fused, StageLayer):
        return fused.with_residual()
    mixed = add_identity(fused) / 2
    return mixed / mixed.sum(dim=-1, keepdim=True)


def skip(attention):
    """What a method keeps of a layer it does not read: nothing, or a stage layer's place in
    the chain of stages (its merges), so that later maps can still reach the first grid."""
    return attention.skeleton() if isinstance(attention, StageLayer) else None


def vecmat(row: torch.Tensor, layer) -> torch.Tensor:
    """(B, N) row @ one layer, then through the merge that feeds a stage layer."""
    if isinstance(layer, StageLayer):
        return layer.enter(layer.vecmat(row))
    return torch.bmm(row.unsqueeze(1), layer).squeeze(1)


def pull_down(row: torch.Tensor, layers: Sequence, start: int, stop: int) -> torch.Tensor:
    """Carry a row through the stage merges and residual paths of layers[stop..start-1] only
    (no attention): from the token set after layer start - 1 back to the one before `stop`."""
    for index in reversed(range(stop, start)):
        if isinstance(layers[index], StageLayer):
            row = layers[index].carry(row)
    return row


def layer_row(layers: Sequence, index: int, query: torch.Tensor) -> torch.Tensor:
    """The explained token's row of one layer, over the first stage's tokens.

    Dense layers: query @ A. Stage layers (hierarchical models): the query (over the last
    stage's tokens) is carried down to the layer's stage through the merges after it (the mean
    query stays the mean), multiplied by the layer, then carried down to the first stage."""
    layer = layers[index]
    if not isinstance(layer, StageLayer):
        return query.to(layer.dtype) @ layer
    index = index % len(layers)
    row = pull_down(query.expand(layer.shape[0], -1).to(torch.promote_types(layer.dtype, torch.float32)),
                    layers, len(layers), index + 1)
    return pull_down(layer.enter(layer.vecmat(row)), layers, index, 0)


def rollout_row(layers: Sequence[torch.Tensor], query: torch.Tensor, transform=None) -> torch.Tensor:
    """query^T (A_L ... A_1), computed as vector-matrix products from the last layer down.

    Equal to the explained token's row of the full rollout matrix A_L ... A_1, at O(L N^2)
    instead of O(L N^3). `layers` are (B, N, N) in forward order, or window layers of a
    hierarchical model (`StageLayer`, each carrying the merge into its stage: the row starts on
    the last stage's tokens and ends on the first's); returns (B, N), in float32
    at least (half-precision layers are promoted one at a time). `transform(layer, matrix)`,
    when given, turns each stored layer into its rollout factor just before it is used, so
    only one processed N x N per image exists at a time.
    """
    dtype = torch.promote_types(layers[0].dtype, torch.float32)
    row = query.expand(layers[0].shape[0], -1).to(dtype)
    for index in reversed(range(len(layers))):
        matrix = layers[index].to(dtype)
        row = vecmat(row, matrix if transform is None else transform(index, matrix))
    return row


NORM_EPSILON = 1e-8


def norm_ratio(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B, N, D) x 2 -> (B, N): |after_j| / |before_j|, how much a transformation scales each
    token (TokenTM's length change, Beyond Intuition's token-wise |W_o v_j| / |z_j|)."""
    return after.norm(dim=-1) / (before.norm(dim=-1) + NORM_EPSILON)
