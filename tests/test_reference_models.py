"""Reference models: training modes, resume, curriculum, checkpoints, and explaining them.

Uses small subsets of the real Fashion-MNIST (Debian's dataset-fashion-mnist, installed
by .ci/run) and tiny architectures, so each run takes seconds.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitx
from vitx.reference_models import train as train_module
from vitx.reference_models.checkpoint import atomic_write, load_model_file
from vitx.datasets import DEBIAN_FASHION
from vitx.reference_models.train import TrainConfig, train
from vitx.reference_models.vit import ViT, ViTConfig

pytestmark = pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt-get install dataset-fashion-mnist")
TINY_VIT = dict(dim=32, depth=2, heads=2, patch_size=7)


def tiny_config(tmp_path, name, **overrides):
    base = dict(out=str(tmp_path / name), epochs=3, batch_size=32, lr=3e-3, warmup_epochs=0.2,
                train_limit=320, test_limit=200, download=False, data_dir=str(tmp_path.parent / "data"),
                vit=TINY_VIT, teacher_width=8)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    train(tiny_config(root, "teacher", mode="teacher"), progress=False)
    return str(root / "teacher" / "model.safetensors")


@pytest.mark.parametrize("mode", ["baseline", "kd", "kd_hard", "deit", "deit_soft"])
def test_each_mode_trains_and_the_loss_drops(mode, teacher, tmp_path):
    extra = {"teacher": teacher} if mode != "baseline" else {}
    config = tiny_config(tmp_path, mode, mode={"kd_hard": "kd", "deit_soft": "deit"}.get(mode, mode),
                         kd_hard=mode == "kd_hard", deit_soft=mode == "deit_soft", **extra)
    history = train(config, progress=False)
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    meta = json.loads((tmp_path / mode / "model.json").read_text())
    assert meta["history"] == history and meta["class_names"][0] == "T-shirt/top"
    assert (tmp_path / mode / "curves.png").exists() and (tmp_path / mode / "history.csv").exists()


def test_distillation_modes_need_a_teacher(tmp_path):
    with pytest.raises(vitx.VitxError, match="needs --teacher"):
        train(tiny_config(tmp_path, "x", mode="deit"), progress=False)


@pytest.mark.parametrize("augment", ["default", "flip", "affine"])
def test_resume_after_interrupt_reproduces_the_uninterrupted_run(augment, tmp_path, interrupted_in_second_epoch):
    config = tiny_config(tmp_path, "straight", vit=dict(TINY_VIT, drop_path=0.1), ema=0.9, curriculum=[14, 28],
                         augment=augment)
    straight = train(config, progress=False)

    resumed_config = tiny_config(tmp_path, "resumed", vit=dict(TINY_VIT, drop_path=0.1), ema=0.9, curriculum=[14, 28],
                                 augment=augment)
    with interrupted_in_second_epoch():
        partial = train(resumed_config, progress=False)
    assert len(partial) == 1
    resumed = train(resumed_config, resume=True, progress=False)

    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed) == strip(straight)
    a, b = load_model_file(tmp_path / "straight" / "model.safetensors"), load_model_file(tmp_path / "resumed" / "model.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_in_memory_split_holds_the_same_images_and_labels(tmp_path):
    from vitx.datasets import load_split

    split = train_module._subset(load_split("fashion_mnist", False, tmp_path.parent / "data", False), 50, 0)
    decoded = train_module.in_memory(split)
    assert len(decoded) == 50
    for i in (0, 17, 49):
        assert torch.equal(decoded[i][0], split[i][0]) and int(decoded[i][1]) == int(split[i][1])


def test_unknown_augmentation_is_a_clear_error(tmp_path):
    with pytest.raises(vitx.VitxError, match="unknown augmentation 'crop'"):
        train(tiny_config(tmp_path, "x", augment="crop"), progress=False)


def test_curriculum_changes_resolution_and_keeps_training(tmp_path):
    history = train(tiny_config(tmp_path, "curr", epochs=3, curriculum=[14, 21, 28], vit=dict(TINY_VIT)), progress=False)
    assert [h["size"] for h in history] == [14, 21, 28]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    model = load_model_file(tmp_path / "curr" / "model.safetensors")
    for size in (14, 28):
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_position_embedding_interpolation_keeps_the_native_grid_exact():
    model = ViT(ViTConfig(dim=16, depth=1, heads=2)).eval()
    assert model.position_embedding(model.grid) is model.pos_embed
    half = model.position_embedding((3, 3))
    assert half.shape == (1, 1 + 9, 16)
    torch.testing.assert_close(half[:, 0], model.pos_embed[:, 0])  # the cls position is not resampled


def test_checkpoint_round_trip_and_explaining_by_path(tmp_path):
    train(tiny_config(tmp_path, "rt", epochs=1), progress=False)
    path = tmp_path / "rt" / "model.safetensors"
    model = vitx.load_model(str(path))
    again = load_model_file(path)
    for x, y in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)
    picture = np.asarray(Image.open(Path(__file__).parent.parent / "examples" / "images" / "chelsea.png"))
    exp = vitx.explain(model, [Image.fromarray(picture)], method="rollout")
    assert exp.maps.shape == (1, 4, 4) and exp.views[0].shape == (28, 28, 3)
    assert exp.predictions[0][0].name in model.class_names


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"previous")

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("variant", ["vit", "deit", "local_ffn"])
def test_every_reference_model_is_explained_by_every_method(variant):
    torch.manual_seed(0)
    config = ViTConfig(dim=16, depth=2, heads=2, distill_token=variant == "deit", local_ffn=variant == "local_ffn")
    model = ViT(config).eval()
    x = torch.randn(3, 1, 28, 28)
    tokens = ["cls", "dist"] if variant == "deit" else ["cls"]
    for method in vitx.list_methods():
        for token in tokens:
            exp = vitx.explain(model, x, method=method, token=token)
            assert exp.maps.shape == (3, 7, 7) and exp.layout.prefix == {t: i for i, t in enumerate(tokens)}
    with vitx.record_attention(model) as rec:
        model(x)
    assert len(rec.attentions) == 2 and rec.attentions[0].shape == (3, 2, 1 + len(tokens) - 1 + 49, 1 + len(tokens) - 1 + 49)


def test_deit_inference_averages_the_two_heads():
    torch.manual_seed(0)
    model = ViT(ViTConfig(dim=16, depth=1, heads=2, distill_token=True))
    x = torch.randn(2, 1, 28, 28)
    model.train()
    cls_logits, dist_logits = model(x)
    model.eval()
    expected = (cls_logits.softmax(-1) + dist_logits.softmax(-1)) / 2
    torch.testing.assert_close(model(x).softmax(-1), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_end_to_end_on_real_fashion_mnist(tmp_path):
    """A small ViT on 20k real training images for 3 epochs: far above chance (10%)."""
    config = tiny_config(tmp_path, "e2e", epochs=3, batch_size=64, train_limit=20000, test_limit=2000,
                         vit=dict(dim=48, depth=3, heads=3, patch_size=4))
    history = train(config, progress=False)
    assert history[-1]["test_accuracy"] > 0.7


def test_study_end_to_end_on_a_micro_preset(tmp_path, monkeypatch):
    from vitx.reference_models import study

    monkeypatch.setitem(study.PRESETS, "smoke", dict(epochs=2, train_limit=320, test_limit=200, batch_size=32,
                                                     teacher_epochs=1, vit=dict(TINY_VIT)))
    results = study.run_study(out=str(tmp_path / "study"), data_dir=str(tmp_path.parent / "data"),
                              download=False, num_images=3, progress=False)
    assert set(results) == {"teacher", "baseline", "kd", "deit"}
    table = (tmp_path / "study" / "results.md").read_text()
    for name in results:
        assert f"| {name} | {results[name]['test_accuracy']:.4f} |" in table
    # input + 2 maps for baseline and kd + 3 for deit (cls rollout, grad, dist rollout) = 8 columns
    columns = json.loads((tmp_path / "study" / "results.json").read_text())["attention_figure_columns"]
    assert columns == ["input", "baseline rollout", "baseline grad", "kd rollout", "kd grad", "deit rollout",
                       "deit grad", "deit dist token"]
    assert Image.open(tmp_path / "study" / "attention_maps.png").size[0] > 8 * 84  # a matplotlib figure
    page = (tmp_path / "study" / "report" / "report.html").read_text()
    assert "<h2>Study results</h2>" in page and "study-attention-maps.png" in page
    for name in ("baseline", "kd", "deit"):  # the three students side by side in one report
        assert f"{name}-attention-cls.png" in page and f"{name}-positions.png" in page
    assert "deit-attention-dist.png" in page and "report/report.html" in table
    again = study.run_study(out=str(tmp_path / "study"), data_dir=str(tmp_path.parent / "data"),
                            download=False, num_images=3, progress=False)
    assert again == results  # finished runs are reused, not retrained


def test_missing_dataset_says_how_to_get_it(tmp_path):
    from vitx.datasets import load_split

    with pytest.raises(vitx.VitxError, match="cifar10 not found.*--data-dir"):
        load_split("cifar10", train=False, data_dir=tmp_path, download=False)


def test_train_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from vitx.cli import main

    result = CliRunner().invoke(main, ["train", "--mode", "deit", "--out", str(tmp_path / "x"), "--no-download"])
    assert result.exit_code == 1 and result.output.strip().startswith("Error: mode deit needs --teacher")


def _example_label(path):
    """test00019_tshirt_top.png -> 'tshirttop' (compared with class names reduced the same way)."""
    return "".join(ch for ch in path.stem.split("_", 1)[1] if ch.isalpha())


@pytest.mark.parametrize("name,tokens", [("fashion_vit", ["cls"]), ("fashion_deit", ["cls", "dist"])])
def test_bundled_models_load_offline_and_classify_the_example_images(name, tokens):
    model = vitx.load_model(name)
    meta = model.vitx_meta
    assert meta["test_accuracy"] >= 0.90 and meta["history"][-1]["test_accuracy"] == meta["test_accuracy"]
    files = sorted((Path(__file__).parent.parent / "examples" / "fashion_mnist").glob("*.png"))
    for token in tokens:
        exp = vitx.explain(model, [str(f) for f in files], method="rollout", token=token)
        assert exp.maps.shape == (len(files), 7, 7)
    predicted = ["".join(ch for ch in p[0].name.lower() if ch.isalpha()) for p in exp.predictions]
    correct = sum(p == _example_label(f) for p, f in zip(predicted, files))
    assert correct >= len(files) - 1  # ~90 % models on six real test images: at most one miss
