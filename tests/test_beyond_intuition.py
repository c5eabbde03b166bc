"""Beyond Intuition (Chen et al., TMLR 2023) against its authors' head-wise recipe
(`generate_ours`), recomputed here for one image at a time with hooks, without vitx."""
import numpy as np
import pytest
import torch

import vitx
from framework_models import hf_model
from helpers import fingerprint, images_for, tiny_sdpa, tiny_timm, tiny_torchvision

TARGET = 3


def attention_and_grads(model, x):
    store = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, a, o: store.append(o)))
    score = model(x)[:, TARGET].sum()
    grads = torch.autograd.grad(score, store)
    for h in handles:
        h.remove()
    return [a.detach() for a in store], list(grads)


def authors_recipe(model, x, steps, start_layer):
    """Their loop for batch 1: heads weighted by |A^T dA| normalised, R += cam R from block
    start_layer - 1, then W (mean over alpha of the last dA, clamped, head mean) * R, cls row."""
    cams, grads = attention_and_grads(model, x)
    heads, n = cams[0].shape[1], cams[0].shape[-1]
    r = torch.eye(n)[None]
    for nb in range(len(cams)):
        if nb < start_layer - 1:
            continue
        grad, cam = grads[nb].reshape(-1, n, n), cams[nb].reshape(-1, n, n)
        ih = torch.mean(torch.matmul(cam.transpose(-1, -2), grad).abs(), dim=(-1, -2))
        ih = ih / torch.sum(ih)
        cam = torch.matmul(ih, cam.reshape(heads, -1)).reshape(n, n)
        r = r + torch.matmul(cam, r)
    total = torch.zeros(1, heads, n, n)
    for alpha in np.linspace(0, 1, steps):
        total += attention_and_grads(model, x * alpha)[1][-1]
    w = (total / steps).clamp(min=0).mean(1).reshape(1, n, n)
    return (w * r)[:, 0]


@pytest.mark.parametrize("first_block", [0, 1])
def test_beyond_intuition_equals_the_authors_recipe(first_block):
    model, x = tiny_timm(), images_for((32, 32))
    explained = vitx.explain(model, x, "beyond_intuition", target=TARGET, steps=5, first_block=first_block).relevance
    expected = torch.cat([authors_recipe(tiny_timm(), x[i:i + 1], 5, first_block + 1) for i in range(3)])
    assert torch.allclose(explained, expected, atol=1e-6, rtol=1e-4)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("factory", [tiny_timm, tiny_sdpa, tiny_torchvision,
                                     lambda: hf_model("ViTForImageClassification", "ViTConfig", num_labels=5)],
                         ids=["timm", "hand_written", "torchvision", "hf_vit"])
def test_beyond_intuition_batch_equals_single_on_every_framework(factory):
    model, x = factory(), images_for((32, 32))
    full = vitx.explain(model, x, "beyond_intuition", target=TARGET, steps=3).relevance
    single = torch.cat([vitx.explain(model, x[i:i + 1], "beyond_intuition", target=TARGET, steps=3).relevance
                        for i in range(3)])
    assert torch.allclose(full, single, atol=1e-6, rtol=1e-4)
    assert torch.isfinite(full).all()


# token-wise variant ('Ours-T', the authors' `generate_ours_c`)

def transformed_values_from_weights(model, x):
    """Per block of a timm / torchvision / Hugging Face / hand-written ViT: (input z, W_o v)
    from the block's own weights: v = the value projection of norm1(z) (with its bias, heads
    concatenated), through the output projection's weight (without its bias), times a layer
    scale if the block has one."""
    records = []

    def value_and_output(block):
        if hasattr(block, "attn"):  # timm
            dim = block.attn.proj.in_features
            w, b = block.attn.qkv.weight[2 * dim:], block.attn.qkv.bias[2 * dim:]
            scale = block.ls1.gamma if hasattr(block.ls1, "gamma") else 1.0
            return block.norm1, w, b, block.attn.proj.weight, scale
        if hasattr(block, "qkv"):  # hand-written
            dim = block.proj.in_features
            return block.norm1, block.qkv.weight[2 * dim:], block.qkv.bias[2 * dim:], block.proj.weight, 1.0
        if hasattr(block, "self_attention"):  # torchvision
            mha, dim = block.self_attention, block.self_attention.embed_dim
            return block.ln_1, mha.in_proj_weight[2 * dim:], mha.in_proj_bias[2 * dim:], mha.out_proj.weight, 1.0
        attention = block.attention  # Hugging Face
        return (block.layernorm_before, attention.v_proj.weight, attention.v_proj.bias, attention.o_proj.weight,
                1.0)

    def grab(block, args):
        norm, w, b, w_o, scale = value_and_output(block)
        z = args[0]
        v = norm(z) @ w.T + b
        records.append((z, scale * (v @ w_o.T)))

    blocks = (model.blocks if hasattr(model, "blocks") else model.encoder.layers if hasattr(model, "encoder")
              else model.vit.layers)
    handles = [block.register_forward_pre_hook(grab) for block in blocks]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return records


def token_wise_recipe(model, x, steps, start_layer):
    """Their token-wise loop for one image: R += mean_h(A) diag(|W_o v_j| / |z_j|) R from block
    start_layer - 1, then W (as head-wise) * |R|, cls row; hand-written ViT, explicit attention."""
    for block in model.blocks:
        block.explicit = True
    values = transformed_values_from_weights(model, x)
    attentions = [block.last_attention.detach() for block in model.blocks]
    n = attentions[0].shape[-1]
    r = torch.eye(n)[None]
    for nb, ((z, vproj), cam) in enumerate(zip(values, attentions)):
        if nb < start_layer - 1:
            continue
        order = torch.linalg.norm(vproj, dim=-1) / torch.linalg.norm(z, dim=-1)
        r = r + cam.mean(1) @ torch.diag_embed(order) @ r
    total = 0
    for alpha in np.linspace(0, 1, steps):
        model((x * alpha).requires_grad_(True))[:, TARGET].sum().backward()
        total = total + model.blocks[-1].last_attention.grad
    w = (total / steps).clamp(min=0).mean(1)
    for block in model.blocks:
        block.explicit = False
    return (w * r.abs())[:, 0]


@pytest.mark.parametrize("first_block", [0, 2])
def test_token_wise_equals_the_authors_recipe_on_a_hand_written_vit(first_block):
    model, x = tiny_sdpa(), images_for((32, 32))
    explained = vitx.explain(model, x, "beyond_intuition", target=TARGET, steps=4, variant="token",
                             first_block=first_block).relevance
    expected = torch.cat([token_wise_recipe(tiny_sdpa(), x[i:i + 1], 4, first_block + 1) for i in range(3)])
    assert torch.allclose(explained, expected, atol=1e-6, rtol=1e-4)
    head_wise = vitx.explain(model, x, "beyond_intuition", target=TARGET, steps=4, first_block=first_block).relevance
    assert not torch.allclose(explained, head_wise, rtol=0.05)  # the variant changes the map
    assert explained[:, 1:].std(dim=1).min() > 1e-3 * explained[:, 1:].mean(dim=1).max()


@pytest.mark.parametrize("factory", [tiny_timm, tiny_torchvision, tiny_sdpa,
                                     lambda: tiny_timm(init_values=0.5),
                                     lambda: hf_model("ViTForImageClassification", "ViTConfig", num_labels=5)],
                         ids=["timm", "torchvision", "hand_written", "timm_layer_scale", "hf_vit"])
def test_value_transforms_equal_w_o_v_from_the_weights(factory):
    """The core's W_o v, read by function (identity vs zero attention), is the value through
    the output projection computed from each framework's own weights."""
    from vitx.capture.value_transforms import value_transforms
    from vitx.registry import find_adapter

    model, x = factory(), images_for((32, 32))
    before = fingerprint(model)
    inputs, transformed = value_transforms(model, find_adapter(model), x)
    assert fingerprint(model) == before  # hooks and flags restored
    expected = transformed_values_from_weights(model, x)
    assert len(inputs) == len(expected) > 1
    for z, y, (z_ref, y_ref) in zip(inputs, transformed, expected):
        assert torch.allclose(z, z_ref, atol=1e-5, rtol=1e-4)
        assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-4)


def torchvision_with_a_head():
    """torchvision initialises its classifier to zero: every gradient, and so W, would be 0."""
    model = tiny_torchvision()
    with torch.no_grad():
        model.heads.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("factory", [tiny_timm, tiny_sdpa, torchvision_with_a_head,
                                     lambda: hf_model("ViTForImageClassification", "ViTConfig", num_labels=5)],
                         ids=["timm", "hand_written", "torchvision", "hf_vit"])
def test_token_wise_batch_equals_single_on_every_framework(factory):
    model, x = factory(), images_for((32, 32))
    full = vitx.explain(model, x, "beyond_intuition", target=TARGET, steps=3, variant="token").relevance
    single = torch.cat([vitx.explain(model, x[i:i + 1], "beyond_intuition", target=TARGET, steps=3,
                                     variant="token").relevance for i in range(3)])
    assert torch.allclose(full, single, atol=1e-6, rtol=1e-4)
    assert torch.isfinite(full).all() and full.abs().sum() > 0
