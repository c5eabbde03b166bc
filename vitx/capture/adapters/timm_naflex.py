"""timm's NaFlexViT: a ViT whose Linear patchify (`embeds`, no patch Conv2d) takes any aspect
ratio, with register tokens and often no class token. Recorded like every timm attention
(`TimmAdapter.attach`); its tokens are named from `embeds`, so a register token is never
mistaken for a class token."""
from ..layout import MEAN_TOKEN, TokenLayout
from .base import Adapter
from .timm import TimmAdapter


class TimmNaFlexAdapter(TimmAdapter):
    name = "timm_naflex"
    priority = 110

    def matches(self, model):
        embeds = getattr(model, "embeds", None)
        return hasattr(embeds, "patch_size") and hasattr(embeds, "num_prefix_tokens") and bool(self.sites(model))

    def layout(self, model, input_size, num_tokens):
        embeds = model.embeds
        prefix = {}
        if getattr(embeds, "cls_token", None) is not None:
            prefix["cls"] = 0
        for r in range(getattr(embeds, "num_reg_tokens", 0) or 0):
            prefix[f"reg{r}"] = len(prefix)
        patch = embeds.patch_size
        grid = (-(-input_size[0] // patch[0]), -(-input_size[1] // patch[1]))  # padded to whole patches
        reads_cls = "cls" in prefix and getattr(model, "global_pool", "token") in ("token", "map")
        return TokenLayout(prefix=prefix, num_prefix=embeds.num_prefix_tokens, grid=grid,
                           default_token="cls" if reads_cls else MEAN_TOKEN)

    def data_config(self, model):
        return Adapter.data_config(self, model)
