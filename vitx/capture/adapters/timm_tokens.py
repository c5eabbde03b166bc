"""Attention over a token set that grows or is only partly attended, laid out on one token set.

Attention-flow methods multiply one (tokens x tokens) matrix per layer, so every layer must be
written over the same tokens. Some timm families attend over part of the final sequence:

- a class token that joins late: CaiT's talking-heads layers and ConViT's gated positional
  (GPSA) layers attend over the patch tokens only; the class token is prepended afterwards.
  Until it joins, the class token is a learned constant that nothing reads and nothing
  writes, so each such layer is the block matrix [[1, 0], [0, A]] over [cls, patches].
- class attention: CaiT's and XCiT's class-attention layers update the class token only
  (one row, (B, H, 1, N)); every patch token passes unchanged (is only normalised, never
  mixed), so the layer is [[a], [0 | I]]: the attention row for cls, identity rows below.

Both embeddings are exact descriptions of how the layer moves information between tokens, so
rollout, gradient rollout and Chefer et al. apply unchanged; the identity entries get zero
gradient, i.e. they are not attention the model could have chosen differently.

The embedded matrix is what is recorded, and the attention the model goes on to use is sliced
back out of it, so gradients with respect to the recorded tensor are gradients with respect to
the attention that was applied.
"""
from typing import Callable

import torch

from ..attention_math import Record

Site = Callable[[torch.Tensor, Record], torch.Tensor]


def late_prefix(num_prefix: int = 1) -> Site:
    """(B, H, N, N) attention over patches -> recorded over [prefix, patches] with identity
    rows for the prefix tokens that have not joined yet; returns the patch block."""

    def site(attention: torch.Tensor, record: Record) -> torch.Tensor:
        batch, heads, n, _ = attention.shape
        total = n + num_prefix
        top = attention.new_zeros(batch, heads, num_prefix, total)
        top[..., :num_prefix] = torch.eye(num_prefix, dtype=attention.dtype, device=attention.device)
        left = attention.new_zeros(batch, heads, n, num_prefix)
        full = torch.cat([top, torch.cat([left, attention], dim=-1)], dim=-2)
        return record(full)[..., num_prefix:, num_prefix:]

    return site


def class_attention(attention: torch.Tensor, record: Record) -> torch.Tensor:
    """(B, H, 1, N) class-attention row -> recorded as (B, H, N, N): the row for token 0,
    identity rows for the tokens it does not update; returns the row."""
    batch, heads, queries, n = attention.shape
    eye = torch.eye(n, dtype=attention.dtype, device=attention.device)[queries:]
    full = torch.cat([attention, eye.expand(batch, heads, n - queries, n)], dim=-2)
    return record(full)[..., :queries, :]


def self_attention(attention: torch.Tensor, record: Record) -> torch.Tensor:
    return record(attention)
