"""What adapters share: hooks that always come off, and timm attention made explicit.

Recording changes a model for the duration of a forward (hooks, fused-attention flags); the
model must be exactly as it was afterwards, also after an exception. These helpers are that
guarantee, written once: an adapter's `attach` opens an ExitStack, `hook`s its handles onto it
and enters `timm_attention(...)`, and nothing is left to a try/finally of its own.
"""
from contextlib import ExitStack, contextmanager
from typing import Iterable

from torch import nn


def hook(stack: ExitStack, handle):
    """Remove the hook `handle` when `stack` closes; returns the handle."""
    stack.callback(handle.remove)
    return handle


@contextmanager
def timm_attention(modules: Iterable[nn.Module], fused: bool = False):
    """timm attention modules with `fused_attn` set to `fused` while open (False: the explicit
    softmax, whose probabilities pass `attn_drop`; True: F.scaled_dot_product_attention), each
    restored to its own value after. Modules without the flag are left alone."""
    saved = [(m, m.fused_attn) for m in modules if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for module, _ in saved:
            module.fused_attn = fused
        yield
    finally:
        for module, flag in saved:
            module.fused_attn = flag
