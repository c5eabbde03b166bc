"""MNIST: the official IDX files read and unpacked offline, what a data folder lacks named,
a slice of the real digits trained in seconds, the study's report in a browser, and the
bundled mnist_vit / mnist_deit.

Real MNIST comes from $VITX_DATASETS (a folder holding MNIST/raw/*.gz, the official gzip
files; `make test` points it at ../shared/datasets when that exists); tests that need it
skip without it. The others write their own tiny files in the official IDX format.
"""
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import SKIP_REASON, browser, headless_page
from click.testing import CliRunner
from mnist_files import MNIST_FILES, idx_labels, synthetic_digits, write_mnist

import vitx
from vitx.cli import main
from vitx.datasets import load_split
from vitx.reference_models.train import TrainConfig, train

ROOT = Path(__file__).parent.parent
SHARED = Path(os.environ["VITX_DATASETS"]) / "MNIST" / "raw" if os.environ.get("VITX_DATASETS") else None
needs_mnist = pytest.mark.skipif(SHARED is None or not SHARED.is_dir(),
                                 reason="set VITX_DATASETS to a folder holding MNIST/raw/*.gz (the official files)")


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory):
    """A writable torchvision root holding a copy of the official archives (not unpacked)."""
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(SHARED, root / "MNIST" / "raw")
    return root


def test_loader_reads_the_official_idx_format(tmp_path):
    root = write_mnist(tmp_path)
    images, labels = synthetic_digits(128, 1)
    split = load_split("mnist", train=False, data_dir=root, download=False, augment=False)
    assert len(split) == 128 and [int(split[i][1]) for i in range(5)] == labels[:5].tolist()
    x, _ = split[3]
    expected = (torch.from_numpy(images[3]).float() / 255 - 0.1307) / 0.3081  # MNIST's normalisation
    torch.testing.assert_close(x[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skip", [("t10k-labels-idx1-ubyte",), ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")])
def test_a_data_dir_without_the_files_names_what_it_lacks(tmp_path, skip):
    root = write_mnist(tmp_path, skip=skip)
    with pytest.raises(vitx.VitxError) as error:
        load_split("mnist", train=True, data_dir=root, download=False)
    message = str(error.value)
    assert f"mnist not found in {root}" in message
    assert [name for name in MNIST_FILES if f"MNIST/raw/{name}(.gz)" in message] == list(skip)
    result = CliRunner().invoke(main, ["train", "--dataset", "mnist", "--data-dir", str(root), "--no-download",
                                       "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and result.output.startswith("Error: mnist not found")
    assert len(result.output.strip().splitlines()) == 1 and skip[0] in result.output


def test_a_damaged_archive_is_named_instead_of_downloaded_again(tmp_path):
    raw = write_mnist(tmp_path, skip=("train-labels-idx1-ubyte",)) / "MNIST" / "raw"
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(idx_labels(np.zeros(320)))  # the right format, not the official file
    with pytest.raises(vitx.VitxError, match="train-labels-idx1-ubyte.gz: MD5 differs from the official"):
        load_split("mnist", train=True, data_dir=tmp_path, download=False)


def test_a_small_model_learns_the_synthetic_digits(tmp_path):
    """The whole path from IDX files to a trained ViT, on data that always exists."""
    root = write_mnist(tmp_path / "data", train_count=640, test_count=200)
    config = TrainConfig(dataset="mnist", mode="baseline", out=str(tmp_path / "run"), epochs=3, batch_size=32,
                         lr=3e-3, warmup_epochs=0.2, augment="none", data_dir=str(root), download=False,
                         vit=dict(dim=32, depth=2, heads=2, patch_size=7))
    history = train(config, progress=False)
    assert history[-1]["test_accuracy"] > 0.6 and history[-1]["train_loss"] < history[0]["train_loss"]


@needs_mnist
def test_trains_on_a_slice_of_the_official_mnist_files(real_mnist, tmp_path):
    raw = real_mnist / "MNIST" / "raw"
    split = load_split("mnist", train=False, data_dir=real_mnist, download=False, augment=False)
    assert len(split) == 10000 and all((raw / name).is_file() for name in MNIST_FILES)  # unpacked, MD5 checked
    assert [int(split[i][1]) for i in range(10)] == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first test digits
    # the CNN: a tiny one learns real digits within seconds, where a tiny ViT needs minutes
    config = TrainConfig(dataset="mnist", mode="teacher", teacher_width=4, out=str(tmp_path / "run"), epochs=2,
                         batch_size=32, lr=3e-3, warmup_epochs=0.2, augment="none", train_limit=4000, test_limit=500,
                         data_dir=str(real_mnist), download=False)
    history = train(config, progress=False)
    assert history[-1]["test_accuracy"] > 0.8  # chance is 0.1 (0.89 here)


def test_study_report_opens_in_a_browser(tmp_path, monkeypatch):
    """`vitx study --dataset mnist` on a micro preset: teacher, ViT, DeiT hard and soft, the
    comparison, curves, attention, attention distance and sanity check."""
    from vitx.reference_models import study

    micro = dict(study.PRESETS["mnist"], epochs=1, teacher_epochs=1, batch_size=64,
                 vit=dict(dim=16, depth=2, heads=2, patch_size=7))
    monkeypatch.setitem(study.PRESETS, "mnist", micro)
    root = write_mnist(tmp_path / "data", train_count=256, test_count=64)
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["study", "--dataset", "mnist", "--data-dir", str(root), "--no-download",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["preset"] == "mnist" and list(saved["results"]) == ["teacher", "baseline", "deit", "deit_soft"]
    results = saved["results"]
    for name in ("deit", "deit_soft"):
        gain = 100 * (results[name]["test_accuracy"] - results["baseline"]["test_accuracy"])
        assert results[name]["gain_over_baseline"] == pytest.approx(gain, abs=0.01)
    assert results["deit"]["parameters"] > results["baseline"]["parameters"]  # the dist token and its head
    explained = saved["explanations"]
    assert len(explained["baseline"]["attention_distance_per_layer"]) == 2
    assert -1 <= explained["deit_soft"]["cls_dist_rollout_correlation"] <= 1
    assert "cls_dist_rollout_correlation" not in explained["baseline"]
    assert set(explained["deit"]["sanity"]["passed"]) == {"rollout", "grad_rollout", "chefer2021"}
    assert "deit_soft dist token" in saved["attention_figure_columns"]
    soft = json.loads((out / "deit_soft" / "model.json").read_text())["train"]
    assert soft["mode"] == "deit" and soft["deit_soft"] and soft["augment"] == "affine-half"
    if browser() is None:
        pytest.skip(SKIP_REASON)
    with headless_page(out / "report" / "report.html") as page:
        headings = page.locator("h2").all_inner_texts()
        for title in ("Study results", "Sanity check", "Attention distance and entropy", "Training curves"):
            assert title in headings
        shown = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0)"
                              ".map(i => i.dataset.file)")
        assert len(shown) == page.locator("img").count()  # every figure decoded
        assert {"study-curves.png", "study-attention-maps.png", "deit-sanity.png", "deit-soft-sanity.png"} <= set(shown)


@pytest.mark.parametrize("name,tokens", [("mnist_vit", ["cls"]), ("mnist_deit", ["cls", "dist"])])
def test_bundled_mnist_models_read_the_example_digits(name, tokens):
    model = vitx.load_model(name)
    meta = model.vitx_meta
    assert meta["dataset"] == "mnist" and meta["test_accuracy"] >= 0.99  # on the 10,000 official test digits
    assert meta["history"][-1]["test_accuracy"] == meta["test_accuracy"]
    assert not any(str(value).startswith("/") for value in meta["train"].values())  # no machine's paths shipped
    files = [ROOT / "examples" / "mnist" / f"{digit}.png" for digit in range(10)]
    for token in tokens:
        explanation = vitx.explain(model, [str(f) for f in files], method="rollout", token=token)
        assert explanation.maps.shape == (10, 7, 7)
    assert [int(p[0].name) for p in explanation.predictions] == list(range(10))


def test_explain_cli_with_the_bundled_mnist_vit(tmp_path):
    result = CliRunner().invoke(main, ["explain", "--model", "mnist_vit", str(ROOT / "examples" / "mnist" / "3.png"),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    top = next(line for line in result.output.splitlines() if line.strip().startswith("1."))
    assert top.split()[-1] == "3" and (tmp_path / "3_rollout.png").is_file()


@pytest.mark.slow
def test_a_wheel_built_outside_the_repository_explains_with_mnist_vit(tmp_path):
    """The weights travel inside the package: a wheel built from a copy of the sources, on
    sys.path ahead of any installed vitx, explains an MNIST digit from a folder with no repository."""
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for part in ("setup.py", "MANIFEST.in", "README.md", "requirements.txt", "requirements-test.txt"):
        shutil.copy(ROOT / part, source)
    for package in ("vitx", "reference_models"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("vitx-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"vitx/reference_models/weights/mnist_vit.safetensors", "vitx/reference_models/weights/mnist_vit.json",
            "vitx/reference_models/weights/mnist_deit.safetensors",
            "vitx/plugins/rollout.py", "vitx/plugins/shapley.py"} <= set(names)  # built-ins packaged, no setup.py line
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "examples" / "mnist" / "3.png", work)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    where = subprocess.run([sys.executable, "-c", "import vitx; print(vitx.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "site"))  # the wheel's vitx, not the checkout's
    done = subprocess.run([sys.executable, "-m", "vitx", "explain", "--model", "mnist_vit", "3.png", "--out", "maps"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (work / "maps" / "3_rollout.png").is_file() and " 3" in done.stdout
