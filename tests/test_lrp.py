"""LRP (attnlrp, CP-LRP, transformer_attribution) against LXT, hand-computed rules and
conservation identities.

LXT 2.1's package __init__ imports its BERT patches, which fail against transformers 5; the
fixture below loads only LXT's rule and patch modules (its own code, unchanged) and applies
its torchvision-ViT patch map the way `lxt.efficient.monkey_patch` does, restoring the patched
torch classes afterwards so no other test sees them.
"""
import functools
import importlib.util
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import vitx
from helpers import _spread_attention, fingerprint, images_for, reference_attention_and_grads, tiny_sdpa, tiny_timm
from vitx.attribution.lrp import LRPRules, input_relevance


def tiny_torchvision_lrp(seed=0):
    """The issue's model: torchvision ViT, 2 layers, sharpened attention, a non-zero head
    (torchvision initialises the head to zero, which would make every relevance 0)."""
    torch.manual_seed(seed)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24,
                              mlp_dim=48, num_classes=5).eval()
    _spread_attention(model)
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)
        nn.init.normal_(model.heads.head.bias, std=0.5)
    return model


def class_score(targets):
    targets = torch.as_tensor(targets)
    return lambda out: getattr(out, "logits", out).gather(1, targets[:, None])[:, 0]


def patch_sums(pixels, patch=8):
    """(B, C, H, W) -> (B, patches) sums, written independently of vitx's pixels_to_tokens."""
    b, c, h, w = pixels.shape
    return pixels.reshape(b, c, h // patch, patch, w // patch, patch).sum(dim=(1, 3, 5)).flatten(1)


@pytest.fixture
def lxt():
    root = os.path.dirname(importlib.util.find_spec("lxt").origin)
    saved_modules = {name: sys.modules.get(name) for name in ("lxt.efficient", "lxt.efficient.models")}
    for name in saved_modules:
        if name not in sys.modules or not hasattr(sys.modules[name], "monkey_patch"):
            stub = types.ModuleType(name)
            stub.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = stub
    from lxt.efficient import patches, rules
    from lxt.efficient.models.vit_torch import cp_LRP

    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
    saved = {c: c.__dict__["forward"] for c in classes}

    def attnlrp_attention(self, query, key, value, *args, **kwargs):
        # LXT's AttnLRP attention wrapper (wrap_attention_forward), on MultiheadAttention's signature
        return self.original_forward(rules.divide_gradient(query, 4), rules.divide_gradient(key, 4),
                                     rules.divide_gradient(value, 2), *args, **kwargs)

    maps = {
        "cp": cp_LRP,
        "attnlrp": {
            nn.GELU: functools.partial(patches.patch_method, patches.non_linear_forward, keep_original=True),
            nn.LayerNorm: functools.partial(patches.patch_method, patches.layer_norm_forward),
            nn.MultiheadAttention: functools.partial(patches.patch_method, attnlrp_attention, keep_original=True),
        },
    }

    def relevance(model, x, targets, variant):
        try:
            for target, patch in maps[variant].items():
                assert patch(target)
            for p in model.parameters():
                p.requires_grad_(False)
            x = x.clone().requires_grad_(True)
            class_score(targets)(model(x)).sum().backward()
            return (x * x.grad).detach()
        finally:
            for c in classes:
                c.forward = saved[c]
                if "original_forward" in c.__dict__:
                    del c.original_forward
            for p in model.parameters():
                p.requires_grad_(True)

    yield types.SimpleNamespace(relevance=relevance, rules=rules, patches=patches)
    for name, module in saved_modules.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_equal_to_lxt_on_a_torchvision_vit(lxt, variant):
    model = tiny_torchvision_lrp()
    x, targets = images_for((32, 32), batch=3), [1, 3, 0]
    expected = lxt.relevance(model, x, targets, variant)
    before = fingerprint(model)
    pixels = input_relevance(model, x, class_score(targets), variant=variant, epsilon=0.0).relevance
    torch.testing.assert_close(pixels, expected, atol=1e-4, rtol=1e-3)
    exp = vitx.explain(model, x, method="attnlrp", target=targets, variant=variant, epsilon=0.0)
    torch.testing.assert_close(exp.relevance[:, 1:], patch_sums(expected), atol=1e-4, rtol=1e-3)
    assert (exp.relevance[:, 0] == 0).all()
    # the rules matter: plain gradient x input is far from LXT's relevance
    x_ = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(class_score(targets)(model(x_)).sum(), x_)
    plain = (x_ * grad).flatten()
    assert torch.corrcoef(torch.stack([plain, expected.flatten()]))[0, 1] < 0.9
    # a small epsilon on the linear layers dampens, but the maps stay LXT's
    damped = vitx.explain(model, x, method="attnlrp", target=targets, variant=variant, epsilon=1e-3).relevance[:, 1:]
    assert torch.corrcoef(torch.stack([damped.flatten(), patch_sums(expected).flatten()]))[0, 1] > 0.99
    assert fingerprint(model) == before


ADDITIVE = ("bias", "pos", "cls", "class_token", "position_embeddings")


def additive(name):
    """Parameters that enter the network by addition (biases, position embeddings, class tokens)."""
    return any(key in name for key in ADDITIVE)


def zero_additive(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if additive(name):
                p.zero_()
    return model


def tiny_hf(implementation="sdpa", seed=0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2, hidden_size=24,
                       intermediate_size=48, num_labels=5, initializer_range=0.3)
    model = ViTForImageClassification._from_config(config, attn_implementation=implementation).eval()
    _spread_attention(model)
    return model


def explicit_sdpa(seed=0):
    """The hand-written ViT with `softmax(q @ k.transpose(-2, -1) * scale)` instead of SDPA."""
    model = tiny_sdpa(seed)
    for block in model.blocks:
        block.explicit = True
    return model


FAMILIES = {
    "torchvision": tiny_torchvision_lrp,
    "timm": lambda: tiny_timm("vit_tiny_patch16_224"),
    "sdpa": tiny_sdpa,
    "explicit_softmax": explicit_sdpa,
    "hf_sdpa": lambda: tiny_hf("sdpa"),
    "hf_eager": lambda: tiny_hf("eager"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cp_relevance_sums_to_the_logit_without_additive_terms(family):
    """CP-LRP with epsilon 0 is gradient x input of a map that is linear in the input once the
    attention, the norms' statistics and the ratios f(x)/x are held fixed; with every bias,
    position embedding and class token at zero, nothing absorbs relevance: it sums to the logit."""
    model = zero_additive(FAMILIES[family]())
    x, targets = images_for((32, 32), batch=2), [2, 4]
    before = fingerprint(model)
    exp = vitx.explain(model, x, method="attnlrp", target=targets, variant="cp", epsilon=0.0)
    logits = exp.logits.gather(1, torch.tensor(targets)[:, None])[:, 0]
    assert logits.abs().min() > 1e-3
    torch.testing.assert_close(exp.relevance.sum(-1), logits, atol=1e-4, rtol=1e-3)
    assert fingerprint(model) == before
    assert not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize("family", ["torchvision", "timm", "hf_sdpa"])
def test_cp_conservation_with_bias_absorption(family):
    """With biases, the identity that holds: pixel relevance + sum(b * modified grad b) over the
    additive parameters = logit (Euler's theorem for the jointly homogeneous linearised map).
    AttnLRP's softmax rule is not conservative (the softmax acts as a linear layer with a bias),
    so the same identity must fail there: the check can tell the variants apart."""
    model = FAMILIES[family]()
    x, targets = images_for((32, 32), batch=2), [2, 4]
    gaps = {}
    for variant in ("cp", "attnlrp"):
        params = [p for name, p in model.named_parameters() if additive(name)]
        others = [p for name, p in model.named_parameters() if not additive(name)]
        for p in others:
            p.requires_grad_(False)
        try:
            xi = x.clone().requires_grad_(True)
            with LRPRules(variant, epsilon=0.0):
                out = model(xi)
            score = class_score(targets)(out)
            grads = torch.autograd.grad(score.sum(), [xi] + params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip([xi] + params, grads)]
        finally:
            for p in others:
                p.requires_grad_(True)
        total = (xi * grads[0]).sum(dim=(1, 2, 3)).sum() + sum((p * g).sum() for p, g in zip(params, grads[1:]))
        gaps[variant] = (total - score.sum()).abs().item() / score.abs().sum().item()
    assert gaps["cp"] < 1e-4
    assert gaps["attnlrp"] > 1e-3


def test_rules_one_by_one():
    """Each rule's local identity, computed by hand (AttnLRP, Achtibat et al. 2024)."""
    torch.manual_seed(0)
    # uniform rule on a bilinear product: R_a + R_b = R_out
    a, b = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 4, 6, requires_grad=True)
    with LRPRules():
        out = a @ b
    g = torch.randn_like(out)
    ga, gb = torch.autograd.grad(out, (a, b), g)
    torch.testing.assert_close((a * ga).sum() + (b * gb).sum(), (out * g).sum())
    torch.testing.assert_close(ga, g @ b.detach().transpose(-2, -1) / 2)
    # softmax rule (Proposition 3.1): R_in = x (R_out - s sum R_out)
    x = torch.randn(3, 7, requires_grad=True)
    with LRPRules():
        s = F.softmax(x, dim=-1)
    g = torch.randn_like(s)
    (gx,) = torch.autograd.grad(s, x, g)
    r_out = s.detach() * g
    torch.testing.assert_close(x * gx, x.detach() * (r_out - s.detach() * r_out.sum(-1, keepdim=True)))
    # identity rule on an elementwise non-linearity: R_in = R_out elementwise
    x = torch.randn(4, 9, requires_grad=True)
    with LRPRules():
        y = F.gelu(x)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(x * gx, y.detach() * g)
    # layer norm (LN rule): only the bias absorbs, sum R_in = sum (y - bias) g per token
    x = torch.randn(4, 9, requires_grad=True)
    weight, bias = torch.randn(9), torch.randn(9)
    with LRPRules():
        y = F.layer_norm(x, (9,), weight, bias)
    torch.testing.assert_close(y, F.layer_norm(x, (9,), weight, bias))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close((x * gx).sum(-1), ((y.detach() - bias) * g).sum(-1))
    # epsilon rule on a linear layer: sum R_in = sum_j R_j z_j / (z_j + eps sign z_j)
    x, w = torch.randn(3, 6, requires_grad=True), torch.randn(5, 6)
    with LRPRules(epsilon=0.5):
        z = F.linear(x, w)
    g = torch.randn_like(z)
    (gx,) = torch.autograd.grad(z, x, g)
    zd = z.detach()
    torch.testing.assert_close((x * gx).sum(-1), (zd * g * zd / (zd + 0.5 * zd.sign())).sum(-1))
    # CP-LRP: attention held constant, nothing flows through the softmax
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    v = torch.randn(1, 2, 5, 4, requires_grad=True)
    with LRPRules("cp"):
        out = F.scaled_dot_product_attention(q, q, v)
    gq, gv = torch.autograd.grad(out.sum(), (q, v), allow_unused=True)
    assert gq is None and gv is not None


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_sdpa_and_explicit_softmax_paths_agree(variant):
    """The same hand-written ViT through F.scaled_dot_product_attention and through explicit
    softmax(q k^T * scale) v: the function mode must give both the same relevance; so must
    Hugging Face's ViT with its sdpa and eager attention."""
    x, targets = images_for((32, 32), batch=2), [1, 2]
    fused = vitx.explain(tiny_sdpa(), x, method="attnlrp", target=targets, variant=variant).relevance
    explicit = vitx.explain(explicit_sdpa(), x, method="attnlrp", target=targets, variant=variant).relevance
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)
    sdpa, eager = tiny_hf("sdpa"), tiny_hf("eager")
    eager.load_state_dict(sdpa.state_dict())
    a = vitx.explain(sdpa, x, method="attnlrp", target=targets, variant=variant).relevance
    b = vitx.explain(eager, x, method="attnlrp", target=targets, variant=variant).relevance
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert a[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("method", ["attnlrp", "transformer_attribution"])
@pytest.mark.parametrize("family", ["timm", "torchvision", "hf_sdpa"])
def test_batch_equals_single(method, family):
    model = FAMILIES[family]()
    x, targets = images_for((32, 32), batch=3), [0, 3, 1]
    before = fingerprint(model)
    batch = vitx.explain(model, x, method=method, target=targets).relevance
    for i in range(3):
        single = vitx.explain(model, x[i:i + 1], method=method, target=targets[i]).relevance
        torch.testing.assert_close(batch[i:i + 1], single, atol=1e-5, rtol=1e-4)
    assert fingerprint(model) == before
    assert not torch.overrides._get_current_function_mode_stack()


def reference_transformer_attribution(model, x, target, lxt):
    """Chefer et al. 2021 written out for the hand-written ViT (explicit path), the LRP pass
    with LXT's rule functions: R = I; R += mean_h((dA * R_A / score)^+) R."""
    rules, patches = lxt.rules, lxt.patches
    attentions, grads = reference_attention_and_grads(model, x, target)
    store = []
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        h = model.patch(x.clone().requires_grad_(True)).flatten(2).transpose(1, 2)
        h = torch.cat([model.cls.expand(h.shape[0], -1, -1), h], dim=1) + model.pos
        for block in model.blocks:
            b, n, d = h.shape
            qkv = block.qkv(patches.layer_norm_forward(block.norm1, h))
            q, k, v = qkv.reshape(b, n, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
            q, k, v = rules.divide_gradient(q, 2), rules.divide_gradient(k, 2), rules.divide_gradient(v, 2)
            attention = (q @ k.transpose(-2, -1) * (d // block.heads) ** -0.5).softmax(-1)
            attention.retain_grad()
            store.append(attention)
            out = rules.divide_gradient(attention, 2) @ v
            h = h + block.proj(out.transpose(1, 2).reshape(b, n, d))
            m = block.mlp[0](patches.layer_norm_forward(block.norm2, h))
            h = h + block.mlp[2](rules.identity_rule_implicit(block.mlp[1], m))
        score = model.head(patches.layer_norm_forward(model.norm, h)[:, 0])[0, target]
        score.backward()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    relevance = torch.eye(attentions[0].shape[-1])
    for a, g, kept in zip(attentions, grads, store):
        r_a = (kept * kept.grad).detach()[0] / score.detach()
        relevance = relevance + (g[0] * r_a).clamp(min=0).mean(0) @ relevance
    return relevance[0]


def test_transformer_attribution_matches_reference(lxt):
    model = tiny_sdpa()
    x, targets = images_for((32, 32), batch=2), [1, 4]
    exp = vitx.explain(model, x, method="transformer_attribution", target=targets, epsilon=0.0)
    for i, target in enumerate(targets):
        expected = reference_transformer_attribution(model, x[i:i + 1], target, lxt)
        torch.testing.assert_close(exp.relevance[i], expected, atol=1e-5, rtol=1e-4)
    patches = exp.relevance[:, 1:]
    assert ((patches.amax(-1) - patches.amin(-1)) > 0).all()  # not a constant map


def test_bad_options_are_clear_errors():
    model, x = tiny_sdpa(), images_for((32, 32), batch=1)
    with pytest.raises(vitx.VitxError, match="variant"):
        vitx.explain(model, x, method="attnlrp", variant="gamma")
    with pytest.raises(vitx.VitxError, match="epsilon"):
        vitx.explain(model, x, method="attnlrp", epsilon=-1.0)
