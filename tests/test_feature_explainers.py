"""The explainers beyond attention (integrated gradients, input x gradient, token Grad-CAM,
LeGrad, occlusion, RISE) against their peer libraries (test oracles only), hand-computed
cases and mathematical identities."""
import pytest
import timm
import torch

import vitx
from helpers import FAMILIES, PixelGame, fingerprint, images_for, tiny_timm, tiny_torchvision

PATCH = 8


def per_patch(pixel_relevance, patch=PATCH):
    """(B, C, H, W) -> (B, h*w): sum over channels and each patch's pixels (independent of vitx)."""
    b, c, h, w = pixel_relevance.shape
    return pixel_relevance.reshape(b, c, h // patch, patch, w // patch, patch).sum(dim=(1, 3, 5)).flatten(1)


def torchvision_with_head(seed=0):
    """torchvision zero-initialises its classifier (every gradient would be 0): give it weights."""
    model = tiny_torchvision(seed)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
        model.heads.head.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle", "riemann_left", "riemann_trapezoid"])
def test_integrated_gradients_equals_captum(rule):
    """Equal to captum for each rule. captum's trapezoid weighs its n points by 1/n (ends 1/2n),
    which sums to (n - 1)/n; vitx's by 1/(n - 1) (a true trapezoid rule, weights summing to 1)."""
    from captum.attr import IntegratedGradients

    model = tiny_timm("deit_tiny_patch16_224")
    x = images_for((32, 32), batch=2)
    targets = [1, 3]
    exp = vitx.explain(model, x, method="integrated_gradients", target=targets, steps=16, rule=rule, baseline="black")
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    black = ((0 - mean) / std).expand_as(x)
    expected = IntegratedGradients(model).attribute(x, baselines=black, target=targets, n_steps=16, method=rule)
    if rule == "riemann_trapezoid":
        expected = expected * 16 / 15
    torch.testing.assert_close(exp.relevance[:, 1:], per_patch(expected), atol=1e-5, rtol=1e-4)
    assert exp.relevance[:, 0].abs().max() == 0  # the cls token is no pixel


def test_integrated_gradients_completeness_error_shrinks_with_steps():
    model = FAMILIES["custom_sdpa"][0]()
    x = images_for((32, 32), batch=2)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(torch.zeros_like(x))[:, 2]  # the dataset mean is 0 after normalisation
    errors = []
    for steps in (8, 32, 256):  # the sharpened attention makes the path strongly non-linear
        exp = vitx.explain(model, x, method="integrated_gradients", target=2, steps=steps, rule="riemann_trapezoid",
                           baseline="dataset_mean")
        errors.append((exp.relevance.sum(1) - delta).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.002 * delta.abs().max().item()
    gauss = vitx.explain(model, x, method="integrated_gradients", target=2, steps=256,
                         baseline="dataset_mean")  # Gauss-Legendre
    torch.testing.assert_close(gauss.relevance.sum(1), delta, atol=5e-3, rtol=0)


def test_input_x_gradient_equals_captum():
    from captum.attr import InputXGradient

    model = FAMILIES["custom_sdpa"][0]()
    x = images_for((32, 32), batch=3)
    exp = vitx.explain(model, x, method="input_x_gradient", target=[0, 4, 2])
    expected = InputXGradient(model).attribute(x.clone(), target=[0, 4, 2])
    torch.testing.assert_close(exp.relevance[:, 1:], per_patch(expected), atol=1e-6, rtol=1e-4)


def _grad_cam_reference(model, layer, x, targets, reshape):
    """pytorch-grad-cam's GradCAM at patch resolution: ReLU(sum_c w_c A_c) before its upsampling."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    wanted = [ClassifierOutputTarget(t) for t in targets]
    cam(input_tensor=x, targets=wanted)
    activations = cam.activations_and_grads.activations[0].cpu().numpy()
    grads = cam.activations_and_grads.gradients[0].cpu().numpy()
    raw = cam.get_cam_image(x, layer, wanted, activations, grads)
    cam.activations_and_grads.release()
    return torch.from_numpy(raw).clamp(min=0)


def _vit_reshape(tensor, height=4, width=4):
    """The ViT recipe of pytorch-grad-cam's docs: drop the cls token, tokens -> (B, C, h, w)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.mark.parametrize("layer", [None, 0])
def test_gradcam_equals_pytorch_grad_cam_on_a_vit(layer):
    model = tiny_timm("vit_tiny_patch16_224")
    x = images_for((32, 32), batch=2)
    targets = [2, 0]
    options = {} if layer is None else {"layer": layer}
    exp = vitx.explain(model, x, method="gradcam", target=targets, **options)
    block = model.blocks[-2 if layer is None else layer]  # default: the last block's input
    expected = _grad_cam_reference(model, block, x, targets, _vit_reshape)
    assert expected.flatten(1).amax(1).min() > 0  # a map that can fail
    torch.testing.assert_close(exp.relevance[:, 1:], expected.flatten(1), atol=1e-5, rtol=1e-4)
    assert exp.relevance[:, 0].abs().max() == 0


def test_gradcam_on_the_last_block_of_a_cls_vit_is_zero_as_in_pytorch_grad_cam():
    """Why the default reads the last block's input: its output reaches the head through the
    cls token only, so the patch tokens' gradients (the Grad-CAM weights) are all zero."""
    model = tiny_timm("vit_tiny_patch16_224")
    x = images_for((32, 32), batch=2)
    exp = vitx.explain(model, x, method="gradcam", target=[2, 0], layer=-1)
    expected = _grad_cam_reference(model, model.blocks[-1], x, [2, 0], _vit_reshape)
    assert exp.relevance.abs().max() == 0 and expected.abs().max() == 0


def tiny_swin(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4, window_size=2,
                             embed_dim=24, depths=(1, 1, 2), num_heads=(1, 2, 4), num_classes=5).eval()


def test_gradcam_explains_a_hierarchical_swin_through_its_last_stage():
    model = tiny_swin()
    x = images_for((32, 32), batch=2)
    before = fingerprint(model)
    exp = vitx.explain(model, x, method="gradcam", target=[1, 4])
    assert fingerprint(model) == before
    assert exp.maps.shape == (2, 2, 2) and exp.layout.num_prefix == 0  # the last stage: 32 / 4 / 2 / 2
    expected = _grad_cam_reference(model, model.layers[-1], x, [1, 4], lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(exp.relevance, expected.flatten(1), atol=1e-5, rtol=1e-4)
    # attention flow runs through the windows to the first stage's grid (tests/test_windows.py);
    # LeGrad, which reads each block's own attention as a map, is refused
    assert vitx.explain(model, x, method="rollout").maps.shape == (2, 8, 8)
    with pytest.raises(vitx.VitxError, match="Swin: method 'legrad'"):
        vitx.explain(model, x, method="legrad")


def test_gradcam_on_torchvision_swin_with_structural_token_sites():
    from torchvision.models import swin_t

    torch.manual_seed(0)
    model = swin_t(num_classes=5).eval()
    x = images_for((64, 64), batch=2)
    exp = vitx.explain(model, x, method="gradcam", target=[0, 3])
    assert exp.maps.shape == (2, 2, 2)
    expected = _grad_cam_reference(model, model.features[-1], x, [0, 3], lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(exp.relevance, expected.flatten(1), atol=1e-5, rtol=1e-4)
    single = vitx.explain(model, x[1:], method="gradcam", target=3)
    torch.testing.assert_close(single.relevance[0], exp.relevance[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("layers", [0, 2])
def test_legrad_equals_torchcam(layers):
    from torchcam.methods import LeGrad

    model = torchvision_with_head()
    x = images_for((32, 32), batch=2)
    targets = [3, 1]
    exp = vitx.explain(model, x, method="legrad", target=targets, layers=layers)
    blocks = list(model.encoder.layers)[-layers:] if layers else list(model.encoder.layers)
    with LeGrad(model, blocks) as extractor:
        scores = model(x)
        expected = extractor(targets, scores, normalized=False)[0]
    assert expected.flatten(1).amax(1).min() > 0
    torch.testing.assert_close(exp.relevance[:, 1:], expected.flatten(1), atol=1e-6, rtol=1e-4)


def test_legrad_runs_on_timm_and_the_reference_vit():
    for model in (tiny_timm("deit_tiny_distilled_patch16_224"), FAMILIES["registers"][0]()):
        x = images_for((32, 32), batch=2)
        before = fingerprint(model)
        exp = vitx.explain(model, x, method="legrad", pool="model")
        assert fingerprint(model) == before
        assert exp.relevance[:, :exp.layout.num_prefix].abs().max() == 0 and exp.relevance.max() > 0
    from vitx.reference_models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    reference = ViT(ViTConfig(img_size=16, patch_size=4, dim=16, depth=2, heads=2, distill_token=True)).eval()
    exp = vitx.explain(reference, torch.randn(2, 1, 16, 16), method="legrad")
    assert exp.maps.shape == (2, 4, 4) and exp.relevance[:, :2].abs().max() == 0


class OnePatch(PixelGame):
    """Scores depend on patch (1, 2) of a 4x4 grid of 8 px patches only: class c = (c + 1) * its mean
    squared value."""

    def value(self, x):
        return (x[:, :, 8:16, 16:24] ** 2).mean(dim=(1, 2, 3))


def test_occlusion_hand_computed_and_equal_to_captum():
    from captum.attr import Occlusion

    model = OnePatch().eval()
    x = images_for((32, 32), batch=2)
    exp = vitx.explain(model, x, method="occlusion", target=[0, 2], baseline="dataset_mean")  # 0
    expected = torch.zeros(2, 16)
    expected[:, 4 * 1 + 2] = (x[:, :, 8:16, 16:24] ** 2).mean(dim=(1, 2, 3)) * torch.tensor([1.0, 3.0])
    torch.testing.assert_close(exp.relevance, expected)
    assert exp.layout.num_prefix == 0 and exp.maps.shape == (2, 4, 4)
    sdpa = FAMILIES["custom_sdpa"][0]()
    for window in (1, 2):
        ours = vitx.explain(sdpa, x, method="occlusion", target=[1, 3], window=window, baseline="dataset_mean")
        size = PATCH * window
        theirs = Occlusion(sdpa).attribute(x, sliding_window_shapes=(3, size, size), strides=(3, PATCH, PATCH),
                                           baselines=0.0, target=[1, 3])
        torch.testing.assert_close(ours.relevance[:, 1:] * 3 * PATCH * PATCH, per_patch(theirs), atol=1e-5, rtol=1e-4)


def test_rise_finds_the_one_patch_and_is_seeded():
    model = OnePatch().eval()
    x = torch.ones(2, 3, 32, 32)
    exp = vitx.explain(model, x, method="rise", target=0, masks=2000, probability=0.5,
                       baseline="dataset_mean")
    grid = exp.relevance.view(2, 4, 4)
    assert grid.flatten(1).argmax(1).tolist() == [6, 6]
    # E[f(x . M) M(u)] / p: f(x . M) = mean of M^2 over patch 6; far from it masks are independent
    # of that patch, so relevance ~ E[M^2] (about 0.4 for bilinearly smoothed Bernoulli(0.5) cells)
    far = grid[:, 3, 0]
    assert (grid[:, 1, 2] > 1.5 * far).all() and (far > 0.25).all() and (far < 0.6).all()
    again = vitx.explain(model, x, method="rise", target=0, masks=2000, probability=0.5,
                       baseline="dataset_mean")
    torch.testing.assert_close(again.relevance, exp.relevance)
    other = vitx.explain(model, x, method="rise", target=0, masks=2000, seed=1, baseline="dataset_mean")
    assert not torch.allclose(other.relevance, exp.relevance)


FAST = {"integrated_gradients": {"steps": 4}, "rise": {"masks": 64}, "shapley": {"permutations": 2}}


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "torchvision", "custom_sdpa", "dynamic_nonsquare"])
@pytest.mark.parametrize("method", ["integrated_gradients", "input_x_gradient", "gradcam", "legrad", "occlusion", "rise",
                                    "shapley"])
def test_new_methods_batch_equals_single_images(family, method):
    factory, _, size = FAMILIES[family]
    model = torchvision_with_head() if family == "torchvision" else factory()
    if method == "legrad" and family == "custom_sdpa":
        pytest.skip("the hand-written model has no head vitx could find (LeGrad needs it)")
    x = images_for(size, batch=3)
    options = FAST.get(method, {})
    before = fingerprint(model)
    batched = vitx.explain(model, x, method=method, **options)
    assert fingerprint(model) == before
    singles = [vitx.explain(model, x[i:i + 1], method=method, **options) for i in range(3)]
    torch.testing.assert_close(batched.relevance, torch.cat([s.relevance for s in singles]), atol=1e-5, rtol=1e-4)
    assert batched.maps.shape == (3, size[0] // 8, size[1] // 8)
    assert batched.relevance[:, 1:].abs().max() > 0


def test_legrad_without_a_head_is_a_clear_error():
    with pytest.raises(vitx.VitxError, match="final norm and head"):
        vitx.explain(FAMILIES["custom_sdpa"][0](), images_for((32, 32)), method="legrad")


def test_evaluate_reports_cost_per_method_without_changing_results():
    from vitx.evaluate.metrics import evaluate_methods

    model = FAMILIES["deit"][0]()
    batches = [(images_for((32, 32), batch=2), torch.tensor([0, 1]))]
    costs = {}
    results = evaluate_methods(model, batches, ["rollout", "occlusion"], costs=costs)
    assert set(costs) == {"rollout", "occlusion"}
    assert all(c["cost"] > 0 and c["seconds_per_image"] > 0 for c in costs.values())
    # both are over the same forward time: cost ratio = time ratio (which method is slower is a
    # benchmark's question: on a tiny model 16 occluded copies in one pass can beat a hooked pass)
    ratio = costs["occlusion"]["seconds_per_image"] / costs["rollout"]["seconds_per_image"]
    assert costs["occlusion"]["cost"] / costs["rollout"]["cost"] == pytest.approx(ratio)
    assert evaluate_methods(model, batches, ["rollout", "occlusion"]) == results


def test_evaluate_cli_defaults_to_every_method_within_the_budget(monkeypatch, tmp_path):
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from vitx.cli import main
    from vitx.evaluate import metrics

    (tmp_path / "images" / "0").mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "images" / "0" / "a.png")
    seen = {}

    def fake(model, batches, methods, **kwargs):
        seen["methods"] = list(methods)
        kwargs["costs"].update({m: {"seconds_per_image": 1.0, "cost": 2.0} for m in methods})
        return {m: {"auc": dict.fromkeys(["positive_accuracy_auc", "negative_accuracy_auc", "positive_probability_auc",
                                          "negative_probability_auc", "deletion_auc", "insertion_auc"], 0.5),
                    "curves": {}} for m in list(methods) + ["random"]}

    monkeypatch.setattr(metrics, "evaluate_methods", fake)
    monkeypatch.setattr("vitx.cli.evaluate.draw_curves", lambda results, path: None)
    result = CliRunner().invoke(main, ["evaluate", "--images", str(tmp_path / "images"), "-m", "fashion_vit", "--n", "1",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    # by default, the methods within 100 forward-equivalents per image: IG's 32 steps (97) in, RISE's 1000
    # masks and shapley's 16 orders of 49 patches out
    assert {"integrated_gradients", "gradcam", "legrad", "occlusion", "rollout"} <= set(seen["methods"])
    assert not {"rise", "shapley"} & set(seen["methods"])
    assert "left out by the budget of 100: " in result.output and "rise > 100" in result.output
    assert "time vs. forward" in result.output and "| rollout | 0.5000" in result.output and "2.0x" in result.output
