"""Attention capture: every family, compared with attention computed from the weights."""
import pytest
import torch
from torch import nn

import vitx
from helpers import FAMILIES, fingerprint, images_for, reference_attention, reference_attention_and_grads


@pytest.mark.parametrize("family", list(FAMILIES))
def test_recorded_attention_equals_weights_and_output_is_unchanged(family):
    factory, prefix, size = FAMILIES[family]
    model = factory()
    x = images_for(size)
    expected_logits = model(x)
    with vitx.record_attention(model) as rec:
        logits = model(x)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    reference = reference_attention(model, x)
    assert len(rec.attentions) == len(reference) == 3
    for recorded, expected in zip(rec.attentions, reference):
        torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(recorded.sum(-1), torch.ones(recorded.shape[:-1]), atol=1e-5, rtol=0)
    layout = rec.layout
    assert list(layout.prefix) == prefix
    assert layout.grid == (size[0] // 8, size[1] // 8)
    assert layout.num_tokens == rec.attentions[0].shape[-1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_is_restored_even_when_forward_raises(family):
    factory, _, size = FAMILIES[family]
    model = factory()
    model.train()
    before = fingerprint(model)
    with vitx.record_attention(model):
        model(images_for(size))
    vitx.explain(model, images_for(size), method="grad_rollout")
    assert fingerprint(model) == before

    def explode(module, args, output):
        raise RuntimeError("boom inside the forward")

    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    handle = last_linear.register_forward_hook(explode)
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="boom"):
        with vitx.record_attention(model):
            model(images_for(size))
    assert fingerprint(model) == before
    for method in ("rollout", "grad_rollout"):
        with pytest.raises(RuntimeError, match="boom"):
            vitx.explain(model, images_for(size), method=method)
        assert fingerprint(model) == before
    handle.remove()


def test_timm_fused_attention_stays_on_outside_the_context():
    model = FAMILIES["deit"][0]()
    assert all(block.attn.fused_attn for block in model.blocks)
    with vitx.record_attention(model):
        assert not any(block.attn.fused_attn for block in model.blocks)
    assert all(block.attn.fused_attn for block in model.blocks)


@pytest.mark.parametrize("family", ["deit", "deit_distilled", "custom_sdpa"])
def test_gradients_are_paired_with_their_layer(family):
    factory, _, size = FAMILIES[family]
    model = factory()
    x = images_for(size, batch=1)
    ref_attn, ref_grads = reference_attention_and_grads(model, x, target=2)
    with vitx.record_attention(model) as rec:
        logits = model(x.requires_grad_(True))
        grads = rec.gradients(logits[0, 2])
    assert all(p.grad is None for p in model.parameters())
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    # the layers differ, so a mix-up of the order would not pass
    assert not torch.allclose(ref_grads[0], ref_grads[-1], atol=1e-6)


def test_model_without_attention_gets_a_clear_error():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with pytest.raises(vitx.VitxError, match="adapter") as info:
        vitx.explain(cnn, torch.randn(1, 3, 16, 16))
    assert "MultiheadAttention" in str(info.value) and "\n" not in str(info.value)


def test_only_the_last_forward_is_kept():
    model = FAMILIES["vit"][0]()
    with vitx.record_attention(model) as rec:
        model(images_for((32, 32), batch=2))
        model(images_for((32, 32), batch=1))
    assert len(rec.attentions) == 3 and rec.attentions[0].shape[0] == 1


def test_torchvision_need_weights_still_works_inside_the_context():
    model = FAMILIES["torchvision"][0]()
    mha = model.encoder.layers[0].self_attention
    x = torch.randn(2, 5, 24)
    out_plain, w_plain = mha(x, x, x, need_weights=True, average_attn_weights=False)
    with vitx.record_attention(model):
        out, w = mha(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, out_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_plain, atol=1e-5, rtol=1e-5)
