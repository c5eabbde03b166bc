"""Reliability, round 3 (issue 20): silent wrong results, crashes, plugin name clashes,
Hugging Face details. Each test failed before its fix."""
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import vitx
from helpers import run, tiny_timm
from vitx.errors import VitxError

ROOT = Path(__file__).parent.parent
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.png")
FASHION = sorted((ROOT / "examples" / "fashion_mnist").glob("*.png"))


# ---------------------------------------------------------------- 3: float arrays in 0-255

def test_float_array_in_0_255_is_read_as_the_uint8_image():
    model = tiny_timm()
    picture = np.asarray(Image.open(CHELSEA).convert("RGB"))
    expected = vitx.explain(model, picture, method="rollout")
    for array in (picture.astype(np.float32), picture.astype(np.float64), picture / 255.0):
        got = vitx.explain(model, array, method="rollout")
        torch.testing.assert_close(got.logits, expected.logits)
        torch.testing.assert_close(got.maps, expected.maps)


@pytest.mark.parametrize("bad", [-0.5, 300.0, np.nan])
def test_float_array_out_of_range_is_a_clear_error(bad):
    array = np.random.default_rng(0).random((32, 32, 3))
    array[3, 4, 1] = bad
    with pytest.raises(VitxError, match="image array"):
        vitx.explain(tiny_timm(), array, method="rollout")


# ---------------------------------------------------------------- plugins: aliases, bad calls, name clashes

def _loader(tag):
    def load(checkpoint=None, pretrained=None, **kwargs):
        model = tiny_timm()
        model.tag = tag
        return model
    return load


def _model_plugin(*calls):
    class Plugin:
        @vitx.hookimpl
        def vitx_register_models(self, register):
            for args, kwargs in calls:
                register(*args, **kwargs)
    return Plugin()


def test_register_with_aliases_as_the_hookspec_documents():
    """Item 6: register(name, loader, description=..., aliases=[...]) raised TypeError."""
    from vitx.registry import get_registry

    vitx.register_plugin(_model_plugin(((("tiny_aliased", _loader("a")),
                                         {"description": "a tiny one", "aliases": ["tiny_a", "ta"]}))),
                         name="alias-plugin")
    models = get_registry().models
    assert models["tiny_a"] is models["tiny_aliased"] is models["ta"]
    assert vitx.load_model("ta").tag == "a"


@pytest.mark.parametrize("bad", [((), {}), ((42,), {}), (("x", "not callable"), {}),
                                 (("x", _loader("x")), {"colour": "red"}), (("x", _loader("x")), {"aliases": 3})])
def test_a_bad_register_call_is_a_warning_not_a_crash(bad):
    from vitx.registry import get_registry

    with pytest.warns(UserWarning, match="bad-plugin"):
        vitx.register_plugin(_model_plugin(bad, (("fine_one", _loader("f")), {})), name="bad-plugin")
    assert "fine_one" in get_registry().models and "deit_tiny" in get_registry().models


def test_a_bad_register_call_in_an_installed_plugin_keeps_the_cli_working(tmp_path):
    site = tmp_path / "site"
    info = site / "bad_models-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vitx]\nbad_models = bad_models_plugin\n")
    (site / "bad_models_plugin.py").write_text(
        "import vitx\n\n@vitx.hookimpl\ndef vitx_register_models(register):\n"
        "    register('m', lambda **k: None, aliases=['mm'])\n    register('n', lambda **k: None, size=3)\n")
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "vitx", "models"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "bad-models" in done.stderr
    assert "  mm " in done.stdout and "fashion_vit" in done.stdout


def test_a_plugin_cannot_replace_a_builtin_model():
    """Item 9: `fashion_vit` / `deit_tiny` from a plugin replaced the built-in silently."""
    from vitx.registry import get_registry

    with pytest.warns(UserWarning, match="fashion_vit.*other-plugin.*vitx"):
        vitx.register_plugin(_model_plugin((("fashion_vit", _loader("x")), {}), (("deit_tiny", _loader("y")), {})),
                             name="other-plugin")
    models = get_registry().models
    assert models["fashion_vit"].plugin == "vitx" and models["deit_tiny"].plugin != "other-plugin"
    assert not hasattr(vitx.load_model("fashion_vit"), "tag")


def _explainer_plugin(label):
    from vitx.plugins.rollout import Rollout

    class Impostor(Rollout):
        name = "rollout"
        summary = f"not the real rollout ({label})"

    class Shared(Rollout):
        name = "shared_method"
        summary = label

    class Plugin:
        @vitx.hookimpl
        def vitx_register_explainers(self, register):
            register(Impostor)
            register(Shared)
    return Plugin()


@pytest.mark.parametrize("order", [("zeta", "alpha"), ("alpha", "zeta")])
def test_explainer_name_clashes_resolve_the_same_way_every_time(order):
    """Item 9: built-ins win; between two third-party plugins the first by name wins."""
    from vitx.registry import get_registry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for label in order:
            vitx.register_plugin(_explainer_plugin(label), name=label)
    explainers = get_registry().explainers
    assert explainers["rollout"].plugin == "vitx"
    assert explainers["shared_method"].plugin == "alpha"
    text = " ".join(str(w.message) for w in caught)
    assert "'rollout'" in text and "'shared_method'" in text and "zeta" in text


# ---------------------------------------------------------------- 8: timm checkpoints of every head layout

TIMM_HEADS = [
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=2)),  # head
    ("swin_tiny_patch4_window7_224", dict(img_size=56, window_size=7, embed_dim=24, depths=(1, 1), num_heads=(1, 2))),
    ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))),  # head.fc
    ("resnet18", dict(layers=(1, 1, 1, 1))),  # fc
    ("mobilenetv3_small_050", dict()),  # classifier
    ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=1, embed_dim=24, num_heads=2)),
]


@pytest.mark.parametrize("arch,small", TIMM_HEADS, ids=[a for a, _ in TIMM_HEADS])
def test_timm_checkpoint_brings_its_class_count_for_every_head_layout(arch, small, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained = timm.create_model(arch, pretrained=False, num_classes=2, **small).eval()
    path = tmp_path / "fine_tuned.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    loaded = vitx.load_model(arch, checkpoint=str(path), device="cpu", **small)
    x = torch.randn(1, 3, *trained.pretrained_cfg["input_size"][1:]) if "img_size" not in small else \
        torch.randn(1, 3, small["img_size"], small["img_size"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x))


# ---------------------------------------------------------------- Hugging Face: names, Swin refusal, crop

def test_hf_classifier_shows_its_class_names(tmp_path):
    """Item 11: config.id2label was ignored (the CLI printed '0 87.9 %')."""
    from framework_models import hf_model, write_images

    labels = {0: "cat", 1: "dog", 2: "bird"}
    named = hf_model("ViTForImageClassification", "ViTConfig", num_labels=3, id2label=labels,
                     label2id={v: k for k, v in labels.items()})
    exp = vitx.explain(named, torch.randn(2, 3, 32, 32), method="rollout")
    assert exp.class_names == ["cat", "dog", "bird"]
    assert exp.predictions[0][0].name == labels[exp.predictions[0][0].index]
    default = hf_model("ViTForImageClassification", "ViTConfig", num_labels=3)  # LABEL_0..: no names
    assert vitx.explain(default, torch.randn(1, 3, 32, 32), method="rollout").class_names is None
    named.save_pretrained(tmp_path / "named")
    image = write_images(tmp_path, count=1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run("explain", image, "--model", f"hf:{tmp_path / 'named'}", "--out", tmp_path / "out",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "explaining class" in result.output
    assert any(line.strip().endswith(tuple(labels.values())) for line in result.output.splitlines()
               if "%" in line), result.output


@pytest.mark.parametrize("config_name,model_name", [("SwinConfig", "SwinModel"),
                                                    ("SwinConfig", "SwinForImageClassification"),
                                                    ("Swinv2Config", "Swinv2Model")])
def test_hf_swin_refuses_attention_methods_before_any_forward_with_the_family_message(config_name, model_name):
    """Item 12: the refusal came after a full forward, with the recorder's 'batch 64' message.
    (Since #21 Swin's window attention is explained by the attention-flow methods; the attention
    methods that cannot read window layers are the ones refused, before any forward.)"""
    import transformers

    config = getattr(transformers, config_name)(image_size=32, patch_size=4, embed_dim=12, depths=[1, 1],
                                                num_heads=[2, 2], window_size=4)
    model = getattr(transformers, model_name)(config).eval()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    timm_swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=12,
                                  depths=(1, 1), num_heads=(1, 2))
    with pytest.raises(VitxError) as timm_info:
        vitx.explain(timm_swin, torch.randn(1, 3, 56, 56), method="legrad")
    for method in ("legrad", "transformer_attribution"):
        with pytest.raises(VitxError, match="windowed stages") as info:
            vitx.explain(model, torch.randn(1, 3, 32, 32), method=method)
        assert "batch" not in str(info.value) and "Swin" in str(info.value)
    assert not calls
    why = str(timm_info.value).split("this model: ")[1][:60]  # the same reason as for timm's Swin
    assert why in str(info.value)
    vitx.explain(model, torch.randn(1, 3, 32, 32), method="integrated_gradients", steps=2)  # others still run


def test_hf_centre_crop_matches_the_image_processor_on_odd_margins(tmp_path):
    """Item 13: vitx rounded an odd crop margin up, the processor rounds it down."""
    import transformers
    from framework_models import hf_model, write_images
    from vitx.attribution.api import model_inputs

    model = hf_model("ViTForImageClassification", "ViTConfig", num_labels=3)
    model.save_pretrained(tmp_path / "m")
    processor = transformers.BitImageProcessor(size={"shortest_edge": 35}, crop_size={"height": 32, "width": 32},
                                               do_center_crop=True, resample=2)  # margins 3 (and 3 + 10)
    processor.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = vitx.load_model(f"hf:{tmp_path / 'm'}", device="cpu")
    for size in ((35, 35), (40, 52), (52, 40)):
        image = write_images(tmp_path, count=1, size=size, seed=size[1])[0]
        _, pixels, _, _ = model_inputs(loaded, [str(image)])
        reference = loaded.vitx_processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
        assert pixels.shape == reference.shape
        assert (pixels - reference).abs().max() < 0.05, (size, (pixels - reference).abs().max())


# ---------------------------------------------------------------- 4: NaN / inf outputs for one image

def test_a_nan_output_is_named_and_never_explained_as_a_number():
    """Item 4: the warning did not name the image, its target became 0, top-5 showed p=nan,
    and rollout gave it an ordinary-looking map."""
    model = tiny_timm()
    x = torch.randn(3, 3, 32, 32)
    x[1] *= 1e38  # finite pixels, overflowing activations: this image's outputs are NaN / inf
    with torch.no_grad():
        assert not torch.isfinite(model(x)[1]).all() and torch.isfinite(model(x)[[0, 2]]).all()
    for method in ("rollout", "grad_rollout"):
        with pytest.warns(UserWarning, match=r"image 1\b") as caught:
            exp = vitx.explain(model, x, method=method)
        assert "image 0" not in " ".join(str(w.message) for w in caught)
        assert torch.isnan(exp.maps[1]).all() and torch.isnan(exp.relevance[1]).all()
        assert exp.targets.tolist()[1] == -1 and exp.predictions[1] == []
        alone = vitx.explain(model, x[[0, 2]], method=method)
        torch.testing.assert_close(exp.maps[[0, 2]], alone.maps)
        assert exp.targets[[0, 2]].tolist() == alone.targets.tolist()
        assert "NaN" in exp.title(1)[0]
        assert exp.panel(1).dtype == np.uint8  # drawn (blank map), with the title saying why


def test_a_nan_output_from_a_file_names_the_file(tmp_path):
    class Broken(nn.Module):
        """Returns NaN logits for a bright image (mean pixel above 0)."""

        def __init__(self):
            super().__init__()
            self.vit = tiny_timm()
            self.pretrained_cfg = {**self.vit.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 1.0}

        def forward(self, x):
            out = self.vit(x)
            return torch.where((x.flatten(1).mean(1) > 0)[:, None], torch.full_like(out, float("nan")), out)

    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("RGB", (32, 32), (0, 0, 0)).save(tmp_path / "black.png")
    with pytest.warns(UserWarning, match="white.png"):
        exp = vitx.explain(Broken(), [str(tmp_path / "black.png"), str(tmp_path / "white.png")],
                           method="integrated_gradients", steps=2)
    assert torch.isfinite(exp.maps[0]).all() and torch.isnan(exp.maps[1]).all()


def test_cli_names_an_image_with_nan_outputs_and_writes_nothing_for_it(tmp_path, monkeypatch):
    from vitx.attribution import api

    real = api.explain

    def nan_for_second(*args, **kwargs):
        result = real(*args, **kwargs)
        logits = result.logits.clone()
        logits[1] = float("nan")
        return type(result)(**{**result.__dict__, "logits": logits})

    monkeypatch.setattr(api, "explain", nan_for_second)
    first, second = (str(p) for p in FASHION[:2])
    result = run("explain", first, second, "--model", "fashion_vit", "--out", tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: could not explain 1 of 2 image(s): the model's output is NaN" in result.output
    assert "explaining class" in result.output and "image 1" not in result.output
    assert f"warning: {second}: not explained" in result.output
    assert sorted(os.listdir(tmp_path)) == [Path(first).stem + "_rollout.png"]


# ---------------------------------------------------------------- 7: one clear error instead of a traceback

class NeedsMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.vit = tiny_timm()

    def forward(self, x, mask):
        return self.vit(x)


def _meta_model():
    with torch.device("meta"):
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                                 embed_dim=24, num_heads=2, num_classes=5)


@pytest.mark.parametrize("case,fragments", [
    ("script", ["TorchScript", "before torch.jit.script"]),
    ("meta", ["meta device", "load"]),
    ("uint8", ["uint8", "float", "file paths"]),
    ("int64", ["int64", "float"]),
    ("empty", ["no images"]),
    ("extra_args", ["mask", "Wrap"]),
])
def test_library_misuse_is_one_clear_error(case, fragments):
    x = torch.randn(2, 3, 32, 32)
    model = tiny_timm()
    if case == "script":
        model = torch.jit.script(model)
    elif case == "meta":
        model = _meta_model()
    elif case == "uint8":
        x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    elif case == "int64":
        x = torch.randint(0, 256, (2, 3, 32, 32))
    elif case == "empty":
        x = x[:0]
    elif case == "extra_args":
        model = NeedsMask()
    with pytest.raises(VitxError) as info:
        vitx.explain(model, x, method="rollout")
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_one_channel_vit_given_files_uses_one_channel_statistics():
    """A 1-channel ViT whose data config holds 3-channel mean / std (timm's default for
    in_chans=1): files and PIL images are normalised per channel, like a tensor made by hand."""
    from timm.data import create_transform
    from vitx.registry import data_config

    model = tiny_timm(in_chans=1)
    config = data_config(model)
    assert config["input_size"][0] == 1 and len(config["mean"]) == 3
    gray = create_transform(input_size=config["input_size"], interpolation=config["interpolation"],
                            crop_pct=config["crop_pct"], mean=(float(np.mean(config["mean"])),),
                            std=(float(np.mean(config["std"])),))(Image.open(CHELSEA).convert("L"))
    expected = vitx.explain(model, gray[None], method="rollout")
    for given in (CHELSEA, Image.open(CHELSEA)):
        got = vitx.explain(model, given, method="rollout")
        torch.testing.assert_close(got.logits, expected.logits)
        torch.testing.assert_close(got.maps, expected.maps)
        assert got.views[0].shape[-1] == 3


# ---------------------------------------------------------------- 2: a ViT run twice per forward

@pytest.mark.parametrize("kind", ["timm_ensemble", "timm_flip", "sdpa_ensemble", "torchvision_flip"])
def test_a_model_that_runs_a_vit_twice_per_forward_is_refused_for_attention_methods(kind):
    """Item 2: twice the layers were recorded; rollout & co. returned maps equal to neither pass."""
    from helpers import twice_models

    model = twice_models()[kind]
    x = torch.randn(2, 3, 32, 32)
    for method in ("rollout", "grad_rollout", "chefer2021", "raw_attention"):
        with pytest.raises(VitxError, match="twice") as info:
            vitx.explain(model, x, method=method)
        assert "\n" not in str(info.value)
    exp = vitx.explain(model, x, method="integrated_gradients", steps=2)  # reads no attention: still runs
    assert torch.isfinite(exp.maps).all()
    vitx.explain(model.second if hasattr(model, "second") else model.model, x, method="rollout")  # one pass: fine


# ---------------------------------------------------------------- 14: `make test` installs what the suite needs

def _fake_apt(tmp_path, present):
    """A PATH with a recording apt-get (and chromium when `present`), and the system tools the script uses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    tools = ["id", "sh", "bash", "env", "cat"] + (["chromium"] if present else [])
    for tool in tools:
        real = shutil.which(tool) or "/bin/true"
        os.symlink(real, bin_dir / tool)
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return bin_dir, log


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="runs the script as root with a fake apt-get")
@pytest.mark.parametrize("present", [False, True])
def test_system_deps_script_installs_only_what_is_missing(tmp_path, present):
    import subprocess

    bin_dir, log = _fake_apt(tmp_path, present)
    dataset = tmp_path / "fashion-mnist"
    if present:
        dataset.mkdir()
    bash = shutil.which("bash")
    for _ in range(2):  # idempotent: the same outcome twice
        done = subprocess.run([bash, str(ROOT / "scripts" / "system-deps.sh")], capture_output=True, text=True,
                              env={"PATH": str(bin_dir), "VITX_FASHION_MNIST_DIR": str(dataset)})
        assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    if present:
        assert calls == []
    else:
        assert calls == ["install -y -q dataset-fashion-mnist chromium"] * 2


def test_make_test_runs_the_system_deps_script_and_ci_runs_make_test():
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "test", "VENV=/nonexistent-venv"], capture_output=True,
                         text=True)
    assert "scripts/system-deps.sh" in dry.stdout, dry.stdout + dry.stderr
    assert dry.stdout.index("system-deps.sh") < dry.stdout.index("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "apt-get" not in ci


def test_hf_resize_to_a_size_then_crop_matches_the_image_processor(tmp_path):
    """Item 13, the DeiT / BEiT layout: resize to an exact size (squash), then crop the centre."""
    import transformers
    from framework_models import hf_model, write_images
    from vitx.attribution.api import model_inputs

    model = hf_model("DeiTForImageClassification", "DeiTConfig", num_labels=3)
    model.save_pretrained(tmp_path / "m")
    transformers.DeiTImageProcessor(size={"height": 35, "width": 35}, crop_size={"height": 32, "width": 32},
                                    resample=2).save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = vitx.load_model(f"hf:{tmp_path / 'm'}", device="cpu")
    for size in ((40, 52), (52, 40)):
        image = write_images(tmp_path, count=1, size=size, seed=size[1])[0]
        _, pixels, _, _ = model_inputs(loaded, [str(image)])
        reference = loaded.vitx_processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
        assert (pixels - reference).abs().max() < 0.05, (size, (pixels - reference).abs().max())


def test_a_colour_convolution_in_front_of_the_vit_is_not_a_second_pass():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), tiny_timm())
    x = torch.randn(2, 3, 32, 32)
    exp = vitx.explain(model, x, method="rollout")
    assert exp.maps.shape == (2, 4, 4)
