"""Tiny models of every supported family, and independent reference computations.

Nothing here uses vitx: these are the expectations vitx is tested against.
"""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import vitx
from vitx.errors import VitxError

TINY = dict(pretrained=False, img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=2, num_classes=5)


def tiny_timm(name="vit_tiny_patch16_224", seed=0, **overrides):
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**TINY, **overrides}).eval()
    _spread_attention(model)
    return model


def _spread_attention(model):
    """Random init gives near-uniform attention; larger qkv weights make maps distinct."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "qkv.weight" in name or "in_proj_weight" in name:
                p.mul_(6.0)


def tiny_torchvision(seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=24,
                              mlp_dim=48, num_classes=5).eval()
    _spread_attention(model)
    return model


class SDPABlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.explicit = False  # the test's own path, for reference attention and gradients
        self.last_attention = None

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.explicit:
            attention = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
            attention.retain_grad() if attention.requires_grad else None
            self.last_attention = attention
            out = attention @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class SDPAViT(nn.Module):
    """A ViT written from scratch that calls F.scaled_dot_product_attention itself."""

    def __init__(self, img=32, patch=8, dim=24, heads=2, depth=3, classes=5):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim))
        self.blocks = nn.ModuleList(SDPABlock(dim, heads) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def tiny_sdpa(seed=0):
    torch.manual_seed(seed)
    model = SDPAViT().eval()
    _spread_attention(model)
    return model


# name -> (factory, prefix token names, input size)
FAMILIES = {
    "vit": (lambda: tiny_timm("vit_tiny_patch16_224"), ["cls"], (32, 32)),
    "deit": (lambda: tiny_timm("deit_tiny_patch16_224"), ["cls"], (32, 32)),
    "deit_distilled": (lambda: tiny_timm("deit_tiny_distilled_patch16_224"), ["cls", "dist"], (32, 32)),
    "registers": (lambda: tiny_timm("vit_base_patch16_reg4_gap_256", class_token=True, global_pool="token"),
                  ["cls", "reg0", "reg1", "reg2", "reg3"], (32, 32)),
    "gap_no_cls": (lambda: tiny_timm("vit_tiny_patch16_224", class_token=False, global_pool="avg"), [], (32, 32)),
    "dynamic_nonsquare": (lambda: tiny_timm("vit_tiny_patch16_224", dynamic_img_size=True), ["cls"], (32, 48)),
    "torchvision": (tiny_torchvision, ["cls"], (32, 32)),
    "custom_sdpa": (tiny_sdpa, ["cls"], (32, 32)),
}


def images_for(size, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


def fingerprint(model):
    """Everything vitx could leave behind on a model."""
    state = []
    for name, m in model.named_modules():
        state.append((name, m.training, getattr(m, "fused_attn", None), "forward" in m.__dict__,
                      len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, "_forward_hooks_with_kwargs", {}))))
    for name, p in model.named_parameters():
        state.append((name, p.requires_grad, p.grad is None))
    return state


def attention_modules(model):
    """(module, kind) for every attention site, found without vitx."""
    sites = []
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            sites.append((m, "mha"))
        elif hasattr(m, "qkv") and hasattr(m, "attn_drop"):
            sites.append((m, "timm"))
        elif isinstance(m, SDPABlock):
            sites.append((m, "sdpa"))
    return sites


def reference_attention(model, x):
    """Per-layer softmax(QK^T/sqrt(d)) computed from each module's own weights and input."""
    inputs, handles = [], []
    for module, kind in attention_modules(model):
        def grab(mod, args, kind=kind):
            inputs.append((mod, kind, args[0]))
        handles.append(module.register_forward_pre_hook(grab))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    result = []
    for module, kind, tokens in inputs:
        if kind == "sdpa":
            tokens = module.norm1(tokens)
            weight, bias, heads = module.qkv.weight, module.qkv.bias, module.heads
        elif kind == "timm":
            weight, bias, heads = module.qkv.weight, module.qkv.bias, module.num_heads
        else:
            weight, bias, heads = module.in_proj_weight, module.in_proj_bias, module.num_heads
        b, n, d = tokens.shape
        q, k, _ = F.linear(tokens, weight, bias).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        result.append((q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(-1))
    return result


def reference_attention_and_grads(model, x, target):
    """Attention and d(logit[target])/d(attention) per layer, per image, without vitx.

    timm: non-fused path with retain_grad on the attention passed through attn_drop, then
    fused flags restored. torchvision: need_weights path is not on the gradient graph, so
    this helper supports timm and the custom SDPA model only.
    """
    saved, store, handles = [], [], []
    for module, kind in attention_modules(model):
        if kind == "timm":
            saved.append((module, module.fused_attn))
            module.fused_attn = False

            def keep(mod, args, out):
                out.retain_grad()
                store.append(out)
            handles.append(module.attn_drop.register_forward_hook(keep))
        elif kind == "sdpa":
            module.explicit = True
    try:
        logits = model(x.clone().requires_grad_(True))
        if not store:
            store = [m.last_attention for m, kind in attention_modules(model) if kind == "sdpa"]
        logits[0, target].backward()
        return [a.detach() for a in store], [a.grad.detach() for a in store]
    finally:
        for h in handles:
            h.remove()
        for module, flag in saved:
            module.fused_attn = flag
        for module, kind in attention_modules(model):
            if kind == "sdpa":
                module.explicit = False
        model.zero_grad(set_to_none=True)


def run(*args):
    """The vitx CLI in-process, every argument as a string (paths too)."""
    from click.testing import CliRunner

    from vitx.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *fragments):
    """Exit code 1 and exactly one `Error:` line (warnings and notes aside) holding each fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class PixelGame(nn.Module):
    """A score computed from the pixels alone (`value`, (B,) -> `classes` outputs (c + 1) * value),
    inside a shell of 8 px patches and identity blocks that vitx's structural capture reads as a
    'ViT': hand-computed cases for the model-agnostic methods."""

    patch = 8

    def __init__(self, classes=5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, self.patch, self.patch)
        self.blocks = nn.Sequential(nn.Sequential(nn.Identity()), nn.Sequential(nn.Identity()))
        self.classes = classes

    def value(self, x):
        raise NotImplementedError

    def forward(self, x):
        tokens = self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2))
        value = self.value(x) + 0 * tokens.sum(dim=(1, 2))
        return value[:, None] * torch.arange(1, self.classes + 1, dtype=x.dtype)


def assert_refused_before_any_forward(model, size, family, reads="stage"):
    """Methods that cannot read stage layers stop in one line naming `family` and the stage
    methods, before the model runs; so does libragrad, whose FullGrad reads one token set (it
    once ran two forwards and failed on '3136 tokens but the layout has 49'), and no refusal
    lists it among the methods that apply."""
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    for method in ("transformer_attribution", "legrad", "libragrad"):
        why = "one token set" if method == "libragrad" else rf"rollout \({reads}"
        with pytest.raises(VitxError, match=rf"^{family}: method '{method}' cannot explain this model: .*{why}") \
                as info:
            vitx.explain(model, images_for(size, batch=1), method=method)
        assert "\n" not in str(info.value)
        assert "libragrad" not in str(info.value).split("apply")[-1]
    assert not calls


class Ensemble(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return (self.first(x) + self.second(x)) / 2


class FlipTTA(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return (self.model(x) + self.model(x.flip(-1))) / 2


def twice_models():
    """Models that run the image through a ViT twice in one forward (ensembles, flip TTA)."""
    return {"timm_ensemble": Ensemble(tiny_timm(seed=0), tiny_timm(seed=1)),
            "timm_flip": FlipTTA(tiny_timm()),
            "sdpa_ensemble": Ensemble(tiny_sdpa(seed=0), tiny_sdpa(seed=1)),
            "torchvision_flip": FlipTTA(tiny_torchvision())}
