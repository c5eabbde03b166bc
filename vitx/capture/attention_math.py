"""Attention computed explicitly, so its probabilities can be recorded.

Fused kernels (`F.scaled_dot_product_attention`) never materialise softmax(QK^T), which
is exactly what an explainer needs. Adapters route attention through `explicit_attention`
while a recorder is active; outside of it the model keeps its fast path.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Record = Callable[[torch.Tensor], torch.Tensor]


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    record: Optional[Record] = None,
):
    """Same contract as `F.scaled_dot_product_attention`; returns (output, probabilities).

    `record` sees the post-softmax probabilities of self-attention (query length equal to
    key length) and returns the tensor that flows on, so gradients w.r.t. the recorded
    tensor are gradients w.r.t. the attention the model really used.
    """
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(repeat, dim=-3)
        v = v.repeat_interleave(repeat, dim=-3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = scores.softmax(dim=-1)
    if record is not None and q.shape[-2] == k.shape[-2]:
        probs = record(probs)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v, probs
