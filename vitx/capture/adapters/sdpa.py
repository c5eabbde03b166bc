"""Any model that calls `F.scaled_dot_product_attention` itself (the last resort)."""
from contextlib import contextmanager

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..attention_math import Record, explicit_attention
from ..layout import infer_layout
from .base import Adapter, grid_from_patch_conv


class _SDPAInterceptor(TorchFunctionMode):
    """Route every F.scaled_dot_product_attention call through explicit attention.

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
        return func(*args, **kwargs)


class _SDPARouter(TorchFunctionMode):
    """Route every F.scaled_dot_product_attention call to `attend` (same contract)."""

    def __init__(self, attend):
        super().__init__()
        self.attend = attend

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.attend(*args, **kwargs)
        return func(*args, **kwargs)


class SDPAAdapter(Adapter):
    """Any model that calls F.scaled_dot_product_attention itself (the last resort)."""

    name = "sdpa"
    priority = -100

    def matches(self, model):
        return True

    supports_fused = True

    @contextmanager
    def attach(self, model, record):
        with _SDPAInterceptor(record):
            yield

    @contextmanager
    def attach_fused(self, model, attend):
        with _SDPARouter(attend):
            yield

    def layout(self, model, input_size, num_tokens):
        return infer_layout(num_tokens, grid_from_patch_conv(model, input_size))
