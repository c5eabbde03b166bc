"""The library API: inputs of every kind, targets, tokens, overlays."""
import warnings
import numpy as np
import pytest
import torch
from PIL import Image

import vitx
from helpers import FAMILIES, images_for


def test_paths_pil_and_arrays_are_preprocessed_like_a_tensor(tmp_path):
    model = FAMILIES["deit"][0]()
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    Image.fromarray(pictures[0]).save(tmp_path / "a.png")
    from_files = vitx.explain(model, [tmp_path / "a.png", Image.fromarray(pictures[1])], method="rollout")
    from_arrays = vitx.explain(model, pictures, method="rollout")
    torch.testing.assert_close(from_files.maps, from_arrays.maps)
    assert from_files.sources == [str(tmp_path / "a.png"), None]
    # the same pixels through timm's own transform, as a tensor
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    config["input_size"] = (3, 32, 32)
    batch = torch.stack([create_transform(**config)(Image.fromarray(p)) for p in pictures])
    torch.testing.assert_close(vitx.explain(model, batch, method="rollout").maps, from_arrays.maps)
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in from_arrays.views)


def test_targets_int_list_and_predicted():
    model = FAMILIES["vit"][0]()
    x = images_for((32, 32), batch=3)
    predicted = model(x).argmax(-1)
    assert vitx.explain(model, x, method="grad_rollout").targets.tolist() == predicted.tolist()
    assert vitx.explain(model, x, method="grad_rollout", target=4).targets.tolist() == [4, 4, 4]
    exp = vitx.explain(model, x, method="grad_rollout", target=[0, 1, 2], batch_size=2)
    assert exp.targets.tolist() == [0, 1, 2]
    different = vitx.explain(model, x, method="grad_rollout", target=[1, 1, 1])
    assert not torch.allclose(exp.maps[0], different.maps[0])  # the target matters
    with pytest.raises(vitx.VitxError, match="2 targets for 3 images"):
        vitx.explain(model, x, method="grad_rollout", target=[0, 1])
    with pytest.raises(vitx.VitxError, match="out of range"):
        vitx.explain(model, x, method="grad_rollout", target=5)


def test_global_pool_model_is_explained_from_the_mean_token():
    model = FAMILIES["gap_no_cls"][0]()
    exp = vitx.explain(model, images_for((32, 32)), method="rollout")
    assert exp.token == "mean" and exp.layout.num_prefix == 0
    with pytest.raises(vitx.VitxError, match="no token 'cls'; valid tokens: mean"):
        vitx.explain(model, images_for((32, 32)), method="rollout", token="cls")


def test_register_model_defaults_to_cls_and_accepts_register_tokens():
    model = FAMILIES["registers"][0]()
    x = images_for((32, 32))
    assert vitx.explain(model, x).token == "cls"
    from_register = vitx.explain(model, x, token="reg2", method="raw_attention")
    with vitx.record_attention(model) as rec:
        model(x)
    torch.testing.assert_close(from_register.relevance, rec.attentions[-1].mean(1)[:, 3], atol=1e-6, rtol=1e-5)


def test_non_square_dynamic_input_gives_non_square_maps():
    model = FAMILIES["dynamic_nonsquare"][0]()
    for size in [(32, 48), (48, 24)]:
        exp = vitx.explain(model, images_for(size, batch=2), method="grad_rollout")
        assert exp.maps.shape == (2, size[0] // 8, size[1] // 8)


def test_overlay_and_predictions():
    model = FAMILIES["vit"][0]()
    model.class_names = ["a", "b", "c", "d", "e"]
    exp = vitx.explain(model, images_for((32, 32), batch=2))
    overlays = exp.overlay()
    assert len(overlays) == 2 and overlays[0].shape == (32, 32, 3) and overlays[0].dtype == np.uint8
    top = exp.predictions[0]
    assert len(top) == 5 and top[0].probability >= top[1].probability
    assert top[0].name == model.class_names[top[0].index]
    assert abs(sum(p.probability for p in top) - 1.0) < 1e-5
    assert exp.upsample().shape == (2, 32, 32)


def test_unknown_option_is_named():
    with pytest.raises(vitx.VitxError, match="has no option 'discard'.*discard_ratio"):
        vitx.explain(FAMILIES["vit"][0](), images_for((32, 32)), method="rollout", discard=0.5)


def test_explanation_save_never_writes_over_an_input(tmp_path):
    """Explanation.save names its files as the CLI does (vitx.files.output_names): an input that
    looks like an output (a_rollout.png beside a.png) is never overwritten."""
    import numpy as np
    from PIL import Image

    from helpers import tiny_timm

    for name in ("a.png", "a_rollout.png"):
        Image.fromarray((np.random.rand(32, 32, 3) * 255).astype(np.uint8)).save(tmp_path / name)
    before = (tmp_path / "a_rollout.png").read_bytes()
    exp = vitx.explain(tiny_timm("vit_tiny_patch16_224"), [str(tmp_path / "a.png"), str(tmp_path / "a_rollout.png")],
                       method="rollout")
    written = exp.save(tmp_path)
    assert (tmp_path / "a_rollout.png").read_bytes() == before
    assert len(set(written)) == 2 and all(p.exists() and p.name != "a_rollout.png" for p in written)


def test_a_gradient_map_of_an_output_that_ignores_the_input_warns():
    """A model whose score does not depend on the image gives every gradient method a constant
    map; it was drawn silently (normalised noise or a flat picture)."""
    from torch import nn

    from helpers import tiny_timm

    model = tiny_timm()
    model.head = nn.Sequential(nn.Linear(model.head.in_features, model.head.out_features))
    nn.init.zeros_(model.head[0].weight)
    x = images_for((32, 32), batch=2)
    for method in ("integrated_gradients", "gradcam", "input_x_gradient"):
        with pytest.warns(UserWarning, match=rf"image 0, 1: {method}'s map is the same on every patch"):
            vitx.explain(model, x, method=method, target=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vitx.explain(tiny_timm(), x, method="integrated_gradients", target=1, steps=4)  # a responsive model: silent


def test_import_vitx_loads_neither_matplotlib_nor_opencv():
    """A library user who computes maps does not pay for the drawing stack (#27)."""
    import subprocess
    import sys

    code = ("import sys, vitx; vitx.explain; print('matplotlib' in sys.modules, 'cv2' in sys.modules); "
            "vitx.figures; print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "True"]
