"""The adapter contract: how to find and record the attention of one family of models.

An adapter answers these questions about a model: does it recognise it (`matches`), how to
record its attention (`attach`, a context manager that restores everything it changes),
which token is which (`layout`), how to preprocess images for it (`data_config`), which
modules output the token states after each block (`token_sites`), and how its final norm
and head turn tokens into an output (`head`).
The core never branches on a model's class outside the adapters package; a new architecture gets
an adapter plugin (hook `vitx_register_adapters`), not a special case elsewhere.
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ..attention_math import Record
from ...errors import VitxError
from ..layout import TokenLayout, infer_layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Adapter:
    """Base class. `priority`: higher is asked first; the generic SDPA adapter is last."""

    name = "adapter"
    priority = 0

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def attach(self, model: nn.Module, record: Record):
        """Context manager: while open, every attention of `model` goes through `record`."""
        raise NotImplementedError

    supports_fused = False  # `attach_fused` implemented (see vitx.capture.fused)

    def can_fuse(self, model: nn.Module) -> bool:
        """Whether `attach_fused` works for this model (a wrapper asks its inner model's adapter)."""
        return self.supports_fused

    def refuse(self, model: nn.Module, explainer) -> Optional[str]:
        """Why `explainer` cannot explain `model`, in one line, checked before any forward
        (vitx.capture.support); None when it can."""
        return None

    def attention_refusal(self, model: nn.Module) -> Optional[str]:
        """Why a forward recorded no attention, for a family that has none to record; None
        leaves the recorder's generic message."""
        return None

    def attach_fused(self, model: nn.Module, attend, record: Record = None):
        """Context manager: while open, every self-attention of `model` is computed by
        `attend(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False)` (F.scaled_dot_product_attention's contract) instead of being made
        explicit. Lets gradient methods keep the fused forward; optional (`supports_fused`).
        Attention whose probabilities exist anyway (a hand-written softmax) may still go to
        `record`, which reduces it in the backward pass like the fused layers."""
        raise NotImplementedError

    def layout(self, model: nn.Module, input_size: Optional[Tuple[int, int]], num_tokens: int) -> TokenLayout:
        raise NotImplementedError

    def head_token(self, model: nn.Module) -> Optional[str]:
        """Hierarchical models recorded as stage layers (vitx.capture.stages): the token of the
        last stage the head reads ('mean' or a prefix name); None: its first prefix token, or
        the mean when it has none."""
        return None

    def token_note(self, model: nn.Module) -> Optional[str]:
        """Why the default explained token only stands in for what the head reads (a head that
        pools the tokens with an attention probe, which attention flow does not chain), for
        `Explanation.token_note` and a warning; None when the head reads that token."""
        return None

    def token_sites(self, model: nn.Module) -> List[nn.Module]:
        """Modules whose outputs are the token states after each block, in order: (B, N, D)
        tokens, or (B, H, W, C) feature maps for hierarchical stages. Default: found by
        structure (`token_states.default_token_sites`)."""
        from ..token_states import default_token_sites

        return default_token_sites(model)

    def mid_sites(self, model: nn.Module) -> List[nn.Module]:
        """Per block (as `token_sites`), the module whose input is the residual stream after the
        attention branch and before the MLP: a pre-norm block's second norm (timm norm2, Hugging
        Face layernorm_after, torchvision ln_2, open_clip ln_2). Default: found by structure
        (`token_states.default_mid_sites`)."""
        from ..token_states import default_mid_sites

        return default_mid_sites(self.token_sites(model))

    def head(self, model: nn.Module) -> Optional[Callable[[torch.Tensor], object]]:
        """tokens (B, N, D) of the last block -> the model's output: its final norm, pooling and
        classifier, so that methods such as LeGrad can read any block's tokens as the head
        would. Default: timm's convention (`model.forward_head(model.norm(tokens))`), or None."""
        norm, forward_head = getattr(model, "norm", None), getattr(model, "forward_head", None)
        if isinstance(norm, nn.Module) and callable(forward_head):
            return lambda tokens: forward_head(norm(tokens))
        return None

    def preprocessing(self, model: nn.Module) -> dict:
        """How to preprocess images for `model`: the data config saved with it when it was
        trained or fine-tuned (vitx.capture.model_state.remember_preprocessing), else the
        adapter's own `data_config`. Callers ask this, never `data_config` directly."""
        from ..model_state import saved_preprocessing

        saved = saved_preprocessing(model)
        if saved is None:
            return self.data_config(model)
        saved["input_size"] = tuple(saved["input_size"])
        return saved

    def data_config(self, model: nn.Module) -> dict:
        """timm-style data config (input_size, mean, std, interpolation, crop_pct)."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=model)

    def output_kind(self, model: nn.Module) -> str:
        """'logits' (a classifier: a class index is a valid target) or 'embedding' (a headless
        backbone or an image tower: its output dimensions are not classes)."""
        return "logits"

    def encode_text(self, model: nn.Module, prompts):
        """(T, D) text embeddings in the space of the model's image embedding (CLIP-like models)."""
        raise VitxError(f"{type(model).__name__} has no text tower: image-text targets need a CLIP or SigLIP model")


def patch_conv(model: nn.Module) -> Optional[nn.Conv2d]:
    """The patch embedding of a ViT: the first Conv2d that cuts the image into patches
    (kernel == stride > 1). A 1x1 stride-1 convolution is a pointwise layer, not a patchify."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and max(module.stride) > 1:
            return module
    return None


def grid_from_patch_conv(model: nn.Module, input_size) -> Tuple[int, int]:
    conv = patch_conv(model)
    if conv is None or input_size is None:
        raise VitxError(
            f"cannot tell the patch grid of {type(model).__name__}: no patch-embedding Conv2d "
            "(kernel == stride) found; pass the grid (vitx.explain(..., layout=(h, w)), CLI --grid HxW)"
        )
    return input_size[0] // conv.stride[0], input_size[1] // conv.stride[1]


# A head that pools the tokens with a learned query attending to them (multi-head attention
# pooling: SigLIP, timm's global_pool='map') is cross attention from a token outside the
# sequence, which the attention-flow recursion over the encoder's layers does not include.
PROBE_NOTE = ("the head pools the tokens with an attention probe (MAP head) that attention flow does not chain: "
              "the map starts from the mean patch token, which stands in for the probe's query")

MAX_PREFIX_TOKENS = 16  # cls, dist and registers: never more than a handful in known ViTs


def grid_from_token_count(num_tokens: int, input_size) -> Tuple[int, int]:
    """The patch grid implied by a token count and the input's size, when nothing else is known.

    Tries 0, 1, 2, ... prefix tokens and takes the first split whose patch count factors into
    an h x w grid of square patches that tile the input exactly (H / h == W / w). A model
    with a Linear patchify (reshape + nn.Linear) has no Conv2d to read the grid from.
    """
    if input_size is not None:
        height, width = input_size
        for prefix in range(min(MAX_PREFIX_TOKENS, num_tokens - 1) + 1):
            patches = num_tokens - prefix
            for h in range(1, patches + 1):
                w, rest = divmod(patches, h)
                if rest == 0 and height % h == 0 and width % w == 0 and height // h == width // w:
                    return h, w
    raise VitxError(
        f"cannot lay out {num_tokens} tokens on a patch grid of the {input_size} input: no count of prefix "
        "tokens leaves square patches that tile the image. Pass the grid: vitx.explain(..., layout=(h, w)) "
        "or --grid HxW"
    )


def infer_token_layout(model: nn.Module, input_size, num_tokens: int) -> TokenLayout:
    """Layout of a model that names none of its tokens: the patch grid from its patch Conv2d
    (or, without one, from the token count), the extra tokens first (see `infer_layout`)."""
    conv = patch_conv(model)
    if conv is not None and input_size is not None:
        grid = (input_size[0] // conv.stride[0], input_size[1] // conv.stride[1])
        if grid[0] * grid[1] <= num_tokens:
            return infer_layout(num_tokens, grid)
    return infer_layout(num_tokens, grid_from_token_count(num_tokens, input_size))
