"""open_clip: the image tower (`model.visual`, a VisionTransformer) alone or inside a CLIP model.

open_clip's blocks use `nn.MultiheadAttention`, in the image tower and in the text tower. Only
the image tower's are recorded (the same explicit forward as the torch_mha adapter); the text
tower's causal attention runs untouched, so a model or target that also encodes text works.
Preprocessing comes from the tower's own `preprocess_cfg` (size, mean, std, interpolation,
resize mode), i.e. what `open_clip.create_model_and_transforms` would build.

open_clip is imported only when a model from it is seen, so vitx imports without it.
"""
import sys
from typing import Optional

from torch import nn

from ...errors import VitxError
from ..layout import MEAN_TOKEN, TokenLayout
from .base import Adapter
from .torch_mha import explicit_mha


def image_tower(model: nn.Module) -> Optional[nn.Module]:
    """The open_clip VisionTransformer of `model` (itself or `model.visual`), or None."""
    if "open_clip" not in sys.modules:
        return None
    from open_clip.transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, VisionTransformer) else None


class OpenClipAdapter(Adapter):
    name = "open_clip"
    priority = 90

    def matches(self, model):
        return image_tower(model) is not None

    @staticmethod
    def sites(model):
        return [m for m in image_tower(model).transformer.modules() if isinstance(m, nn.MultiheadAttention)]

    supports_fused = True

    def attach(self, model, record):
        return explicit_mha(self._sites(model), record)

    def attach_fused(self, model, attend, record=None):
        return explicit_mha(self._sites(model), None, attend)

    def _sites(self, model):
        sites = self.sites(model)
        if not sites:
            raise VitxError("this open_clip image tower has no nn.MultiheadAttention blocks; vitx records "
                            "open_clip VisionTransformer towers built with the default attention")
        return sites

    def layout(self, model, input_size, num_tokens):
        tower = image_tower(model)
        grid = tuple(tower.grid_size)
        prefix = {"cls": 0} if getattr(tower, "class_embedding", None) is not None else {}
        reads_cls = getattr(tower, "pool_type", "tok") == "tok" and getattr(tower, "attn_pool", None) is None
        return TokenLayout(prefix=prefix, num_prefix=len(prefix), grid=grid,
                           default_token="cls" if prefix and reads_cls else MEAN_TOKEN)

    def data_config(self, model):
        tower = image_tower(model)
        cfg = dict(getattr(tower, "preprocess_cfg", None) or {})
        size = cfg.get("size", tower.image_size)
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        mean = tuple(cfg.get("mean") or getattr(tower, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        std = tuple(cfg.get("std") or getattr(tower, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        resize_mode = cfg.get("resize_mode", "shortest")
        return {"input_size": (3, *size), "mean": mean, "std": std,
                "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": 1.0,
                "crop_mode": "squash" if resize_mode == "squash" else "center"}

    def output_kind(self, model):
        return "embedding"

    def encode_text(self, model, prompts):
        encode = getattr(model, "encode_text", None)
        tokenizer = getattr(model, "vitx_tokenizer", None)
        if encode is None:
            raise VitxError("an open_clip image tower alone cannot encode text: pass the full CLIP model")
        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer("ViT-B-32")  # open_clip's bundled BPE tokenizer, offline
        device = next(model.parameters()).device
        return encode(tokenizer(list(prompts)).to(device))
