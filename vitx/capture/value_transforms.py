"""What each block's attention does to each token's value: W_o v_j, for token-wise methods.

Beyond Intuition's token-wise variant (Chen et al., TMLR 2023) weighs token j of a block by
|W_o v_j| / |z_j|: its value vector (heads concatenated) through the attention's output
projection, over the block's input token. Every framework names v and W_o differently
(timm's fused qkv, Hugging Face's query/key/value modules, nn.MultiheadAttention's
in_proj), so they are read by function instead, wherever vitx records attention: for fixed
values the attention sub-layer's output is linear in the attention weights, so with the
weights replaced by the identity it is W_o v_j + b_o at token j, with zeros it is b_o, and
the difference of the two residual streams after attention is W_o v_j (times the block's
layer scale, if it has one: what the value path adds to the stream).

One forward without gradients of three stacked copies of the batch: the first runs as the
model does and gives each block's real input; every block's input is overwritten with it in
the two others, which see the identity and zero attention (the adapter's `record` returns
the tensor that flows on). The residual stream after attention is the input of each
block's second norm (`Adapter.mid_sites`), as for `BLOCK_STATES`.
"""
from contextlib import ExitStack
from typing import List, Tuple

import torch
from torch import nn

from ..errors import VitxError
from .model_state import model_lock

COPIES = 3  # the model's own forward, identity attention, zero attention


def _first_input(args, kwargs):
    return args[0] if args else next(iter(kwargs.values()), None)


def _with_first_input(args, kwargs, value):
    if args:
        return (value, *args[1:]), kwargs
    first = next(iter(kwargs))
    return args, {**kwargs, first: value}


def _tokens(x, batch: int, where: str) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 3 or x.shape[0] != COPIES * batch:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise VitxError(f"value transforms need (batch, tokens, dim) tokens at {where}, got {shape}")
    return x


def value_transforms(model: nn.Module, adapter, pixels: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Per block: its input tokens z and W_o v (B, N, D) each, in block order (detached)."""
    batch = pixels.shape[0]
    inputs: List[torch.Tensor] = []
    mids: List[torch.Tensor] = []

    def substitute(attention):
        if not torch.is_tensor(attention) or attention.shape[0] != COPIES * batch:
            raise VitxError("value transforms need one (batch, heads, N, N) attention per layer and image")
        real, identity, _ = attention.chunk(COPIES)
        eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
        return torch.cat([real, eye.expand_as(identity), torch.zeros_like(identity)])

    def share_input(module, args, kwargs):
        real = _tokens(_first_input(args, kwargs), batch, "a block's input")[:batch]
        inputs.append(real)
        return _with_first_input(args, kwargs, real.repeat(COPIES, 1, 1))

    def keep_mid(module, args, kwargs):
        mids.append(_tokens(_first_input(args, kwargs), batch, "the stream after attention"))

    with model_lock(model), ExitStack() as stack, torch.no_grad():
        stack.enter_context(adapter.attach(model, substitute))
        for site in adapter.token_sites(model):
            stack.callback(site.register_forward_pre_hook(share_input, with_kwargs=True).remove)
        for site in adapter.mid_sites(model):
            stack.callback(site.register_forward_pre_hook(keep_mid, with_kwargs=True).remove)
        model(pixels.repeat(COPIES, *([1] * (pixels.dim() - 1))))
    if len(inputs) != len(mids):
        raise VitxError(f"value transforms: {len(inputs)} block inputs but {len(mids)} streams after attention")
    transformed = [mid[batch:2 * batch] - mid[2 * batch:] for mid in mids]
    return inputs, transformed
