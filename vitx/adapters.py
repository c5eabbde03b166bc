"""Adapters: how to find and record the attention of one family of models.

An adapter answers four questions about a model: does it recognise it (`matches`), how to
record its attention (`attach`, a context manager that restores everything it changes),
which token is which (`layout`), and how to preprocess images for it (`data_config`).
The core never branches on a model's class outside this module; a new architecture gets
an adapter plugin (hook `vitx_register_adapters`), not a special case elsewhere.
"""
from contextlib import contextmanager
from typing import List, Optional, Tuple

import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .attention_math import Record, explicit_attention
from .errors import VitxError
from .hookspecs import hookimpl
from .layout import MEAN_TOKEN, TokenLayout, infer_layout

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
        saved = [(m, m.fused_attn) for m in sites]
        handles = []
        try:
            for m in sites:
                m.fused_attn = False
                handles.append(m.attn_drop.register_forward_hook(lambda mod, inp, out: record(out)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for m, flag in saved:
                m.fused_attn = flag

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

    def data_config(self, model):
        config = dict(super().data_config(model))
        embed = model.patch_embed
        channels = embed.proj.in_channels if hasattr(embed, "proj") else config["input_size"][0]
        if getattr(embed, "img_size", None) is not None:
            config["input_size"] = (channels, *embed.img_size)
        return config


class MultiheadAttentionAdapter(Adapter):
    """`nn.MultiheadAttention` (torchvision's ViT): compute self-attention explicitly.

    Asking the module for `need_weights` returns a view that is not on the gradient path,
    so instead each instance's forward is replaced, inside the context only, by the same
    math (in_proj -> explicit attention -> out_proj) with the probabilities recorded.
    """

    name = "torch_mha"
    priority = 50

    @staticmethod
    def sites(model):
        return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]

    def matches(self, model):
        return bool(self.sites(model))

    @contextmanager
    def attach(self, model, record):
        patched = []
        try:
            for mha in self.sites(model):
                had_own = "forward" in mha.__dict__
                patched.append((mha, had_own, mha.__dict__.get("forward")))
                mha.forward = _explicit_mha_forward(mha, record)
            yield
        finally:
            for mha, had_own, previous in patched:
                if had_own:
                    mha.forward = previous
                else:
                    del mha.forward

    def layout(self, model, input_size, num_tokens):
        grid = grid_from_patch_conv(model, input_size)
        return infer_layout(num_tokens, grid)

    def data_config(self, model):
        size = getattr(model, "image_size", 224)
        return {
            "input_size": (3, size, size), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "crop_pct": 1.0, "crop_mode": "center",
        }


def _explicit_mha_forward(mha: nn.MultiheadAttention, record: Record):
    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        plain = (
            query is key is value and mha._qkv_same_embed_dim and mha.bias_k is None
            and not mha.add_zero_attn and key_padding_mask is None and attn_mask is None
        )
        if not plain:
            raise VitxError(
                "vitx records nn.MultiheadAttention only for plain self-attention "
                "(query is key is value, no masks, bias_k or add_zero_attn); write an adapter"
            )
        x = query if mha.batch_first else query.transpose(0, 1)
        batch, tokens, width = x.shape
        heads = mha.num_heads
        qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        out, probs = explicit_attention(
            q, k, v, is_causal=is_causal, dropout_p=mha.dropout if mha.training else 0.0, record=record
        )
        out = mha.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
        if not mha.batch_first:
            out = out.transpose(0, 1)
        weights = (probs.mean(dim=1) if average_attn_weights else probs) if need_weights else None
        return out, weights

    return forward


class _SDPAInterceptor(TorchFunctionMode):
    """Route every F.scaled_dot_product_attention call through explicit attention.

    A torch function mode sees the call however the model imported the function, and it
    is thread-local, unlike patching `torch.nn.functional`.
    """

    def __init__(self, record: Record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return explicit_attention(*args, **kwargs, record=self.record)[0]
        return func(*args, **kwargs)


class SDPAAdapter(Adapter):
    """Any model that calls F.scaled_dot_product_attention itself (the last resort)."""

    name = "sdpa"
    priority = -100

    def matches(self, model):
        return True

    @contextmanager
    def attach(self, model, record):
        with _SDPAInterceptor(record):
            yield

    def layout(self, model, input_size, num_tokens):
        return infer_layout(num_tokens, grid_from_patch_conv(model, input_size))


@hookimpl
def vitx_register_adapters(register):
    register(TimmAdapter())
    register(MultiheadAttentionAdapter())
    register(SDPAAdapter())
