"""Pooled hierarchical ViTs (PiT, PVTv2, Twins, MViTv2) by stage in `vitx inspect`: each layer's
row over its (pooled) keys (vitx.views.stage_attention, the explorer's data) against the dense
reference of tests/window_reference.py, the patch -> query token and patch -> key mappings
against hand-computed grids (an overlapping convolution between stages), the CLI on a saved
model."""
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import window_reference as ref
from framework_models import write_images
from helpers import images_for
from test_pooled_stages import MODELS, hf_pvt
from vitx.capture.stages import Pooled, conv_merge
from vitx.cli.main import main
from vitx.inspect.explorer import LEVELS, SCALE_STEPS, model_data, pooled_levels, unpack, window_levels
from vitx.inspect.stages import stage_attention, stages_of

# patch (5, 7) of the first grid, by hand (row r of a k3 s2 p1 convolution's input lies first
# under output row ceil((r - 1) / 2); a k = s = 4 key pooling under r // 4):
# PiT 15x23 -> 8x12 -> 4x6 (k3 s2 p1): (2, 3) = 27, then (1, 1) = 7; keys are the tokens.
# PVTv2 16x24 -> 8x12 -> 4x6 -> 2x3 (patch embeddings k3 s2 p1): (2, 3) = 27, (1, 1) = 7, (0, 0);
# keys pooled by sr 4, 2, 2, 1: (1, 1) = 7 of 4x6, (1, 1) = 7 of 4x6, (0, 0) of 2x3, (0, 0).
PATCH = (5, 7)
EXPECTED = {  # per layer: (query token, key token)
    "timm_pit": [(122, 122)] * 2 + [(27, 27), (7, 7)],
    "timm_pvt_v2": [(127, 7)] * 2 + [(27, 7), (7, 0), (0, 0)],
    "hf_pvt_v2": [(127, 7)] * 2 + [(27, 7), (7, 0), (0, 0)],
    # Twins 16x32 -> 8x16 -> 4x8 -> 2x4, local (window) and sub-sampled (sr 4, 2, 2, 1) layers alternating
    "timm_twins_svt": [(5 * 32 + 7, 5 * 32 + 7), (5 * 32 + 7, 1 * 8 + 1), (2 * 16 + 3,) * 2, (1 * 8 + 1,) * 2,
                       (9, 0), (0, 0)],
    # MViTv2 with a class token, 16x16 -> 8x8 -> 4x4 through the pooled shortcut (3x3 max pool, stride 2,
    # padding 1: row 5 lies first under row 2, row 7 under 3); keys pooled 3x3 at stride 4 (rows
    # [4i - 1, 4i + 1]: row 5 under 1, column 7 under 2), then stride 2 (as the shortcut), then not at all
    "timm_mvitv2_cls": [(87, 6), (87, 6), (19, 19), (5, 19)],
}


def skeleton(grid, prefix=(), **merges):
    """A pooled layer kept only for its place in the chain (what the covers read)."""
    return Pooled(None, grid, prefix=prefix, **merges)


def test_query_and_key_cover_through_an_overlapping_merge():
    """First grid 5x5 with a class token; an overlapping 3x3 stride-2 convolution (padding 1) into
    3x3, whose keys are pooled 2x2 (an odd side: the last key has one source row); then a pooled
    residual (MViTv2's shortcut, 3x3 stride 2 padding 1) into 2x2 queries over unpooled keys.
    By hand, first-grid row r lies under row [0, 0, 1, 1, 2][r] of 3x3 (rows 1 and 3 are taken
    by two windows: the first), key row [0, 0, 0, 0, 1][r] of 2x2, query row [0, 0, 0, 0, 1][r]
    of 2x2; columns alike. Last, keys pooled 3x3 at stride 1 (padding 1), each key's window
    centred on its own token: every token lies under the key centred on it, not the first
    window that takes it."""
    layers = [skeleton((5, 5), ("cls",)),
              skeleton((3, 3), ("cls",), entry=conv_merge((5, 5), (3, 3), 3, 2, 1, prefix=1),
                       keys=conv_merge((3, 3), (2, 2), 2, 2, 0, prefix=1)),
              skeleton((2, 2), ("cls",), skip=conv_merge((3, 3), (2, 2), 3, 2, 1, prefix=1)),
              skeleton((2, 2), ("cls",), keys=conv_merge((2, 2), (2, 2), 3, 1, 1, prefix=1))]
    stages = stages_of(layers)
    assert stages.stage == (0, 1, 2, 2) and stages.grids == ((5, 5), (3, 3), (2, 2)) and stages.first == (5, 5)
    assert stages.keys == ((5, 5), (2, 2), (3, 3), (2, 2))

    def table(rows, side):
        return [rows[r] * side + rows[c] for r in range(5) for c in range(5)]

    to3, to2 = [0, 0, 1, 1, 2], [0, 0, 0, 0, 1]
    assert stages.cover.tolist() == [list(range(25)), table(to3, 3), table(to2, 2)]
    assert stages.key_cover.tolist() == [list(range(25)), table(to2, 2), table(to3, 3), table(to2, 2)]
    assert [stages.label(n) for n in range(3)] == ["stage 1 · layer 0 · 5x5",
                                                   "stage 2 · layer 1 · 3x3 queries → 2x2 keys",
                                                   "stage 3 · layer 2 · 2x2 queries → 3x3 keys"]


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def setup(request):
    build, size, grid = MODELS[request.param]
    model = build()
    x = images_for(size, batch=2)
    return request.param, model, x, [ref.Reference(model, x[i:i + 1], 1) for i in range(2)], grid


def reference_row(dense, layer, query, keys):
    """(heads, K) the reference's row of `query` (an index of the layer's tokens) over its K grid keys."""
    a = dense.attentions[layer]
    return a[:, query, a.shape[-1] - keys:]


def test_stage_attention_is_each_layers_dense_row(setup):
    name, model, x, references, grid = setup
    dense, prefix = references[0], references[0].prefix
    patch = PATCH[0] * grid[1] + PATCH[1]
    result = stage_attention(model, x[:1], patch=patch)
    assert [(item.token, int(result.stages.key_cover[n, patch])) for n, item in enumerate(result.layers)] \
        == EXPECTED[name]
    for number, item in enumerate(result.layers):
        keys = item.keys[0] * item.keys[1]
        own = prefix if item.window is None else 0  # window layers (Twins) have no prefix
        want = reference_row(dense, number, own + item.token, keys)
        assert want.std() > 0.1 * want.mean(), "the reference row is flat: the check could not fail"
        torch.testing.assert_close(item.maps.flatten(1), want, atol=5e-4, rtol=1e-3)
        key = EXPECTED[name][number][1]
        torch.testing.assert_close(result.upsampled(number).flatten(1)[:, patch], item.maps.flatten(1)[:, key])
    mean = stage_attention(model, x[:1])
    for number, item in enumerate(mean.layers):
        own = prefix if item.window is None else 0
        a = dense.attentions[number]
        want = a[:, own:, a.shape[-1] - item.keys[0] * item.keys[1]:].mean(1)
        torch.testing.assert_close(item.maps.flatten(1), want, atol=5e-5, rtol=1e-3)
    if prefix:  # PiT, MViTv2: the class token's rows
        cls = stage_attention(model, x[:1], token="cls")
        for number, item in enumerate(cls.layers):
            torch.testing.assert_close(item.maps.flatten(1), reference_row(dense, number, 0, item.maps[0].numel()),
                                       atol=5e-4, rtol=1e-3)


def decoded(data, image, layer, query):
    """What the page reads for query `query` (an index of the layer's tokens): (levels (heads, K)
    over the layer's key grid, row maxima (heads,))."""
    shape = data["windows"][layer]
    if shape.get("pooled"):
        levels, scales, _ = pooled_levels(data, image, layer)
        return levels[:, query], np.exp(-scales[:, query].astype(float) / SCALE_STEPS)
    levels, scales, index = window_levels(data, image, layer)
    window, slot = map(int, np.argwhere(index == query)[0])
    grid = data["stages"][shape["stage"]]["grid"]
    out = np.zeros((levels.shape[0], grid[0] * grid[1]))
    keys = index[window]
    out[:, keys[keys >= 0]] = levels[:, window, slot][:, keys >= 0]
    return out, np.exp(-scales[:, window, slot].astype(float) / SCALE_STEPS)


def test_explorer_data_is_each_layers_dense_row(setup):
    """What the page stores for the token under a patch (and PiT's class token), per layer and
    head, decoded as the page does: the quantised dense row over the layer's keys."""
    name, model, x, references, grid = setup
    data = model_data(model, x, [])
    prefix = references[0].prefix
    patch = PATCH[0] * grid[1] + PATCH[1]
    covers = [unpack(s["cover"], "<i4", (-1,)) for s in data["stages"]]
    for image, dense in enumerate(references):
        for number, shape in enumerate(data["windows"]):
            token, key = EXPECTED[name][number]
            assert int(covers[shape["stage"]][patch]) == token
            own = shape.get("prefix", 0)
            queries = [own + token] + ([0] if own else [])  # the patch's token, the class token
            if shape.get("pooled"):
                assert int(pooled_levels(data, image, number)[2][patch]) == key
            for query in queries:
                levels, maxima = decoded(data, image, number, query)
                want = reference_row(dense, number, query, levels.shape[1]).double()
                peak = want.amax(-1, keepdim=True)
                expected = np.round(LEVELS * np.sqrt((want / peak).numpy()))
                assert np.abs(levels - expected).max() <= 1 and (levels == expected).mean() > 0.9
                assert np.allclose(maxima, peak[:, 0].numpy(), rtol=0.02)
    assert prefix == (1 if name in ("timm_pit", "timm_mvitv2_cls") else 0)


def test_inspect_cli_on_a_hugging_face_pvt_v2_folder(tmp_path):
    """The CLI on a saved Hugging Face PVTv2: the report with the explorer by stage (pooled keys)
    and a figure per stage."""
    transformers = pytest.importorskip("transformers")
    hf_pvt()().save_pretrained(tmp_path / "pvt")
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "pvt")
    images = write_images(tmp_path)
    result = CliRunner().invoke(main, ["inspect", *map(str, images), "-m", f"hf:{tmp_path / 'pvt'}", "--interactive",
                                       "--methods", "rollout", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    data = json.loads(re.search(r'id="vitx-explorer-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    model = next(iter(data["models"].values()))
    assert [s["grid"] for s in model["stages"]] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert model["windows"][0]["label"] == "stage 1 · layer 0 · 16x16 queries → 4x4 keys"
    for stage in (1, 2, 3, 4):
        assert f"attention-stage-{stage}.png" in page
