"""torchvision Swin (swin_t/s/b) and Swin V2 (swin_v2_t/s/b): window layers per stage.

torchvision's window attention is one module-level function, `shifted_window_attention`,
which pads the grid to whole windows, rolls the padded grid by -shift (no shift along a side
the window already covers), partitions it and takes `F.softmax` of the scores. While a
recorder is attached, the module's `F` is a stand-in whose `softmax` passes the probabilities
of the attention module running in this thread through the recorder (a thread-local set by
that module's forward pre-hook); every other function is torch's. The stand-in is installed
once for all open recorders (counted under a lock) and the module's own `F` is put back when
the last one closes.
"""
import threading
from contextlib import ExitStack, contextmanager

import torch.nn.functional as torch_functional

from .hierarchical import class_path
from .timm_swin import WindowedPyramidAdapter, record_windows

TORCHVISION_SWIN = "torchvision.models.swin_transformer.SwinTransformer"
_local = threading.local()
_install_lock = threading.Lock()
_installed = {"count": 0, "saved": None}


class _Functional:
    """torch.nn.functional, except that `softmax` records the window attention of this thread."""

    def __getattr__(self, name):
        return getattr(torch_functional, name)

    @staticmethod
    def softmax(*args, **kwargs):
        probs = torch_functional.softmax(*args, **kwargs)
        windows = getattr(_local, "windows", None)
        return probs if windows is None else windows(probs)


@contextmanager
def _functional_installed():
    from torchvision.models import swin_transformer

    with _install_lock:
        if _installed["count"] == 0:
            _installed["saved"] = swin_transformer.F
            swin_transformer.F = _Functional()
        _installed["count"] += 1
    try:
        yield
    finally:
        with _install_lock:
            _installed["count"] -= 1
            if _installed["count"] == 0:
                swin_transformer.F = _installed["saved"]


class TorchvisionSwinAdapter(WindowedPyramidAdapter):
    name = "torchvision_swin"
    priority = 1100  # before the table of refused families

    def matches(self, model):
        return class_path(model) == TORCHVISION_SWIN

    def family(self, model):
        return "torchvision Swin", super().family(model)[1]

    @contextmanager
    def attach(self, model, record):
        from torchvision.models.swin_transformer import ShiftedWindowAttention

        with ExitStack() as stack:
            chain = stack.enter_context(self.chained(model))
            stack.enter_context(_functional_installed())
            for module in model.modules():
                if isinstance(module, ShiftedWindowAttention):  # V2 subclasses it
                    stack.enter_context(_torchvision_attention(module, chain, record))
            yield


@contextmanager
def _torchvision_attention(module, chain, record):
    def before(mod, args):
        batch, height, width = args[0].shape[:3]
        window = tuple(module.window_size)
        padded = (-(-height // window[0]) * window[0], -(-width // window[1]) * window[1])
        shift = tuple(0 if w >= p else s for w, p, s in zip(window, padded, module.shift_size))
        entry = chain.enter((height, width))
        _local.windows = lambda probs: record_windows(record, probs, batch, module.num_heads, (height, width),
                                                      window, shift, entry, pad_first=True)

    def after(mod, args, out):
        _local.windows = None

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        _local.windows = None
