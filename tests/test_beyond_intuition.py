"""Beyond Intuition (Chen et al., TMLR 2023) against its authors' head-wise recipe
(`generate_ours`), recomputed here for one image at a time with hooks, without vitx."""
import numpy as np
import pytest
import torch

import vitx
from framework_models import hf_model
from helpers import images_for, tiny_sdpa, tiny_timm, tiny_torchvision

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
