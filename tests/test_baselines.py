"""One baseline definition for methods and metrics (vitx.baselines): each kind by hand, IG's
completeness against each kind (attributions sum to f(x) - f(baseline)), per-image tensors
across chunks, occlusion against captum with the same baseline, evaluate handing its
baseline to the methods."""
import pytest
import torch

import vitx
from vitx.baselines import BASELINES, baseline_images
from helpers import FAMILIES, images_for

CONFIG = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5)}


def test_named_baselines_by_hand():
    x = torch.randn(2, 3, 8, 8)
    mean = baseline_images(x, "mean", CONFIG)
    assert mean.shape == x.shape
    torch.testing.assert_close(mean[1, 2], torch.full((8, 8), x[1, 2].mean().item()))  # each image, each channel
    assert baseline_images(x, "dataset_mean", CONFIG).abs().max() == 0
    black = baseline_images(x, "black", CONFIG)
    torch.testing.assert_close(black[0, :, 0, 0], torch.tensor([-0.5 / 0.2, -0.4 / 0.25, -0.3 / 0.5]))
    noise = baseline_images(x, "noise", CONFIG)
    torch.testing.assert_close(noise[0], noise[1])  # the same for every image: batch == single
    torch.testing.assert_close(noise, baseline_images(x[:1], "noise", CONFIG).expand_as(x))
    pixel = noise * torch.tensor(CONFIG["std"]).view(1, 3, 1, 1) + torch.tensor(CONFIG["mean"]).view(1, 3, 1, 1)
    assert pixel.min() >= 0 and pixel.max() <= 1 and pixel.std() > 0.2  # uniform in [0, 1] intensity
    blur = baseline_images(x, "blur", CONFIG)
    assert blur.std() < 0.5 * x.std()


def test_tensor_and_callable_baselines_and_bad_ones():
    x = torch.randn(3, 3, 8, 8)
    one = torch.randn(3, 8, 8)
    torch.testing.assert_close(baseline_images(x, one, CONFIG), one.expand_as(x))
    per_image = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(baseline_images(x, per_image, CONFIG, rows=slice(2, 5)), per_image[2:5])
    torch.testing.assert_close(baseline_images(x, lambda p: p * 0.5, CONFIG), x * 0.5)
    with pytest.raises(vitx.VitxError, match="must return a tensor shaped like"):
        baseline_images(x, lambda p: p[:1], CONFIG)
    with pytest.raises(vitx.VitxError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        baseline_images(x, torch.randn(3, 4, 4), CONFIG)
    with pytest.raises(vitx.VitxError, match="option baseline"):
        vitx.explain(FAMILIES["custom_sdpa"][0](), x[:, :, :8, :8], method="integrated_gradients", baseline="grey")


@pytest.mark.parametrize("kind", BASELINES + ("tensor", "callable"))
def test_integrated_gradients_is_complete_for_every_baseline(kind):
    """sum of IG attributions = f(x) - f(baseline): the baseline the path starts from is the one
    the option names (an independent recomputation of the baseline image for each kind)."""
    model = FAMILIES["custom_sdpa"][0]()
    x = images_for((32, 32), batch=2)
    config = vitx.registry.data_config(model)
    spec = {"tensor": torch.randn(2, 3, 32, 32) * 0.3, "callable": lambda p: p.flip(-1) * 0.5}.get(kind, kind)
    start = baseline_images(x, spec, config)
    with torch.no_grad():
        delta = model(x)[:, 2] - model(start)[:, 2]
    exp = vitx.explain(model, x, method="integrated_gradients", target=2, steps=512, baseline=spec, batch_size=1,
                       steps_per_pass=128)  # the sharpened attention bends the path: many steps
    torch.testing.assert_close(exp.relevance.sum(1), delta, atol=2e-2 * delta.abs().max().item(), rtol=0)


def test_a_per_image_baseline_follows_its_image_across_chunks():
    model = FAMILIES["custom_sdpa"][0]()
    x = images_for((32, 32), batch=3)
    per_image = torch.randn(3, 3, 32, 32) * 0.5
    whole = vitx.explain(model, x, method="integrated_gradients", target=1, steps=8, baseline=per_image)
    chunks = vitx.explain(model, x, method="integrated_gradients", target=1, steps=8, baseline=per_image, batch_size=2)
    torch.testing.assert_close(chunks.relevance, whole.relevance, atol=1e-5, rtol=1e-4)
    single = vitx.explain(model, x[2:], method="integrated_gradients", target=1, steps=8, baseline=per_image[2:])
    torch.testing.assert_close(whole.relevance[2:], single.relevance, atol=1e-5, rtol=1e-4)


def test_occlusion_with_the_per_image_mean_equals_captum():
    from captum.attr import Occlusion

    model = FAMILIES["custom_sdpa"][0]()
    x = images_for((32, 32), batch=2)
    ours = vitx.explain(model, x, method="occlusion", target=[1, 3])  # default: each image's mean colour
    theirs = Occlusion(model).attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8),
                                        baselines=x.mean(dim=(2, 3), keepdim=True), target=[1, 3])
    expected = theirs.reshape(2, 3, 4, 8, 4, 8).sum(dim=(1, 3, 5)).flatten(1)
    torch.testing.assert_close(ours.relevance[:, 1:] * 3 * 64, expected, atol=1e-5, rtol=1e-4)


def test_evaluate_gives_its_baseline_to_the_methods_that_take_one(monkeypatch):
    from vitx.evaluate import metrics

    seen = {}
    real = vitx.attribution.api.explain

    def spy(model, images, method, **options):
        seen[method] = options.get("baseline")
        return real(model, images, method=method, **options)

    monkeypatch.setattr(vitx.attribution.api, "explain", spy)
    model = FAMILIES["deit"][0]()
    batches = [(images_for((32, 32), batch=2), torch.tensor([0, 1]))]
    metrics.evaluate_methods(model, batches, ["rollout", "occlusion", "integrated_gradients"], baseline="blur",
                             options={"integrated_gradients": {"steps": 2, "baseline": "black"}})
    assert seen == {"rollout": None, "occlusion": "blur", "integrated_gradients": "black"}


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "rise", "shapley"])
def test_a_bad_baseline_tensor_is_refused_before_any_forward(method):
    """A NaN baseline once gave NaN maps, and a (5, C, H, W) baseline for 3 images was cut to
    the first 3, both silently; a callable's NaN output is refused too. Shapes in the message
    are the ones the user gave."""
    model = FAMILIES["custom_sdpa"][0]()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    x = images_for((32, 32), batch=3)
    nan = torch.zeros(3, 32, 32)
    nan[0, 0, 0] = float("nan")
    cases = [(nan, r"baseline tensor \(3, 32, 32\) holds NaN"),
             (torch.zeros(5, 3, 32, 32), r"\(5, 3, 32, 32\) holds 5 images for 3"),
             (torch.zeros(3, 16, 16), r"got \(3, 16, 16\)")]
    for spec, message in cases:
        with pytest.raises(vitx.VitxError, match=message) as info:
            vitx.explain(model, x, method=method, baseline=spec)
        assert "\n" not in str(info.value)
    assert not calls
    with pytest.raises(vitx.VitxError, match="callable's output holds NaN"):
        vitx.explain(model, x, method=method, baseline=lambda p: p * float("nan"))
