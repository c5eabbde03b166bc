"""Dense reference for timm Hiera blocks, recomputed on the stage's grid; nothing here uses vitx.

Each block's input arrives in Hiera's unrolled order. timm's own `Reroll` (the inverse of
`Unroll`, written separately in timm) gives the sequence index of every grid token, so the
block is recomputed in plain row-major grid order: q, k, v from the block's weights; where the
block pools its queries, q is max-pooled over 2x2 grid windows and so is the projected
shortcut (`skip`: its equal-weight matrix); mask-unit attention is full attention over the
grid with -inf between tokens of different mask units (the model always has the same
mask-unit count per side, so a unit of a stage's grid is the grid divided by that count);
then the MLP. The output goes back into the model's order for the next block. The attention
is the one on the gradient path, so its .grad is d(logit)/d(attention).
"""
from functools import partial

import torch
import torch.nn.functional as F


def _order(model, block_index, n):
    """(N,) sequence index of each grid token (row-major) after block `block_index`."""
    return model.reroll(torch.arange(n).view(1, n, 1), block_index).flatten()


def _max_pool(t, grid, stride):
    """(..., N, C) row-major grid tokens -> max over each stride window, (..., N', C), grid."""
    lead, c = t.shape[:-2], t.shape[-1]
    x = t.reshape(-1, *grid, c).permute(0, 3, 1, 2)
    x = F.max_pool2d(x, stride, stride)
    after = tuple(x.shape[-2:])
    return x.flatten(2).transpose(1, 2).reshape(*lead, after[0] * after[1], c), after


def _units(grid, counts):
    """(N,) mask unit of each grid token: the grid cut into counts[0] x counts[1] units."""
    (h, w), (mh, mw) = grid, counts
    r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((r // (h // mh)) * mw + c // (w // mw)).flatten()


def timm_hiera(model, index, block, args, kwargs, output):
    from window_reference import pool_matrix

    x = args[0]
    b, n, _ = x.shape
    grid = tuple(int(s) for s in model.reroll.schedule[max(index - 1, 0)][1])
    order_in = _order(model, max(index - 1, 0), n)
    x = x[:, order_in]
    attn, stride = block.attn, tuple(model.q_stride) if block.attn.q_stride > 1 else (1, 1)
    x_norm = block.norm1(x)
    shortcut, after = (block.proj(x_norm) if block.do_expand and block.proj is not None else x), grid
    if stride != (1, 1) and block.do_expand and block.proj is None:  # no projection: max and mean pools of x
        pooled, after = _max_pool(x, grid, stride)
        mean = F.avg_pool2d(x.reshape(b, *grid, -1).permute(0, 3, 1, 2), stride, stride).flatten(2).transpose(1, 2)
        shortcut = torch.cat([pooled, mean], dim=-1)
    elif stride != (1, 1):
        shortcut, after = _max_pool(shortcut, grid, stride)
    q, k, v = attn.qkv(x_norm).reshape(b, n, 3, attn.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if stride != (1, 1):
        q, _ = _max_pool(q, grid, stride)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_mask_unit_attn:
        allowed = _units(after, model.mask_spatial_shape)[:, None] == _units(grid, model.mask_spatial_shape)[None, :]
    else:
        allowed = torch.ones(logits.shape[-2:], dtype=torch.bool)
    probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = shortcut + block.ls1(attn.proj((probs @ v).transpose(1, 2).flatten(2)))
    out = out + block.ls2(block.mlp(block.norm2(out)))
    back = torch.empty_like(out)
    back[:, _order(model, index, out.shape[1])] = out
    skip = pool_matrix(grid, after, stride[0], stride[0], 0) if stride != (1, 1) else None
    return back, probs, allowed, after, {"skip": skip}


def blocks(model):
    return [(blk, partial(timm_hiera, model, i)) for i, blk in enumerate(model.blocks)]


def timm_hieradet(block, args, kwargs, output):
    """A SAM2 Hiera block (B, H, W, C): the normalised grid padded to whole windows (zeros, as
    the model pads after norm1), queries max-pooled 2x2 over the padded grid where the block
    pools, full attention over the frame masked to same-window pairs, the output cropped to
    the pooled grid; the padding rows and columns are dropped from the recorded attention."""
    from window_reference import pool_matrix

    x = args[0]
    b, h, w, c = x.shape
    attn, stride = block.attn, tuple(block.q_stride) if block.q_stride else (1, 1)
    x_norm = block.norm1(x)
    shortcut = x
    if block.dim != block.dim_out:
        shortcut = block.proj(x_norm)
        if block.q_stride:
            shortcut = F.max_pool2d(shortcut.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)
    after = tuple(shortcut.shape[1:3])
    window = tuple(block.window_size) if block.is_windowed else (h, w)
    hp, wp = h + (-h) % window[0], w + (-w) % window[1]
    frame = F.pad(x_norm, (0, 0, 0, wp - w, 0, hp - h))
    q, k, v = attn.qkv(frame).reshape(b, hp * wp, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if block.q_stride:
        q, _ = _max_pool(q, (hp, wp), stride)
    qh, qw = hp // stride[0], wp // stride[1]
    key_units = _units((hp, wp), (hp // window[0], wp // window[1]))
    query_units = _units((qh, qw), (hp // window[0], wp // window[1]))
    allowed = query_units[:, None] == key_units[None, :]
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    mixed = attn.proj((probs @ v).transpose(1, 2).reshape(b, qh, qw, -1))[:, :after[0], :after[1]]
    out = shortcut + block.ls1(mixed)
    out = out + block.ls2(block.mlp(block.norm2(out)))
    rows = _real(after, (qh, qw))
    cols = _real((h, w), (hp, wp))

    def select(a):
        return a[..., rows, :][..., cols]

    skip = pool_matrix((h, w), after, stride[0], stride[0], 0) if block.q_stride else None
    return out, (probs, select), allowed[rows][:, cols], after, {"skip": skip}


def _real(grid, frame):
    """Frame slot (row-major over `frame`) of each token of `grid` (its top-left part)."""
    r, c = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return (r * frame[1] + c).flatten()


def det_blocks(model):
    return [(blk, timm_hieradet) for blk in model.blocks]
