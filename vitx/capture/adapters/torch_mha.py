"""`torch.nn.MultiheadAttention` self-attention (torchvision's ViT and models built on it)."""
from contextlib import contextmanager

from torch import nn

from ..attention_math import Record, multi_head_attention
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
    """The module's math through vitx's multi-head decomposition (vitx.capture.attention_math),
    attention recorded by `record`, or computed by `attend` (F.scaled_dot_product_attention's
    contract; no weights returned)."""
    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if mha.batch_first:
            query, key, value = (t.transpose(0, 1) if t.dim() == 3 else t for t in (query, key, value))
        out, weights = multi_head_attention(
            query, key, value, mha.embed_dim, mha.num_heads, mha.in_proj_weight, mha.in_proj_bias, mha.bias_k,
            mha.bias_v, mha.add_zero_attn, mha.dropout, mha.out_proj.weight, mha.out_proj.bias,
            training=mha.training, key_padding_mask=key_padding_mask, need_weights=need_weights and attend is None,
            attn_mask=attn_mask, use_separate_proj_weight=not mha._qkv_same_embed_dim,
            q_proj_weight=mha.q_proj_weight, k_proj_weight=mha.k_proj_weight, v_proj_weight=mha.v_proj_weight,
            average_attn_weights=average_attn_weights, is_causal=is_causal, record=record, attend=attend)
        if mha.batch_first and out.dim() == 3:
            out = out.transpose(0, 1)
        return out, weights

    return forward
