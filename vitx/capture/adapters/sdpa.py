"""The generic capture, by function rather than by module: the last resort for any ViT.

During the recorded forward a torch function mode sees every call of
`F.scaled_dot_product_attention` (routed through explicit attention, so its probabilities
exist) and every hand-written token softmax (`softmax.py`), however the model imported them.
A function mode is thread-local, unlike patching `torch.nn.functional`.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..attention_math import Record, explicit_attention
from .base import Adapter, infer_token_layout
from .softmax import is_token_softmax, record_token_softmax


class _AttentionInterceptor(TorchFunctionMode):
    """Every F.scaled_dot_product_attention call made explicit and recorded (or, given `attend`,
    computed by it: the fused capture), and every token softmax recorded."""

    def __init__(self, record: Record, batch_size, attend=None):
        super().__init__()
        self.record = record
        self.batch_size = batch_size
        self.attend = attend

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            if self.attend is not None:
                return self.attend(*args, **kwargs)
            return explicit_attention(*args, **kwargs, record=self.record)[0]
        if self.record is not None and is_token_softmax(func, args, kwargs):
            return record_token_softmax(func(*args, **kwargs), self.record, self.batch_size())
        return func(*args, **kwargs)


def route_sdpa(attend):
    """A function mode that sends every F.scaled_dot_product_attention call to `attend`."""
    return _AttentionInterceptor(None, lambda: None, attend)


class SDPAAdapter(Adapter):
    """Any model that calls F.scaled_dot_product_attention or computes a token softmax itself."""

    name = "generic"
    priority = -100

    def matches(self, model):
        return True

    supports_fused = True

    def attach(self, model, record):
        return self._intercept(model, record)

    def attach_fused(self, model, attend, record=None):
        """SDPA calls go to `attend` (fused); a hand-written token softmax has its
        probabilities anyway, so they go to `record` (the fused recorder reduces them in the
        backward pass too)."""
        return self._intercept(model, record, attend)

    @contextmanager
    def _intercept(self, model, record, attend=None):
        calls = {}

        def remember_batch(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()), None)
            calls["batch"] = x.shape[0] if torch.is_tensor(x) and x.dim() >= 1 else None

        handle = model.register_forward_pre_hook(remember_batch, with_kwargs=True)
        try:
            with _AttentionInterceptor(record, lambda: calls.get("batch"), attend):
                yield
        finally:
            handle.remove()

    def layout(self, model, input_size, num_tokens):
        return infer_token_layout(model, input_size, num_tokens)
