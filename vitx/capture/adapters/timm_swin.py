"""Swin and SwinV2 (timm): window attention recorded as block-diagonal layers over each
stage's grid, chained by the 2x2 patch merging between stages (vitx.capture.windows).

Every block sees its (B, H, W, C) grid; its window attention runs on the grid rolled by
-shift, padded to whole windows and cut into windows folded into the batch. The recorder
receives each layer as a `Windowed` (blocks (B, heads, windows, n, n) plus the grid token of
every window slot); the first block of a later stage carries the merge from the previous
stage's grid. Attention-flow methods (those declaring `windows`) then explain the model over
the first stage's grid, from the mean of the last stage's tokens (the average-pool head).
Other attention methods are refused before any forward, with the family's reason.
"""
from contextlib import ExitStack, contextmanager
from functools import lru_cache

from ..windows import Windowed, patch_merge, window_index
from .hierarchical import class_path
from .pyramid import PyramidAdapter, explicit_probs

TIMM_SWIN = ("timm.models.swin_transformer.SwinTransformer", "timm.models.swin_transformer_v2.SwinTransformerV2")
FAMILY = {TIMM_SWIN[0]: "Swin", TIMM_SWIN[1]: "SwinV2"}
WHY = ("its windowed stages are explained by attention-flow methods only (window attention written as "
       "block-diagonal attention over each stage's grid, chained through the patch merging)")


@lru_cache(maxsize=64)
def _index(grid, window, shift, pad_first):
    return window_index(grid, window, shift, pad_first)


def record_windows(record, out, batch, heads, grid, window, shift, entry, pad_first=False):
    """Record one layer's (batch * windows, heads, n, n) window attention as a `Windowed`;
    returns the tensor the model continues with (the recorded one, so its gradient is the
    layer's gradient)."""
    index = _index(tuple(grid), tuple(window), tuple(shift), pad_first).to(out.device)
    n = out.shape[-1]
    blocks = out.reshape(batch, index.shape[0], heads, n, n).transpose(1, 2)
    recorded = record(Windowed(blocks, index, grid, entry))
    return recorded.blocks.transpose(1, 2).reshape(out.shape)


class WindowedPyramidAdapter(PyramidAdapter):
    """Shared by the Swin adapters: the family's reason, and 2x2 patch merging between stages."""

    reads = "window attention"

    def family(self, model):
        return FAMILY.get(class_path(model), type(model).__name__), WHY

    @contextmanager
    def chained(self, model):
        with super().chained(model) as chain:
            yield _Merging(chain)


class _Merging:
    """A StageChain whose stages are joined by Swin's 2x2 patch merging."""

    def __init__(self, chain):
        self.chain = chain

    def enter(self, grid):
        return self.chain.enter(grid, patch_merge)


class TimmSwinAdapter(WindowedPyramidAdapter):
    """timm SwinTransformer / SwinTransformerV2: the non-fused path, `attn_drop` hooked."""

    name = "timm_swin"
    priority = 1100  # before the table of refused families

    def matches(self, model):
        return class_path(model) in TIMM_SWIN

    @contextmanager
    def attach(self, model, record):
        with ExitStack() as stack:
            chain = stack.enter_context(self.chained(model))
            for stage in model.layers:
                for block in stage.blocks:
                    stack.enter_context(_timm_block(block, chain, record))
            yield


@contextmanager
def _timm_block(block, chain, record):
    seen = {}

    def grab(module, args):
        batch, height, width = args[0].shape[:3]
        seen.update(batch=batch, grid=(height, width), entry=chain.enter((height, width)))

    def on_attention(out):
        return record_windows(record, out, seen["batch"], block.attn.num_heads, seen["grid"], block.window_size,
                              block.shift_size, seen["entry"])

    handle = block.register_forward_pre_hook(grab)
    try:
        with explicit_probs(block.attn, on_attention):
            yield
    finally:
        handle.remove()
