"""The adapter contract: how to find and record the attention of one family of models.

An adapter answers four questions about a model: does it recognise it (`matches`), how to
record its attention (`attach`, a context manager that restores everything it changes),
which token is which (`layout`), and how to preprocess images for it (`data_config`).
The core never branches on a model's class outside the adapters package; a new architecture gets
an adapter plugin (hook `vitx_register_adapters`), not a special case elsewhere.
"""
from typing import Optional, Tuple

from torch import nn

from ..attention_math import Record
from ...errors import VitxError
from ..layout import TokenLayout

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

    def attach_fused(self, model: nn.Module, attend):
        """Context manager: while open, every self-attention of `model` is computed by
        `attend(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
        enable_gqa=False)` (F.scaled_dot_product_attention's contract) instead of being made
        explicit. Lets gradient methods keep the fused forward; optional (`supports_fused`)."""
        raise NotImplementedError

    def layout(self, model: nn.Module, input_size: Optional[Tuple[int, int]], num_tokens: int) -> TokenLayout:
        raise NotImplementedError

    def data_config(self, model: nn.Module) -> dict:
        """timm-style data config (input_size, mean, std, interpolation, crop_pct)."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=model)


def patch_conv(model: nn.Module) -> Optional[nn.Conv2d]:
    """The patch embedding of a ViT: the first Conv2d whose kernel equals its stride."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride:
            return module
    return None


def grid_from_patch_conv(model: nn.Module, input_size) -> Tuple[int, int]:
    conv = patch_conv(model)
    if conv is None or input_size is None:
        raise VitxError(
            f"cannot tell the patch grid of {type(model).__name__}: no patch-embedding Conv2d "
            "(kernel == stride) found; write an adapter that returns its TokenLayout"
        )
    return input_size[0] // conv.stride[0], input_size[1] // conv.stride[1]
