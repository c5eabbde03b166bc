"""Attention that stays fused in the forward pass and is reduced layer by layer in the backward.

Gradient methods such as grad_rollout and chefer2021 need, per layer, only a head-fused
N x N map of attention A and its gradient dA. Recording A for every layer and asking
autograd for every dA keeps layers x heads x N^2 values alive twice: at 518 px that is
three times the memory of a training step. Here instead:

- forward: `F.scaled_dot_product_attention` (the fused kernel, nothing N^2 is stored); q, k,
  v are saved, as the fused kernel's own backward would;
- backward: per group of images and heads, A = softmax(q k^T scale + mask) is recomputed,
  dA = dOut v^T, the explainer's `reduce(layer, A, dA)` adds its per-head term to a float32
  sum for the layer, then dq, dk, dv follow from the softmax backward. The layer's sum,
  divided by the number of heads, is handed on in the model's dtype and everything else
  of the layer is freed before the next layer's backward starts.

So what lives at once is one chunk of one layer's attention plus one (B, N, N) map per
layer already reduced.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .attention_math import attention_scores, default_scale, repeat_kv

# (layer, attention chunk (b, h, N, N) float32, gradient chunk (b, h, N, N) float32) -> (b, N, N):
# the sum over the chunk's heads of the method's per-head term
Reduce = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
# (layer, (B, N, N) mean over heads of the reduced term, model dtype) -> None
Store = Callable[[int, torch.Tensor], None]

CHUNK_ELEMENTS = 1 << 22  # values per temporary N x N chunk (16 MiB in float32)
# in the forward of a head-fused recording the chunk lives beside the layer's activations, not
# after them, so it is kept smaller (4 MiB): about a quarter of a ViT-S batch of 16 at 224 px
FORWARD_CHUNK_ELEMENTS = 1 << 20


def _chunks(batch: int, heads: int, tokens: int, budget: Optional[int] = None):
    """(image slice, head slice) pairs covering (batch, heads), each at most `budget` values
    of N x N (default CHUNK_ELEMENTS; but at least one head of one image)."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    per_head = tokens * tokens
    if batch * heads * per_head <= budget:
        yield slice(0, batch), slice(0, heads)
        return
    if heads * per_head <= budget:
        images = max(1, budget // (heads * per_head))
        for start in range(0, batch, images):
            yield slice(start, min(batch, start + images)), slice(0, heads)
        return
    group = max(1, budget // per_head)
    for image in range(batch):
        for start in range(0, heads, group):
            yield slice(image, image + 1), slice(start, min(heads, start + group))


def _mask_chunk(mask, images, heads):
    """The part of a broadcastable (.., .., N, N) mask for a chunk."""
    if mask is None:
        return None
    mask = mask if mask.dim() == 4 else mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    mask = mask[images] if mask.shape[0] > 1 else mask
    return mask[:, heads] if mask.shape[1] > 1 else mask


HEAD_REDUCTIONS = ("mean", "max", "min")


def _fold_heads(total: Optional[torch.Tensor], chunk: torch.Tensor, how: str) -> torch.Tensor:
    """Add one chunk's heads (b, h, N, N) to a running head reduction (b, N, N)."""
    part = chunk.sum(dim=1) if how == "mean" else chunk.amax(dim=1) if how == "max" else chunk.amin(dim=1)
    if total is None:
        return part
    return total + part if how == "mean" else torch.maximum(total, part) if how == "max" else torch.minimum(total, part)


def fold_heads(attention: torch.Tensor, how: str) -> torch.Tensor:
    """(B, h, N, M) -> (B, N, M): the mean / max / min over heads."""
    total = _fold_heads(None, attention, how)
    return total / attention.shape[1] if how == "mean" else total


def head_fused_attention(q, k, mask, scale, is_causal, how: str) -> torch.Tensor:
    """(B, N, M) = the mean / max / min over heads of softmax(q k^T scale + mask), float32,
    computed chunk by chunk, so at most one chunk of per-head attention exists at a time."""
    batch, heads, tokens = q.shape[0], q.shape[1], q.shape[-2]
    out = torch.empty(batch, tokens, k.shape[-2], dtype=torch.float32, device=q.device)
    total, current = None, None
    for images, group in _chunks(batch, heads, tokens, FORWARD_CHUNK_ELEMENTS):  # one image slice's chunks in a row
        if current is not None and images != current:
            out[current], total = total / heads if how == "mean" else total, None
        current = images
        attention = attention_scores(q[images, group], k[images, group], scale,
                                     _mask_chunk(mask, images, group), is_causal).float().softmax(dim=-1)
        total = _fold_heads(total, attention, how)
        del attention
    out[current] = total / heads if how == "mean" else total
    return out


def attention_with_fused_heads(q, k, v, attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                               is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                               how: str):
    """(SDPA's output, the head-fused attention (B, N, M) float32): the forward a method that
    reads only head-fused attention needs (rollout, no gradient). The output comes from the
    fused kernel; the per-head probabilities are never all alive at once, which is what
    keeps rollout within a few percent of a plain forward's memory."""
    if dropout_p:
        raise ValueError("attention dropout is active: explain in eval mode")
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                         enable_gqa=enable_gqa)
    if enable_gqa:
        k, v = repeat_kv(q, k, v)
    return out, head_fused_attention(q, k, attn_mask, default_scale(q, scale), is_causal, how)


class ReducedAttention(torch.autograd.Function):
    """out = SDPA(q, k, v); backward reduces this layer's (A, dA) and returns dq, dk, dv.

    `anchor` is a zero-size tensor that requires grad: asking autograd for the anchors'
    gradients runs every layer's backward (and nothing a method does not need, such as
    parameter gradients)."""

    @staticmethod
    def forward(ctx, q, k, v, anchor, mask, scale, is_causal, layer, reduce, store):
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale, ctx.is_causal, ctx.layer, ctx.reduce, ctx.store = scale, is_causal, layer, reduce, store
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, mask = ctx.saved_tensors
        batch, heads, tokens = q.shape[0], q.shape[1], q.shape[-2]
        want = any(ctx.needs_input_grad[:3])
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v)) if want else (None, None, None)
        total = torch.zeros(batch, tokens, k.shape[-2], dtype=torch.float32, device=q.device)
        for images, group in _chunks(batch, heads, tokens):
            qc, kc, vc, doc = q[images, group], k[images, group], v[images, group], d_out[images, group]
            attention = attention_scores(qc, kc, ctx.scale, _mask_chunk(mask, images, group), ctx.is_causal).softmax(dim=-1)
            gradient = torch.matmul(doc, vc.transpose(-2, -1)).float()  # d out / d attention
            total[images] += ctx.reduce(ctx.layer, attention, gradient).float()
            if want:  # softmax backward, in place: A*dA - A * rowsum(A*dA)
                d_scores = gradient.mul_(attention)
                d_scores = d_scores.addcmul_(attention, d_scores.sum(dim=-1, keepdim=True), value=-1).to(q.dtype)
                del gradient
                dq[images, group] = torch.matmul(d_scores, kc) * ctx.scale
                dk[images, group] = torch.matmul(d_scores.transpose(-2, -1), qc) * ctx.scale
                dv[images, group] = torch.matmul(attention.to(v.dtype).transpose(-2, -1), doc)
            del attention
        ctx.store(ctx.layer, (total / heads).to(q.dtype))
        return dq, dk, dv, torch.zeros(0, device=q.device), None, None, None, None, None, None


def reduced_attention(q, k, v, attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                      is_causal: bool = False, scale: Optional[float] = None, enable_gqa: bool = False, *,
                      anchor: torch.Tensor, layer: int, reduce: Reduce, store: Store) -> torch.Tensor:
    """`F.scaled_dot_product_attention`'s contract, with the backward of `ReducedAttention`.
    Dropout is not supported (vitx explains in eval mode)."""
    if dropout_p:
        raise ValueError("attention dropout is active: explain in eval mode")
    if enable_gqa:
        k, v = repeat_kv(q, k, v)
    scale = default_scale(q, scale)
    return ReducedAttention.apply(q, k, v, anchor, attn_mask, scale, is_causal, layer, reduce, store)


class ReducedProbabilities(torch.autograd.Function):
    """Identity on attention probabilities the model computed itself; the backward reduces the
    layer's (A, dA) like `ReducedAttention` and passes dA on unchanged."""

    @staticmethod
    def forward(ctx, probs, anchor, layer, reduce, store):
        ctx.save_for_backward(probs)
        ctx.layer, ctx.reduce, ctx.store = layer, reduce, store
        return probs.view_as(probs)

    @staticmethod
    def backward(ctx, d_probs):
        (probs,) = ctx.saved_tensors
        batch, heads, tokens = probs.shape[0], probs.shape[1], probs.shape[-2]
        total = torch.zeros(batch, tokens, probs.shape[-1], dtype=torch.float32, device=probs.device)
        for images, group in _chunks(batch, heads, tokens):
            total[images] += ctx.reduce(ctx.layer, probs[images, group].float(), d_probs[images, group].float()).float()
        ctx.store(ctx.layer, (total / heads).to(probs.dtype))
        return d_probs, torch.zeros(0, device=probs.device), None, None, None


def reduced_probabilities(probs: torch.Tensor, *, anchor: torch.Tensor, layer: int, reduce: Reduce,
                          store: Store) -> torch.Tensor:
    """`probs` (B, h, N, N) unchanged, with the backward of `ReducedProbabilities`."""
    return ReducedProbabilities.apply(probs, anchor, layer, reduce, store)
