"""Token-by-token softmax written by hand: the attention of from-scratch ViTs.

Notebook ViTs and small ViT libraries compute `softmax(q @ k^T * scale)` themselves, with
`F.softmax`, `torch.softmax`, `Tensor.softmax` or `nn.Softmax`. Under the generic capture's
function mode every such call is seen; only the ones that are token attention are recorded:
the softmax runs over the last dimension of a (B, heads, N, N) or (B*heads, N, N) tensor that
is square in its last two dimensions. A classifier's softmax (B, classes) or a softmax over
channels never qualifies; a (B, heads, d, d) channel attention would, which is why model
families that use one (XCiT) are claimed by their framework adapter first.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ..attention_math import Record

SOFTMAX_FUNCTIONS = frozenset({F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax})


def is_token_softmax(func, args, kwargs) -> bool:
    """True for a softmax over the last dim of a square (…, N, N) rank-3/4 tensor."""
    if func not in SOFTMAX_FUNCTIONS or not args or not torch.is_tensor(args[0]):
        return False
    scores = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None or scores.dim() not in (3, 4):
        return False
    return dim in (-1, scores.dim() - 1) and scores.shape[-1] == scores.shape[-2] >= 2


def record_token_softmax(probs: torch.Tensor, record: Record, batch_size: Optional[int]) -> torch.Tensor:
    """Hand `probs` to `record` as (B, heads, N, N) and return what flows on, in its own shape."""
    if probs.dim() == 4:
        return record(probs)
    n = probs.shape[-1]
    batch = batch_size if batch_size and probs.shape[0] % batch_size == 0 else probs.shape[0]
    return record(probs.view(batch, -1, n, n)).reshape(probs.shape)
