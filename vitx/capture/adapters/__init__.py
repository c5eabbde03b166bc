"""One adapter per framework, each in its own module; registered here as vitx's core adapters.

A model is claimed by the adapter with the highest `priority` whose `matches` says yes:
framework adapters first, the generic SDPA adapter last. Third-party adapters arrive through
the `vitx_register_adapters` hook exactly like these.
"""
from ...hookspecs import hookimpl
from .base import IMAGENET_MEAN, IMAGENET_STD, Adapter, grid_from_patch_conv, infer_token_layout, patch_conv
from .sdpa import SDPAAdapter
from .timm import TimmAdapter
from .timm_naflex import TimmNaFlexAdapter
from .torch_mha import MultiheadAttentionAdapter
from .wrappers import PreprocessingWrapperAdapter

__all__ = [
    "Adapter", "IMAGENET_MEAN", "IMAGENET_STD", "MultiheadAttentionAdapter", "PreprocessingWrapperAdapter", "SDPAAdapter",
    "TimmAdapter", "TimmNaFlexAdapter",
    "grid_from_patch_conv", "infer_token_layout", "patch_conv",
]


@hookimpl
def vitx_register_adapters(register):
    register(TimmAdapter())
    register(TimmNaFlexAdapter())
    register(MultiheadAttentionAdapter())
    register(SDPAAdapter())
    register(PreprocessingWrapperAdapter())
