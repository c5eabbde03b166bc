"""Math shared by explainers: head fusion, discarding weak attention, rollout.

Kept in the core so that plugins (built-in or third-party) compose the same tested pieces
instead of importing each other.
"""
from typing import Sequence

import torch

from ..capture.windows import Windowed

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


def lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """(B, M) -> bool mask of each row's k smallest entries (ties broken by position).

    By selection (kthvalue, O(M)) rather than a partial sort (topk, ~6x slower at 1370
    tokens): entries below the k-th value, then as many entries equal to it as make k."""
    threshold = flat.kthvalue(k, dim=-1, keepdim=True).values
    drop = flat < threshold
    ties = flat == threshold
    missing = k - drop.sum(dim=-1, keepdim=True)
    return drop | (ties & (ties.cumsum(dim=-1) <= missing))


def discard_lowest(fused, ratio: float, query: torch.Tensor):
    """Zero the lowest `ratio` of each image's N x N attention entries.

    As in the original rollout script, the k = int(N*N*ratio) smallest entries are chosen
    and the explained token's own path (diagonal entries of the tokens in `query`'s
    support) is never removed. Returns a new tensor.

    A window layer (`Windowed`) chooses among the entries it can have, those between two real
    tokens of one window (k = int(count * ratio)), and keeps every token's diagonal entry:
    the query lives on the last stage's tokens, and the default one (the mean) reaches every
    token of every stage.
    """
    if ratio <= 0:
        return fused
    if isinstance(fused, Windowed):
        return _discard_in_windows(fused, ratio)
    batch, n, _ = fused.shape
    flat = fused.reshape(batch, n * n)
    k = int(flat.shape[-1] * ratio)
    if k == 0:
        return fused
    drop = lowest(flat, k)
    protected = torch.nonzero(query.reshape(-1, n).amax(0) > 0).flatten() * (n + 1)
    drop[:, protected] = False
    return flat.masked_fill(drop, 0.0).reshape(batch, n, n)


def _discard_in_windows(fused: Windowed, ratio: float) -> Windowed:
    pairs = fused.pairs()
    k = int(int(pairs.sum()) * ratio)
    if k == 0:
        return fused
    batch = fused.blocks.shape[0]
    candidates = fused.blocks.masked_fill(~pairs, float("inf")).reshape(batch, -1)
    drop = lowest(candidates, k).reshape(fused.blocks.shape)
    eye = torch.eye(pairs.shape[-1], dtype=torch.bool, device=pairs.device)
    return fused.like(fused.blocks.masked_fill(drop & ~eye, 0.0))


def add_identity(fused):
    """A + I (a window layer's identity lies inside its diagonal blocks; padding slots get none)."""
    if isinstance(fused, Windowed):
        eye = torch.diag_embed(fused.valid.to(fused.dtype))
        return fused.like(fused.blocks + eye)
    return fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)


def with_residual(fused):
    """(A + I) / 2, rows renormalised to sum to 1: the residual path of each block."""
    if isinstance(fused, Windowed):  # per window: the entries to padding slots are dropped first
        mixed = add_identity(fused.like(fused.blocks * fused.pairs())).blocks / 2
        return fused.like(mixed / mixed.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mixed.dtype).tiny))
    mixed = add_identity(fused) / 2
    return mixed / mixed.sum(dim=-1, keepdim=True)


def skip(attention):
    """What a method keeps of a layer it does not read: nothing, or a window layer's place in
    the chain of stages (its merge), so that later maps can still reach the first grid."""
    return attention.skeleton() if isinstance(attention, Windowed) else None


def vecmat(row: torch.Tensor, layer) -> torch.Tensor:
    """(B, N) row @ one layer, then through the merge that feeds a window layer."""
    if isinstance(layer, Windowed):
        row = layer.vecmat(row)
        return row if layer.entry is None else layer.entry.pull(row)
    return torch.bmm(row.unsqueeze(1), layer).squeeze(1)


def pull_down(row: torch.Tensor, layers: Sequence, start: int, stop: int) -> torch.Tensor:
    """Carry a row through the stage merges of layers[stop..start-1] only (no attention): from
    the token set after layer start - 1 ... back to the token set before layer `stop`."""
    for index in reversed(range(stop, start)):
        layer = layers[index]
        if isinstance(layer, Windowed) and layer.entry is not None:
            row = layer.entry.pull(row)
    return row


def layer_row(layers: Sequence, index: int, query: torch.Tensor) -> torch.Tensor:
    """The explained token's row of one layer, over the first stage's tokens.

    Dense layers: query @ A. Window layers (hierarchical models): the query (over the last
    stage's tokens) is carried down to the layer's stage through the merges after it (the mean
    query stays the mean), multiplied by the layer, then carried down to the first stage."""
    layer = layers[index]
    if not isinstance(layer, Windowed):
        return query.to(layer.dtype) @ layer
    index = index % len(layers)
    row = pull_down(query.expand(layer.shape[0], -1).to(torch.promote_types(layer.dtype, torch.float32)),
                    layers, len(layers), index + 1)
    row = layer.vecmat(row)
    return pull_down(row, layers, index + 1, 0)


def rollout_row(layers: Sequence[torch.Tensor], query: torch.Tensor, transform=None) -> torch.Tensor:
    """query^T (A_L ... A_1), computed as vector-matrix products from the last layer down.

    Equal to the explained token's row of the full rollout matrix A_L ... A_1, at O(L N^2)
    instead of O(L N^3). `layers` are (B, N, N) in forward order, or window layers of a
    hierarchical model (`Windowed`, each carrying the merge into its stage: the row starts on
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
