"""Any model that calls `F.scaled_dot_product_attention` or a softmax over token-by-token
scores itself (the last resort)."""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..attention_math import Record, explicit_attention
from ..layout import infer_layout
from .base import Adapter, grid_from_patch_conv


_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax}


def _is_attention(probs, args, kwargs) -> bool:
    """A softmax over the last dim of (batch, heads, tokens, tokens) scores: explicit attention."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return probs.dim() == 4 and probs.shape[-1] == probs.shape[-2] and dim in (-1, 3)


class _SDPAInterceptor(TorchFunctionMode):
    """Route every F.scaled_dot_product_attention call through explicit attention, and record
    explicit attention (`softmax(q @ k^T * scale)`, e.g. Hugging Face's eager path).

    A torch function mode sees the call however the model imported the function, and it
    is thread-local, unlike patching `torch.nn.functional`.
    """

    def __init__(self, record: Record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return explicit_attention(*args, **kwargs, record=self.record)[0]
        if func in _SOFTMAX:
            probs = func(*args, **kwargs)
            return self.record(probs) if _is_attention(probs, args, kwargs) else probs
        return func(*args, **kwargs)


class SDPAAdapter(Adapter):
    """Any model that calls F.scaled_dot_product_attention, or softmax over square
    (batch, heads, tokens, tokens) scores, itself (the last resort)."""

    name = "sdpa"
    priority = -100

    def matches(self, model):
        return True

    @contextmanager
    def attach(self, model, record):
        with _SDPAInterceptor(record):
            yield

    def layout(self, model, input_size, num_tokens):
        return infer_layout(num_tokens, grid_from_patch_conv(model, input_size))
