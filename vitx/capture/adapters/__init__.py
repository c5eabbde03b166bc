"""One adapter per framework, each in its own module; registered here as vitx's core adapters.

A model is claimed by the adapter with the highest `priority` whose `matches` says yes:
framework adapters first, the generic SDPA adapter last. Third-party adapters arrive through
the `vitx_register_adapters` hook exactly like these.
"""
from ...hookspecs import hookimpl
from .base import IMAGENET_MEAN, IMAGENET_STD, Adapter, grid_from_patch_conv, infer_token_layout, patch_conv
from .open_clip import OpenClipAdapter
from .sdpa import SDPAAdapter
from .timm_swin import TimmSwinAdapter
from .timm_pooled import TimmPooledAdapter
from .timm_mvit import TimmMvitAdapter
from .timm_hiera import TimmHieraAdapter
from .hf_swin import HFSwinAdapter
from .hf_pvt_v2 import HFPvtV2Adapter
from .torchvision_swin import TorchvisionSwinAdapter
from .hierarchical import HierarchicalAdapter
from .timm import TimmAdapter
from .timm_families import TimmTokenFamiliesAdapter
from .timm_naflex import TimmNaFlexAdapter
from .timm_sam import SamAdapter
from .torch_mha import MultiheadAttentionAdapter
from .transformers import TransformersAdapter
from .wrappers import PreprocessingWrapperAdapter

__all__ = [
    "Adapter", "HFPvtV2Adapter", "HFSwinAdapter", "HierarchicalAdapter", "IMAGENET_MEAN", "IMAGENET_STD", "MultiheadAttentionAdapter", "OpenClipAdapter",
    "PreprocessingWrapperAdapter", "SDPAAdapter", "SamAdapter", "TimmAdapter", "TimmNaFlexAdapter",
    "TimmHieraAdapter", "TimmMvitAdapter", "TimmPooledAdapter", "TimmSwinAdapter", "TimmTokenFamiliesAdapter", "TorchvisionSwinAdapter", "TransformersAdapter",
    "grid_from_patch_conv", "infer_token_layout", "patch_conv",
]


@hookimpl
def vitx_register_adapters(register):
    register(SamAdapter())
    register(TimmSwinAdapter())
    register(TimmPooledAdapter())
    register(TimmMvitAdapter())
    register(TimmHieraAdapter())
    register(TorchvisionSwinAdapter())
    register(HierarchicalAdapter())
    register(TimmTokenFamiliesAdapter())
    register(TimmAdapter())
    register(TimmNaFlexAdapter())
    register(HFSwinAdapter())
    register(HFPvtV2Adapter())
    register(TransformersAdapter())
    register(OpenClipAdapter())
    register(MultiheadAttentionAdapter())
    register(SDPAAdapter())
    register(PreprocessingWrapperAdapter())
