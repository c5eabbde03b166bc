"""Hierarchical models (Swin) by stage in `vitx inspect`: each layer's attention on its own
stage's grid (vitx.views.stage_attention, the explorer's data) against the dense reference of
tests/window_reference.py, the patch -> stage-token cover against hand-computed grids, and
raw_attention per layer against the per-stage maps."""
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vitx
import window_reference as ref
from compat_rows import hf_swin, loud_head, timm_model, torchvision_swin
from framework_models import write_images
from helpers import images_for
from vitx.capture.windows import Merge, Windowed, patch_merge, window_index
from vitx.cli.main import main
from vitx.errors import VitxError
from vitx.inspect.explorer import LEVELS, SCALE_STEPS, model_data, unpack, window_levels
from vitx.inspect.stages import stage_attention, stages_of

SWIN = dict(img_size=(32, 64), patch_size=2, window_size=4, embed_dim=24, num_heads=(2, 2, 2), depths=(2, 2, 2))
MODELS = {
    "timm_swin": lambda: loud_head(timm_model("swin_tiny_patch4_window7_224", **SWIN)()),
    "timm_swinv2": lambda: loud_head(timm_model("swinv2_tiny_window8_256", **SWIN)()),
    "hf_swin": lambda: loud_head(hf_swin("swin")()),
    "torchvision_swin": lambda: loud_head(torchvision_swin("swin_t")()),
}
PATCH = (5, 7)  # on the first grid, 16x32: under token (2, 3) of the 8x16 stage and (1, 1) of the 4x8 one
TOKENS = [5 * 32 + 7] * 2 + [2 * 16 + 3] * 2 + [1 * 8 + 1] * 2  # per layer, by hand
GRIDS = [(16, 32)] * 2 + [(8, 16)] * 2 + [(4, 8)] * 2


def layer(grid, entry=None):
    """A window layer kept only for its place in the chain (what the cover reads)."""
    return Windowed(None, window_index(grid, (2, 2), (0, 0)), grid, entry)


def test_cover_follows_the_merge_sources_not_a_factor_of_two():
    """6x6 -> 2x2 by a 3x3 merge (each next token the mean of a 3x3 block), then 2x2 -> 1x1;
    and Swin's 2x2 merging of an odd grid, 5x7 -> 3x4 -> 2x2 (border tokens cover fewer patches)."""
    blocks = torch.tensor([[(3 * i + a) * 6 + 3 * j + b for a in range(3) for b in range(3)]
                           for i in range(2) for j in range(2)])
    stages = stages_of([layer((6, 6)), layer((2, 2), Merge(blocks, 36)), layer((2, 2)),
                        layer((1, 1), patch_merge((2, 2), (1, 1)))])
    assert stages.stage == (0, 1, 1, 2) and stages.grids == ((6, 6), (2, 2), (1, 1))
    expected = [[r * 6 + c for r in range(6) for c in range(6)],
                [(r // 3) * 2 + c // 3 for r in range(6) for c in range(6)], [0] * 36]
    assert stages.cover.tolist() == expected
    stages = stages_of([layer((5, 7)), layer((3, 4), patch_merge((5, 7), (3, 4))),
                        layer((2, 2), patch_merge((3, 4), (2, 2)))])
    # patch (4, 6): token (2, 3) = 11 of 3x4 (which covers it alone), then token (1, 1) = 3 of 2x2
    assert stages.cover[:, 4 * 7 + 6].tolist() == [34, 11, 3]
    assert stages.cover[1].reshape(5, 7)[4].tolist() == [8, 8, 9, 9, 10, 10, 11]
    assert (stages.cover[1] == 11).sum() == 1 and (stages.cover[1] == 0).sum() == 4
    assert stages.label(2) == "stage 3 · layer 2 · 2x2"


def test_views_of_stages_need_window_layers():
    with pytest.raises(VitxError, match="hierarchical model"):
        stages_of([torch.rand(1, 2, 5, 5)])


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    model = MODELS[request.param]()
    x = images_for((32, 64), batch=2)
    return model, x, [ref.Reference(model, x[i:i + 1], 1) for i in range(2)]


def test_stage_attention_is_each_layers_dense_attention(setup):
    model, x, references = setup
    dense = references[0]
    patch = PATCH[0] * 32 + PATCH[1]
    result = stage_attention(model, x[:1], patch=patch)
    assert [item.grid for item in result.layers] == GRIDS == dense.grids
    assert [item.token for item in result.layers] == TOKENS
    for number, item in enumerate(result.layers):
        want = dense.attentions[number][:, item.token]  # (heads, N) row of the full attention over the stage
        assert want.std() > 0.1 * want.mean(), "the reference row is flat: the check could not fail"
        torch.testing.assert_close(item.maps.flatten(1), want, atol=5e-4, rtol=1e-3)
        assert torch.equal(item.window.flatten(), dense.allowed[number][item.token])
    mean = stage_attention(model, x[:1])
    for number, item in enumerate(mean.layers):
        torch.testing.assert_close(item.maps.flatten(1), dense.attentions[number].mean(1), atol=5e-5, rtol=1e-3)
        assert item.token is None and item.window is None


def test_explorer_data_is_each_layers_dense_attention(setup):
    """What the page stores for the token under a patch, per layer and head, decoded as the page
    does (slot of the token in its window, the window's keys): the quantised dense row."""
    model, x, references = setup
    data = model_data(model, x, ["raw_attention"])
    assert data["layers"] == 6 and data["grid"] == [16, 32] and data["prefix"] == {}
    assert [s["grid"] for s in data["stages"]] == [[16, 32], [8, 16], [4, 8]]
    assert [w["label"] for w in data["windows"]][2] == "stage 2 · layer 2 · 8x16"
    patch = PATCH[0] * 32 + PATCH[1]
    covers = [unpack(s["cover"], "<i4", (512,)) for s in data["stages"]]
    for image, dense in enumerate(references):
        for number, shape in enumerate(data["windows"]):
            token = int(covers[shape["stage"]][patch])
            assert token == TOKENS[number]
            levels, scales, index = window_levels(data, image, number)
            window, slot = map(int, np.argwhere(index == token)[0])
            keys = index[window].astype(np.int64)
            want = dense.attentions[number][:, token].double()  # (heads, N)
            outside = np.setdiff1d(np.arange(want.shape[1]), keys)
            assert want[:, outside].abs().max() == 0  # the window holds the whole row
            peak = want.amax(-1, keepdim=True)
            expected = np.round(LEVELS * np.sqrt((want[:, keys] / peak).numpy()))
            got = levels[:, window, slot]
            assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.95
            maxima = np.exp(-scales[:, window, slot].astype(float) / SCALE_STEPS)
            assert np.allclose(maxima, peak[:, 0].numpy(), rtol=0.02)


def test_raw_attention_per_layer_is_the_stage_map_carried_to_the_first_grid():
    """`raw_attention --layer L` on a Swin is layer L's mean-token row on its own stage's grid,
    spread over the patches each token covers (1/4 of it per 2x2 merge), for every stage."""
    model, x = MODELS["timm_swin"](), images_for((32, 64), batch=1)
    stages = stage_attention(model, x)
    for number in range(6):
        for head in (0, 1):
            got = vitx.explain(model, x, method="raw_attention", layer=number, head=head).relevance[0]
            want = stages.upsampled(number)[head].flatten() / 4 ** stages.stages.stage[number]
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_inspect_cli_on_a_hugging_face_swin_folder(tmp_path):
    """The CLI on a saved Hugging Face Swin: the report with the explorer by stage and a figure
    per stage; explain's raw_attention reads a layer of any stage."""
    transformers = pytest.importorskip("transformers")
    hf_swin("swin")().save_pretrained(tmp_path / "swin")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "swin")
    images = write_images(tmp_path)
    result = CliRunner().invoke(main, ["inspect", *map(str, images), "-m", f"hf:{tmp_path / 'swin'}", "--interactive",
                                       "--methods", "raw_attention,rollout", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    data = json.loads(re.search(r'id="vitx-explorer-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    model = next(iter(data["models"].values()))
    assert [s["grid"] for s in model["stages"]] == [[16, 16], [8, 8], [4, 4]] and model["methods"] == ["raw_attention",
                                                                                                       "rollout"]
    for stage in (1, 2, 3):
        assert f"attention-stage-{stage}.png" in page
    result = CliRunner().invoke(main, ["explain", str(images[0]), "--model", f"hf:{tmp_path / 'swin'}",
                                       "--method", "raw_attention", "--layer", "3", "--out", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output


def test_a_token_taken_by_overlapping_merge_windows_goes_to_the_first():
    """A pooling merge whose windows overlap (1x5 -> 1x2, windows of 3 at stride 2) takes the
    middle token twice: it lies under the first next token; a token no window takes under none."""
    from vitx.inspect.stages import owners

    assert owners(torch.tensor([[0, 1, 2], [2, 3, -1]]), 5).tolist() == [0, 0, 0, 1, -1]


def test_padded_windows_and_an_odd_merge():
    """Grids 20x28, 10x14, 5x7, 3x4 with 3x3 windows (padding slots, and 5x7 -> 3x4 whose border
    tokens cover fewer patches): the bottom-right patch (19, 27) lies under tokens (9, 13) = 139,
    (4, 6) = 34 and (2, 3) = 11 (by hand); its rows, from the views and the explorer's data, are
    the dense reference's."""
    model = loud_head(timm_model("swin_tiny_patch4_window7_224", img_size=(40, 56), patch_size=2, window_size=3,
                                 embed_dim=24, num_heads=(2, 2, 2, 2), depths=(2, 1, 1, 1))())
    x = images_for((40, 56), batch=1)
    dense = ref.Reference(model, x, 1, padded=True)
    patch = 19 * 28 + 27
    result = stage_attention(model, x, patch=patch)
    assert [item.token for item in result.layers] == [patch, patch, 139, 34, 11]
    # token (2, 3) of 3x4 has one source, (4, 6) of 5x7: 4x4 first-grid patches; token 0 has four: 8x8
    assert (result.stages.cover[3] == 11).sum() == 16 and (result.stages.cover[3] == 0).sum() == 64
    data = model_data(model, x, [])
    for number, item in enumerate(result.layers):
        want = dense.attentions[number][:, item.token]
        torch.testing.assert_close(item.maps.flatten(1), want, atol=1e-4, rtol=1e-3)
        levels, _, index = window_levels(data, 0, number)
        window, slot = map(int, np.argwhere(index == item.token)[0])
        keys = index[window].astype(np.int64)
        real = keys >= 0
        expected = np.round(LEVELS * np.sqrt((want[:, keys[real]] / want.amax(-1, keepdim=True)).double().numpy()))
        assert np.abs(levels[:, window, slot][:, real] - expected).max() <= 1
