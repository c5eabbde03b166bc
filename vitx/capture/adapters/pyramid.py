"""What every adapter of a hierarchical ViT shares (Swin, PiT, PVTv2: vitx.capture.stages).

Each records its layers as `StageLayer`s chained from the first stage to the last, so only
attention-flow methods (those declaring `windows`) explain it: other attention methods are
refused before any forward, with the family's reason. Methods without attention keep the
behaviour of `HierarchicalAdapter` (data config, a layout from the last token state).
"""
from contextlib import ExitStack, contextmanager

from ..stages import Merge
from ..support import hierarchical_refusal, window_methods
from .hierarchical import HierarchicalAdapter, class_path
from .toolkit import hook, timm_attention


class StageChain:
    """Per forward: the grid each layer runs on, and the merge where the grid changes."""

    def __init__(self):
        self.grid = None

    def reset(self, *args, **kwargs):
        self.grid = None

    def enter(self, grid, merge) -> Merge:
        """The merge into `grid` from the previous layer's grid (None within a stage);
        `merge(before, after)` builds it."""
        grid = tuple(int(g) for g in grid)
        entry = None if self.grid is None or self.grid == grid else merge(self.grid, grid)
        self.grid = grid
        return entry


class PyramidAdapter(HierarchicalAdapter):
    """A hierarchical family vitx records as stage layers. Subclasses set `families`
    (class path -> (family, why only attention-flow methods apply)) and `attach`."""

    supports_fused = False  # the layers are recorded explicitly
    families = {}
    reads = "stage attention"  # what the allowed methods read, in the refusal

    def matches(self, model):
        return class_path(model) in self.families

    def family(self, model):
        return self.families[class_path(model)]

    def refuse(self, model, explainer):
        family, why = self.family(model)
        return hierarchical_refusal(family, why, explainer, allowed={m: self.reads for m in window_methods()})

    def attention_refusal(self, model):
        return None  # the layers are recorded: an empty record is the recorder's generic case

    @contextmanager
    def chained(self, model):
        """A StageChain reset at every call of the model."""
        chain = StageChain()
        handle = model.register_forward_pre_hook(chain.reset)
        try:
            yield chain
        finally:
            handle.remove()


@contextmanager
def explicit_probs(attn, on_probs):
    """Route a timm attention module (fused_attn, then attn_drop after the softmax) through its
    non-fused path and pass its probabilities (B, heads, Nq, Nk) through `on_probs`, whose
    return value the module continues with."""
    with ExitStack() as stack:
        stack.enter_context(timm_attention([attn]))
        hook(stack, attn.attn_drop.register_forward_hook(lambda module, inputs, out: on_probs(out)))
        yield
