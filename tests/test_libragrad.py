"""LibraGrad as a gradient mode and as the `libragrad` FullGrad method.

The oracle is an independent implementation of the authors' 'LX1' rules written the way
their timm fork does it (module forwards replaced: q and k detached in the attention,
LayerNorm with its variance detached, GELU as x * gate.detach()), not vitx's function rules.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import vitx
from helpers import SDPABlock, images_for, tiny_sdpa, tiny_timm, tiny_torchvision
from framework_models import hf_model
from vitx.attribution.libragrad import token_fullgrad
from vitx.errors import VitxError

TARGET = 1


def score_of(output):
    logits = output.logits if hasattr(output, "logits") else output
    return logits[:, TARGET]


class _FairLayerNorm(nn.Module):
    def __init__(self, ln):
        super().__init__()
        self.ln = ln

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        var = centred.pow(2).mean(-1, keepdim=True).detach()
        y = centred / (var + self.ln.eps).sqrt() * self.ln.weight + self.ln.bias
        return self.ln(x).detach() + (y - y.detach())  # the forward value untouched, y's gradient


class _FairGELU(nn.Module):
    def forward(self, x):
        gate = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return F.gelu(x).detach() + (x * gate.detach() - (x * gate).detach())


def _fair_attention(attn, store):
    def forward(x, attn_mask=None, is_causal=False):
        b, n, c = x.shape
        q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = q.detach(), k.detach()
        probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1).requires_grad_(True)
        store.append(probs)
        return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))
    return forward


class EinsumBlock(SDPABlock):
    """Attention written with einsum and a tensor softmax, as the Beyond-Intuition authors' ViT."""

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attention = (torch.einsum("bhid,bhjd->bhij", q, k) * (d // self.heads) ** -0.5).softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", attention, v)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def tiny_einsum():
    model = tiny_sdpa()
    for i, block in enumerate(model.blocks):
        einsum = EinsumBlock(24, 2)
        einsum.load_state_dict(block.state_dict())
        model.blocks[i] = einsum
    return model


def with_biases(model):
    """Random values for the parameters that start at zero (timm's biases, torchvision's head)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.1)
    return model


def libragrad_oracle(model, x):
    """(pixel gradient, attentions, their gradients) under the authors' rules, on a timm ViT."""
    store = []
    for block in model.blocks:
        block.attn.forward = _fair_attention(block.attn, store)
        block.norm1, block.norm2 = _FairLayerNorm(block.norm1), _FairLayerNorm(block.norm2)
        block.mlp.act = _FairGELU()
    model.norm = _FairLayerNorm(model.norm)
    x = x.clone().requires_grad_(True)
    score = score_of(model(x)).sum()
    grads = torch.autograd.grad(score, [x] + store)
    return grads[0], [a.detach() for a in store], list(grads[1:])


def test_input_x_gradient_under_libragrad_equals_the_authors_rules():
    x = images_for((32, 32))
    explained = vitx.explain(tiny_timm(), x, "input_x_gradient", target=TARGET, grad_mode="libragrad").relevance
    plain = vitx.explain(tiny_timm(), x, "input_x_gradient", target=TARGET).relevance
    grad, _, _ = libragrad_oracle(tiny_timm(), x)
    expected = (x * grad).sum(1).reshape(3, 4, 8, 4, 8).sum(dim=(2, 4)).flatten(1)
    assert torch.allclose(explained[:, 1:], expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(plain[:, 1:], expected, atol=1e-3)  # the mode changes the gradient


def test_chefer2021_under_libragrad_reads_the_balanced_attention_gradients():
    x = images_for((32, 32))
    explained = vitx.explain(tiny_timm(), x, "chefer2021", target=TARGET, grad_mode="libragrad").relevance
    _, attentions, grads = libragrad_oracle(tiny_timm(), x)
    row = torch.zeros(3, 1, 17)
    row[:, 0, 0] = 1
    for a, g in zip(reversed(attentions), reversed(grads)):
        row = row @ (torch.eye(17) + (g * a).clamp(min=0).mean(1))
    assert torch.allclose(explained, row[:, 0], atol=1e-5)


@pytest.mark.parametrize("factory", [tiny_timm, tiny_sdpa, tiny_einsum, tiny_torchvision,
                                     lambda: hf_model("ViTForImageClassification", "ViTConfig", num_labels=5)],
                         ids=["timm", "hand_written", "einsum_attention", "torchvision", "hf_vit"])
def test_fullgrad_under_libragrad_is_complete(factory):
    """Embedding and bias terms add up to the score under LibraGrad, not under plain gradients."""
    model = with_biases(factory())
    x = images_for((32, 32))
    result = token_fullgrad(model, x, score_of)
    total = result.relevance.sum(1) + result.unassigned
    assert torch.allclose(total, result.score, atol=1e-4, rtol=1e-4)
    assert result.biases.abs().sum() > 0 and result.unassigned.abs().sum() > 0
    plain = vitx.explain(model, x, "input_x_gradient", target=TARGET).relevance.sum(1)
    assert not torch.allclose(plain, result.score, atol=1e-2)


def test_libragrad_method_batch_equals_single_and_options():
    model, x = with_biases(tiny_timm()), images_for((32, 32))
    full = vitx.explain(model, x, "libragrad", target=TARGET).relevance
    single = torch.cat([vitx.explain(model, x[i:i + 1], "libragrad", target=TARGET).relevance for i in range(3)])
    assert torch.allclose(full, single, atol=1e-6)
    embeddings = vitx.explain(model, x, "libragrad", target=TARGET, biases="exclude").relevance
    result = token_fullgrad(model, x, score_of)
    assert torch.allclose(embeddings, result.embeddings, atol=1e-6)
    assert not torch.allclose(embeddings, full)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradcam", "grad_rollout", "chefer2021"])
def test_grad_mode_batch_equals_single_and_leaves_the_model_as_it_was(method):
    model, x = tiny_sdpa(), images_for((32, 32))
    before = [(n, p.requires_grad) for n, p in model.named_parameters()]
    options = dict(grad_mode="libragrad", **({"steps": 4} if method == "integrated_gradients" else {}))
    full = vitx.explain(model, x, method, target=TARGET, **options).relevance
    single = torch.cat([vitx.explain(model, x[i:i + 1], method, target=TARGET, **options).relevance
                        for i in range(3)])
    assert torch.allclose(full, single, atol=1e-5)
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == before
    plain = vitx.explain(model, x, method, target=TARGET, **{k: v for k, v in options.items() if k != "grad_mode"})
    assert not torch.allclose(plain.relevance, full, atol=1e-4)


def test_unknown_grad_mode_is_a_one_line_error():
    with pytest.raises(VitxError, match="grad_mode must be one of plain, libragrad"):
        vitx.explain(tiny_timm(), images_for((32, 32)), "input_x_gradient", grad_mode="fair")


@pytest.mark.parametrize("kind", ["timm_ensemble", "timm_flip", "torchvision_flip"])
def test_libragrad_refuses_a_model_that_runs_the_vit_twice(kind):
    """libragrad on an ensemble / flip TTA once returned one pass's token relevance, exactly
    r(x) / 2 for the flip, silently (its FullGrad reads the first pass's token embeddings);
    attnlrp, which returns to the pixels, stays right there."""
    from helpers import twice_models

    model = twice_models()[kind]
    x = images_for((32, 32), batch=2)
    with pytest.raises(VitxError, match="twice in one forward") as info:
        vitx.explain(model, x, method="libragrad")
    assert "\n" not in str(info.value)
