"""Hiera (timm `Hiera`, and SAM2's `HieraDet`): window and global attention as stage layers
(vitx.capture.stages).

Hiera keeps its tokens in an *unrolled* order: `Unroll` applies the q_stride (2x2) split once
per pooling stage, so the sequence is [Sy, Sx, H/Sy, W/Sx] recursively, and token t of a
block's input is some grid token pos[t]. A mask-unit attention with `nw` windows reads the
sequence as (slots, windows): window w holds tokens s * nw + w. The first block of a later
stage pools its queries with a max over the leading q_stride split of the sequence (token t'
of the output is the max over tokens a * N / q + t', i.e. over the 2x2 group of grid tokens
under output grid token (r // 2, c // 2)) and pools its residual the same way (`do_pool`: a
projection then the max). The positions are computed here by running the model's own
`Unroll` on token indices, and carried through each pooling, so the unrolled order is never
assumed, only read.

Layers as the attention-flow methods read them:
- mask-unit (or global) attention without pooling: a `Windowed` over the stage's grid, the
  window slots mapped through the unrolled order to grid tokens (global: one window);
- with pooled queries: a `PooledWindows` (vitx.capture.pooled_windows) from the output grid
  to the input grid, its residual the max pool written as equal weights over its 2x2 window
  (as MViTv2's pooled shortcut is: which input wins the max differs per channel).
No merge lies outside the blocks (the patch embedding comes before the first), the head
averages the last stage's tokens (the explained token is their mean), and the maps lie on
the first stage's grid. The attention's softmax is tapped by a function mode while each
attention module runs (its fused path switched off meanwhile), so the output is unchanged.

SAM2's Hiera (`HieraDet`) keeps the (B, H, W, C) grid instead: its window blocks pad the grid
to whole windows and fold them into the batch, as SAM's ViT does (padding slots dropped), and
a pooling block max-pools each window's queries 2x2 (`MaxPool2d`) and its projected residual;
the same two kinds of layers, the window slots given by the plain window partition.
"""
from contextlib import ExitStack, contextmanager
from typing import List, NamedTuple, Tuple

import torch

from ...errors import VitxError
from ..pooled_windows import PooledWindows
from ..stages import Pooled, conv_merge
from ..windows import Windowed, window_index
from .pyramid import PyramidAdapter
from .timm_swin import record_windows
from .timm_mvit import SoftmaxTap
from .toolkit import hook, timm_attention

HIERA = "timm.models.hiera.Hiera"
HIERA_DET = "timm.models.hieradet_sam2.HieraDet"
HIERA_WHY = ("mask-unit attention runs inside windows of an unrolled token order and the first block of each later "
             "stage pools its queries and its residual, so the grid shrinks between stages; it is explained by "
             "attention-flow methods only (mask units as window layers over each stage's grid, pooled-query layers "
             "chained through the max-pooled residual)")
HIERA_DET_WHY = ("window attention (the grid padded to whole windows) alternates with global attention and the first "
                 "block of each later stage pools its queries and its residual, so the grid shrinks between stages; it "
                 "is explained by attention-flow methods only (windows as block-diagonal attention over each stage's "
                 "grid, pooled-query layers chained through the max-pooled residual)")


class BlockTokens(NamedTuple):
    """Where a block's tokens lie: input grid and the grid token of each input sequence
    token, output grid and the same for its output (equal to the input without pooling)."""

    grid_in: Tuple[int, int]
    pos_in: torch.Tensor
    grid_out: Tuple[int, int]
    pos_out: torch.Tensor


def block_tokens(model) -> List[BlockTokens]:
    """Per block of a timm Hiera, its tokens' grid positions (read from the model's Unroll)."""
    grid = tuple(int(s) for s in model.unroll.size)
    if len(grid) != 2:
        raise VitxError(f"Hiera over {len(grid)}-d tokens (video): only image grids are mapped to their tokens")
    n = grid[0] * grid[1]
    pos = model.unroll.forward(torch.arange(n).view(1, n, 1)).flatten()  # no module hooks: not a forward of the model
    out = []
    for block in model.blocks:
        q = block.attn.q_stride
        after, pooled = grid, pos
        if q > 1:
            (sy, sx), (rows, cols) = model.q_stride, (pos // grid[1], pos % grid[1])
            after = (grid[0] // sy, grid[1] // sx)
            groups = ((rows // sy) * after[1] + cols // sx).view(q, -1)  # the q tokens each output pools
            if not bool((groups == groups[0]).all()):
                raise VitxError("this Hiera's query pooling does not pool whole q_stride windows of the grid, so its "
                                "tokens cannot be mapped to the grid")
            pooled = groups[0]
        out.append(BlockTokens(grid, pos, after, pooled))
        grid, pos = after, pooled
    return out


def stage_layer(block, tokens: BlockTokens, probs: torch.Tensor):
    """One block's probabilities (B, heads, [windows,] nq, nk) as its stage layer."""
    blocks = probs if probs.dim() == 5 else probs.unsqueeze(2)  # global attention: one window
    windows = blocks.shape[2]
    keys = tokens.pos_in.to(probs.device).view(-1, windows).t()  # window w holds tokens s * windows + w
    if block.attn.q_stride == 1:
        return Windowed(blocks, keys, tokens.grid_in)
    queries = tokens.pos_out.to(probs.device).view(-1, windows).t()
    stride = tuple(s // a for s, a in zip(tokens.grid_in, tokens.grid_out))  # the q_stride per side
    skip = conv_merge(tokens.grid_in, tokens.grid_out, stride, stride, 0, device=probs.device)
    return PooledWindows(blocks, tokens.grid_out, queries, keys, skip)


def det_layer(block, grid, probs: torch.Tensor, record):
    """One SAM2 Hiera block's probabilities as its stage layer; returns what the model
    continues with. The block sees its (B, H, W, C) grid, padded to whole windows and folded
    as (B * windows, heads, nq, nk), or whole (global attention); a pooling block's queries
    are the 2x2 max pool of each window (or of the grid)."""
    stride = tuple(block.q_stride) if block.q_stride else None
    after = grid if stride is None else tuple(g // s for g, s in zip(grid, stride))
    skip = None if stride is None else conv_merge(grid, after, stride, stride, 0, device=probs.device)
    if not block.is_windowed:
        return record(Pooled(probs, after, skip=skip)).blocks
    window = tuple(block.window_size)
    if stride is None:
        return record_windows(record, probs, probs.shape[0] // _windows(grid, window), probs.shape[1], grid, window,
                              (0, 0), None)
    keys = window_index(grid, window, (0, 0), device=probs.device)
    queries = window_index(after, tuple(w // s for w, s in zip(window, stride)), (0, 0), device=probs.device)
    if queries.shape[0] != keys.shape[0]:
        raise VitxError(f"SAM2 Hiera block on a {grid[0]}x{grid[1]} grid pools its windows of {window[0]}x{window[1]} "
                        f"into a different number of windows; use an input whose grid is a multiple of the windows")
    batch, heads = probs.shape[0] // keys.shape[0], probs.shape[1]
    blocks = probs.reshape(batch, keys.shape[0], heads, *probs.shape[-2:]).transpose(1, 2)
    recorded = record(PooledWindows(blocks, after, queries, keys, skip)).blocks
    return recorded.transpose(1, 2).reshape(probs.shape)


def _windows(grid, window):
    return -(-grid[0] // window[0]) * -(-grid[1] // window[1])


class TimmHieraAdapter(PyramidAdapter):
    name = "timm_hiera"
    priority = 1100  # before the table of refused families
    families = {HIERA: ("Hiera", HIERA_WHY), HIERA_DET: ("Hiera (SAM2)", HIERA_DET_WHY)}

    def head_token(self, model):
        return "mean"  # the head averages the last stage's tokens

    @contextmanager
    def attach(self, model, record):
        tap = SoftmaxTap()
        det = self.family(model)[0] != "Hiera"
        with ExitStack() as stack:
            for block, tokens in zip(model.blocks, [None] * len(model.blocks) if det else block_tokens(model)):
                stack.enter_context(_block(block, tokens, tap, record))
            stack.enter_context(tap)
            yield


@contextmanager
def _block(block, tokens, tap, record):
    """While the block's attention runs, its softmax is recorded as the block's stage layer
    and the model continues with the recorded values (their gradient is the layer's).
    `tokens`: where a timm Hiera block's unrolled tokens lie; None for SAM2's (a grid)."""
    attn = block.attn

    def on_hiera(probs):
        recorded = record(stage_layer(block, tokens, probs)).blocks
        return recorded if probs.dim() == 5 else recorded.squeeze(2)

    def start(module, args):
        if tokens is not None:
            tap.active = on_hiera
        else:  # the block's input is its (B, H, W, C) grid
            grid = tuple(int(g) for g in args[0].shape[1:3])
            tap.active = lambda probs: det_layer(block, grid, probs, record)

    def stop(module, args, out):
        tap.active = None

    with ExitStack() as stack:
        stack.enter_context(timm_attention([attn]))
        hook(stack, (block if tokens is None else attn).register_forward_pre_hook(start))
        hook(stack, attn.register_forward_hook(stop))
        yield
