"""timm's ViT family (ViT, DeiT, distilled, register tokens, EVA, BEiT, ...)."""
from contextlib import ExitStack, contextmanager
from typing import List

from torch import nn

from ..layout import MEAN_TOKEN, TokenLayout
from .base import PROBE_NOTE, Adapter
from .toolkit import hook, timm_attention


class TimmAdapter(Adapter):
    """timm ViT family: switch each attention module's `fused_attn` off, hook `attn_drop`.

    timm reads its global fused-attention flag only when a module is built, so the flag is
    flipped per instance (and restored); the softmax output then passes through
    `attn_drop`, whose forward hook records it. No user-visible setting is involved.
    """

    name = "timm"
    priority = 100

    @staticmethod
    def sites(model: nn.Module) -> List[nn.Module]:
        return [
            m for m in model.modules()
            if isinstance(getattr(m, "fused_attn", None), bool) and isinstance(getattr(m, "attn_drop", None), nn.Module)
        ]

    def matches(self, model):
        return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens") and bool(self.sites(model))

    @contextmanager
    def attach(self, model, record):
        sites = self.sites(model)
        with ExitStack() as stack:
            stack.enter_context(timm_attention(sites))
            for m in sites:
                hook(stack, m.attn_drop.register_forward_hook(lambda mod, inp, out: record(out)))
            yield

    def token_sites(self, model):
        blocks = getattr(model, "blocks", None)
        return list(blocks) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else super().token_sites(model)

    supports_fused = True

    @contextmanager
    def attach_fused(self, model, attend, record=None):
        """Fused attention switched on per module (restored after); its
        F.scaled_dot_product_attention calls go to `attend`."""
        from .sdpa import route_sdpa

        with timm_attention(self.sites(model), fused=True), route_sdpa(attend):
            yield

    def layout(self, model, input_size, num_tokens):
        embed = model.patch_embed
        if getattr(model, "dynamic_img_size", False) and input_size is not None:
            grid = tuple(embed.dynamic_feat_size(input_size))
        else:
            grid = tuple(embed.grid_size)
        prefix = {}
        if getattr(model, "cls_token", None) is not None:
            prefix["cls"] = len(prefix)
        if getattr(model, "dist_token", None) is not None:
            prefix["dist"] = len(prefix)
        for r in range(getattr(model, "num_reg_tokens", 0) or 0):
            prefix[f"reg{r}"] = len(prefix)
        reads_cls = "cls" in prefix and getattr(model, "global_pool", "token") in ("token", "map")
        return TokenLayout(
            prefix=prefix,
            num_prefix=model.num_prefix_tokens,
            grid=grid,
            default_token="cls" if reads_cls else MEAN_TOKEN,
        )

    def token_note(self, model):
        if getattr(model, "global_pool", None) == "map":
            return PROBE_NOTE
        return None

    def data_config(self, model):
        """timm's data config, with the input size the model was built for.

        The channel count is the image's: the first convolution of the patch embedding reads
        the pixels. (Hybrid ViTs - ResNet stems, ViTamin - end their embedding with a projection
        of the backbone's 1024-2048 features, which is not what the images have.)
        """
        config = dict(super().data_config(model))
        embed = getattr(model, "patch_embed", None) or getattr(model, "pixel_embed", None)
        first = next((m for m in embed.modules() if isinstance(m, nn.Conv2d)), None) if embed is not None else None
        channels = first.in_channels if first is not None else config["input_size"][0]
        size = getattr(embed, "img_size", None)
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            config["input_size"] = (channels, *size)
        else:
            config["input_size"] = (channels, *config["input_size"][1:])
        return config
