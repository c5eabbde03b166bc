"""TokenTM against the formulation of its reference re-implementation (LibraGrad's decompv
`transform_TokenTM`), computed here with hooks and matrix products, without vitx."""
import pytest
import torch
import torch.nn.functional as F

import vitx
from framework_models import hf_model
from helpers import images_for, tiny_sdpa, tiny_timm, tiny_torchvision

TARGET = 2


def tokentm_reference(model, x):
    """C = U_L ... U_1 C_0 (full matrices), the cls row; timm blocks, explicit attention."""
    inputs, mids, outputs, attentions = [], [], [], []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles += [block.register_forward_pre_hook(lambda m, a: inputs.append(a[0])),
                    block.norm2.register_forward_pre_hook(lambda m, a: mids.append(a[0])),
                    block.register_forward_hook(lambda m, a, o: outputs.append(o)),
                    block.attn.attn_drop.register_forward_hook(lambda m, a, o: attentions.append(o))]
    score = model(x)[:, TARGET].sum()
    grads = torch.autograd.grad(score, attentions)
    for h in handles:
        h.remove()

    def weights(e, e2):
        necc = F.softmax(F.cosine_similarity(e, e2, dim=-1), dim=-1)
        return torch.diag_embed(e2.norm(dim=-1) / (e.norm(dim=-1) + 1e-8) * necc)

    eye = torch.eye(inputs[0].shape[1])[None]
    c = torch.diag_embed(inputs[0].norm(dim=-1))
    for e, e_mid, e_out, a, g in zip(inputs, mids, outputs, attentions, grads):
        t = torch.einsum("bij,bjk->bik", a.mean(1), weights(e, e_mid))
        u_attn = eye + t * g.clamp(min=0).mean(1)
        u = torch.einsum("bij,bjk->bik", eye + weights(e_mid, e_out), u_attn)
        c = torch.einsum("bij,bjk->bik", u, c)
    return c[:, 0].detach()


def test_tokentm_equals_the_reference_formulation():
    x = images_for((32, 32))
    explained = vitx.explain(tiny_timm(), x, "tokentm", target=TARGET).relevance
    assert torch.allclose(explained, tokentm_reference(tiny_timm(), x), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("factory", [tiny_timm, tiny_sdpa, tiny_torchvision,
                                     lambda: hf_model("ViTForImageClassification", "ViTConfig", num_labels=5)],
                         ids=["timm", "hand_written", "torchvision", "hf_vit"])
def test_tokentm_batch_equals_single_on_every_framework(factory):
    model, x = factory(), images_for((32, 32))
    full = vitx.explain(model, x, "tokentm", target=TARGET).relevance
    single = torch.cat([vitx.explain(model, x[i:i + 1], "tokentm", target=TARGET).relevance for i in range(3)])
    assert torch.allclose(full, single, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(full).all() and full.shape == (3, 17)
