"""Family-specific capture facts the matrix does not show: every CaiT layer counts, the padded
layouts are exact, refusals name the installed methods, hybrid data configs read image channels."""
import pytest
import torch

import vitx
from compat_rows import timm_model
from helpers import images_for
from vitx.capture.adapters.hierarchical import grid_for
from vitx.capture.adapters.timm_tokens import class_attention, late_prefix
from vitx.capture.support import check_method, methods_without_attention, refusal
from vitx.errors import VitxError
from vitx.registry import find_adapter, get_explainer


def test_cait_records_all_26_layers_over_cls_and_patches():
    model = timm_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=24, num_heads=2)()  # depth 24 + 2
    with torch.no_grad(), vitx.record_attention(model) as rec:
        model(images_for((32, 32), batch=1))
    assert rec.num_layers == 26 and rec.layout.num_tokens == 17
    for layer in rec.attentions[:24]:  # talking heads: the class token has not joined, keeps itself
        assert torch.equal(layer[..., 0, :], torch.eye(17)[0].expand_as(layer[..., 0, :]))
        assert torch.equal(layer[..., 1:, 0], torch.zeros_like(layer[..., 1:, 0]))
    for layer in rec.attentions[24:]:  # class attention: one softmax row, patches keep themselves
        torch.testing.assert_close(layer[..., 0, :].sum(-1), torch.ones(1, 2))
        assert torch.equal(layer[..., 1:, :], torch.eye(17)[1:].expand_as(layer[..., 1:, :]))


def test_padded_layouts_pass_the_gradient_of_the_applied_attention():
    """What the model uses is sliced from the recorded tensor, so d/d(recorded) is d/d(applied)."""
    torch.manual_seed(0)
    attention = torch.rand(2, 3, 4, 4, requires_grad=True)
    kept = []
    applied = late_prefix(1)(attention, lambda full: kept.append(full) or full)
    assert kept[0].shape == (2, 3, 5, 5) and torch.equal(applied, attention)
    weights = torch.rand(2, 3, 4, 4)
    (grad,) = torch.autograd.grad((applied * weights).sum(), kept[0])
    assert torch.equal(grad[..., 1:, 1:], weights) and grad[..., 0, :].abs().sum() == 0

    row = torch.rand(2, 3, 1, 5).softmax(-1)
    kept.clear()
    applied = class_attention(row, lambda full: kept.append(full) or full)
    assert torch.equal(applied, row) and torch.equal(kept[0][:, :, 1:], torch.eye(5)[1:].expand(2, 3, 4, 5))


def test_xcit_raw_attention_reads_its_class_attention_and_flow_is_refused():
    model = timm_model("xcit_nano_12_p16_224", img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2,
                       cls_attn_layers=2)()
    x = images_for((32, 32), batch=2)
    with torch.no_grad(), vitx.record_attention(model) as rec:
        model(x)
    assert rec.num_layers == 2  # the two class-attention layers; XCA (channel attention) is not token attention
    explanation = vitx.explain(model, x, method="raw_attention")
    torch.testing.assert_close(explanation.relevance, rec.attentions[-1].mean(1)[:, 0])
    with pytest.raises(VitxError, match=r"XCiT: method 'rollout' .* methods that apply: raw_attention"):
        vitx.explain(model, x, method="rollout")


def test_refusal_names_cause_and_installed_methods():
    model = timm_model("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1))()
    adapter = find_adapter(model)
    assert adapter.name == "hierarchical"
    with pytest.raises(VitxError) as info:
        check_method(adapter, model, get_explainer("chefer2021").cls())
    message = str(info.value)
    assert message.startswith("DaViT: method 'chefer2021' cannot explain this model: window attention alternates "
                              "with channel attention")
    for name in methods_without_attention(stages=True):  # libragrad aside: one token set (refused here)
        assert name in message.split("methods that apply:")[1]
    assert "libragrad" not in message.split("methods that apply:")[1]
    assert "rollout" in message.split("methods that apply:")[0]


def test_refusal_lists_non_attention_methods_and_never_attention_ones():
    message = refusal("Fam", "because", "rollout")
    applies = message.split("methods that apply:")[1]
    for name in ("raw_attention", "rollout", "grad_rollout", "chefer2021"):
        assert name not in applies
    assert "gradcam" in applies


@pytest.mark.parametrize("tokens,size,grid", [(12, (30, 40), (3, 4)), (12, (40, 30), (4, 3)), (49, (224, 224), (7, 7)),
                                              (7, (10, 10), (1, 7))])
def test_hierarchical_grid_follows_the_input_aspect(tokens, size, grid):
    assert grid_for(tokens, size) == grid


def test_hybrid_data_configs_read_image_channels():
    """The issue's crash: 'expects 2048-channel images' for a ResNet-stem ViT."""
    model = timm_model("vit_small_r26_s32_224", img_size=64, depth=1, embed_dim=24, num_heads=2, sharpen=False)()
    config = find_adapter(model).data_config(model)
    assert config["input_size"] == (3, 64, 64)
    explanation = vitx.explain(model, images_for((64, 64), batch=1), method="rollout")
    assert explanation.maps.shape == (1, 2, 2)


def test_sam_with_relative_positions_records_the_windows_it_applies():
    """The real SAM default (decomposed relative positions): recorded grid attention equals the
    model's own non-fused window attention, placed on the grid by the test's loop."""
    from compat_reference import full

    model = timm_model("samvit_base_patch16", img_size=(24, 40), patch_size=4, depth=2, embed_dim=24, num_heads=2,
                       window_size=3, global_attn_indexes=(1,))()
    x = images_for((24, 40), batch=1)
    own, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda mod, inp, out, block=block: own.append((block.window_size, out.detach()))))
    with torch.no_grad():
        expected_logits = model(x)
    for handle in handles:
        handle.remove()
    for block in model.blocks:
        block.attn.fused_attn = True
    with torch.no_grad(), vitx.record_attention(model) as rec:
        logits = model(x)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert rec.layout.grid == (6, 10) and rec.num_layers == 2
    for (size, windows), recorded in zip(own, rec.attentions):
        if size > 0:
            expected = full(("window", size, 6, 10), windows.reshape(-1, 2, 9, 9), 60)
        else:
            expected = windows.reshape(2, 60, 60)
        torch.testing.assert_close(recorded[0], expected, atol=1e-6, rtol=1e-5)


def test_every_refused_family_names_a_real_class():
    """A typo in the table would let a family fall through to generic capture unnoticed."""
    import importlib

    from vitx.capture.adapters.hierarchical import FAMILIES

    for path in FAMILIES:
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type), path


def test_convit_methods_reading_block_states_refuse_before_any_forward():
    """tokentm on ConViT raised a raw size mismatch (16 tokens in a GPSA block's states, 17 in its
    attention padded with the class token that joins later): the only crash of a 118-model sweep."""
    model = timm_model("convit_tiny", img_size=32, patch_size=8, depth=3, local_up_to_layer=2)()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    x = images_for((32, 32), batch=1)
    with pytest.raises(VitxError, match=r"^ConViT: method 'tokentm' cannot explain this model: .*class token") as info:
        vitx.explain(model, x, method="tokentm")
    assert "\n" not in str(info.value) and not calls
    assert torch.isfinite(vitx.explain(model, x, method="chefer2021").maps).all()
