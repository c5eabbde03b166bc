"""Dense reference for hierarchical ViTs (Swin, SwinV2, PiT, PVTv2, Twins, MViTv2): nothing here uses vitx.

A forward hook on every Swin block recomputes the block from its input and its own weights
with FULL (tokens x tokens) attention over the stage's grid: q, k from the block's projections,
the relative position bias of each pair's offset inside its window, -100 between tokens of one
shifted window that come from different regions, and -inf between tokens of different windows
(the window of a token: its position after the cyclic shift, divided by the window size). The
recomputed attention is the one on the gradient path, so its .grad is d(logit)/d(attention).
Between stages the 2x2 patch merging is the plain (N_next x N) matrix with 1/4 on each source.

PiT and PVTv2 blocks are recomputed the same way with their ordinary attention (PiT: full
attention over [cls, grid]; PVTv2: queries from the grid, keys and values from its strided
convolution or 7x7 adaptive pooling, then the norm). A layer whose keys are pooled is the
(N x M) attention times the (M x N) matrix that averages each key's sources (`keys`); the
pooling between stages (PiT's depthwise stride-2 convolution, PVTv2's overlapping patch
embedding) is the plain matrix over each token's real kernel footprint, a source read by c
windows giving each 1/c, rows renormalised (`tent`), class tokens mapped to themselves
(`pool_matrix`). MViTv2 pools its queries and keys from each
block's input tokens and pools the block's shortcut (a max pool) where the stage changes: its
residual path is that shortcut's matrix (`skip`) instead of the identity.

Rollout, gradient rollout, Chefer et al. and raw attention are then plain matrix products of
these dense matrices. `padded=True` (Swin v1, timm or torchvision) handles grids that are not
whole multiples of the window: attention over the model's padded, rolled frame, its padding
rows and columns dropped afterwards.
"""
import math

import torch
import torch.nn.functional as F


def geometry(height, width, window, shift, rolled=False):
    """(same window (N, N) bool, same region (N, N) bool, in-window position (N,)) of the grid;
    window and shift are (rows, columns). `rolled`: the grid is already the model's frame
    (rolled and padded), positions are taken as they are."""
    (wh, ww), (sh, sw) = window, shift
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pi, pj = (i, j) if rolled else ((i - sh) % height, (j - sw) % width)  # position after rolling by -shift
    win = (pi // wh) * (width // ww) + pj // ww
    pos = (pi % wh) * ww + pj % ww

    def region(p, side, size, s):
        return (p >= side - size).long() + (p >= side - s).long() if s else torch.zeros_like(p)

    shifted = sh or sw  # the model masks regions along both sides once any side shifts
    reg = region(pi, height, wh, sh if shifted else 0) * 3 + region(pj, width, ww, sw if shifted else 0)
    win, pos, reg = win.flatten(), pos.flatten(), reg.flatten()
    return win[:, None] == win[None, :], reg[:, None] == reg[None, :], pos


def dense_attention(content, bias, height, width, window, shift, rolled=False):
    """softmax over the whole grid of content logits (B, h, N, N) + the window's relative bias
    (h, n, n) + the shift mask, with every pair of different windows excluded."""
    same_window, same_region, pos = geometry(height, width, window, shift, rolled)
    logits = content + bias[:, pos[:, None], pos[None, :]]
    logits = logits + torch.where(same_region, 0.0, -100.0)
    return logits.masked_fill(~same_window, float("-inf")).softmax(dim=-1), same_window


def _heads(t, heads):
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(t):
    return t.transpose(1, 2).flatten(2)


def _cosine(q, k, logit_scale):
    return (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * \
        torch.clamp(logit_scale, max=math.log(100.0)).exp()


def _v2_bias(mlp, coords, index, heads, n):
    table = mlp(coords).view(-1, heads)
    return 16 * torch.sigmoid(table[index.view(-1)].view(n, n, heads).permute(2, 0, 1))


def _pair(value):
    return (int(value), int(value)) if not isinstance(value, (tuple, list)) else tuple(int(v) for v in value)


# --- one function per implementation: (block, args, kwargs, output) -> (output, attention,
# same-window pairs, grid)
def timm_swin(block, args, kwargs, output):
    x = args[0]
    b, h, w, c = x.shape
    attn = block.attn
    tokens = block.norm1(x).reshape(b, h * w, c)
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(tokens).chunk(3, dim=-1))
    probs, pairs = dense_attention((q * attn.scale) @ k.transpose(-2, -1), attn._get_rel_pos_bias()[0], h, w,
                            block.window_size, block.shift_size)
    out = x.reshape(b, h * w, c) + attn.proj(_merge_heads(probs @ v))
    out = out + block.mlp(block.norm2(out))
    return out.reshape(b, h, w, c), probs, pairs, (h, w)


def timm_swinv2(block, args, kwargs, output):
    x = args[0]
    b, h, w, c = x.shape
    attn = block.attn
    tokens = x.reshape(b, h * w, c)
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
    q, k, v = (_heads(t, attn.num_heads) for t in F.linear(tokens, attn.qkv.weight, bias).chunk(3, dim=-1))
    n = attn.window_size[0] * attn.window_size[1]
    rel = _v2_bias(attn.cpb_mlp, attn.relative_coords_table, attn.relative_position_index, attn.num_heads, n)
    probs, pairs = dense_attention(_cosine(q, k, attn.logit_scale), rel, h, w, block.window_size, block.shift_size)
    out = tokens + block.norm1(attn.proj(_merge_heads(probs @ v)))
    out = out + block.norm2(block.mlp(out))
    return out.reshape(b, h, w, c), probs, pairs, (h, w)


def torchvision_swin(block, args, kwargs, output):
    x = args[0]
    b, h, w, c = x.shape
    attn, v2 = block.attn, type(block).__name__.endswith("V2")
    tokens = x.reshape(b, h * w, c)
    bias = attn.qkv.bias.clone()
    if v2:
        bias[c:2 * c] = 0  # Swin V2 has no key bias
    q, k, v = (_heads(t, attn.num_heads) for t in
               F.linear(tokens if v2 else block.norm1(tokens), attn.qkv.weight, bias).chunk(3, dim=-1))
    content = _cosine(q, k, attn.logit_scale) if v2 else (q * (c // attn.num_heads) ** -0.5) @ k.transpose(-2, -1)
    window = tuple(attn.window_size)
    shift = tuple(0 if wn >= side else s for wn, side, s in zip(window, (h, w), attn.shift_size))
    probs, pairs = dense_attention(content, attn.get_relative_position_bias()[0], h, w, window, shift)
    mixed = attn.proj(_merge_heads(probs @ v))
    out = tokens + (block.norm1(mixed) if v2 else mixed)
    out = out + (block.norm2(block.mlp(out)) if v2 else block.mlp(block.norm2(out)))
    return out.reshape(b, h, w, c), probs, pairs, (h, w)


def _frame(t, window, shift, pad_first, value=0.0):
    """(B, H, W, C) -> the model's frame (B, Hp, Wp, C): rolled by -shift and padded to whole
    windows, in the model's order (torchvision and Hugging Face pad first, timm rolls first)."""
    h, w = t.shape[1:3]
    pads = (0, 0, 0, (-w) % window[1], 0, (-h) % window[0])
    if pad_first:
        return torch.roll(F.pad(t, pads, value=value), (-shift[0], -shift[1]), (1, 2))
    return F.pad(torch.roll(t, (-shift[0], -shift[1]), (1, 2)), pads, value=value)


def padded_swin(block, args, kwargs, output):
    """Swin v1 (timm or torchvision) on a grid that is NOT a multiple of the window: attention
    over the padded frame (padding tokens are zeros after norm1, as in both models), written
    back in token order with the padding rows and columns dropped."""
    x = args[0]
    b, h, w, c = x.shape
    attn, torchvision = block.attn, type(block).__module__.startswith("torchvision")
    window = tuple(block.window_size if not torchvision else attn.window_size)
    shift = tuple(block.shift_size if not torchvision else attn.shift_size)
    hp, wp = h + (-h) % window[0], w + (-w) % window[1]
    if torchvision:
        shift = tuple(0 if wn >= side else s for wn, side, s in zip(window, (hp, wp), shift))
    frame = _frame(block.norm1(x), window, shift, torchvision)
    index = _frame(torch.arange(h * w, dtype=x.dtype).reshape(1, h, w, 1), window, shift, torchvision, -1.0)
    index = index.flatten().long()
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(frame.reshape(b, hp * wp, c)).chunk(3, dim=-1))
    bias = attn._get_rel_pos_bias()[0] if not torchvision else attn.get_relative_position_bias()[0]
    probs, pairs = dense_attention((q * (c // attn.num_heads) ** -0.5) @ k.transpose(-2, -1), bias, hp, wp, window,
                                   shift, rolled=True)
    mixed = attn.proj(_merge_heads(probs @ v))
    real = index >= 0
    order = torch.empty(h * w, dtype=torch.long)
    order[index[real]] = torch.nonzero(real).flatten()  # frame slot of each token
    out = x.reshape(b, h * w, c) + mixed[:, order]
    out = out + block.mlp(block.norm2(out))

    def select(a):
        return a[..., order, :][..., order]

    return out.reshape(b, h, w, c), (probs, select), pairs[order][:, order], (h, w)


def _hf_inputs(args, kwargs):
    dims = args[1] if len(args) > 1 else kwargs["input_dimensions"]
    return args[0], tuple(int(d) for d in dims)


def hf_swin(layer, args, kwargs, output):
    x, (h, w) = _hf_inputs(args, kwargs)
    attn = layer.attention
    tokens = layer.layernorm_before(x)
    q, k, v = (_heads(proj(tokens), attn.num_attention_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs, pairs = dense_attention((q @ k.transpose(-2, -1)) * attn.scaling, attn.relative_position_bias()[0], h, w,
                                   _pair(layer.window_size), _pair(layer.shift_size))
    out = x + attn.o_proj(_merge_heads(probs @ v))
    out = out + layer.mlp(layer.layernorm_after(out))
    return (out,) + tuple(output[1:]), probs, pairs, (h, w)


def hf_swinv2(layer, args, kwargs, output):
    x, (h, w) = _hf_inputs(args, kwargs)
    sa = layer.attention.self
    heads = sa.num_attention_heads
    q, k, v = (_heads(proj(x), heads) for proj in (sa.query, sa.key, sa.value))
    n = sa.window_size[0] * sa.window_size[1]
    rel = _v2_bias(sa.continuous_position_bias_mlp, sa.relative_coords_table, sa.relative_position_index, heads, n)
    probs, pairs = dense_attention(_cosine(q, k, sa.logit_scale), rel, h, w, _pair(layer.window_size),
                                   _pair(layer.shift_size))
    out = x + layer.layernorm_before(layer.attention.output(_merge_heads(probs @ v), x))
    out = out + layer.layernorm_after(layer.output(layer.intermediate(out)))
    return (out,) + tuple(output[1:]), probs, pairs, (h, w)


def blocks_of(model, padded=False):
    """Swin blocks in order, with the function that recomputes them."""
    kind = type(model).__module__
    if padded:
        return [(blk, padded_swin) for blk in model.modules() if hasattr(blk, "attn") and hasattr(blk, "norm1")]
    if kind == "timm.models.swin_transformer":
        return [(blk, timm_swin) for stage in model.layers for blk in stage.blocks]
    if kind == "timm.models.swin_transformer_v2":
        return [(blk, timm_swinv2) for stage in model.layers for blk in stage.blocks]
    if kind == "torchvision.models.swin_transformer":
        return [(blk, torchvision_swin) for blk in model.modules() if hasattr(blk, "attn") and hasattr(blk, "norm1")]
    if kind.startswith("transformers.models.swin"):
        fn = hf_swinv2 if kind.endswith("swinv2") else hf_swin
        return [(layer, fn) for layer in model.modules() if hasattr(layer, "layernorm_before")
                and hasattr(layer, "shift_size")]
    if kind == "timm.models.pit":
        return [(blk, timm_pit) for stage in model.transformers for blk in stage.blocks]
    if kind == "timm.models.pvt_v2":
        return [(blk, timm_pvt_v2) for stage in model.stages for blk in stage.blocks]
    if kind == "timm.models.twins":
        return [(blk, timm_twins) for blocks in model.blocks for blk in blocks]
    if kind == "timm.models.mvitv2":
        return [(blk, timm_mvit) for stage in model.stages for blk in stage.blocks]
    if kind.startswith("transformers.models.pvt_v2"):
        return [(blk, hf_pvt_v2) for stage in model.pvt_v2.encoder.layers for blk in stage.blocks]
    if kind in ("timm.models.hiera", "timm.models.hieradet_sam2"):
        from hiera_reference import blocks, det_blocks

        return (blocks if kind.endswith("hiera") else det_blocks)(model)
    raise TypeError(kind)


def tent(m):
    """Rows over each new token's real sources, each source sharing itself equally among the
    rows that read it (1 / coverage), rows renormalised: the stage matrix for overlapping
    footprints, the plain mean without overlap."""
    reads = (m > 0).to(m.dtype)
    shared = reads / reads.sum(0, keepdim=True).clamp(min=1)
    return shared / shared.sum(1, keepdim=True).clamp(min=1e-30)


def pool_matrix(before, after, kernel=2, stride=2, padding=0, prefix=0):
    """(prefix + N_next, prefix + N): each next grid token spread over the real tokens of its
    kernel footprint (rows stride * i - padding + [0, kernel)) by `tent`, each prefix token
    itself. The default is Swin's 2x2 patch merging (an odd side padded: fewer sources)."""
    (h, w), (h2, w2) = before, after
    m = torch.zeros(prefix + h2 * w2, prefix + h * w)
    m[range(prefix), range(prefix)] = 1.0
    for i in range(h2):
        for j in range(w2):
            sources = [prefix + r * w + c for r in range(stride * i - padding, stride * i - padding + kernel)
                       for c in range(stride * j - padding, stride * j - padding + kernel) if 0 <= r < h and 0 <= c < w]
            m[prefix + i * w2 + j, sources] = 1.0
    return tent(m)


def adaptive_matrix(before, after):
    """(N_next, N) of adaptive average pooling: bins floor(i * h / h2) .. ceil((i + 1) * h / h2),
    by `tent` (bins overlap where the sides do not divide)."""
    (h, w), (h2, w2) = before, after
    m = torch.zeros(h2 * w2, h * w)
    for i in range(h2):
        for j in range(w2):
            rows = range(i * h // h2, math.ceil((i + 1) * h / h2))
            cols = range(j * w // w2, math.ceil((j + 1) * w / w2))
            m[i * w2 + j, [r * w + c for r in rows for c in cols]] = 1.0
    return tent(m)


def _attend(q, k, scale):
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def timm_pit(block, args, kwargs, output):
    """A PiT block (timm's ViT Block) over [prefix, grid]: full attention."""
    x = args[0]
    attn = block.attn
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(block.norm1(x)).chunk(3, dim=-1))
    probs = _attend(q, k, attn.scale)
    out = x + block.ls1(attn.proj(_merge_heads(probs @ v)))
    out = out + block.ls2(block.mlp(block.norm2(out)))
    return out, probs, torch.ones(probs.shape[-2:], dtype=torch.bool), None, {}


def _spatial_reduction(tokens, h, w, pool, conv, norm, act=None):
    """PVTv2's key/value tokens: (adaptive pooling to 7x7 and) a convolution of the grid, then
    the norm (and GELU); with the matrix that averages each key's sources."""
    b, n, c = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, c, h, w)
    if pool is not None:
        size = (pool.output_size,) * 2 if isinstance(pool.output_size, int) else pool.output_size
        return act(norm(conv(F.adaptive_avg_pool2d(grid, size)).flatten(2).transpose(1, 2))), \
            adaptive_matrix((h, w), size)
    if conv is not None:
        r = conv.stride[0]
        return norm(conv(grid).flatten(2).transpose(1, 2)), pool_matrix((h, w), (h // r, w // r), r, r, 0)
    return tokens, None


def timm_pvt_v2(block, args, kwargs, output):
    """A PVTv2 block: queries from the grid, keys and values from its spatial reduction."""
    x, (h, w) = args[0], tuple(int(g) for g in args[1])
    attn = block.attn
    tokens = block.norm1(x)
    reduced, keys = _spatial_reduction(tokens, h, w, attn.pool, attn.sr, attn.norm, attn.act)
    q = _heads(attn.q(tokens), attn.num_heads)
    k, v = (_heads(t, attn.num_heads) for t in attn.kv(reduced).chunk(2, dim=-1))
    probs = _attend(q, k, attn.scale)
    out = x + attn.proj(_merge_heads(probs @ v))
    out = out + block.mlp(block.norm2(out), (h, w))
    return out, probs, torch.ones(probs.shape[-2:], dtype=torch.bool), (h, w), {"keys": keys}


def timm_twins(block, args, kwargs, output):
    """A Twins block: locally-grouped attention (a softmax over the grid, padded with zero tokens
    at its end to whole ws x ws windows as the model does, with every pair of different windows
    excluded; the padding's rows and columns dropped afterwards) or global sub-sampled attention
    (keys and values from the strided convolution of the grid, as PVTv2)."""
    x, (h, w) = args[0], tuple(int(g) for g in args[1])
    attn = block.attn
    tokens = block.norm1(x)
    if hasattr(attn, "ws"):  # over the grid padded (zeros at its end) to whole windows, padding dropped after
        ws, b, c = attn.ws, x.shape[0], x.shape[-1]
        hp, wp = h + (-h) % ws, w + (-w) % ws
        frame = F.pad(tokens.reshape(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h)).reshape(b, hp * wp, c)
        q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(frame).chunk(3, dim=-1))
        pairs = geometry(hp, wp, (ws, ws), (0, 0))[0]
        probs = ((q * attn.scale) @ k.transpose(-2, -1)).masked_fill(~pairs, float("-inf")).softmax(dim=-1)
        real = (torch.arange(h)[:, None] * wp + torch.arange(w)[None, :]).flatten()
        out = x + attn.proj(_merge_heads((probs @ v)[:, :, real]))
        out = out + block.mlp(block.norm2(out))
        return out, (probs, lambda a: a[..., real, :][..., real]), pairs[real][:, real], (h, w), {"keys": None}
    else:
        reduced, keys = _spatial_reduction(tokens, h, w, None, attn.sr, attn.norm)
        q = _heads(attn.q(tokens), attn.num_heads)
        k, v = (_heads(t, attn.num_heads) for t in attn.kv(reduced).chunk(2, dim=-1))
        probs, pairs = _attend(q, k, attn.scale), None
    out = x + attn.proj(_merge_heads(probs @ v))
    out = out + block.mlp(block.norm2(out))
    pairs = torch.ones(probs.shape[-2:], dtype=torch.bool) if pairs is None else pairs
    return out, probs, pairs, (h, w), {"keys": keys}


def hf_pvt_v2(layer, args, kwargs, output):
    """A transformers PvtV2BlockLayer, as timm_pvt_v2."""
    names = ("hidden_states", "height", "width")
    values = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
    x, h, w = values["hidden_states"], int(values["height"]), int(values["width"])
    attn = layer.attention
    tokens = layer.layer_norm_1(x)
    linear = attn.linear_attention
    conv = attn.spatial_reduction if linear or attn.spatial_reduction_ratio > 1 else None
    reduced, keys = _spatial_reduction(tokens, h, w, attn.pool if linear else None, conv,
                                       getattr(attn, "layer_norm", None), getattr(attn, "act", None))
    q = _heads(attn.query(tokens), attn.num_attention_heads)
    k, v = (_heads(proj(reduced), attn.num_attention_heads) for proj in (attn.key, attn.value))
    probs = _attend(q, k, attn.attention_head_size ** -0.5)
    out = x + attn.proj(_merge_heads(probs @ v))
    out = out + layer.mlp(layer.layer_norm_2(out), h, w)
    return (out,) + tuple(output[1:]), probs, torch.ones(probs.shape[-2:], dtype=torch.bool), (h, w), {"keys": keys}


def _pit_grids(model):
    """Forward pre-hooks on PiT's stages: the grid after each stage's pooling (run here on the
    stage's own input) and the matrix of that pooling, stored for the stage's blocks."""
    state = {}

    def grab(stage):
        def run(module, args):
            x = args[0][0]
            before = tuple(x.shape[-2:])
            if stage.pool is None:
                state.update(grid=before, merge=None)
            else:
                after = tuple(stage.pool.conv(x).shape[-2:])
                conv = stage.pool.conv
                state.update(grid=after, merge=pool_matrix(before, after, conv.kernel_size[0], conv.stride[0],
                                                           conv.padding[0], model.num_tokens))
        return run

    return state, [stage.register_forward_pre_hook(grab(stage)) for stage in model.transformers]


def _pool_tokens(t, grid, prefix, pool):
    """(B, [heads,] N, C) tokens [prefix, grid] -> the grid part pooled by `pool` (a module
    over (B', C, H, W)), the prefix kept in front; with the pooled grid."""
    lead, (h, w) = t.shape[:-2], grid
    head, body = t[..., :prefix, :], t[..., prefix:, :]
    pooled = pool(body.reshape(-1, h, w, t.shape[-1]).permute(0, 3, 1, 2))
    after = tuple(pooled.shape[-2:])
    body = pooled.flatten(2).transpose(1, 2).reshape(*lead, after[0] * after[1], t.shape[-1])
    return torch.cat([head, body], dim=-2), after


def _footprint(module, before, after, prefix):
    """The stage matrix of a pooling module (convolution or max / average pool)."""
    k, s, p = (_pair(getattr(module, name))[0] for name in ("kernel_size", "stride", "padding"))
    return pool_matrix(before, after, k, s, p, prefix)


def timm_mvit(block, args, kwargs, output):
    """An MViTv2 block (MultiScaleAttention, pool_first False): queries, keys and values pooled
    from the input tokens (class token kept), relative position terms (timm's function),
    residual pooling, the max-pooled shortcut, the MLP."""
    from timm.models.mvitv2 import cal_rel_pos_type

    x, grid = args[0], tuple(int(g) for g in args[1])
    attn, prefix = block.attn, int(block.has_cls_token)
    x_norm = block.norm1(x)
    shortcut = x if block.shortcut_proj_attn is None else block.shortcut_proj_attn(x_norm)
    skip = None
    if block.shortcut_pool_attn is not None:
        shortcut, after = _pool_tokens(shortcut, grid, prefix, block.shortcut_pool_attn)
        skip = _footprint(block.shortcut_pool_attn, grid, after, prefix)
    b, n, _ = x.shape
    q, k, v = attn.qkv(x_norm).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    sizes, keys = {}, None
    pooled = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        pool, norm = getattr(attn, f"pool_{name}"), getattr(attn, f"norm_{name}")
        sizes[name] = grid
        if pool is not None:
            t, sizes[name] = _pool_tokens(t, grid, prefix, pool)
        pooled.append(t if norm is None else norm(t))
    q, k, v = pooled
    if attn.pool_k is not None:
        keys = _footprint(attn.pool_k, grid, sizes["k"], prefix)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.rel_pos_type == "spatial":
        logits = cal_rel_pos_type(logits, q, attn.has_cls_token, sizes["q"], sizes["k"], attn.rel_pos_h, attn.rel_pos_w)
    probs = logits.softmax(dim=-1)
    mixed = probs @ v
    if attn.residual_pooling:
        mixed = mixed + q
    out = shortcut + attn.proj(_merge_heads(mixed))
    x_norm = block.norm2(out)
    out = (out if block.shortcut_proj_mlp is None else block.shortcut_proj_mlp(x_norm)) + block.mlp(x_norm)
    return (out, list(sizes["q"])), probs, torch.ones(probs.shape[-2:], dtype=torch.bool), sizes["q"], \
        {"keys": keys, "skip": skip}


def _stage_hooks(model):
    """PiT and PVTv2: forward pre-hooks on the stages that store, for the stage's first block,
    the matrix of the pooling into the stage (PiT: its depthwise convolution, run here on the
    stage's own input; PVTv2: its overlapping patch embedding), and PiT's grid after it."""
    kind, state = type(model).__module__, {}

    def pit(stage):
        def run(module, args):
            x = args[0][0]
            before, conv = tuple(x.shape[-2:]), getattr(stage.pool, "conv", None)
            after = before if conv is None else tuple(conv(x).shape[-2:])
            state["grid"] = after
            if conv is not None:
                state["merge"] = pool_matrix(before, after, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                                             model.num_tokens)
        return run

    def pvt(stage):
        def run(module, args):
            if stage.downsample is not None:
                conv = stage.downsample.proj
                state["merge"] = pool_matrix(tuple(args[0].shape[-2:]), tuple(conv(args[0]).shape[-2:]),
                                             conv.kernel_size[0], conv.stride[0], conv.padding[0])
        return run

    def hf_pvt(stage):
        def run(module, args, kwargs):
            x, conv = args[0] if args else kwargs["hidden_states"], stage.patch_embedding.proj
            if stage is not model.pvt_v2.encoder.layers[0]:  # the first embeds the image
                state["merge"] = pool_matrix(tuple(x.shape[-2:]), tuple(conv(x).shape[-2:]), conv.kernel_size[0],
                                             conv.stride[0], conv.padding[0])
        return run

    if kind == "timm.models.pit":
        return state, [stage.register_forward_pre_hook(pit(stage)) for stage in model.transformers]
    if kind == "timm.models.pvt_v2":
        return state, [stage.register_forward_pre_hook(pvt(stage)) for stage in model.stages]
    def twins(embed):
        def run(module, args):
            conv = embed.proj
            state["merge"] = pool_matrix(tuple(args[0].shape[-2:]), tuple(conv(args[0]).shape[-2:]),
                                         conv.kernel_size[0], conv.stride[0], conv.padding[0])
        return run

    if kind == "timm.models.twins":  # the first embedding reads the image
        return state, [embed.register_forward_pre_hook(twins(embed)) for embed in model.patch_embeds[1:]]
    if kind in ("timm.models.mvitv2", "timm.models.hiera", "timm.models.hieradet_sam2"):
        return state, []  # no merges outside the blocks: the pooled residual is each block's `skip`
    if kind.startswith("transformers.models.pvt_v2"):
        return state, [stage.register_forward_pre_hook(hf_pvt(stage), with_kwargs=True)
                       for stage in model.pvt_v2.encoder.layers]
    return None, []


class Reference:
    """Per image: the dense attention of every layer, its gradient for `target`, the matrix
    that pools its keys (None: the keys are its tokens), the merges between stages."""

    def __init__(self, model, x, target, padded=False):
        attentions, grids, keys, skips, merges, self.allowed = [], [], [], [], [], []
        state, handles = _stage_hooks(model)
        kind = type(model).__module__
        self.prefix = (model.num_tokens if kind == "timm.models.pit" else
                       int(model.cls_token is not None) if kind == "timm.models.mvitv2" else 0)

        def hook(fn):
            def run(module, args, kwargs, output):
                out, probs, pairs, grid, *extra = fn(module, args, kwargs, output)
                probs, select = probs if isinstance(probs, tuple) else (probs, lambda a: a)
                self.allowed.append(pairs)
                probs.retain_grad()
                attentions.append((probs, select))
                grids.append(grid or state["grid"])
                keys.append(extra[0].get("keys") if extra else None)
                skips.append(extra[0].get("skip") if extra else None)
                if state is not None:
                    merges.append(state.pop("merge", None))
                return out
            return run

        handles += [blk.register_forward_hook(hook(fn), with_kwargs=True) for blk, fn in blocks_of(model, padded)]
        try:
            with torch.enable_grad():
                output = model(x)
                self.output = getattr(output, "logits", output)
                self.output[:, target].sum().backward()
        finally:
            for handle in handles:
                handle.remove()
        self.attentions = [select(a.detach())[0] for a, select in attentions]  # (h, Nq, Nk) per layer
        self.grads = [select(a.grad)[0] for a, select in attentions]
        self.grids = grids
        self.keys, self.skips = keys, skips
        self.merges = merges if state is not None else [
            None if i == 0 or grids[i] == grids[i - 1] else pool_matrix(grids[i - 1], grids[i])
            for i in range(len(grids))]

    def query(self):
        """The mean of the last stage's tokens, or (PiT) its class token."""
        n = self.attentions[-1].shape[-2]
        return F.one_hot(torch.tensor(0), n).float() if self.prefix else torch.full((n,), 1.0 / n)

    def flow(self, layer, fused):
        """An (Nq x Nk) fused layer as a token flow (Nq x N): times its key pooling."""
        return fused if self.keys[layer] is None else fused @ self.keys[layer]

    def identity(self, layer):
        """The layer's residual path: its pooled shortcut (MViTv2), else the identity."""
        skip = self.skips[layer]
        return torch.eye(self.attentions[layer].shape[-2]) if skip is None else skip

    def carry(self, row, layer):
        """A row past a layer it does not read: through its residual path and its merge."""
        row = row if self.skips[layer] is None else row @ self.skips[layer]
        return row if self.merges[layer] is None else row @ self.merges[layer]

    def roll(self, factors):
        """query @ (F_L M_L ... F_1 M_1): merges where the stage changes."""
        row = self.query()
        for factor, merge in zip(reversed(factors), reversed(self.merges)):
            row = row @ factor
            if merge is not None:
                row = row @ merge
        return row


def discard_in_windows(fused, allowed, ratio, diagonal=True):
    """Zero the lowest `ratio` of the entries a layer can have (`allowed`), never a diagonal
    entry of a layer over one token set (`diagonal`)."""
    k = int(int(allowed.sum()) * ratio)
    if k == 0:
        return fused
    values = fused.masked_fill(~allowed, float("inf")).flatten()
    drop = torch.zeros(values.numel(), dtype=torch.bool)
    drop[values.topk(k, largest=False).indices] = True
    drop = drop.reshape(fused.shape)
    if diagonal:
        drop &= ~torch.eye(fused.shape[-1], dtype=torch.bool)
    return fused.masked_fill(drop, 0.0)


def residual(a, identity=None):
    mixed = (a + (torch.eye(a.shape[-1]) if identity is None else identity)) / 2
    return mixed / mixed.sum(-1, keepdim=True)


def _discard(ref, layer, fused, ratio):
    square = ref.keys[layer] is None and ref.skips[layer] is None
    return discard_in_windows(fused, ref.allowed[layer], ratio, square) if ratio else fused


def rollout(ref, head_fusion="mean", discard_ratio=0.0):
    fuse = {"mean": lambda a: a.mean(0), "max": lambda a: a.amax(0), "min": lambda a: a.amin(0)}[head_fusion]
    return ref.roll([residual(ref.flow(i, _discard(ref, i, fuse(a), discard_ratio)), ref.identity(i))
                     for i, a in enumerate(ref.attentions)])


def grad_rollout(ref, discard_ratio=0.9):
    return ref.roll([residual(ref.flow(i, _discard(ref, i, (a * g).mean(0).clamp(min=0), discard_ratio)),
                              ref.identity(i))
                     for i, (a, g) in enumerate(zip(ref.attentions, ref.grads))])


def chefer(ref):
    return ref.roll([ref.flow(i, (a * g).clamp(min=0).mean(0)) + ref.identity(i)
                     for i, (a, g) in enumerate(zip(ref.attentions, ref.grads))])


def raw(ref, layer=-1, head=None):
    """The query carried down to the layer's stage, times the layer (heads averaged, or one
    head), carried down to the first grid."""
    layer = layer % len(ref.attentions)
    row = ref.query()
    for i in reversed(range(layer + 1, len(ref.attentions))):
        row = ref.carry(row, i)
    row = row @ ref.flow(layer, ref.attentions[layer].mean(0) if head is None else ref.attentions[layer][head])
    if ref.merges[layer] is not None:
        row = row @ ref.merges[layer]
    for i in reversed(range(layer)):
        row = ref.carry(row, i)
    return row


def assert_reproduces(model, x, references):
    """Each image's dense recomputation gives the model's own output (so its attention is the
    model's): the check every family's reference test starts from."""
    with torch.no_grad():
        expected = model(x)
        expected = getattr(expected, "logits", expected)
    for i, r in enumerate(references):
        scale = expected[i].abs().max().item()  # the loud head multiplies float error by 300
        torch.testing.assert_close(r.output.detach()[0], expected[i], atol=1e-5 * 300 * max(scale, 1), rtol=1e-3)
