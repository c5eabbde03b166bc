"""Dense reference for windowed hierarchical ViTs (Swin, SwinV2): nothing here uses vitx.

A forward hook on every Swin block recomputes the block from its input and its own weights
with FULL (tokens x tokens) attention over the stage's grid: q, k from the block's projections,
the relative position bias of each pair's offset inside its window, -100 between tokens of one
shifted window that come from different regions, and -inf between tokens of different windows
(the window of a token: its position after the cyclic shift, divided by the window size). The
recomputed attention is the one on the gradient path, so its .grad is d(logit)/d(attention).
Between stages the 2x2 patch merging is the plain (N_next x N) matrix with 1/4 on each source.

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
    raise TypeError(kind)


def merge_matrix(before, after):
    """(N_next, N): each next token the mean of its 2x2 sources (of those inside an odd grid)."""
    (h, w), (h2, w2) = before, after
    m = torch.zeros(h2 * w2, h * w)
    for i in range(h2):
        for j in range(w2):
            sources = [(2 * i + a) * w + 2 * j + c for a in (0, 1) for c in (0, 1) if 2 * i + a < h and 2 * j + c < w]
            m[i * w2 + j, sources] = 1.0 / len(sources)
    return m


class Reference:
    """Per image: the dense attention of every layer, its gradient for `target`, the merges."""

    def __init__(self, model, x, target, padded=False):
        attentions, grids, self.allowed = [], [], []

        def hook(fn):
            def run(module, args, kwargs, output):
                out, probs, pairs, grid = fn(module, args, kwargs, output)
                probs, select = probs if isinstance(probs, tuple) else (probs, lambda a: a)
                self.allowed.append(pairs)
                probs.retain_grad()
                attentions.append((probs, select))
                grids.append(grid)
                return out
            return run

        handles = [blk.register_forward_hook(hook(fn), with_kwargs=True) for blk, fn in blocks_of(model, padded)]
        try:
            with torch.enable_grad():
                output = model(x)
                self.output = getattr(output, "logits", output)
                self.output[:, target].sum().backward()
        finally:
            for handle in handles:
                handle.remove()
        self.attentions = [select(a.detach())[0] for a, select in attentions]  # (h, N, N) per layer
        self.grads = [select(a.grad)[0] for a, select in attentions]
        self.grids = grids
        self.merges = [None if i == 0 or grids[i] == grids[i - 1] else merge_matrix(grids[i - 1], grids[i])
                       for i in range(len(grids))]

    def query(self):
        n = self.attentions[-1].shape[-1]
        return torch.full((n,), 1.0 / n)

    def roll(self, factors):
        """query @ (F_L M_L ... F_1 M_1): merges where the stage changes."""
        row = self.query()
        for factor, merge in zip(reversed(factors), reversed(self.merges)):
            row = row @ factor
            if merge is not None:
                row = row @ merge
        return row


def discard_in_windows(fused, allowed, ratio):
    """Zero the lowest `ratio` of the entries a window layer can have (`allowed`), never a diagonal."""
    n = fused.shape[-1]
    k = int(int(allowed.sum()) * ratio)
    if k == 0:
        return fused
    values = fused.masked_fill(~allowed, float("inf")).flatten()
    drop = torch.zeros(n * n, dtype=torch.bool)
    drop[values.topk(k, largest=False).indices] = True
    drop = drop.reshape(n, n) & ~torch.eye(n, dtype=torch.bool)
    return fused.masked_fill(drop, 0.0)


def residual(a):
    mixed = (a + torch.eye(a.shape[-1])) / 2
    return mixed / mixed.sum(-1, keepdim=True)


def rollout(ref, head_fusion="mean", discard_ratio=0.0):
    fuse = {"mean": lambda a: a.mean(0), "max": lambda a: a.amax(0), "min": lambda a: a.amin(0)}[head_fusion]
    factors = []
    for layer, a in enumerate(ref.attentions):
        fused = fuse(a)
        if discard_ratio:
            fused = discard_in_windows(fused, ref.allowed[layer], discard_ratio)
        factors.append(residual(fused))
    return ref.roll(factors)


def grad_rollout(ref, discard_ratio=0.9):
    factors = [residual(discard_in_windows((a * g).mean(0).clamp(min=0), ref.allowed[i], discard_ratio))
               for i, (a, g) in enumerate(zip(ref.attentions, ref.grads))]
    return ref.roll(factors)


def chefer(ref):
    return ref.roll([(a * g).clamp(min=0).mean(0) + torch.eye(a.shape[-1]) for a, g in zip(ref.attentions, ref.grads)])


def raw(ref, layer=-1, head=None):
    """The query carried down to the layer's stage, times the layer (heads averaged, or one
    head), carried down to the first grid."""
    layer = layer % len(ref.attentions)
    row = ref.query()
    for i in reversed(range(layer + 1, len(ref.attentions))):
        if ref.merges[i] is not None:
            row = row @ ref.merges[i]
    row = row @ (ref.attentions[layer].mean(0) if head is None else ref.attentions[layer][head])
    for i in reversed(range(layer + 1)):
        if ref.merges[i] is not None:
            row = row @ ref.merges[i]
    return row
