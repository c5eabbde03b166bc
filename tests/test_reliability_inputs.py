"""Library and checkpoint reliability (issue 11): half-precision models, wrong tensor sizes,
NaN, wrapper prefixes, folders as models, hand-edited model.json, 16-bit images, and
`vitx inspect`'s arguments."""
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitx
from helpers import one_error, run, tiny_timm

ROOT = Path(__file__).parent.parent
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.png")
FASHION = sorted(str(p) for p in (ROOT / "examples" / "fashion_mnist").glob("*.png"))
BUNDLED = ROOT / "reference_models" / "weights" / "fashion_vit"


@pytest.fixture
def run_folder(tmp_path):
    """A `vitx train` run folder (the bundled model's files under the names train writes)."""
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(BUNDLED.with_suffix(".safetensors"), folder / "model.safetensors")
    shutil.copy(BUNDLED.with_suffix(".json"), folder / "model.json")
    return folder


# ---------------------------------------------------------------- models and inputs

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["rollout", "grad_rollout"])
def test_half_precision_models_explain_file_paths(dtype, method):
    full = tiny_timm()
    half = tiny_timm().to(dtype)
    expected = vitx.explain(full, [CHELSEA], method=method)
    got = vitx.explain(half, [CHELSEA], method=method)
    assert got.targets.tolist() == expected.targets.tolist()
    torch.testing.assert_close(got.maps, expected.maps, atol=0.06, rtol=0)  # same map, at half precision


def test_a_tensor_of_the_wrong_size_is_a_clear_error():
    model = tiny_timm()  # 32 x 32 inputs
    with pytest.raises(vitx.VitxError, match="takes 32x32 images, the tensor is 64x64"):
        vitx.explain(model, torch.randn(1, 3, 64, 64))
    assert vitx.explain(model, torch.randn(1, 3, 32, 32)).maps.shape == (1, 4, 4)


def test_nan_inputs_and_nan_weights_warn():
    model = tiny_timm()
    pixels = torch.randn(1, 3, 32, 32)
    pixels[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="input holds NaN"):
        vitx.explain(model, pixels)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="outputs contain NaN"):
        vitx.explain(model, torch.randn(1, 3, 32, 32))


def test_lightning_checkpoint_prefix_is_stripped(tmp_path):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=7)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 30}, tmp_path / "lightning.ckpt")
    loaded = vitx.load_model("deit_tiny", checkpoint=tmp_path / "lightning.ckpt")
    assert loaded.num_classes == 7
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


def test_strip_wrappers_keeps_a_prefix_the_model_itself_has():
    from vitx.models import strip_wrappers

    state = {"model.a": 1, "model.b": 2}
    assert strip_wrappers(state) == {"a": 1, "b": 2}
    assert strip_wrappers(state, own={"model.a": 0}) == state
    assert strip_wrappers({"module.model.a": 1}) == {"a": 1}


def test_a_run_folder_is_a_model(run_folder, tmp_path):
    model = vitx.load_model(str(run_folder))
    assert model.vitx_meta["test_accuracy"] > 0.9
    for args in (["--model", run_folder], ["--checkpoint", run_folder]):
        result = run("explain", FASHION[0], *args, "--out", tmp_path / "out")
        assert result.exit_code == 0, result.output
        assert "(Ankle boot)" in result.output  # the bundled model on test00000_ankle_boot


def test_other_folders_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    one_error(run("explain", CHELSEA, "--model", tmp_path / "empty", "--out", tmp_path / "o"),
              "not a vitx training run")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.safetensors").write_bytes(b"")
    one_error(run("explain", CHELSEA, "--model", "deit_tiny", "--checkpoint", tmp_path / "weights", "--out",
                  tmp_path / "o"), "is a folder; pass the weights file inside it", "w.safetensors")


@pytest.mark.parametrize("edit,fragments", [
    (lambda m: m["config"].update(dim="abc"), ["field config.dim must be a positive integer", "'abc'"]),
    (lambda m: m["config"].update(dimm=64), ["field config.dimm is not a setting"]),
    (lambda m: m["config"].update(heads=5), ["field config.heads must divide config.dim (64)"]),
    (lambda m: m.update(kind="vitt"), ["field kind must be"]),
    (lambda m: m["config"].update(local_ffn="yes"), ["field config.local_ffn must be true or false"]),
])
def test_a_hand_edited_model_json_names_the_bad_field(edit, fragments, run_folder, tmp_path):
    meta = json.loads((run_folder / "model.json").read_text())
    edit(meta)
    (run_folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(vitx.VitxError, match="model.json: field"):
        vitx.load_model(str(run_folder / "model.safetensors"))
    one_error(run("explain", FASHION[0], "--model", run_folder / "model.safetensors", "--out", tmp_path / "o"),
              *fragments)


def test_sixteen_bit_images_convert_without_float64_copies(tmp_path):
    from vitx.imaging import read_image

    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (1500, 1200), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    tracemalloc.start()
    pixels = np.asarray(read_image(tmp_path / "deep.png"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(pixels[..., 0], np.floor(values / 257.0).astype(np.uint8))
    assert peak < 4 * values.nbytes, f"peak {peak / 1e6:.1f} MB for a {values.nbytes / 1e6:.1f} MB image"


# ---------------------------------------------------------------- inspect

@pytest.mark.parametrize("args,fragment", [
    (["--n", "0", "--dataset", "fashion_mnist"], "--limit must be at least 1"),
    (["--limit", "-5", "--dataset", "fashion_mnist"], "--limit must be at least 1"),
    (["--show", "0", FASHION[0]], "--show must be at least 1"),
    (["--show", "-2", FASHION[0]], "--show must be at least 1"),
])
def test_inspect_counts(args, fragment, tmp_path):
    one_error(run("inspect", *args, "--out", tmp_path / "r"), fragment)


def test_inspect_out_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    one_error(run("inspect", FASHION[0], "--out", tmp_path / "file"), "--out", "is a file")
    assert (tmp_path / "file").read_text() == "mine"


def test_inspect_recurses_into_class_folders(tmp_path):
    from vitx.cli.inspect import expand_images

    for rel in ("Bag/a.png", "Bag/deeper/b.PNG", "Trouser/c.jpg", "Trouser/.hidden/d.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in expand_images([tmp_path])]
    assert found == ["Bag/a.png", "Bag/deeper/b.PNG", "Trouser/c.jpg"]


def test_inspect_skips_an_unreadable_image_and_says_so(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    result = run("inspect", FASHION[0], broken, FASHION[1], "--methods", "rollout", "--show", "2",
                 "--out", tmp_path / "report")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"warning: skipped {broken}" in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: skipped 1 unreadable image(s)")
    assert (tmp_path / "report" / "report.html").exists()


@pytest.mark.slow
def test_inspect_a_timm_model_offline_with_checkpoint(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    result = run("inspect", CHELSEA, "--model", "deit_tiny", "--checkpoint", tmp_path / "w.safetensors",
                 "--methods", "rollout", "--show", "1", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert "deit_tiny" in (tmp_path / "report" / "report.html").read_text()
    one_error(run("inspect", CHELSEA, "--checkpoint", tmp_path / "w.safetensors", "--out", tmp_path / "r2"),
              "needs --model NAME")
