"""The HTML report: self-contained, every section present, rendered by a real browser."""
import base64
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import images_for, tiny_timm

from vitx.cli import main
from vitx.inspect.inspection import SECTIONS, inspect_models
from vitx.reference_models.vit import ViT, ViTConfig
from vitx.inspect.report import Report

EXAMPLES = Path(__file__).parent.parent / "examples" / "fashion_mnist"


def embedded_images(page):
    return [cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_embeds_each_image_losslessly_and_escapes_text(tmp_path):
    report = Report("a <title>")
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    section = report.section("First & only")
    section.image(rgb, "caption <b>", "same name").image(rgb[::-1].copy(), "again", "same name")
    section.table(["k", "v"], [["<x>", 0.123456]])
    path = report.write(tmp_path)
    page = path.read_text()
    decoded = embedded_images(page)
    assert len(decoded) == 2 and np.array_equal(decoded[0], rgb) and np.array_equal(decoded[1], rgb[::-1])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["same-name-2.png", "same-name.png"]
    assert "<title>a &lt;title&gt;</title>" in page and "&lt;x&gt;" in page and "0.1235" in page
    assert 'href="#first-only"' in page and "<script" not in page


def tiny_reference(distill):
    model = ViT(ViTConfig(img_size=28, patch_size=7, in_chans=1, dim=16, depth=2, heads=2, distill_token=distill,
                          class_names=[str(i) for i in range(10)])).eval()
    model.vitx_meta = {"test_accuracy": 0.5, "history": [
        {"epoch": 1, "train_loss": 2.0, "test_accuracy": 0.3}, {"epoch": 2, "train_loss": 1.5, "test_accuracy": 0.5}]}
    return model


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    models = {"vit": tiny_reference(False), "deit": tiny_reference(True)}
    images = sorted(EXAMPLES.glob("*.png"))[:3]
    return inspect_models(models, [str(p) for p in images], tmp_path_factory.mktemp("report"),
                          methods=["rollout", "grad_rollout"], show=2)


def test_inspect_report_has_every_section_and_every_figure(report_path):
    page = report_path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    files = {p.name for p in report_path.parent.glob("*.png")}
    expected = {"vit-methods-0.png", "vit-methods-1.png", "deit-methods-0.png", "vit-attention-cls.png",
                "deit-attention-cls.png", "deit-attention-dist.png", "vit-filters.png", "deit-filters.png",
                "vit-activations.png", "vit-positions.png", "deit-positions.png", "attention-distance.png",
                "attention-entropy.png", "vit-curves.png", "deit-curves.png"}
    assert expected <= files
    assert len(embedded_images(page)) == len(files)  # every PNG is also inside the page
    assert "not shown" not in page


def test_sections_a_model_cannot_fill_say_why():
    model = tiny_timm("vit_tiny_patch16_224", pos_embed="none")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        page = inspect_models({"nopos": model}, images_for((32, 32), batch=2), folder, methods=["rollout"]).read_text()
    assert "nopos: not shown (VisionTransformer has no learned position embedding" in page
    assert "No model carries a training history" in page


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="needs a headless chromium (.ci/run installs Debian's chromium)")
def test_report_renders_in_a_headless_browser(report_path, tmp_path):
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}"]
    url = report_path.resolve().as_uri()
    subprocess.run([chromium(), *flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
                   check=True, capture_output=True, timeout=120)
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (2400, 1200)
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2) > 60).mean()
    assert coloured > 0.01, "the page shows no heatmaps"
    assert (pixels < 250).any(axis=2).mean() > 0.05, "the page is (nearly) blank"
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom


def test_inspect_cli_writes_the_report_for_the_bundled_model(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(EXAMPLES), "--methods", "rollout", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "fashion_vit" in page and "<h2>Training curves</h2>" in page and "fashion-vit-curves.png" in page


@pytest.mark.parametrize("args,message", [
    ([], "give image files or folders"),
    (["missing.png"], "image not found: missing.png"),
    (["x.png", "--dataset", "fashion_mnist"], "not both"),
    (["x.png", "--methods", "rolout"], "rollout"),
])
def test_inspect_cli_errors_are_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["inspect", *args, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_inspect_cli_on_a_dataset_sample(tmp_path):
    result = CliRunner().invoke(main, ["inspect", "--dataset", "fashion_mnist", "--n", "8", "--show", "1",
                                       "--methods", "rollout", "--data-dir", str(tmp_path / "data"),
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "1 model(s), 8 image(s)." in page and "fashion-vit-methods-0.png" in page
    assert "fashion-vit-methods-1.png" not in page  # --show 1


def test_inspect_shows_progress_per_section_and_the_report_is_unchanged(tmp_path, capsys):
    """The progress bar (stderr, one step per section) only reports: the page is the same."""
    models = {"vit": tiny_reference(distill=False)}
    images = [np.full((28, 28), 40 * i, dtype=np.uint8) for i in range(2)]
    quiet = inspect_models(models, images, tmp_path / "a", methods=["rollout"], show=1).read_text()
    assert "inspect" not in capsys.readouterr().err
    loud = inspect_models(models, images, tmp_path / "b", methods=["rollout"], show=1, progress=True).read_text()
    err = capsys.readouterr().err
    assert "inspect" in err and "/7 " in err and "method maps" in err and "curves" in err  # 7 sections
    assert loud == quiet
