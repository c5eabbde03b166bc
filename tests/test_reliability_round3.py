"""Reliability, round 3 (issue 20): silent wrong results, crashes, plugin name clashes,
Hugging Face details. Each test failed before its fix."""
import csv
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import vitx
from helpers import tiny_timm
from vitx.cli import main
from vitx.errors import VitxError

ROOT = Path(__file__).parent.parent
CHELSEA = str(ROOT / "examples" / "images" / "chelsea.png")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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
