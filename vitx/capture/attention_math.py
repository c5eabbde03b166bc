"""The one attention kernel of vitx: scores, probabilities and the multi-head decomposition.

Fused kernels (`F.scaled_dot_product_attention`, `F.multi_head_attention_forward`) never
materialise softmax(QK^T), which is exactly what an explainer needs. Everything in vitx that
computes attention itself goes through this module: the explicit path of the adapters
(SDPA models, transformers' attention interface, nn.MultiheadAttention), the fused backward
(vitx.capture.fused, which recomputes the scores) and the LRP rules (vitx.attribution.lrp).
So masks, grouped-query attention, the scale and the softmax precision mean one thing:

- masks follow `F.scaled_dot_product_attention`: a boolean mask is True where a query may
  attend, a float mask is added to the scores;
- grouped-query attention: each key/value head serves `query heads // key heads` query heads;
- the softmax runs in float32 (as transformers' eager attention does) and the probabilities
  come back in the inputs' dtype.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Record = Callable[[torch.Tensor], torch.Tensor]


def repeat_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(k, v) with their heads repeated to match q's (grouped-query attention); unchanged otherwise."""
    if k.shape[-3] == q.shape[-3]:
        return k, v
    repeat = q.shape[-3] // k.shape[-3]
    return k.repeat_interleave(repeat, dim=-3), v.repeat_interleave(repeat, dim=-3)


def default_scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: Optional[float] = None,
                     attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
    """float32 pre-softmax scores q k^T * scale with the causal and explicit masks applied."""
    scores = torch.matmul(q * default_scale(q, scale), k.transpose(-2, -1)).float()
    if is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores


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
    if enable_gqa:
        k, v = repeat_kv(q, k, v)
    probs = attention_scores(q, k, scale, attn_mask, is_causal).softmax(dim=-1).to(q.dtype)
    if record is not None and q.shape[-2] == k.shape[-2]:
        probs = record(probs)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v, probs


def multi_head_attention(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k,
                         bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
                         key_padding_mask=None, need_weights=True, attn_mask=None, use_separate_proj_weight=False,
                         q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                         average_attn_weights=True, is_causal=False, *, record: Optional[Record] = None,
                         attend=None):
    """`F.multi_head_attention_forward` (same arguments, sequence-first (L, B, E) or unbatched
    (L, E)) decomposed: projections, heads split, attention, heads merged, output projection.

    The attention is `attend(q, k, v, attn_mask=, dropout_p=, is_causal=)` when given (a fused
    or reduced kernel: no weights returned), else explicit (probabilities recorded by `record`)
    when weights or a record are asked for, else `F.scaled_dot_product_attention` (which a
    torch function mode such as vitx's LRP rules may take over).
    """
    if bias_k is not None or add_zero_attn or static_k is not None or static_v is not None:
        from ..errors import VitxError

        raise VitxError("nn.MultiheadAttention with bias_k/bias_v, add_zero_attn or static keys is not supported "
                        "by vitx's attention decomposition; write an adapter")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    if use_separate_proj_weight:
        weights = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        weights = in_proj_weight.chunk(3)
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    if query is key is value and not use_separate_proj_weight:  # one projection, as torch does
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
    tgt, batch, width = q.shape

    def split(t):  # (L, B, E) -> (B, heads, L, E / heads)
        return t.reshape(t.shape[0], batch, num_heads, -1).permute(1, 2, 0, 3)

    mask = _mha_mask(attn_mask, key_padding_mask, batch, num_heads, tgt, k.shape[0], q.dtype)
    causal = is_causal and mask is None
    dropout = dropout_p if training else 0.0
    probs = None
    if attend is not None:
        out = attend(split(q), split(k), split(v), attn_mask=mask, dropout_p=dropout, is_causal=causal)
    elif need_weights or record is not None:
        out, probs = explicit_attention(split(q), split(k), split(v), attn_mask=mask, dropout_p=dropout,
                                        is_causal=causal, record=record)
    else:
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, dropout_p=dropout,
                                             is_causal=causal)
    out = out.permute(2, 0, 1, 3).reshape(tgt, batch, width)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    weights = None
    if need_weights and probs is not None:
        weights = probs.mean(dim=1) if average_attn_weights else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out), weights


def _mha_mask(attn_mask, key_padding_mask, batch, heads, tgt, src, dtype):
    """nn.MultiheadAttention's masks (bool True = blocked, or additive) as one additive mask."""
    def additive(mask):
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    total = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        total = mask.reshape(batch, heads, tgt, src) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).reshape(batch, 1, 1, src)
        total = padding if total is None else total + padding
    return total
