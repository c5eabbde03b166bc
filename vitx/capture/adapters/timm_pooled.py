"""PiT and PVTv2 (timm): attention over each stage's tokens, chained through the pooling
between stages (vitx.capture.stages).

PiT (`PoolingVisionTransformer`): each stage is ordinary full attention over [cls (, dist),
grid]; between stages a depthwise stride-2 convolution shrinks the grid and a Linear maps the
class tokens. As a token flow the pooling is a `Merge` over each new token's real kernel
footprint (tent weights where footprints overlap, padding dropped), each prefix token mapped
to its own. The
explained token is the class token of the last stage (what the head reads); maps lie on the
first stage's grid.

PVTv2 (`PyramidVisionTransformerV2`): spatial-reduction attention. The queries are the grid
tokens; keys and values come from a strided convolution (kernel = stride = sr_ratio) of the
grid, or (the `linear` variant) from adaptive average pooling to 7x7, each followed by a
norm. The attention A is (N x M); as a token flow it is A @ P, P the (M x N) pooling of the
keys over each key's sources (vitx.capture.stages.Merge). The overlapping patch embedding between
stages (kernel 3, stride 2, padding 1) is a `Merge` over its kernel footprint. The depthwise
3x3 convolution inside each block's MLP also mixes neighbouring tokens; like every MLP in
rollout it is left out of the flow (the residual identity stands for it). No class token:
the explained token is the mean of the last stage's tokens (the average-pool head).
"""
from contextlib import ExitStack, contextmanager

from ..stages import Pooled, adaptive_merge, conv_merge, pair
from .pyramid import PyramidAdapter, explicit_probs
from .timm_swin import record_windows

PIT = "timm.models.pit.PoolingVisionTransformer"
PVT_V2 = "timm.models.pvt_v2.PyramidVisionTransformerV2"
TWINS = "timm.models.twins.Twins"
PIT_WHY = ("its stages attend over different token sets (a strided depthwise convolution pools the grid between "
           "them), so it is explained by attention-flow methods only (each stage's attention chained through the "
           "pooling, written as a Merge over each pooled token's sources)")
PVT_WHY = ("spatial-reduction attention reads keys pooled from the grid and the grid shrinks between stages, so it "
           "is explained by attention-flow methods only (each layer's attention times its key pooling, chained "
           "through the patch embeddings between stages)")

TWINS_WHY = ("locally-grouped (window) attention alternates with attention to a sub-sampled grid and the grid "
             "shrinks between stages, so it is explained by attention-flow methods only (window layers as "
             "block-diagonal attention, sub-sampled layers times their key pooling, chained through the patch "
             "embeddings between stages)")


def conv_params(conv):
    """A convolution or pooling as the (kernel, stride, padding) of its token merge."""
    return pair(conv.kernel_size), pair(conv.stride), pair(conv.padding)


def conv_output(grid, kernel, stride, padding):
    return tuple((g + 2 * p - k) // s + 1 for g, k, s, p in zip(grid, kernel, stride, padding))


def conv_merge_of(conv, before, after, prefix=0, device=None):
    """The merge of a convolution over the grid (its kernel footprint, tent weights)."""
    return conv_merge(before, after, *conv_params(conv), prefix=prefix, device=device)


def key_merge(grid, pool, conv, device):
    """The (M x N) pooling of spatial-reduction keys: adaptive average pooling (`pool`, then a
    1x1 convolution), a strided convolution (`conv`), or None (the keys are the tokens)."""
    if pool is not None:
        return adaptive_merge(grid, pair(pool.output_size), device)
    if conv is not None:
        return conv_merge_of(conv, grid, conv_output(grid, *conv_params(conv)), device=device)
    return None


class TimmPooledAdapter(PyramidAdapter):
    """timm PiT and PVTv2: the non-fused attention path, `attn_drop` hooked."""

    name = "timm_pooled"
    priority = 1100  # before the table of refused families
    families = {PIT: ("PiT", PIT_WHY), PVT_V2: ("PVTv2", PVT_WHY), TWINS: ("Twins", TWINS_WHY)}

    @contextmanager
    def attach(self, model, record):
        family = self.family(model)[0]
        with ExitStack() as stack:
            chain = stack.enter_context(self.chained(model))
            if family == "Twins":
                for embed, blocks in zip(model.patch_embeds, model.blocks):
                    for block in blocks:
                        stack.enter_context(_spatial_block(block.attn, embed.proj, chain, record))
            for stage in model.transformers if family == "PiT" else model.stages if family == "PVTv2" else ():
                stack.enter_context((_pit_stage if family == "PiT" else _pvt_stage)(model, stage, chain, record))
            yield


@contextmanager
def _pit_stage(model, stage, chain, record):
    """A PiT stage: [prefix, grid] after its pooling, each block's full attention a `Pooled`
    without key pooling; the first carries the pooling's merge."""
    prefix = ("cls", "dist")[:model.num_tokens]
    seen = {}

    def grab(module, args):
        grid = tuple(args[0][0].shape[-2:])
        if stage.pool is not None:
            seen["merge"] = lambda before, after: conv_merge_of(stage.pool.conv, before, after, len(prefix))
            grid = conv_output(grid, *conv_params(stage.pool.conv))
        seen["grid"] = grid

    def on_attention(probs):
        entry = chain.enter(seen["grid"], seen.get("merge"))
        return record(Pooled(probs, seen["grid"], entry, prefix)).blocks

    with ExitStack() as stack:
        stack.callback(stage.register_forward_pre_hook(grab).remove)
        for block in stage.blocks:
            stack.enter_context(explicit_probs(block.attn, on_attention))
        yield


@contextmanager
def _pvt_stage(model, stage, chain, record):
    """A PVTv2 stage: each block's spatial-reduction attention a `Pooled` with its key pooling;
    the first carries the overlapping patch embedding's merge (none for the first stage)."""
    with ExitStack() as stack:
        for block in stage.blocks:
            stack.enter_context(_spatial_block(block.attn, getattr(stage.downsample, "proj", None), chain, record))
        yield


@contextmanager
def _spatial_block(attn, embedding, chain, record):
    """One attention of a PVTv2 / Twins block, called with the grid (attn(x, (h, w))): Twins'
    locally-grouped attention (`ws`: windows of the grid padded at its end, folded as
    (B, windows, heads, n, n)) as a `Windowed`, else spatial-reduction attention as a `Pooled`
    with its key pooling; the first layer after `embedding` (a convolution) carries its merge."""
    seen = {}

    def grab(module, args):
        seen["grid"] = tuple(int(g) for g in args[1])

    def on_attention(probs):
        grid = seen["grid"]
        entry = chain.enter(grid, lambda before, after: conv_merge_of(embedding, before, after))
        if hasattr(attn, "ws"):
            batch, windows, heads, n = probs.shape[:4]
            out = record_windows(record, probs.reshape(batch * windows, heads, n, n), batch, heads, grid,
                                 (attn.ws, attn.ws), (0, 0), entry)
            return out.reshape(probs.shape)
        keys = key_merge(grid, getattr(attn, "pool", None), attn.sr, probs.device)
        return record(Pooled(probs, grid, entry, keys=keys)).blocks

    handle = attn.register_forward_pre_hook(grab)
    try:
        with explicit_probs(attn, on_attention):
            yield
    finally:
        handle.remove()
