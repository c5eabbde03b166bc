"""Independent attention for the compatibility matrix: recomputed from each module's weights.

Nothing here uses vitx. A forward hook on every attention module recomputes that module's
output from its input and its own weights with an explicit softmax(QK^T) written here, and
returns it in place of the module's output, so the attention written here is the attention on
the gradient path (its .grad is d(logit)/d(attention)). Rollout and Chefer et al. are then
computed per image with full (tokens x tokens) matrices, laying each layer out over the final
token set by hand:

- "self": attention over the whole sequence;
- "late": attention over the patches before the class token joins (CaiT talking heads,
  ConViT GPSA): the class token keeps itself, [[1, 0], [0, A]];
- "class": the class token's attention row (CaiT / XCiT class attention); the patches keep
  themselves, [[a], [0 | I]].

Models whose attention has parts not worth rewriting here (rotary embeddings, relative
position biases) use the "nonfused" oracle instead: the model's own non-fused path, with the
attention taken at its `attn_drop` by a hook of this module.
"""
import torch
import torch.nn.functional as F
from torch import nn

from helpers import SDPABlock


def _heads(t, b, n, heads):
    return t.reshape(b, n, heads, -1).permute(0, 2, 1, 3)


def _timm_attention(m, x):
    b, n, c = x.shape
    q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    q, k = m.q_norm(q), m.k_norm(k)
    attn = torch.softmax(q @ k.transpose(-2, -1) * m.head_dim ** -0.5, dim=-1)
    out = m.norm((attn @ v).transpose(1, 2).reshape(b, n, -1))
    return m.proj(out), attn


def _talking_heads(m, x):
    b, n, c = x.shape
    q, k, v = F.linear(x, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5
    scores = torch.einsum("bhij,gh->bgij", scores, m.proj_l.weight) + m.proj_l.bias[:, None, None]
    probs = scores.softmax(-1)
    attn = torch.einsum("bhij,gh->bgij", probs, m.proj_w.weight) + m.proj_w.bias[:, None, None]
    return m.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn


def _class_attention(m, x):
    b, n, c = x.shape
    q = _heads(m.q(x[:, :1]), b, 1, m.num_heads)
    k, v = _heads(m.k(x), b, n, m.num_heads), _heads(m.v(x), b, n, m.num_heads)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5, dim=-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, 1, c)), attn


def _gpsa(m, x):
    b, n, c = x.shape
    q, k = m.qk(x).reshape(b, n, 2, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    content = torch.softmax(q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5, dim=-1)
    side = int(n ** 0.5)  # ConViT's positions: (dx, dy, dx^2 + dy^2) between grid cells
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    dx = (xs.flatten()[None, :] - xs.flatten()[:, None]).float()
    dy = (ys.flatten()[None, :] - ys.flatten()[:, None]).float()
    rel = torch.stack([dx, dy, dx ** 2 + dy ** 2], dim=-1)
    position = torch.softmax(m.pos_proj(rel).permute(2, 0, 1), dim=-1)[None]
    gate = torch.sigmoid(m.gating_param).view(1, -1, 1, 1)
    attn = (1 - gate) * content + gate * position
    attn = attn / attn.sum(-1, keepdim=True)
    v = _heads(m.v(x), b, n, m.num_heads)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn


def _qkv_plain(m, x):  # ConViT MHSA
    b, n, c = x.shape
    q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5, dim=-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn


def _tnt_outer(m, x):
    b, n, c = x.shape
    q, k = m.qk(x).reshape(b, n, 2, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * m.head_dim ** -0.5, dim=-1)
    v = _heads(m.v(x), b, n, m.num_heads)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, n, c)), attn


def _mha(m, x):
    assert m.batch_first
    b, n, c = x.shape
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (c // m.num_heads) ** -0.5, dim=-1)
    return (m.out_proj((attn @ v).transpose(1, 2).reshape(b, n, c)), None), attn


def _sdpa_block(m, x):
    b, n, d = x.shape
    h = m.norm1(x)
    q, k, v = F.linear(h, m.qkv.weight, m.qkv.bias).reshape(b, n, 3, m.heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (d // m.heads) ** -0.5, dim=-1)
    x = x + m.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
    return x + m.mlp(m.norm2(x)), attn


def _sam_attention(m, x):
    assert not m.use_rel_pos and m.rope is None, "reference written for SAM without relative positions"
    b, h, w, c = x.shape
    q, k, v = F.linear(x.reshape(b, h * w, c), m.qkv.weight, m.qkv.bias).reshape(
        b, h * w, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(b, h * w, -1)).view(b, h, w, -1), attn


def explicit_sites(model):
    """(module, explicit forward, layout kind) for every attention module, in module order."""
    sites = []
    path = f"{type(model).__module__}.{type(model).__name__}"
    for name, m in model.named_modules():
        cls = f"{type(m).__module__}.{type(m).__name__}"
        if cls == "timm.layers.attention.Attention":
            sites.append((m, _timm_attention, "self"))
        elif cls == "timm.models.cait.TalkingHeadAttn":
            sites.append((m, _talking_heads, "late"))
        elif cls == "timm.models.cait.ClassAttn":
            sites.append((m, _class_attention, "class"))
        elif cls == "timm.models.convit.GPSA":
            sites.append((m, _gpsa, "late"))
        elif cls == "timm.models.convit.MHSA":
            sites.append((m, _qkv_plain, "self"))
        elif cls == "timm.models.tnt.Attention" and name.endswith("attn_out"):
            sites.append((m, _tnt_outer, "self"))  # inner attention stays inside a patch
        elif cls == "timm.models.vision_transformer_sam.Attention":
            sites.append((m, _sam_attention, "sam"))
        elif isinstance(m, nn.MultiheadAttention):
            sites.append((m, _mha, "self"))
        elif isinstance(m, SDPABlock):
            sites.append((m, _sdpa_block, "self"))
    if not sites:
        raise AssertionError(f"no reference attention written for {path}")
    return sites


def attention_and_grads(model, x, target, oracle="weights"):
    """[(kind, attention (H, q, k), d logit[target] / d attention)] for ONE image x (1, C, H, W)."""
    store, handles, saved = [], [], []
    if oracle == "weights":
        grids = {}
        for name, block in model.named_modules():  # SAM blocks: the grid before windowing
            if hasattr(block, "window_size") and hasattr(block, "attn"):
                handles.append(block.register_forward_pre_hook(
                    lambda mod, args: grids.__setitem__(mod.attn, (mod.window_size, *args[0].shape[1:3]))))
        for module, explicit, kind in explicit_sites(model):
            def replace(mod, args, kwargs, out, explicit=explicit, kind=kind):
                assert kwargs.get("attn_mask") is None and not kwargs.get("is_causal", False)
                new, attn = explicit(mod, args[0])
                attn.retain_grad()
                if kind == "sam":
                    size, height, width = grids[mod]
                    kind = ("window", size, height, width) if size > 0 else "self"
                store.append((kind, attn))
                return new
            handles.append(module.register_forward_hook(replace, with_kwargs=True))
    else:  # the model's own non-fused path, attention taken at attn_drop
        for m in model.modules():
            if isinstance(getattr(m, "fused_attn", None), bool) and hasattr(m, "attn_drop"):
                saved.append((m, m.fused_attn))
                m.fused_attn = False

                def keep(mod, args, out):
                    out.retain_grad()
                    store.append(("self", out))
                handles.append(m.attn_drop.register_forward_hook(keep))
    try:
        logits = model(x.clone().requires_grad_(True))
        logits[0, target].backward()
        return [(kind, a.detach(), a.grad.detach()) if isinstance(kind, tuple) else
                (kind, a.detach()[0], a.grad.detach()[0]) for kind, a in store]
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved:
            m.fused_attn = flag
        model.zero_grad(set_to_none=True)


def full(kind, a, n):
    """One layer's (heads, q, k) attention written over the final n tokens (see module doc)."""
    heads = a.shape[1] if isinstance(kind, tuple) else a.shape[0]
    out = torch.zeros(heads, n, n)
    if kind == "self":
        out[:] = a
    elif kind == "late":
        p = n - a.shape[-1]
        out[:, :p, :p] = torch.eye(p)
        out[:, p:, p:] = a
    elif kind == "class":
        out[:] = torch.eye(n)
        out[:, :1, :] = a
    else:  # ("window", size, H, W): a is (windows, heads, s*s, s*s) over the zero-padded grid
        _, size, height, width = kind
        hp, wp = -(-height // size) * size, -(-width // size) * size
        grid = torch.zeros(a.shape[1], hp * wp, hp * wp)
        for index in range(a.shape[0]):
            i, j = divmod(index, wp // size)
            cells = torch.tensor([(i * size + r) * wp + j * size + c for r in range(size) for c in range(size)])
            grid[:, cells[:, None], cells[None, :]] = a[index]
        real = torch.tensor([r * wp + c for r in range(height) for c in range(width)])
        out = grid[:, real][:, :, real]
    return out


def _identity_rows(kind, n, a):
    """Rows the layer leaves unchanged (padding), which carry no attention gradient."""
    return full(kind, a * 0, n)


def rollout(layers, query, n):
    result = torch.eye(n)
    for kind, a, _ in layers:
        fused = full(kind, a, n).mean(0)
        m = (fused + torch.eye(n)) / 2
        m = m / m.sum(-1, keepdim=True)
        result = m @ result
    return query @ result


def chefer(layers, query, n):
    r = torch.eye(n)
    for kind, a, g in layers:
        weighted = (full(kind, g * a, n) - _identity_rows(kind, n, a)).clamp(min=0).mean(0)
        r = r + weighted @ r
    return query @ r


def raw(layers, query, n):
    kind, a, _ = layers[-1]
    return query @ full(kind, a, n).mean(0)
