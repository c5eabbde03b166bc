"""The CLI end to end, and every kind of bad input: one clear line, non-zero exit."""
import os
import pickle
from pathlib import Path

import click
import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from vitx.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "images")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def deit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2)
    full = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    state = {**full.state_dict(), **model.state_dict()}  # a real deit_tiny checkpoint
    path = tmp_path_factory.mktemp("ckpt") / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def run(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env)
    return result


def assert_clean_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", [[], ["explain"], ["methods"], ["models"]])
def test_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_methods_and_models_list_the_builtins():
    methods = run("methods").output
    for name in ("raw_attention", "rollout", "grad_rollout", "--discard-ratio", "plugin: vitx"):
        assert name in methods
    models = run("models").output
    assert "deit_tiny" in models and "deit_tiny_patch16_224" in models and "torchvision/" in models


def test_explain_writes_panels_and_prints_imagenet_names(deit_checkpoint, tmp_path):
    images = [os.path.join(EXAMPLES, "chelsea.png"), os.path.join(EXAMPLES, "coffee.png")]
    result = run("explain", *images, "--model", "deit_tiny", "--checkpoint", deit_checkpoint,
                 "--method", "grad_rollout", "--category-index", "243", "--out", str(tmp_path), "--save-maps")
    assert result.exit_code == 0, result.output
    assert "explaining class 243 (bull mastiff)" in result.output
    for stem in ("chelsea", "coffee"):
        panel = np.asarray(Image.open(tmp_path / f"{stem}_grad_rollout.png"))
        assert panel.shape[1:] == (3 * 224, 3) and panel.shape[0] > 224  # a title strip above the 224 px panel
        patch_map = np.load(tmp_path / f"{stem}_grad_rollout.npy")
        assert patch_map.shape == (14, 14) and 0 <= patch_map.min() and patch_map.max() <= 1


def test_original_script_spellings(deit_checkpoint, tmp_path):
    result = run("explain", "--image_path", os.path.join(EXAMPLES, "chelsea.png"), "--head_fusion", "max",
                 "--discard_ratio", "0.9", "--model", "deit_tiny", "--checkpoint", deit_checkpoint,
                 "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "chelsea_rollout.png").exists()  # no category index: rollout, as in vit_explain.py
    result = run("explain", "--image_path", os.path.join(EXAMPLES, "chelsea.png"), "--category_index", "1",
                 "--model", "deit_tiny", "--checkpoint", deit_checkpoint, "--out", str(tmp_path))
    assert result.exit_code == 0 and (tmp_path / "chelsea_grad_rollout.png").exists()


def _write(path, array, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def test_odd_images_are_converted(deit_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    gray = _write(tmp_path / "gray.png", rng.integers(0, 255, (60, 80), dtype=np.uint8))
    rgba = _write(tmp_path / "rgba.png", rng.integers(0, 255, (50, 50, 4), dtype=np.uint8))
    deep = tmp_path / "deep16.png"
    Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16)).save(deep)
    huge = _write(tmp_path / "huge.jpg", rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8))
    result = run("explain", gray, rgba, str(deep), huge, "--model", "deit_tiny", "--checkpoint", deit_checkpoint,
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    for stem in ("gray", "rgba", "deep16", "huge"):
        assert (tmp_path / "out" / f"{stem}_rollout.png").exists()


def test_sixteen_bit_image_keeps_its_contrast(tmp_path):
    from vitx.imaging import read_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    pixels = np.asarray(read_image(tmp_path / "ramp.png"))[..., 0]
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255 and 120 < pixels[0, 32] < 136


def test_bad_images(deit_checkpoint, tmp_path):
    common = ["--model", "deit_tiny", "--checkpoint", deit_checkpoint, "--out", str(tmp_path)]
    assert_clean_error(run("explain", str(tmp_path / "missing.png"), *common), "image not found")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    assert_clean_error(run("explain", str(tmp_path / "garbage.png"), *common), "cannot read image")
    good = (tmp_path / "good.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    assert_clean_error(run("explain", str(tmp_path / "truncated.png"), *common), "cannot read image")
    assert_clean_error(run("explain", *common), "no images given")


def test_bad_arguments(deit_checkpoint, tmp_path):
    image = os.path.join(EXAMPLES, "chelsea.png")
    common = ["--checkpoint", deit_checkpoint, "--out", str(tmp_path)]
    assert_clean_error(run("explain", image, "--model", "deit_tiny", "--category-index", "1000", *common),
                       "category index 1000 out of range", "0..999")
    assert_clean_error(run("explain", image, "--model", "deit_tiny", "--method", "rolout", *common),
                       "unknown method 'rolout'", "rollout")
    assert_clean_error(run("explain", image, "--model", "deit_tiy", *common), "unknown model 'deit_tiy'", "deit_tiny")
    assert_clean_error(run("explain", image, "--model", "deit_tiny", "--method", "raw_attention",
                           "--discard-ratio", "0.5", *common), "has no option 'discard_ratio'")
    assert_clean_error(run("explain", image, "--model", "deit_tiny", "--token", "dist", *common),
                       "no token 'dist'", "cls")
    assert_clean_error(run("explain", image, "--model", "deit_tiny", "--discard-ratio", "1.5", *common), "[0.0, 0.99]")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(deit_checkpoint, tmp_path):
    image = os.path.join(EXAMPLES, "chelsea.png")
    for flag in (["--device", "cuda"], ["--use_cuda"]):
        assert_clean_error(run("explain", image, "--model", "deit_tiny", "--checkpoint", deit_checkpoint, *flag),
                           "no CUDA GPU")


def test_checkpoint_for_another_model_names_the_keys(tmp_path):
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=10)
    path = tmp_path / "other.safetensors"
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    result = run("explain", os.path.join(EXAMPLES, "chelsea.png"), "--model", "deit_tiny", "--checkpoint", str(path))
    assert_clean_error(result, "does not match deit_tiny_patch16_224", "missing keys: blocks.2", "unexpected keys: extra.weight")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = None


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": RunsCode()}, handle)
    result = run("explain", os.path.join(EXAMPLES, "chelsea.png"), "--model", "deit_tiny", "--checkpoint", str(path))
    assert_clean_error(result, "refusing to load")
    assert not os.path.exists(MARKER)


def test_torch_state_dict_checkpoint_loads(tmp_path):
    import vitx

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=7)
    torch.save({"model": model.state_dict()}, tmp_path / "w.pth")
    loaded = vitx.load_model("deit_tiny", checkpoint=tmp_path / "w.pth")
    assert loaded.num_classes == 7  # the checkpoint's head decides the class count
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_offline_pretrained_says_how_to_supply_weights(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run("explain", os.path.join(EXAMPLES, "chelsea.png"), "--model", "deit_tiny", env=env)
    assert_clean_error(result, "could not fetch pretrained weights", "--checkpoint")


def test_every_method_option_is_a_flag_of_explain_evaluate_and_inspect():
    """Flags generated from the methods' Option declarations: each declared option of each
    installed method is reachable from the three commands with its library name."""
    import vitx

    declared = {o.name for cls, _ in vitx.list_methods().values() for o in cls.options}
    reserved = {"explain": set(), "evaluate": {"baseline", "seed", "masks"}, "inspect": {"seed"}}
    for command, own in reserved.items():
        text = run(command, "--help").output
        for name in declared - own:
            assert f"--{name.replace('_', '-')}" in text, (command, name)
        assert "-o, --option" in text


def test_method_flags_reach_the_method(monkeypatch, tmp_path):
    import vitx.attribution.api as api
    from vitx.evaluate import metrics

    seen = {}

    def fake_evaluate(model, batches, methods, **kwargs):
        seen["options"] = kwargs["options"]
        raise SystemExit(0)

    monkeypatch.setattr(metrics, "evaluate_methods", fake_evaluate)
    folder = tmp_path / "images" / "0"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(folder / "a.png")
    run("evaluate", "--images", str(tmp_path / "images"), "--methods", "rollout,grad_rollout,rise",
        "--discard-ratio", "0.5", "-o", "rise.seed=3", "--head_fusion", "max", "--out", str(tmp_path / "e"))
    assert seen["options"] == {"rollout": {"discard_ratio": 0.5, "head_fusion": "max"},
                               "grad_rollout": {"discard_ratio": 0.5}, "rise": {"seed": 3}}  # -o text read as the option's type
    assert_clean_error(run("evaluate", "--images", str(tmp_path / "images"), "--methods", "rollout", "--steps", "4",
                           "--out", str(tmp_path / "e")), "method 'rollout' has no option 'steps'",
                       "integrated_gradients")
    calls = []
    monkeypatch.setattr(api, "explain", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(SystemExit(0)))
    run("explain", str(folder / "a.png"), "--method", "integrated_gradients", "--steps", "3", "--baseline", "black",
        "--out", str(tmp_path / "x"))
    assert calls and calls[0]["steps"] == 3 and calls[0]["baseline"] == "black"


def test_inputs_per_pass_have_one_name_and_the_old_spellings_still_work(monkeypatch, tmp_path):
    """`internal_batch_size` is the one name of "inputs stacked into one forward pass" (IG's
    path points, occlusion's and RISE's masked images); `steps_per_pass` and `batch` stay
    accepted by the library, the generated flags and `-o`, and two spellings of one option
    that disagree are an error."""
    import vitx
    from vitx.errors import VitxError
    from vitx.registry import get_explainer

    for method in ("integrated_gradients", "occlusion", "rise", "beyond_intuition"):
        assert "internal_batch_size" in get_explainer(method).cls().settings, method
    assert get_explainer("integrated_gradients").cls(steps_per_pass=3).internal_batch_size == 3
    assert get_explainer("rise").cls(batch=7).internal_batch_size == 7
    with pytest.raises(VitxError, match="given twice"):
        get_explainer("rise").cls(batch=7, internal_batch_size=8)

    from vitx.attribution import api
    calls = []
    monkeypatch.setattr(api, "explain", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(SystemExit(0)))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(folder / "a.png")
    for spelling in (["--steps-per-pass", "4"], ["--steps_per_pass", "4"], ["-o", "steps_per_pass=4"],
                     ["--internal-batch-size", "4"]):
        calls.clear()
        run("explain", str(folder / "a.png"), "--method", "integrated_gradients", *spelling, "--out", str(tmp_path / "x"))
        assert calls and int(calls[0]["internal_batch_size"]) == 4 and "steps_per_pass" not in calls[0], spelling
    assert_clean_error(run("explain", str(folder / "a.png"), "--method", "integrated_gradients", "--steps-per-pass", "4",
                           "-o", "internal_batch_size=5", "--out", str(tmp_path / "x")), "disagree")
    assert_clean_error(run("explain", str(folder / "a.png"), "--method", "integrated_gradients", "-o", "steps_per_pass=4",
                           "-o", "internal_batch_size=5", "--out", str(tmp_path / "x")), "given twice")
    assert vitx.list_methods()  # the registry survived the monkeypatching


def test_one_batch_size_default_everywhere():
    """The library, explain, evaluate and inspect share one `--batch-size` default."""
    import inspect as pyinspect

    from vitx.attribution.api import explain
    from vitx.batches import DEFAULT_BATCH_SIZE
    from vitx.evaluate.sanity import sanity_check
    from vitx.inspect.explorer import model_data
    from vitx.inspect.inspection import inspect_models
    from vitx.inspect.views import attention_statistics

    for function in (explain, sanity_check, model_data, inspect_models, attention_statistics):
        assert pyinspect.signature(function).parameters["batch_size"].default == DEFAULT_BATCH_SIZE, function
    from vitx.cli import main

    for command in ("explain", "evaluate", "inspect"):  # click's own parameters, not their help text
        option = next(p for p in main.commands[command].params if p.name == "batch_size")
        assert option.default == DEFAULT_BATCH_SIZE and option.type is click.INT, command


@pytest.mark.parametrize("args,shown", [
    (["--discard-ratio", "0.1", "--discard_ratio", "0.9"], "--discard-ratio 0.1 and --discard_ratio 0.9"),
    (["--method", "integrated_gradients", "--internal-batch-size", "4", "--steps-per-pass=8"],
     "--internal-batch-size 4 and --steps-per-pass 8"),
    (["--target", "1", "--category_index", "2"], "--target 1 and --category_index 2"),
])
def test_one_option_under_two_spellings_with_two_values_is_an_error(tmp_path, args, shown):
    """Click kept the last of two spellings silently; the library and -o refuse the conflict."""
    from helpers import one_error, run

    image = sorted((ROOT / "examples" / "fashion_mnist").glob("*.png"))[0]
    one_error(run("explain", image, *args, "--out", tmp_path / "o"), shown)
    assert not (tmp_path / "o").exists()
    same = run("explain", image, "--discard-ratio", "0.5", "--discard_ratio", "0.5", "--out", tmp_path / "s")
    assert same.exit_code == 0, same.output  # the same value twice is no conflict


@pytest.mark.parametrize("flag,value", [("--batch-size", 10 ** 9), ("--workers", 10 ** 6)])
def test_a_size_past_the_machine_is_one_error_line(tmp_path, flag, value):
    from helpers import one_error, run

    image = sorted((ROOT / "examples" / "fashion_mnist").glob("*.png"))[0]
    one_error(run("explain", image, flag, value, "--out", tmp_path / "o"), flag)
