"""`torch.nn.MultiheadAttention` self-attention (torchvision's ViT and models built on it)."""
from contextlib import contextmanager

import torch.nn.functional as F
from torch import nn

from ...errors import VitxError
from ..attention_math import Record, explicit_attention
from .base import IMAGENET_MEAN, IMAGENET_STD, Adapter, infer_token_layout


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

    supports_fused = True

    def attach(self, model, record):
        return explicit_mha(self.sites(model), record)

    def attach_fused(self, model, attend, record=None):
        return explicit_mha(self.sites(model), None, attend)

    def token_sites(self, model):
        layers = getattr(getattr(model, "encoder", None), "layers", None)  # torchvision VisionTransformer
        return list(layers) if isinstance(layers, nn.Sequential) else super().token_sites(model)

    def head(self, model):
        norm, heads = getattr(getattr(model, "encoder", None), "ln", None), getattr(model, "heads", None)
        if isinstance(norm, nn.Module) and isinstance(heads, nn.Module):  # torchvision: heads(ln(x)[:, 0])
            return lambda tokens: heads(norm(tokens)[:, 0])
        return super().head(model)

    def layout(self, model, input_size, num_tokens):
        return infer_token_layout(model, input_size, num_tokens)

    def data_config(self, model):
        size = getattr(model, "image_size", 224)
        return {
            "input_size": (3, size, size), "interpolation": "bilinear", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "crop_pct": 1.0, "crop_mode": "center",
        }


@contextmanager
def explicit_mha(sites, record, attend=None):
    """Inside the context, each `nn.MultiheadAttention` in `sites` runs `_explicit_mha_forward`
    (attention recorded by `record`, or computed by `attend`); every instance's own forward (or
    the class's) is back afterwards."""
    patched = []
    try:
        for mha in sites:
            patched.append((mha, "forward" in mha.__dict__, mha.__dict__.get("forward")))
            mha.forward = _explicit_mha_forward(mha, record, attend)
        yield
    finally:
        for mha, had_own, previous in patched:
            if had_own:
                mha.forward = previous
            else:
                del mha.forward


def _explicit_mha_forward(mha: nn.MultiheadAttention, record: Record, attend=None):
    """The module's math with attention made explicit (recorded by `record`), or, given
    `attend`, computed by it (F.scaled_dot_product_attention's contract; no weights returned)."""
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
        dropout = mha.dropout if mha.training else 0.0
        if attend is not None:
            out, probs = attend(q, k, v, is_causal=is_causal, dropout_p=dropout), None
        else:
            out, probs = explicit_attention(q, k, v, is_causal=is_causal, dropout_p=dropout, record=record)
        out = mha.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
        if not mha.batch_first:
            out = out.transpose(0, 1)
        weights = (probs.mean(dim=1) if average_attn_weights else probs) if need_weights and probs is not None else None
        return out, weights

    return forward
