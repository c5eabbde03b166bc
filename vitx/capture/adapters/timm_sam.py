"""timm's SAM image encoder (`samvit_*`): windowed and global layers over one token grid.

SAM's ViT keeps one patch grid through every block: most blocks attend inside
non-overlapping windows (the windows folded into the batch, the grid zero-padded to whole
windows), a few attend globally. A window layer is still one token-mixing matrix over the
whole grid: block-diagonal, each token attending only inside its window. Writing it that way
makes every layer a (tokens x tokens) matrix over the same tokens, so attention flow through
the mixed stack is exact - rolling out the global layers alone would not be, since it would
skip how the windows moved information.

Padding tokens (zeros before the attention's projections, dropped after it) are not image
tokens: the recorded matrix keeps the rows and columns of the real tokens, so a row of a
window at the border sums to less than one (the rest went to the constant padding, which
carries no relevance). SAM's attention module stacks the heads into the batch; they are
unstacked for recording and restacked for the model.

Memory: each window layer is recorded as a full (tokens x tokens) matrix per head, like a
global layer (about 0.8 GB per layer and image for SAM-B at 1024 px before head fusion).
"""
from contextlib import ExitStack, contextmanager

import torch

from ..layout import MEAN_TOKEN, TokenLayout
from .hierarchical import class_path
from .timm import TimmAdapter
from .toolkit import hook, timm_attention

SAM = "timm.models.vision_transformer_sam.VisionTransformerSAM"


def _window_to_grid(a, batch, heads, padded, size):
    """(batch * windows * heads, s*s, s*s) window attention -> (batch, heads, Hp*Wp, Hp*Wp)."""
    nh, nw = padded[0] // size, padded[1] // size
    a = a.reshape(batch, nh, nw, heads, size, size, size, size)
    eye_h = torch.eye(nh, dtype=a.dtype, device=a.device)
    eye_w = torch.eye(nw, dtype=a.dtype, device=a.device)
    full = torch.einsum("bijhrcst,ik,jl->bhirjckslt", a, eye_h, eye_w)
    tokens = padded[0] * padded[1]
    return full.reshape(batch, heads, tokens, tokens)


def _grid_to_window(full, heads, padded, size):
    batch = full.shape[0]
    nh, nw = padded[0] // size, padded[1] // size
    full = full.reshape(batch, heads, nh, size, nw, size, nh, size, nw, size)
    eye_h = torch.eye(nh, dtype=full.dtype, device=full.device)
    eye_w = torch.eye(nw, dtype=full.dtype, device=full.device)
    a = torch.einsum("bhirjckslt,ik,jl->bijhrcst", full, eye_h, eye_w)
    return a.reshape(batch * nh * nw * heads, size * size, size * size)


class SamAdapter(TimmAdapter):
    """Window layers written as block-diagonal attention over the grid; global layers as they are."""

    name = "timm_sam"
    priority = 1100  # before the table of refused families, which lists SAM for other versions

    def matches(self, model):
        return class_path(model) == SAM

    supports_fused = False  # attention is not one plain SDPA per layer: recorded explicitly

    @contextmanager
    def attach(self, model, record):
        shapes = {}
        with ExitStack() as stack:
            stack.enter_context(timm_attention(block.attn for block in model.blocks))
            for block in model.blocks:
                attn = block.attn

                def grab(mod, args, block=block):
                    shapes[block] = args[0].shape[:3]  # (batch, H, W) of the grid

                def on_attention(mod, inputs, out, block=block):
                    batch, height, width = shapes[block]
                    heads = block.attn.num_heads
                    size = block.window_size
                    if size <= 0:
                        return record(out.reshape(batch, heads, *out.shape[-2:])).reshape(out.shape)
                    padded = (-(-height // size) * size, -(-width // size) * size)
                    full = _window_to_grid(out, batch, heads, padded, size)
                    full = full.reshape(batch, heads, padded[0], padded[1], padded[0], padded[1])
                    real = record(full[:, :, :height, :width, :height, :width].reshape(
                        batch, heads, height * width, height * width))
                    if padded != (height, width):
                        full = full.clone()
                        full[:, :, :height, :width, :height, :width] = real.reshape(
                            batch, heads, height, width, height, width)
                    else:
                        full = real
                    return _grid_to_window(full, heads, padded, size)

                hook(stack, block.register_forward_pre_hook(grab))
                hook(stack, attn.attn_drop.register_forward_hook(on_attention))
            yield

    def layout(self, model, input_size, num_tokens):
        embed = model.patch_embed
        if input_size is not None:
            grid = (input_size[0] // embed.patch_size[0], input_size[1] // embed.patch_size[1])
        else:
            grid = tuple(embed.grid_size)
        return TokenLayout(prefix={}, num_prefix=0, grid=grid, default_token=MEAN_TOKEN)
