"""Hugging Face transformers models: every family in eager and sdpa, against HF's own attentions.

The reference for each model is an eager twin with the same weights (transformers computing
softmax itself) asked for `output_attentions=True`; its returned attentions carry the
gradients for chefer2021 (retain_grad). vitx runs the original model (eager or sdpa).
"""
import pytest
import torch
import torch.nn.functional as F

import vitx
from framework_models import (
    HF_FAMILIES, IMPLEMENTATIONS, chefer_reference, correlation, eager_twin, hf_attentions_and_grads, hf_model,
    query_vector, rollout_reference,
)
from helpers import fingerprint, images_for

pytest.importorskip("transformers")
CASES = [(family, impl) for family in HF_FAMILIES for impl in IMPLEMENTATIONS]


def is_classifier(output):
    return getattr(output, "logits", None) is not None


def score_fn(targets):
    """The score vitx's default target explains: the class logit, or for a headless model the
    embedding's length along its own (fixed) direction."""
    def score(output):
        if is_classifier(output):
            return output.logits.gather(1, torch.as_tensor(targets)[:, None])[:, 0]
        pooled = output.pooler_output
        return (pooled * F.normalize(pooled.detach(), dim=-1)).sum(-1)
    return score


def configs(model):
    found = {id(model.config): model.config}
    for m in model.modules():
        if getattr(m, "config", None) is not None:
            found[id(m.config)] = m.config
    return [(c, c._attn_implementation) for c in found.values()]


@pytest.mark.parametrize("family,impl", CASES)
def test_recorded_attention_equals_eager_twin_and_model_is_restored(family, impl):
    factory, prefix, size, default_token = HF_FAMILIES[family]
    model = factory(impl)
    x = images_for(size, batch=2)
    with torch.no_grad():
        expected = model(x)
        reference = eager_twin(model)(x, output_attentions=True)
    before, before_configs = fingerprint(model), configs(model)
    with vitx.record_attention(model) as rec:
        with torch.no_grad():
            output = model(x)
    assert rec.adapter.name == "transformers"
    assert [(c, c._attn_implementation) for c, _ in before_configs] == before_configs
    assert fingerprint(model) == before
    for key in ("logits", "pooler_output"):
        if getattr(expected, key, None) is not None:
            torch.testing.assert_close(getattr(output, key), getattr(expected, key), atol=1e-5, rtol=1e-5)
    assert len(rec.attentions) == len(reference.attentions) == 2
    for got, want in zip(rec.attentions, reference.attentions):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    layout = rec.layout
    assert list(layout.prefix) == prefix
    assert layout.default_token == default_token
    assert layout.grid == (size[0] // 8, size[1] // 8)


@pytest.mark.parametrize("family,impl", CASES)
def test_rollout_and_chefer_equal_eager_twin_reference(family, impl):
    factory, prefix, size, default_token = HF_FAMILIES[family]
    model = factory(impl)
    x = images_for(size, batch=2)
    rollout = vitx.explain(model, x, method="rollout", discard_ratio=0.0)
    with torch.no_grad():
        is_cls = is_classifier(model(x))
    targets = [1, 3] if is_cls else None
    chefer = vitx.explain(model, x, method="chefer2021", target=targets)
    output, attentions, grads = hf_attentions_and_grads(model, x, score_fn(targets))
    n = attentions[0].shape[-1]
    query = query_vector(n, len(prefix), 0 if default_token == "cls" else "mean")
    for got, want in ((rollout.relevance, rollout_reference(attentions, query)),
                      (chefer.relevance, chefer_reference(attentions, grads, query))):
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
        # what attention moved away from the explained token(s): the part a wrong capture would change
        moved_got, moved_want = got.double() - query.double(), want - query.double()
        assert moved_want.abs().amax() > 0 and not torch.allclose(moved_want[0], moved_want[1])
        assert correlation(moved_got, moved_want) > 0.999
    if is_cls:
        assert chefer.targets.tolist() == [1, 3]
    else:
        assert chefer.targets is None and "norm of the image embedding" in chefer.target_description


def test_dist_token_is_explained_from_its_name():
    model = HF_FAMILIES["hf_deit_teacher"][0]("sdpa")
    x = images_for((32, 32), batch=1)
    dist = vitx.explain(model, x, method="chefer2021", token="dist", target=2)
    _, attentions, grads = hf_attentions_and_grads(model, x, score_fn([2]))
    expected = chefer_reference(attentions, grads, query_vector(18, 2, 1))
    torch.testing.assert_close(dist.relevance, expected.float(), atol=1e-5, rtol=1e-4)


def test_headless_model_refuses_a_class_index():
    model = HF_FAMILIES["hf_dinov2"][0]("sdpa")
    with pytest.raises(vitx.VitxError, match="embedding dimension"):
        vitx.explain(model, images_for((32, 32), batch=1), method="grad_rollout", target=3)


def test_swin_explains_over_its_first_stage_and_restores_the_config():
    """Swin's window layers are recorded (tests/test_windows.py checks the maps against a dense
    reference); methods that cannot read window layers refuse in one line, before any forward."""
    import transformers

    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=12, depths=[1, 1], num_heads=[2, 2],
                                     window_size=4)
    model = transformers.SwinModel(config).eval()
    explanation = vitx.explain(model, images_for((32, 32), batch=1), method="rollout")
    assert explanation.maps.shape == (1, 8, 8)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(vitx.VitxError, match="Swin .*window attention") as info:
        vitx.explain(model, images_for((32, 32), batch=1), method="transformer_attribution")
    assert "\n" not in str(info.value)


def test_siglip_pooling_head_does_not_claim_the_model():
    model = HF_FAMILIES["hf_siglip_vision"][0]("sdpa")
    assert any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    with vitx.record_attention(model) as rec:
        model(images_for((32, 32), batch=1))
    assert rec.adapter.name == "transformers" and len(rec.attentions) == 2


def test_regression_output_is_explained_as_the_value():
    model = hf_model("ViTForImageClassification", "ViTConfig", num_labels=1)
    x = images_for((32, 32), batch=2)
    exp = vitx.explain(model, x, method="chefer2021")
    _, attentions, grads = hf_attentions_and_grads(model, x, lambda out: out.logits[:, 0])
    torch.testing.assert_close(exp.relevance, chefer_reference(attentions, grads, query_vector(17, 1, 0)).float(),
                               atol=1e-5, rtol=1e-4)
    assert exp.targets is None and exp.target_description == "the regression output"
    torch.testing.assert_close(exp.logits[:, 0], model(x).logits[:, 0].detach())


@pytest.mark.parametrize("row", __import__("framework_models").MATRIX_ROWS, ids=lambda r: r[0])
def test_matrix_row_explains_with_every_attention_method(row):
    """Every row of the compatibility matrix: layout as declared, all four methods give finite maps."""
    name, factory, prefix, size, token = row
    model = factory()
    x = images_for(size, batch=2)
    for method in ("raw_attention", "rollout", "grad_rollout", "chefer2021"):
        exp = vitx.explain(model, x, method=method)
        assert list(exp.layout.prefix) == prefix and exp.token == token
        assert exp.maps.shape == (2, size[0] // 8, size[1] // 8) and torch.isfinite(exp.maps).all()


def test_an_attention_probe_head_is_named_in_the_result():
    """SigLIP pools with a MAP head (a probe attending to the patches) that attention flow does
    not chain: the maps start from the mean token, and the result says so (it once said nothing).
    A head that reads the class token has no note; neither does a token the user chose."""
    import timm

    siglip = HF_FAMILIES["hf_siglip_vision"][0]("sdpa")
    x = images_for((32, 32), batch=1)
    with pytest.warns(UserWarning, match="attention probe"):
        exp = vitx.explain(siglip, x, method="rollout")
    assert exp.token == "mean" and "attention probe" in exp.token_note
    assert vitx.explain(siglip, x, method="rollout", token="mean").token_note is None
    assert vitx.explain(siglip, x, method="integrated_gradients", steps=2).token_note is None  # no flow
    timm_map = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, global_pool="map",
                                 class_token=False, num_classes=3).eval()
    with pytest.warns(UserWarning, match="attention probe"):
        assert "attention probe" in vitx.explain(timm_map, x, method="rollout").token_note
    plain = HF_FAMILIES["hf_vit"][0]("sdpa")
    assert vitx.explain(plain, x, method="rollout").token_note is None
