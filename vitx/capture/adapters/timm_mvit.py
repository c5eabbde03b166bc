"""MViTv2 (timm `MultiScaleVit`): pooling attention as pooled stage layers (vitx.capture.stages).

Each block attends from its queries to its keys, both pooled from the block's input tokens
([cls,] grid) by a strided depthwise convolution (or max / average pooling in the `max` /
`avg` modes); the class token is never pooled. The first block of a later stage pools its
queries with stride 2, so its output is a coarser grid, and its residual path pools the input
the same way (`shortcut_pool_attn`, a max pool). As a token flow the block is A @ P_keys with
the residual S, where P_keys and S spread each pooled token over its real kernel footprint by
no learned weight (vitx.capture.stages.Merge: tent weights where footprints overlap): for S,
the max pool, that is what rollout's residual identity gives to what it cannot attribute
(which input wins the max differs per channel). Left out of the flow,
as every MLP and projection is: the "residual pooling" that adds the pooled queries to the
attention output (on by default in MViTv2), a further linear path of the same footprint.
The patch embedding is the only merge outside the blocks and comes before the first. The
explained token is the class token where the head reads it, else the mean of the last stage's
grid (`global_pool='avg'`, with or without a class token).

The attention computes its own `softmax`, with no module after it to hook, so a torch function
mode taps the softmax calls made while an MViTv2 attention module runs.
"""
from contextlib import ExitStack, contextmanager

from torch.overrides import TorchFunctionMode

from ..stages import Pooled
from .pyramid import PyramidAdapter
from .softmax import SOFTMAX_FUNCTIONS
from .timm_pooled import conv_params, conv_output, conv_merge_of

MVIT = "timm.models.mvitv2.MultiScaleVit"
MVIT_WHY = ("pooling attention reads keys (and, at each stage change, queries) pooled from the tokens, so queries "
            "and keys are different token sets and the grid shrinks between stages; it is explained by "
            "attention-flow methods only (each layer's attention times its key pooling, chained through the pooled "
            "residual)")


class SoftmaxTap(TorchFunctionMode):
    """Passes the result of each softmax over a (B, heads, [windows,] Nq, Nk) tensor through `active`
    (set while an attention module runs), and returns what `active` returns."""

    def __init__(self):
        super().__init__()
        self.active = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active is not None and func in SOFTMAX_FUNCTIONS and out.dim() in (4, 5):
            return self.active(out)
        return out


class TimmMvitAdapter(PyramidAdapter):
    name = "timm_mvitv2"
    priority = 1100  # before the table of refused families
    families = {MVIT: ("MViTv2", MVIT_WHY)}

    def head_token(self, model):
        return "mean" if model.global_pool == "avg" else None  # a class token may be there, unread

    @contextmanager
    def attach(self, model, record):
        tap = SoftmaxTap()
        with ExitStack() as stack:
            for stage in model.stages:
                for block in stage.blocks:
                    stack.enter_context(_block(block, tap, record))
            stack.enter_context(tap)
            yield


@contextmanager
def _block(block, tap, record):
    """One block: while its attention runs, its softmax is recorded as a `Pooled` layer with
    the key pooling and the pooled residual of this call's grid."""
    attn = block.attn
    prefix = ("cls",) if block.has_cls_token else ()

    def merge(module, grid, after):
        return None if module is None else conv_merge_of(module, grid, after, len(prefix))

    def start(module, args):
        grid = tuple(int(g) for g in args[1])
        queries = grid if attn.pool_q is None else conv_output(grid, *conv_params(attn.pool_q))
        keys = None if attn.pool_k is None else merge(attn.pool_k, grid, conv_output(grid, *conv_params(attn.pool_k)))
        skip = merge(block.shortcut_pool_attn, grid, queries)
        tap.active = lambda probs: record(Pooled(probs, queries, None, prefix, keys=keys, skip=skip)).blocks

    def stop(module, args, out):
        tap.active = None

    handles = [attn.register_forward_pre_hook(start), attn.register_forward_hook(stop)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
