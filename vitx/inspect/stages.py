"""Hierarchical ViTs by stage: the numbers behind the per-stage views of `vitx inspect`.

A hierarchical model records each layer over its own stage's tokens (vitx.capture.stages):
window attention over the stage's grid (`Windowed`: Swin, SwinV2, Twins' local layers) or
attention from the stage's queries to keys pooled from its tokens (`Pooled`: PVTv2's
spatial-reduction attention, MViTv2's pooling attention, PiT, Twins' global sub-sampled
layers). A layer that changes the token set carries the merge into it (`entry`, or the pooled
residual `skip` of MViTv2), so every layer has a stage, every stage a (query) grid, and every
patch of the first grid (the finest, which the image is cut into) lies under exactly one token
of each stage: the token whose merge sources, followed back layer by layer, include it
(`Stages.cover`); likewise under one key of each pooled layer (its key pooling followed once
more: `Stages.key_cover`). That is how a patch picked on the image becomes the query of a
layer of any stage, and how a row over pooled keys is drawn on the image (a key cell covers
the patches its sources cover), with no assumption about the merge factor (an odd grid's
border tokens, an overlapping convolution's shared sources).

A token's row of a window layer is read from its window's block: its slot's row, scattered
to the grid tokens of the window's slots (padding slots dropped), so no dense matrix is built;
a pooled layer's row is its stored row over the keys, the prefix keys (a class token) left out.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..attribution.targets import as_logits
from ..capture.model_state import evaluation_mode
from ..capture.recorder import AttentionRecorder
from ..capture.pooled_windows import PooledWindows
from ..capture.stages import Merge, Pooled
from ..capture.windows import Windowed
from ..errors import VitxError
from ..inputs import model_inputs
from ..unwrap import unwrap

Grid = Tuple[int, int]


@dataclass(frozen=True)
class Stages:
    """stage[l]: the stage (0-based) of layer l; grids[s]: stage s's (query) grid; cover:
    (stages, P) long, the token of stage s's grid that covers patch p of the first grid (-1:
    none); keys[l]: the grid layer l's keys lie on (its stage's grid but for pooled keys);
    key_cover: (layers, P), the key of that grid covering patch p; first: the first grid."""

    stage: Tuple[int, ...]
    grids: Tuple[Grid, ...]
    cover: torch.Tensor
    keys: Tuple[Grid, ...]
    key_cover: torch.Tensor
    first: Grid  # the first grid: the patches the image is cut into

    def label(self, layer: int) -> str:
        """How a layer is named in the views: 'stage 2 · layer 3 · 28x28' (stages from 1), and
        for pooled keys 'stage 2 · layer 3 · 14x14 queries → 7x7 keys'."""
        grid, keys = self.grids[self.stage[layer]], self.keys[layer]
        shape = f"{grid[0]}x{grid[1]}" if keys == grid else f"{grid[0]}x{grid[1]} queries → {keys[0]}x{keys[1]} keys"
        return f"stage {self.stage[layer] + 1} · layer {layer} · {shape}"


def owners(sources: torch.Tensor, num_tokens: int, kernel: Optional[Grid] = None) -> torch.Tensor:
    """(N_next, k) merge sources -> (N,) the next-stage token each previous token goes into
    (-1 for a token no next token takes). Should overlapping windows of a pooling take it
    twice: the window it lies nearest the centre of, given the `kernel` (kh, kw) its row-major
    sources fill (a 3x3 stride-1 pooling maps each token to the one it is centred on), then the
    first."""
    sources = sources.long().cpu()
    none = sources.shape[0]
    rows = torch.arange(none)[:, None].expand_as(sources)
    rank = torch.zeros(sources.shape[1], dtype=torch.long)
    if kernel is not None and kernel[0] * kernel[1] == sources.shape[1]:
        slot = torch.arange(sources.shape[1])  # squared offsets from the centre, times 4: integers
        rank = (2 * (slot // kernel[1]) - kernel[0] + 1) ** 2 + (2 * (slot % kernel[1]) - kernel[1] + 1) ** 2
    keep = sources >= 0
    order = rank[None, :] * (none + 1) + rows  # nearest the centre first, then the first window
    best = torch.full((num_tokens,), int(order.max()) + 1, dtype=torch.long)
    best.scatter_reduce_(0, sources[keep], order[keep], reduce="amin")
    return torch.where(best <= order.max(), best % (none + 1), torch.full_like(best, -1))


def follow(merge: Optional[Merge], tokens: torch.Tensor) -> torch.Tensor:
    """The token of `merge`'s output each of `tokens` (indices of its input, -1 = none) goes into."""
    if merge is None:
        return tokens
    owner = owners(merge.sources, merge.num_tokens, merge.kernel)
    return torch.where(tokens >= 0, owner[tokens.clamp(min=0)], tokens)


def on_grid(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """Token indices of a set [prefix, grid] -> indices on the grid (-1 stays -1)."""
    return torch.where(tokens >= 0, tokens - prefix, tokens)


def key_grid(layer) -> Grid:
    """The grid a layer's keys lie on: its own grid, the pooled keys' grid, or (queries pooled
    but keys not) the grid it reads."""
    if not isinstance(layer, Pooled) or (layer.keys is None and layer.skip is None):
        return layer.grid
    merge, grid = (layer.keys, layer.keys.grid) if layer.keys is not None else (layer.skip, layer.skip.before)
    if grid is None:
        raise VitxError("a pooled layer's key pooling does not say its grid: its keys cannot be drawn by stage")
    return grid


def stages_of(layers: Sequence) -> Stages:
    """The stages of a hierarchical model's recorded layers (a new stage at every merge of the
    token set: an entry, or a pooled residual that changes the grid)."""
    if any(isinstance(layer, PooledWindows) for layer in layers):
        raise VitxError("per-stage views do not draw pooled mask units (Hiera) yet: Hiera is explained by the "
                        "attention-flow methods only (rollout, grad_rollout, chefer2021, raw_attention)")
    if not layers or not all(isinstance(layer, (Windowed, Pooled)) for layer in layers):
        raise VitxError("per-stage views need a hierarchical model whose every layer is window or pooled attention "
                        "over its stage's tokens (Swin, SwinV2, PiT, PVTv2, Twins, MViTv2)")
    first = layers[0].skip.before if layers[0].skip is not None else layers[0].grid
    if first is None:
        raise VitxError("the first pooled layer does not say the grid it reads: its stages cannot be drawn")
    current = len(layers[0].prefix) + torch.arange(first[0] * first[1])  # token sets with their prefix
    covers, grids, stage, keys, key_covers = [], [], [], [], []
    for number, layer in enumerate(layers):
        if layer.entry is not None and number > 0:
            current = follow(layer.entry, current)
        if isinstance(layer, Pooled):
            grid = key_grid(layer)
            count = (layer.keys.num_outputs if layer.keys is not None else layer.num_inputs) - grid[0] * grid[1]
            keys.append(grid)
            key_covers.append(on_grid(follow(layer.keys, current), count))
            current = follow(layer.skip, current)
        if number == 0 or (layer.entry is not None) or (layer.skip is not None and layer.grid != grids[-1]):
            grids.append(tuple(layer.grid))
            covers.append(on_grid(current, len(layer.prefix)))
        elif layer.grid != grids[-1]:
            raise VitxError(f"a layer over a {layer.grid} grid follows one over {grids[-1]} without a merge")
        if isinstance(layer, Windowed):
            keys.append(tuple(layer.grid))
            key_covers.append(covers[-1])
        stage.append(len(grids) - 1)
    return Stages(tuple(stage), tuple(tuple(g) for g in grids), torch.stack(covers), tuple(keys),
                  torch.stack(key_covers), tuple(first))


def slot_of(layer: Windowed, token: int) -> Tuple[int, int]:
    """(window, slot) of a grid token in the layer's window partition."""
    found = (layer.index == token).nonzero()
    if found.shape[0] == 0:
        raise VitxError(f"token {token} is not on this layer's {layer.grid[0]}x{layer.grid[1]} grid")
    return int(found[0, 0]), int(found[0, 1])


def token_rows(layer: Windowed, token: int) -> torch.Tensor:
    """(B, heads, N) the attention row of one grid token of the layer's stage, per head."""
    window, slot = slot_of(layer, token)
    index = layer.index[window].to(layer.device)
    valid = index >= 0
    out = layer.blocks.new_zeros(*layer.blocks.shape[:2], layer.num_tokens)
    out[..., index[valid]] = layer.blocks[:, :, window, slot][..., valid]
    return out


def window_tokens(layer: Windowed, token: int) -> torch.Tensor:
    """The grid tokens of the window `token` sits in (the keys its row can reach)."""
    index = layer.index[slot_of(layer, token)[0]]
    return index[index >= 0]


def mean_rows(layer: Windowed) -> torch.Tensor:
    """(B, heads, N) the mean of every grid token's row (what the stage's tokens attend to on
    average): each window's column sums over its real query slots, scattered, over N."""
    pairs = layer.pairs()
    sums = (layer.blocks * pairs).sum(-2)  # (B, heads, windows, n)
    valid = layer.valid
    out = layer.blocks.new_zeros(*layer.blocks.shape[:2], layer.num_tokens)
    out[..., layer.index.to(layer.device)[valid]] = sums[..., valid]
    return out / layer.num_tokens


def pooled_rows(layer: Pooled, query: Union[int, str, None]) -> torch.Tensor:
    """(B, heads, K) a pooled layer's row over its key grid's K keys (prefix keys left out):
    from grid token `query` of its (query) grid, prefix token `query` (a name), or the mean of
    its grid tokens (None)."""
    prefix = len(layer.prefix)
    grid = key_grid(layer)
    keys = layer.blocks[..., layer.blocks.shape[-1] - grid[0] * grid[1]:]
    if query is None:
        return keys[:, :, prefix:].mean(2)
    if isinstance(query, str):
        if query not in layer.prefix:
            named = ", ".join(layer.prefix) or "none"
            raise VitxError(f"no token {query!r} in this layer (its prefix tokens: {named})")
        return keys[:, :, layer.prefix.index(query)]
    return keys[:, :, prefix + query]


@dataclass
class StageLayer:
    """One layer: `maps` (heads, h, w) attention over its `keys` grid (its stage's `grid`, or
    the grid of its pooled keys) from `token` (the stage's token under the chosen patch, a
    prefix token's name, or None for the mean of its grid tokens), the `window` that token
    sits in ((h, w) bool; None for the mean or a pooled layer), and its `label`."""

    stage: int
    grid: Grid
    maps: torch.Tensor
    token: Union[int, str, None]
    window: Optional[torch.Tensor]
    label: str
    keys: Grid


@dataclass
class StageAttention:
    """Every layer's `StageLayer` for one image, the `stages` (grids, cover), the view."""

    layers: List[StageLayer]
    stages: Stages
    view: np.ndarray
    logits: torch.Tensor

    def upsampled(self, layer: int) -> torch.Tensor:
        """(heads, h1, w1) layer `layer`'s maps on the first grid: each patch takes the value of
        the key that covers it (the merges' and the key pooling's downsampling undone by repetition)."""
        item, cover = self.layers[layer], self.stages.key_cover[layer]
        flat = item.maps.flatten(1)[:, cover.clamp(min=0)] * (cover >= 0)
        return flat.reshape(flat.shape[0], *self.stages.first)


def _window_layer(layer: Windowed, token: Optional[int], grid: Grid):
    """(rows (B, heads, N), window (h, w) bool or None) of a window layer."""
    if token is None:
        return mean_rows(layer), None
    window = torch.zeros(layer.num_tokens, dtype=torch.bool)
    window[window_tokens(layer, token).cpu()] = True
    return token_rows(layer, token), window.reshape(grid)


def stage_attention(model: nn.Module, image, patch: Optional[int] = None, adapter=None,
                    token: Optional[str] = None) -> StageAttention:
    """Each layer's per-head attention of a hierarchical model (Swin, PiT, PVTv2, Twins,
    MViTv2) over its keys' grid, for one image: from the token of each stage that covers
    `patch` (an index of the first grid, row-major), from prefix token `token` (PiT's 'cls'),
    or from the mean of the stage's grid tokens when both are None."""
    model = unwrap(model)
    adapter, pixels, views, _ = model_inputs(model, image, adapter)
    with evaluation_mode(model), torch.no_grad(), AttentionRecorder(model, adapter=adapter) as recorder:
        logits = as_logits(model(pixels[:1]))
        recorder.check_recorded()
    layers = recorder.attentions
    stages = stages_of(layers)
    if patch is not None and not 0 <= patch < stages.cover.shape[1]:
        raise VitxError(f"patch {patch} is outside the first grid's {stages.cover.shape[1]} patches")
    out = []
    for number, layer in enumerate(layers):
        stage = stages.stage[number]
        grid, keys = stages.grids[stage], stages.keys[number]
        query = token if patch is None else int(stages.cover[stage, patch])
        if isinstance(layer, Windowed):
            if isinstance(query, str):
                raise VitxError(f"layer {number} is window attention over grid tokens: it has no {query!r} token")
            rows, window = _window_layer(layer, query, grid)
        else:
            rows, window = pooled_rows(layer, query), None
        out.append(StageLayer(stage, grid, rows[0].float().cpu().reshape(-1, *keys), query, window,
                              stages.label(number), keys))
    return StageAttention(out, stages, views[0], logits[0].cpu())
