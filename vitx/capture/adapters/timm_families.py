"""timm single-grid families whose attention lives in modules of their own: CaiT, ConViT, XCiT, TNT.

The generic timm adapter finds attention modules by their `fused_attn` flag. These families
compute attention explicitly in their own classes, or attend over part of the sequence:

- CaiT: talking-heads self-attention over the patch tokens (heads mixed before and after the
  softmax; recorded is the attention applied to the values, after the second mixing), then
  class-attention layers in which only the class token attends. Both are laid out over
  [cls, patches] (see `timm_tokens`), so every layer counts and each is one matrix.
- ConViT: gated positional self-attention (GPSA) over the patches, recorded as the combined
  attention it applies (the gated mix of content and positional softmax, renormalised), then
  ordinary self-attention once the class token has joined.
- TNT: outer attention over [cls, patches]. Its inner attention mixes the pixels inside one
  patch and never moves information between patches, so the outer layers are the whole
  token-to-token flow; they are what is recorded.
- XCiT: its XCA layers attend across channels (a d x d matrix per head), and tokens mix through
  a depthwise convolution (LPI), so there is no token attention to roll out. Its
  class-attention layers are real token attention: raw_attention reads them, and every
  attention-flow method is refused.
"""
from contextlib import ExitStack, contextmanager
from typing import List, Tuple

from torch import nn

from ..layout import MEAN_TOKEN, TokenLayout
from ..support import needs_attention, refusal
from .hierarchical import class_path
from ..requirements import BLOCK_STATES
from .timm import TimmAdapter
from .toolkit import hook, timm_attention
from .timm_tokens import Site, class_attention, late_prefix, self_attention

CAIT = "timm.models.cait.Cait"
CONVIT = "timm.models.convit.ConVit"
XCIT = "timm.models.xcit.Xcit"
TNT = "timm.models.tnt.TNT"

XCIT_WHY = (
    "its XCA layers attend across channels (a feature-by-feature matrix per head) and mix tokens by a "
    "depthwise convolution (LPI), so only its class-attention layers are token attention and no flow "
    "through the network can be chained from them"
)


def _name(module) -> str:
    return type(module).__name__


def sites(model: nn.Module) -> List[Tuple[nn.Module, Site]]:
    """(attention module, how its attention is laid out), in forward order."""
    path = class_path(model)
    prefix = 1 if getattr(model, "cls_token", None) is not None else 0
    found = []
    if path == CAIT:
        found += [(b.attn, late_prefix(prefix)) for b in model.blocks]
        found += [(b.attn, class_attention) for b in model.blocks_token_only]
    elif path == CONVIT:
        found += [(b.attn, late_prefix(prefix) if _name(b.attn) == "GPSA" else self_attention) for b in model.blocks]
    elif path == XCIT:
        found += [(b.attn, class_attention) for b in (model.cls_attn_blocks or ())]
    elif path == TNT:
        found += [(b.attn_out, self_attention) for b in model.blocks]
    return found


class TimmTokenFamiliesAdapter(TimmAdapter):
    """CaiT, ConViT, XCiT and TNT from timm (see the module docstring)."""

    name = "timm_families"
    priority = 110  # before the generic timm adapter, which would see only some of their layers

    def matches(self, model):
        return class_path(model) in (CAIT, CONVIT, XCIT, TNT)

    def refuse(self, model, explainer):
        if class_path(model) == XCIT and needs_attention(explainer) and explainer.name != "raw_attention":
            return refusal("XCiT", XCIT_WHY, explainer.name, allowed={"raw_attention": "its class-attention layers"},
                           stages=False)
        if class_path(model) == CONVIT and BLOCK_STATES in explainer.requirements() and needs_attention(explainer):
            # (tokentm once raised a raw size mismatch here: 16 tokens in a block, 17 in its padded attention)
            return (f"ConViT: method {explainer.name!r} cannot explain this model: it reads each block's token states "
                    "beside its attention, and ConViT's class token joins only after the GPSA blocks (their "
                    "attention is padded with it, their states are not); rollout, grad_rollout, chefer2021 and "
                    "raw_attention apply (see `vitx methods`)")
        return None

    supports_fused = False  # attention is not one plain SDPA per layer: recorded explicitly

    @contextmanager
    def attach(self, model, record):
        found = sites(model)
        with ExitStack() as stack:
            stack.enter_context(timm_attention(module for module, _ in found))
            for module, site in found:
                hook(stack, module.attn_drop.register_forward_hook(lambda mod, inp, out, site=site: site(out, record)))
            yield

    def layout(self, model, input_size, num_tokens):
        path = class_path(model)
        if path == TNT:
            embed = model.pixel_embed
            grid = tuple(embed.grid_size)
        elif path == XCIT:
            size = input_size or model.patch_embed.img_size
            grid = (size[0] // model.patch_embed.patch_size, size[1] // model.patch_embed.patch_size)
        else:
            grid = tuple(model.patch_embed.grid_size)
        has_cls = getattr(model, "cls_token", None) is not None
        reads_cls = has_cls and getattr(model, "global_pool", "token") == "token"
        return TokenLayout(
            prefix={"cls": 0} if has_cls else {}, num_prefix=int(has_cls), grid=grid,
            default_token="cls" if reads_cls else MEAN_TOKEN,
        )
