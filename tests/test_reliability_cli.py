"""CLI reliability (issue 11): explain, evaluate and inspect never silently wrong, never
overwrite what the user had, one `Error:` line for every bad input, long runs that keep
what finished. Mostly the bundled fashion_vit (28 px, offline)."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from vitx.cli import main

ROOT = Path(__file__).parent.parent
FASHION = ROOT / "examples" / "fashion_mnist"
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.png")
# the true Fashion-MNIST class of each example image (its file name says it)
TRUE_CLASS = {"test00000_ankle_boot": 9, "test00001_pullover": 2, "test00002_trouser": 1, "test00009_sneaker": 7,
              "test00018_bag": 8, "test00019_tshirt_top": 0}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines()
             if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def fashion(name):
    return str(FASHION / f"{name}.png")


@pytest.fixture(scope="module")
def deit_checkpoint(tmp_path_factory):
    """A full-size deit_tiny state dict (1000 classes), random weights: vit_explain.py's model family."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# ---------------------------------------------------------------- explain

def test_the_verbatim_vit_explain_gradient_rollout_line(deit_checkpoint, tmp_path):
    line = f"--image_path {CHELSEA} --head_fusion max --discard_ratio 0.9 --category_index 243".split()
    result = run("explain", *line, "--model", "deit_tiny", "--checkpoint", deit_checkpoint, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.count("note: grad_rollout fuses heads by the gradient-weighted mean") == 1
    assert "explaining class 243 (bull mastiff) with grad_rollout" in result.output
    assert (tmp_path / "chelsea_grad_rollout.png").exists()


def test_head_fusion_is_still_an_error_where_it_is_not_legacy(tmp_path):
    one_error(run("explain", fashion("test00000_ankle_boot"), "--method", "grad_rollout", "-o", "head_fusion=max",
                  "--out", tmp_path), "has no option 'head_fusion'")


def test_outputs_never_overwrite_inputs_and_are_unique(tmp_path):
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    a1, a2 = tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png"
    shutil.copy(fashion("test00000_ankle_boot"), a1)
    shutil.copy(fashion("test00002_trouser"), a2)
    mine = tmp_path / "d1" / "a_rollout.png"  # the user's own file, named like vitx's output for a.png
    shutil.copy(fashion("test00009_sneaker"), mine)
    before = mine.read_bytes()
    result = run("explain", a1, mine, a2, "--out", tmp_path / "d1", "--save-maps")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes() == before
    written = sorted(p.name for p in (tmp_path / "d1").glob("*_rollout*.png") if p != mine)
    assert len(written) == 3, written  # a.png, a_rollout.png and the other a.png: three distinct outputs
    a1_output = Image.open(tmp_path / "d1" / written[0])
    assert a1_output.size[0] > 2 * a1_output.size[1] > 2 * 28  # a panel (3 views + title strip), not the input


def test_unit_output_names():
    from vitx.cli.files import output_names

    out = Path("/x/out")
    names = output_names(["/x/d1/a.png", "/x/d2/a.png", "/x/a.jpg", "/x/a-1.png", "/x/out/a-3_rollout.png"], "rollout", out)
    assert len(set(names)) == 5 and names[:3] == ["a_rollout", "a-1_rollout", "a-2_rollout"]
    assert names[3] == "a-1-1_rollout" or names[3] not in names[:3]
    assert "a-3_rollout" not in names  # would be the input /x/out/a-3_rollout.png


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    images = [fashion("test00000_ankle_boot"), broken, fashion("test00002_trouser")]
    result = run("explain", *images, "--out", tmp_path / "out", "--batch-size", "1")
    assert result.exit_code == 1
    assert f"warning: skipped {broken}" in result.output
    assert "Error: could not read 1 of 3 image(s)" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test00000_ankle_boot_rollout.png",
                                                                     "test00002_trouser_rollout.png"]


def test_ctrl_c_keeps_the_finished_results(tmp_path, monkeypatch):
    from vitx.attribution import api

    real, calls = api.explain, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "explain", interrupted)
    images = [fashion(name) for name in sorted(TRUE_CLASS)[:3]]
    result = run("explain", *images, "--out", tmp_path, "--batch-size", "1")
    assert result.exit_code == 130
    assert [p.name for p in tmp_path.iterdir()] == [Path(images[0]).stem + "_rollout.png"]


def test_a_progress_bar_counts_every_image(tmp_path, monkeypatch):
    import tqdm as tqdm_module

    bars = []

    class Spy(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm_module, "tqdm", Spy)
    images = [fashion(name) for name in sorted(TRUE_CLASS)]
    assert run("explain", *images, "--out", tmp_path, "--batch-size", "4").exit_code == 0
    assert len(bars) == 1 and bars[0].total == 6 and bars[0].n == 6 and bars[0].fp.name == "<stderr>"


@pytest.mark.parametrize("args,fragments", [
    (["--category-index", "99999999999999999999"], ["category index 99999999999999999999 out of range"]),
    (["--discard-ratio", "nan"], ["--discard-ratio must be a finite number"]),
    (["--device", "meta"], ["cannot run on device 'meta'"]),
    (["--device", "mps"], ["MPS"]),
    (["--discard-ratio", "0.1", "-o", "discard_ratio=0.5"], ["--discard-ratio 0.1 and -o discard_ratio=0.5"]),
    (["--colormap", "rainbow"], ["unknown colormap 'rainbow'"]),
    (["--batch-size", "0"], ["--batch-size must be in 1..4096"]),
])
def test_bad_explain_arguments_are_one_line_before_the_model_loads(args, fragments, tmp_path, monkeypatch):
    import vitx.models

    if "mps" in args and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")

    def never(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(vitx.models, "load_model", never)
    one_error(run("explain", fashion("test00000_ankle_boot"), "--out", tmp_path, *args), *fragments)


def test_nan_option_is_rejected_by_the_library_too():
    import vitx

    with pytest.raises(vitx.VitxError, match="discard_ratio must be a number"):
        vitx.explain("fashion_vit", fashion("test00000_ankle_boot"), method="rollout", discard_ratio=float("nan"))


def test_out_is_a_file_or_unwritable(tmp_path):
    (tmp_path / "file").write_text("mine")
    one_error(run("explain", fashion("test00000_ankle_boot"), "--out", tmp_path / "file"), "--out", "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    one_error(run("explain", fashion("test00000_ankle_boot"), "--out", "/sys/vitx-cannot-write-here"),
              "cannot create --out")


def test_checkpoint_without_model_asks_for_the_model(deit_checkpoint, tmp_path):
    one_error(run("explain", CHELSEA, "--checkpoint", deit_checkpoint, "--out", tmp_path),
              "needs --model NAME")


# ---------------------------------------------------------------- evaluate

def _class_tree(root, layout):
    """layout: {folder (may be nested 'a/b'): [example names]} -> copies of the examples."""
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(fashion(name), root / folder / f"{name}.png")
    return root


LAYOUT = {"9": ["test00000_ankle_boot"], "Pullover": ["test00001_pullover"], "trouser/nested": ["test00002_trouser"],
          "7": ["test00009_sneaker"], "BAG": ["test00018_bag"], "T-shirt_top": ["test00019_tshirt_top"]}


def test_class_folders_are_labelled_by_their_names(tmp_path):
    import vitx
    from vitx.evaluate.folders import LabelledFolder, model_classes
    from vitx.inputs import image_transform
    from vitx.registry import find_adapter

    root = _class_tree(tmp_path / "images", LAYOUT)
    model = vitx.load_model("fashion_vit")
    config = find_adapter(model).data_config(model)
    count, names = model_classes(model, config)
    assert count == 10 and names[9] == "Ankle boot"
    data = LabelledFolder(root, lambda image: image, names, count)
    assert sorted((Path(p).stem, label) for p, label in data.samples) == sorted(TRUE_CLASS.items())


def test_evaluate_on_class_folders_scores_correct_predictions(tmp_path):
    root = _class_tree(tmp_path / "images", LAYOUT)
    result = run("evaluate", "--images", root, "--methods", "rollout", "--n", "6", "--batch-size", "3",
                 "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["n"] == 6
    # removing the 10 % least relevant patches keeps the (mostly right) predictions right
    assert results["results"]["rollout"]["curves"]["negative_accuracy"][0] >= 4 / 6


def test_a_folder_matching_no_class_is_named(tmp_path):
    root = _class_tree(tmp_path / "images", {"Sneakers": ["test00009_sneaker"], "Bag": ["test00018_bag"]})
    one_error(run("evaluate", "--images", root, "--methods", "rollout", "--out", tmp_path / "e"),
              "class folder 'Sneakers' matches no class", "Sneaker")
    root = _class_tree(tmp_path / "numbers", {"12": ["test00009_sneaker"]})
    one_error(run("evaluate", "--images", root, "--methods", "rollout", "--out", tmp_path / "e"),
              "class folder '12'", "10 classes")


def test_a_corrupt_image_in_a_class_folder_is_named(tmp_path):
    root = _class_tree(tmp_path / "images", {"Bag": ["test00018_bag"], "1": ["test00002_trouser"]})
    (root / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run("evaluate", "--images", root, "--methods", "rollout", "--out", tmp_path / "e")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "broken.png" in result.output.strip().splitlines()[-1]
    assert json.loads((tmp_path / "e" / "results.json").read_text())["n"] == 2


def test_class_folder_images_go_through_vitx_image_reader(tmp_path):
    """A 16-bit image keeps its contrast (PIL's own convert would clip it to white)."""
    from vitx.evaluate.folders import LabelledFolder

    (tmp_path / "images" / "3").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 28).astype(np.uint16), (28, 1))
    Image.fromarray(ramp).save(tmp_path / "images" / "3" / "deep.png")
    data = LabelledFolder(tmp_path / "images", lambda image: np.asarray(image), None, 10)
    pixels, label = data[0]
    assert label == 3 and pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255 and 100 < pixels[0, 14, 0] < 160


@pytest.mark.parametrize("args,fragment", [
    (["--n", "0"], "--limit must be at least 1"), (["--limit", "-5"], "--limit must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be in 1..4096"),
])
def test_bad_evaluate_counts(args, fragment, tmp_path):
    root = _class_tree(tmp_path / "images", {"Bag": ["test00018_bag"]})
    one_error(run("evaluate", "--images", root, "--methods", "rollout", "--out", tmp_path / "e", *args), fragment)
