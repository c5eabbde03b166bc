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

from ..support import needs_attention, refusal, window_methods
from ..windows import Windowed, patch_merge, window_index
from .hierarchical import HierarchicalAdapter, class_path

TIMM_SWIN = ("timm.models.swin_transformer.SwinTransformer", "timm.models.swin_transformer_v2.SwinTransformerV2")
FAMILY = {TIMM_SWIN[0]: "Swin", TIMM_SWIN[1]: "SwinV2"}
WHY = ("its windowed stages are explained by attention-flow methods only (window attention written as "
       "block-diagonal attention over each stage's grid, chained through the patch merging)")


@lru_cache(maxsize=64)
def _index(grid, window, shift, pad_first):
    return window_index(grid, window, shift, pad_first)


class StageChain:
    """Per forward: the grid each window layer runs on, and the merge where the grid changes."""

    def __init__(self):
        self.grid = None

    def reset(self, *args, **kwargs):
        self.grid = None

    def enter(self, grid):
        """The merge into `grid` from the previous layer's grid (None within a stage)."""
        grid = tuple(int(g) for g in grid)
        entry = None if self.grid is None or self.grid == grid else patch_merge(self.grid, grid)
        self.grid = grid
        return entry


def record_windows(record, out, batch, heads, grid, window, shift, entry, pad_first=False):
    """Record one layer's (batch * windows, heads, n, n) window attention as a `Windowed`;
    returns the tensor the model continues with (the recorded one, so its gradient is the
    layer's gradient)."""
    index = _index(tuple(grid), tuple(window), tuple(shift), pad_first).to(out.device)
    n = out.shape[-1]
    blocks = out.reshape(batch, index.shape[0], heads, n, n).transpose(1, 2)
    recorded = record(Windowed(blocks, index, grid, entry))
    return recorded.blocks.transpose(1, 2).reshape(out.shape)


class WindowedPyramidAdapter(HierarchicalAdapter):
    """Shared by the Swin adapters: the refusal of non-flow attention methods, the chain of
    stages, and the non-attention behaviour of `HierarchicalAdapter` (data config, layout from
    the last token state for gradient and perturbation methods)."""

    supports_fused = False  # window attention is recorded explicitly

    def family(self, model):
        return FAMILY.get(class_path(model), type(model).__name__), WHY

    def refuse(self, model, explainer):
        if not needs_attention(explainer) or getattr(explainer, "windows", False):
            return None
        family, why = self.family(model)
        return refusal(family, why, explainer.name, allowed={m: "window attention" for m in window_methods()})

    def attention_refusal(self, model):
        return None  # window attention is recorded: an empty record is the recorder's generic case

    @contextmanager
    def chained(self, model):
        """A StageChain reset at every call of the model."""
        chain = StageChain()
        handle = model.register_forward_pre_hook(chain.reset)
        try:
            yield chain
        finally:
            handle.remove()


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
    attn, seen = block.attn, {}
    fused = getattr(attn, "fused_attn", None)

    def grab(module, args):
        batch, height, width = args[0].shape[:3]
        seen.update(batch=batch, grid=(height, width), entry=chain.enter((height, width)))

    def on_attention(module, inputs, out):
        return record_windows(record, out, seen["batch"], attn.num_heads, seen["grid"], block.window_size,
                              block.shift_size, seen["entry"])

    handles = [block.register_forward_pre_hook(grab), attn.attn_drop.register_forward_hook(on_attention)]
    if fused is not None:
        attn.fused_attn = False
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if fused is not None:
            attn.fused_attn = fused
