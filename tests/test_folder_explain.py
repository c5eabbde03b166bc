"""Explaining a folder or dataset into shards and index.csv (vitx.attribution.stream): resume
keyed on each image, file names that are not UTF-8, spreadsheet-safe cells."""
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_timm

ROOT = Path(__file__).parent.parent
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.png")

FASHION = sorted((ROOT / "examples" / "fashion_mnist").glob("*.png"))


def _explain_folder(folder, out, model=None, batch_size=2):
    from vitx.attribution.stream import ImageFiles, explain_dataset
    from vitx.registry import data_config

    model = model or tiny_timm()
    return explain_dataset(model, ImageFiles(folder, data_config(model)), out, batch_size=batch_size, progress=False,
                           name=str(folder))


def _index_rows(out):
    with open(Path(out) / "index.csv", newline="", encoding="utf-8") as handle:  # strict: valid UTF-8
        return list(csv.DictReader(handle))


def test_resume_after_the_folder_changed_recomputes_the_changed_images(tmp_path):
    """Item 1: same image count, another image under a new name -> its own map, not the old one's."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for i, source in enumerate(FASHION[:4]):
        shutil.copy(source, folder / f"{i}.png")
    model = tiny_timm()
    _explain_folder(folder, out, model)
    (folder / "3.png").unlink()
    shutil.copy(FASHION[5], folder / "9.png")  # still 4 images
    result = _explain_folder(folder, out, model)
    assert result["written"] == 1 and result["skipped"] == 1  # only the shard that changed
    fresh = _explain_folder(folder, tmp_path / "fresh", model)
    assert fresh["written"] == 2
    from vitx.attribution.stream import read_maps

    np.testing.assert_allclose(read_maps(out)["maps"], read_maps(tmp_path / "fresh")["maps"])
    assert set(read_maps(out)) == {"index", "maps", "targets", "predictions", "probabilities", "labels"}
    assert [r["source"] for r in _index_rows(out)] == ["0.png", "1.png", "2.png", "9.png"]


def test_resume_after_an_image_was_replaced_in_place_recomputes_it(tmp_path):
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for i, source in enumerate(FASHION[:2]):
        shutil.copy(source, folder / f"{i}.png")
    model = tiny_timm()
    _explain_folder(folder, out, model)
    Image.open(CHELSEA).convert("RGB").resize((64, 48)).save(folder / "1.png")  # other content, same name
    os.utime(folder / "1.png", ns=(10**18, 10**18))
    assert _explain_folder(folder, out, model)["written"] == 1
    from vitx.attribution.stream import read_maps

    _explain_folder(folder, tmp_path / "fresh", model)
    np.testing.assert_allclose(read_maps(out)["maps"], read_maps(tmp_path / "fresh")["maps"])


def test_index_csv_neutralises_formula_cells(tmp_path):
    """Item 10: a file name that a spreadsheet would run as a formula is written quoted."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    names = ["=HYPERLINK(1).png", "+1.png", "-2.png", "@x.png", "plain.png"]
    for name, source in zip(names, FASHION):
        shutil.copy(source, folder / name)
    _explain_folder(folder, out)
    sources = sorted(r["source"] for r in _index_rows(out))
    assert sources == sorted(["'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@x.png", "plain.png"])


def test_formula_cells_tab_and_cr_are_neutralised():
    from vitx.attribution.stream import safe_cell

    assert [safe_cell(v) for v in ["\tx", "\rx", "=1", "a=b", "", 3]] == ["'\tx", "'\rx", "'=1", "a=b", "", 3]


BAD_NAME = os.fsdecode(b"bad\xff name.png")


@pytest.mark.skipif(sys.platform != "linux", reason="file names of arbitrary bytes: Linux")
@pytest.mark.parametrize("mode", ["files", "folder", "inspect"])
def test_file_names_that_are_not_utf8(tmp_path, mode):
    """Item 5: a name of invalid UTF-8 crashed cv2.imwrite (exit 139), index.csv and the report."""
    import subprocess

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FASHION[0], folder / BAD_NAME)
    shutil.copy(FASHION[1], folder / "good.png")
    vitx_cli = [sys.executable, "-m", "vitx"]
    inputs = [str(folder / BAD_NAME), str(folder / "good.png")]
    if mode == "files":
        command = vitx_cli + ["explain", *inputs, "--model", "fashion_vit", "--out", str(tmp_path / "o")]
    elif mode == "folder":
        command = vitx_cli + ["explain", str(folder), "--model", "fashion_vit", "--workers", "0", "--out",
                              str(tmp_path / "o")]
    else:
        command = vitx_cli + ["inspect", "--model", "fashion_vit", *inputs, "--out", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    made = os.listdir(tmp_path / "o")
    if mode == "files":
        assert os.fsdecode(b"bad\xff name_rollout.png") in made
    elif mode == "folder":
        rows = _index_rows(tmp_path / "o")  # once invalid UTF-8 (the raw bytes): reading it raised
        assert sorted(r["source"] for r in rows) == sorted(["bad\\xff name.png", "good.png"])
        assert sorted(os.fsdecode(bytes.fromhex(r["source_bytes"])) if r["source_bytes"] else r["source"]
                      for r in rows) == sorted([BAD_NAME, "good.png"])
    else:
        assert "report.html" in made or any(m.endswith(".html") for m in made)


