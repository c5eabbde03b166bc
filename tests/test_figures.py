"""Charts are matplotlib figures with real axes; explain panels carry a title strip."""
import glob
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import to_rgb

import vitx
from vitx import imaging
from vitx.inspect import figures

ROOT = Path(__file__).parent.parent


def has_colour(image, colour, tolerance=12, share=1e-4):
    rgb = np.array(to_rgb(colour)) * 255
    return (np.abs(image.astype(float) - rgb).max(axis=2) < tolerance).mean() > share


def test_evaluation_curves_draw_every_method_and_random_in_grey():
    results = {m: {"auc": {}, "curves": {"positive_accuracy": [0.9] * 9, "negative_accuracy": [0.5] * 9,
                                         "deletion": [0.3] * 11, "insertion": [0.6] * 11}}
               for m in ("a", "b", "random")}
    image = figures.evaluation_curves(results)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[1] > 3 * image.shape[0]
    assert has_colour(image, figures.PALETTE[0]) and has_colour(image, figures.PALETTE[1])
    assert not has_colour(image, figures.PALETTE[2])  # the third entry is random: grey, not a palette colour
    assert has_colour(image, "0.5")


def test_layer_scatter_and_training_curves_are_matplotlib_figures():
    plot = figures.layer_scatter({"a": np.ones((4, 2)), "b": np.zeros((4, 2))}, "t", "px", reference={"uniform": 0.5})
    assert plot.dtype == np.uint8 and has_colour(plot, figures.PALETTE[0]) and has_colour(plot, figures.PALETTE[1])
    curves = figures.training_curves([{"epoch": e, "train_loss": 1 / e, "test_accuracy": 0.1 * e} for e in (1, 2, 3)])
    assert has_colour(curves, figures.PALETTE[3]) and has_colour(curves, figures.PALETTE[0])


def test_panel_title_strip_sits_above_the_unchanged_panel():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    relevance = np.random.default_rng(1).random((4, 4))
    plain = imaging.panel(image, relevance)
    titled = imaging.panel(image, relevance, title=["line one", "line two"])
    strip = titled.shape[0] - plain.shape[0]
    assert strip > 30 and np.array_equal(titled[strip:], plain)
    assert (titled[:strip] < 100).any() and (titled[:strip] == 255).mean() > 0.7  # dark text on white


def test_explanation_panel_title_names_class_probability_method_and_token():
    model = vitx.load_model("fashion_vit")
    paths = sorted(glob.glob(str(ROOT / "examples" / "fashion_mnist" / "*.png")))[:2]
    exp = vitx.explain(model, paths, method="rollout")
    probability = float(torch.softmax(exp.logits[0].float(), -1)[int(exp.targets[0])])
    first, second = exp.title(0)
    assert exp.class_names[int(exp.targets[0])] in first and f"{100 * probability:.1f} %" in first
    assert "method rollout" in second and "token cls" in second and Path(paths[0]).name in second
    assert exp.panel(0).shape[0] > exp.panel(0, title=False).shape[0]
    other = vitx.explain(model, paths[:1], method="rollout", target=(int(exp.targets[0]) + 1) % 10)
    assert "predicted" in other.title(0)[0]


def test_a_callable_target_gets_a_title_without_class_or_probability():
    model = vitx.load_model("fashion_vit")
    paths = sorted(glob.glob(str(ROOT / "examples" / "fashion_mnist" / "*.png")))[:1]
    exp = vitx.explain(model, paths, method="grad_rollout", target=lambda output: output[:, 3])
    assert exp.targets is None and exp.title(0)[0].startswith("custom target")
    assert exp.panel(0).shape[0] > exp.panel(0, title=False).shape[0] and "custom target" in exp._repr_html_()
