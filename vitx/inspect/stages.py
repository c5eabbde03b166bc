"""Hierarchical ViTs (Swin, SwinV2) by stage: the numbers behind the per-stage views of `vitx inspect`.

A hierarchical model records each layer as window attention over its own stage's grid
(`Windowed`, vitx.capture.windows), and the first layer of a later stage carries the patch
merge into that grid (`entry`). So every layer has a stage, every stage a grid, and every
patch of the first grid (the finest, which the image is cut into) lies under exactly one
token of each stage: the token whose merge sources, followed back stage by stage, include it
(`Stages.cover`). That is how a patch picked on the image becomes the query of a layer of any
stage, with no assumption about the merge factor (an odd grid's border tokens cover fewer
patches).

A token's row of a window layer is read from its window's block: its slot's row, scattered
to the grid tokens of the window's slots (padding slots dropped), so no dense matrix is built.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..attribution.targets import as_logits
from ..capture.model_state import evaluation_mode
from ..capture.recorder import AttentionRecorder
from ..capture.windows import Windowed
from ..errors import VitxError
from ..inputs import model_inputs
from ..unwrap import unwrap


@dataclass(frozen=True)
class Stages:
    """stage[l]: the stage (0-based) of layer l; grids[s]: stage s's (h, w); cover: (stages,
    P) long, the token of stage s that covers patch p of the first grid (-1: none)."""

    stage: Tuple[int, ...]
    grids: Tuple[Tuple[int, int], ...]
    cover: torch.Tensor

    def label(self, layer: int) -> str:
        """How a layer is named in the views: 'stage 2 · layer 3 · 28x28' (stages from 1)."""
        grid = self.grids[self.stage[layer]]
        return f"stage {self.stage[layer] + 1} · layer {layer} · {grid[0]}x{grid[1]}"


def owners(sources: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N_next, k) merge sources -> (N,) the next-stage token each previous token goes into
    (the first one, should overlapping windows of a pooling merge take it twice; -1 for a
    token no next token takes)."""
    sources = sources.long().cpu()
    none = sources.shape[0]
    rows = torch.arange(none)[:, None].expand_as(sources)
    keep = sources >= 0
    owner = torch.full((num_tokens,), none, dtype=torch.long)
    owner.scatter_reduce_(0, sources[keep], rows[keep], reduce="amin")
    return owner.masked_fill(owner == none, -1)


def stages_of(layers: Sequence) -> Stages:
    """The stages of a hierarchical model's recorded layers (a new stage at every merge)."""
    if not layers or not all(isinstance(layer, Windowed) for layer in layers):
        raise VitxError("per-stage views need a hierarchical model whose every layer is window attention "
                        "over its stage's grid (Swin, SwinV2); pooled layers (PiT, PVTv2, Twins, MViTv2, Hiera) are "
                        "explained by the attention-flow methods only")
    first = layers[0].grid
    current = torch.arange(first[0] * first[1])
    covers, grids, stage = [current], [first], []
    for number, layer in enumerate(layers):
        if layer.entry is not None and number > 0:
            owner = owners(layer.entry.sources, layer.entry.num_tokens)
            current = torch.where(current >= 0, owner[current.clamp(min=0)], current)
            covers.append(current)
            grids.append(layer.grid)
        elif layer.grid != grids[-1]:
            raise VitxError(f"window layer over a {layer.grid} grid follows one over {grids[-1]} without a merge")
        stage.append(len(grids) - 1)
    return Stages(tuple(stage), tuple(tuple(g) for g in grids), torch.stack(covers))


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


@dataclass
class StageLayer:
    """One layer: `maps` (heads, h, w) attention over its stage's grid from `token` (the
    stage's token under the chosen patch, or None for the mean of its tokens), the `window`
    that token sits in ((h, w) bool, None for the mean), and its `label`."""

    stage: int
    grid: Tuple[int, int]
    maps: torch.Tensor
    token: Optional[int]
    window: Optional[torch.Tensor]
    label: str


@dataclass
class StageAttention:
    """Every layer's `StageLayer` for one image, the `stages` (grids, cover), the view."""

    layers: List[StageLayer]
    stages: Stages
    view: np.ndarray
    logits: torch.Tensor

    def upsampled(self, layer: int) -> torch.Tensor:
        """(heads, h1, w1) layer `layer`'s maps on the first grid: each patch takes the value of
        the stage token that covers it (the merges' downsampling undone by repetition)."""
        item, cover = self.layers[layer], self.stages.cover[self.stages.stage[layer]]
        flat = item.maps.flatten(1)[:, cover.clamp(min=0)] * (cover >= 0)
        return flat.reshape(flat.shape[0], *self.stages.grids[0])


def stage_attention(model: nn.Module, image, patch: Optional[int] = None, adapter=None) -> StageAttention:
    """Each layer's per-head attention of a hierarchical model (Swin) on its own stage's grid,
    for one image: from the token of each stage that covers `patch` (an index of the first
    grid, row-major), or from the mean of the stage's tokens when `patch` is None."""
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
        grid = stages.grids[stage]
        token = None if patch is None else int(stages.cover[stage, patch])
        if token is None:
            rows, window = mean_rows(layer), None
        else:
            rows = token_rows(layer, token)
            window = torch.zeros(layer.num_tokens, dtype=torch.bool)
            window[window_tokens(layer, token).cpu()] = True
            window = window.reshape(grid)
        out.append(StageLayer(stage, grid, rows[0].float().cpu().reshape(-1, *grid), token, window,
                              stages.label(number)))
    return StageAttention(out, stages, views[0], logits[0].cpu())
