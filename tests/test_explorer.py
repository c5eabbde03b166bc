"""The interactive explorer: its data against independent attention, and a real browser
(Playwright driving Debian's chromium) clicking patches, changing layers, switching methods."""
import json
import re

import cv2
import numpy as np
import pytest
import torch
from browser import SKIP_REASON, browser, headless_page
from helpers import images_for, reference_attention, tiny_timm

import vitx
from vitx.inspect.explorer import LEVELS, SCALE_STEPS, displayed, pack_nibbles, unpack, unpack_nibbles
from vitx.inspect.inspection import inspect_models


def embedded(page):
    text = re.search(r'<script type="application/json" id="vitx-explorer-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(text.replace("<\\/", "</"))


def attention_levels(model_data, index):
    m = model_data
    patches = m["grid"][0] * m["grid"][1]
    packed = unpack(m["images"][index]["attention"], np.uint8, (m["layers"], m["heads"], m["tokens"], (patches + 1) // 2))
    scales = unpack(m["images"][index]["scales"], np.uint8, (m["layers"], m["heads"], m["tokens"]))
    return unpack_nibbles(packed, patches), scales.astype(np.float64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    models = {"vit": tiny_timm("vit_tiny_patch16_224"), "deit": tiny_timm("deit_tiny_distilled_patch16_224", seed=1)}
    images = images_for((32, 32), batch=2)
    path = inspect_models(models, images, tmp_path_factory.mktemp("explorer"), methods=["rollout", "grad_rollout"],
                          show=2, interactive=True)
    return path, models, images


def test_nibbles_round_trip():
    levels = np.random.default_rng(0).integers(0, 16, (3, 7), dtype=np.uint8)
    assert np.array_equal(unpack_nibbles(pack_nibbles(levels), 7), levels)


def test_embedded_rows_are_the_models_attention(report):
    path, models, images = report
    data = embedded(path.read_text())
    assert set(data["models"]) == {"vit", "deit"}
    deit = data["models"]["deit"]
    assert deit["prefix"] == {"cls": 0, "dist": 1} and deit["patch_start"] == 2 and deit["grid"] == [4, 4]
    for name, model in models.items():
        m = data["models"][name]
        reference = torch.stack(reference_attention(model, images)).detach()  # (L, B, H, N, N), computed without vitx
        for index in range(2):
            levels, scales = attention_levels(m, index)
            rows = reference[:, index, :, :, m["patch_start"]:].double()
            peak = rows.amax(-1, keepdim=True)
            expected = np.round(LEVELS * np.sqrt((rows / peak).numpy()))
            assert np.abs(levels - expected).max() <= 1 and (levels == expected).mean() > 0.99
            assert np.allclose(np.exp(-scales / SCALE_STEPS), peak[..., 0].numpy(), rtol=0.02, atol=1e-6)
        exp = vitx.explain(model, images, method="grad_rollout")
        stored = unpack(m["images"][0]["methods"]["grad_rollout"], np.uint8, (16,))
        assert np.abs(stored.astype(int) - np.round(255 * exp.maps[0].flatten().numpy())).max() <= 1
        assert m["images"][0]["predicted"] == int(exp.targets[0])


def row(panel):
    return np.array([int(v) for v in panel.get_attribute("data-row").split(",")])


def explorer_page(path):
    """A headless chromium on the report at `path` with the explorer ready."""
    return headless_page(path, ready="#vitx-explorer[data-ready='1']")


@pytest.mark.skipif(browser() is None, reason=SKIP_REASON)
def test_explorer_in_a_headless_browser(report, tmp_path):
    path, _, _ = report
    data = embedded(path.read_text())
    vit = data["models"]["vit"]
    levels, scales = attention_levels(vit, 0)
    with explorer_page(path) as page:
        panels = page.locator(".vx-panel")
        assert panels.count() == 4  # 2 images x 2 models, side by side
        panel = page.locator(".vx-panel[data-model='vit'][data-image='0']")
        last = vit["layers"] - 1
        # start: the cls token, heads fused by their mean (weights = the row maxima)
        assert panel.get_attribute("data-query") == "cls" and panel.get_attribute("data-head") == "mean"
        weights = np.exp(-scales[last, :, 0] / SCALE_STEPS)[:, None]
        fused = ((levels[last, :, 0] / LEVELS) ** 2 * weights).mean(0)
        assert np.abs(row(panel) - np.round(255 * fused / fused.max())).max() <= 1
        panel.locator("select.vx-head").select_option("0")
        cls_row = row(panel)
        assert np.array_equal(cls_row, displayed(levels[last, 0, 0]))
        before = panel.locator("canvas").screenshot()
        # click patch (row 2, column 1) of the 4x4 grid on the 224 px canvas
        panel.locator("canvas").click(position={"x": 1.5 * 56, "y": 2.5 * 56})
        patch = 2 * 4 + 1
        assert panel.get_attribute("data-query") == f"patch:{patch}"
        clicked = row(panel)
        assert np.array_equal(clicked, displayed(levels[last, 0, vit["patch_start"] + patch]))
        assert not np.array_equal(clicked, cls_row)
        assert panel.locator("canvas").screenshot() != before  # the view changed
        panel.locator("select.vx-layer").select_option("0")
        assert panel.get_attribute("data-layer") == "0"
        assert np.array_equal(row(panel), displayed(levels[0, 0, vit["patch_start"] + patch]))
        panel.locator("select.vx-mode").select_option("rollout")
        expected = unpack(vit["images"][0]["methods"]["rollout"], np.uint8, (16,))
        assert panel.get_attribute("data-mode") == "rollout" and np.array_equal(row(panel), expected)
        deit = page.locator(".vx-panel[data-model='deit'][data-image='0']")
        deit.locator("select.vx-token").select_option("dist")
        assert deit.get_attribute("data-query") == "dist"
        shot = tmp_path / "explorer.png"
        page.locator("#vitx-explorer").screenshot(path=str(shot))
    pixels = cv2.imread(str(shot))
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2) > 60).mean()
    assert coloured > 0.02, "the explorer shows no heatmaps"


def test_static_report_has_no_script_unless_interactive(tmp_path):
    page = inspect_models({"vit": tiny_timm("vit_tiny_patch16_224")}, images_for((32, 32), batch=1), tmp_path,
                          methods=["rollout"]).read_text()
    assert "<script" not in page and "vitx-explorer" not in page


def test_a_model_the_explorer_cannot_record_gets_a_note(monkeypatch):
    from vitx import VitxError
    from vitx.inspect import explorer
    from vitx.inspect.report import Report

    def fake(model, images, methods, batch_size=None, options=None):
        if model == "bad":
            raise VitxError("no attention found")
        return {"layers": 1, "heads": 1, "tokens": 1, "grid": [1, 1], "patch_start": 0, "prefix": {}, "methods": [],
                "images": []}

    monkeypatch.setattr(explorer, "model_data", fake)
    report = Report("t")
    explorer.add_explorer_section(report, {"good": "good", "bad": "bad"}, [], [])
    page = report.html()
    assert "bad: not shown (no attention found)" in page and '"good"' in page and '"bad"' not in page


@pytest.fixture(scope="module")
def swin_report(tmp_path_factory):
    """A tiny timm Swin (first grid 16x32, then 8x16 and 4x8; 1, 2 and 3 heads per stage)."""
    from compat_rows import loud_head, timm_model

    model = loud_head(timm_model("swin_tiny_patch4_window7_224", img_size=(32, 64), patch_size=2, window_size=4,
                                 embed_dim=24, num_heads=(1, 2, 3), depths=(2, 2, 2))())
    images = images_for((32, 64), batch=1)
    path = inspect_models({"swin": model}, images, tmp_path_factory.mktemp("swin"), methods=["rollout"], show=1,
                          interactive=True)
    return path


def window_row(model_data, layer, token, head):
    """The 0..255 values the page must draw for one head: the token's slot row, on the stage's grid."""
    from vitx.inspect.explorer import window_levels

    levels, _, index = window_levels(model_data, 0, layer)
    window, slot = map(int, np.argwhere(index == token)[0])
    grid = model_data["stages"][model_data["windows"][layer]["stage"]]["grid"]
    out = np.zeros(grid[0] * grid[1], int)
    keys = index[window]
    out[keys[keys >= 0]] = displayed(levels[head, window, slot])[keys >= 0]
    return out, set(keys[keys >= 0].tolist())


@pytest.mark.skipif(browser() is None, reason=SKIP_REASON)
def test_swin_explorer_by_stage_in_a_headless_browser(swin_report):
    """Clicking patch (5, 7) of the 16x32 first grid queries token (5, 7) = 167 of stage 1, (2, 3) = 35 of
    the 8x16 stage 2 and (1, 1) = 9 of the 4x8 stage 3 (by hand); each layer shows that token's
    embedded row on its stage's grid and its window; the head list follows the stage's heads."""
    swin = embedded(swin_report.read_text())["models"]["swin"]
    with explorer_page(swin_report) as page:
        panel = page.locator(".vx-panel[data-model='swin'][data-image='0']")
        labels = panel.locator("select.vx-layer option").all_text_contents()
        assert labels[3] == "stage 2 · layer 3 · 8x16" and labels[5] == "stage 3 · layer 5 · 4x8"
        assert panel.locator("select.vx-head option").count() == 2 + 3  # mean, max, 3 heads of stage 3
        panel.locator("canvas").click(position={"x": 7.5 * 224 / 32, "y": 5.5 * 112 / 16})
        assert panel.get_attribute("data-query") == "patch:167"
        for layer, token in [(5, 9), (4, 9), (2, 35), (0, 167)]:
            panel.locator("select.vx-layer").select_option(str(layer))
            heads = swin["windows"][layer]["heads"]
            assert panel.locator("select.vx-head option").count() == 2 + heads
            panel.locator("select.vx-head").select_option(str(heads - 1))
            assert panel.get_attribute("data-token") == str(token)
            expected, window = window_row(swin, layer, token, heads - 1)
            assert np.array_equal(row(panel), expected), layer
            assert set(map(int, panel.get_attribute("data-window").split(","))) == window
            assert "stage" in panel.locator(".vx-caption").text_content()
        panel.locator("select.vx-layer").select_option("4")
        panel.locator("select.vx-head").select_option("2")
        panel.locator("select.vx-layer").select_option("2")  # a stage of 2 heads: head 2 is gone
        assert panel.get_attribute("data-head") == "mean"
        from vitx.inspect.explorer import window_levels

        levels, scales, index = window_levels(swin, 0, 2)
        window, slot = map(int, np.argwhere(index == 35)[0])
        weights = np.exp(-scales[:, window, slot].astype(float) / SCALE_STEPS)[:, None]
        fused = ((levels[:, window, slot] / LEVELS) ** 2 * weights).mean(0)
        want = np.zeros(128)
        want[index[window]] = np.round(255 * fused / fused.max())
        assert np.abs(row(panel) - want).max() <= 1
        panel.locator("select.vx-mode").select_option("rollout")
        assert np.array_equal(row(panel), unpack(swin["images"][0]["methods"]["rollout"], np.uint8, (512,)))


@pytest.fixture(scope="module")
def pooled_report(tmp_path_factory):
    """A tiny timm PVTv2 (first grid 8x12, keys pooled to 2x3) and PiT (15x23 with a class token)."""
    from test_pooled_stages import MODELS

    models = {"pvt": MODELS["timm_pvt_v2"][0](), "pit": MODELS["timm_pit"][0]()}
    return inspect_models(models, images_for((32, 48), batch=1), tmp_path_factory.mktemp("pooled"),
                          methods=["rollout"], show=1, interactive=True)


@pytest.mark.skipif(browser() is None, reason=SKIP_REASON)
def test_pooled_explorer_by_stage_in_a_headless_browser(pooled_report):
    """PVTv2: clicking patch (5, 7) of the 8x12 first grid shows, per layer, the row of the stage
    token covering it over the layer's pooled keys (the embedded row); PiT: the class token's row
    per layer, then a patch's."""
    from vitx.inspect.explorer import pooled_levels

    models = embedded(pooled_report.read_text())["models"]
    pvt, pit = models["pvt"], models["pit"]
    covers = [unpack(s["cover"], "<i4", (96,)) for s in pvt["stages"]]
    with explorer_page(pooled_report) as page:
        panel = page.locator(".vx-panel[data-model='pvt'][data-image='0']")
        labels = panel.locator("select.vx-layer option").all_text_contents()
        assert labels[0] == "stage 1 · layer 0 · 8x12 queries → 2x3 keys"
        box = panel.locator("canvas").bounding_box()
        panel.locator("canvas").click(position={"x": 7.5 * box["width"] / 12, "y": 5.5 * box["height"] / 8})
        assert panel.get_attribute("data-query") == "patch:67"
        for layer in reversed(range(pvt["layers"])):
            shape = pvt["windows"][layer]
            panel.locator("select.vx-layer").select_option(str(layer))
            panel.locator("select.vx-head").select_option(str(shape["heads"] - 1))
            token = int(covers[shape["stage"]][67])
            assert panel.get_attribute("data-token") == str(token)
            levels, _, _ = pooled_levels(pvt, 0, layer)
            assert np.array_equal(row(panel), displayed(levels[shape["heads"] - 1, token])), layer
            assert panel.get_attribute("data-window") is None
            assert f"token {token} of its stage" in panel.locator(".vx-caption").text_content()
        panel = page.locator(".vx-panel[data-model='pit'][data-image='0']")
        assert panel.get_attribute("data-query") == "cls"
        panel.locator("select.vx-head").select_option("0")
        for layer in (pit["layers"] - 1, 0):
            panel.locator("select.vx-layer").select_option(str(layer))
            levels, _, _ = pooled_levels(pit, 0, layer)
            assert np.array_equal(row(panel), displayed(levels[0, 0])), layer
        panel.locator("canvas").click(position={"x": 5, "y": 5})  # patch 0: token 0 of stage 1, query 1
        assert panel.get_attribute("data-query") == "patch:0"
        assert np.array_equal(row(panel), displayed(pooled_levels(pit, 0, 0)[0][0, 1]))
