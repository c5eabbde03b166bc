"""Hiera (timm `Hiera`): mask-unit and global attention as stage layers (vitx.capture.stages).

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
"""
from contextlib import ExitStack, contextmanager
from typing import List, NamedTuple, Tuple

import torch

from ..pooled_windows import PooledWindows
from ..stages import conv_merge
from ..windows import Windowed
from .pyramid import PyramidAdapter
from .timm_mvit import SoftmaxTap

HIERA = "timm.models.hiera.Hiera"
HIERA_WHY = ("mask-unit attention runs inside windows of an unrolled token order and the first block of each later "
             "stage pools its queries and its residual, so the grid shrinks between stages; it is explained by "
             "attention-flow methods only (mask units as window layers over each stage's grid, pooled-query layers "
             "chained through the max-pooled residual)")


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
    n = grid[0] * grid[1]
    pos = model.unroll(torch.arange(n).view(1, n, 1)).flatten()
    out = []
    for block in model.blocks:
        q = block.attn.q_stride
        after, pooled = grid, pos
        if q > 1:
            (sy, sx), (rows, cols) = model.q_stride, (pos // grid[1], pos % grid[1])
            after = (grid[0] // sy, grid[1] // sx)
            groups = ((rows // sy) * after[1] + cols // sx).view(q, -1)  # the q tokens each output pools
            assert bool((groups == groups[0]).all()), "Hiera's q pooling groups tokens of one 2x2 window"
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


class TimmHieraAdapter(PyramidAdapter):
    name = "timm_hiera"
    priority = 1100  # before the table of refused families
    families = {HIERA: ("Hiera", HIERA_WHY)}

    def head_token(self, model):
        return "mean"  # the head averages the last stage's tokens

    @contextmanager
    def attach(self, model, record):
        tap = SoftmaxTap()
        with ExitStack() as stack:
            for block, tokens in zip(model.blocks, block_tokens(model)):
                stack.enter_context(_block(block, tokens, tap, record))
            stack.enter_context(tap)
            yield


@contextmanager
def _block(block, tokens, tap, record):
    """While the block's attention runs, its softmax is recorded as the block's stage layer
    and the model continues with the recorded values (their gradient is the layer's)."""
    attn, fused = block.attn, block.attn.fused_attn

    def start(module, args):
        def on_probs(probs):
            recorded = record(stage_layer(block, tokens, probs)).blocks
            return recorded if probs.dim() == 5 else recorded.squeeze(2)
        tap.active = on_probs

    def stop(module, args, out):
        tap.active = None

    handles = [attn.register_forward_pre_hook(start), attn.register_forward_hook(stop)]
    attn.fused_attn = False
    try:
        yield
    finally:
        attn.fused_attn = fused
        for handle in handles:
            handle.remove()
