"""The interactive attention explorer embedded in the report (`vitx inspect --interactive`).

For every image and model the page carries exactly what its views need:
- attention rows: for every layer, head and query token (prefix tokens and every patch),
  the attention to the patch keys, each row divided by its maximum and quantised to 4 bits
  on a square-root scale (q = round(15 sqrt(a / max)), shown as (q / 15)^2: finer steps where
  attention is small), two values a byte, plus the row maxima on a log scale (uint8
  s = round(-32 ln max), 3 % steps) so that heads can be fused (mean / max) in the browser
  with the right weights;
- each method's map for the predicted class, quantised to uint8;
- the input as the model saw it (PNG).
The binary arrays are zlib-compressed and base64-encoded inside one JSON script tag; the
page inflates them with the browser's own `DecompressionStream("deflate")`. The script
(`explorer.js`, plain JavaScript, no framework, no network) draws on canvases.

Layout of `attention` (after inflating): uint8[layers][heads][tokens][ceil(patches / 2)],
token order as in the model's sequence, patch 2j in the low and 2j + 1 in the high nibble of
byte j; `scales`: uint8[layers][heads][tokens], max = exp(-s / 32).

A hierarchical model (Swin: window layers over a grid per stage) stores, per layer, its
window blocks instead: `attention[layer]`: uint8[heads][windows][n][ceil(n / 2)] (a slot's
row over the n slots of its window), `scales[layer]`: uint8[heads][windows][n]; the model
carries each layer's window partition (`windows`, `indices`: int32 grid token per slot, -1 =
padding) and each stage's grid with the stage token covering every first-grid patch
(`stages`: how a patch clicked on the image becomes the query of every stage). Only the n
keys a window can reach are stored: a Swin-T stage-1 layer is 64 x 49^2 values per head,
not 3136^2. A pooled layer (PiT, PVTv2, Twins' sub-sampled layers, MViTv2: queries attend to
keys pooled from the stage's tokens) stores its rows over its key grid instead:
`attention[layer]`: uint8[heads][queries][ceil(K / 2)] (every query token, prefix first, over
the K keys of the key grid, prefix keys left out), `scales[layer]`: uint8[heads][queries]; the
layer's entry in `windows` says `pooled`, its query and prefix counts, its key grid and which
of the shared `key_covers` (int32, the key covering each first-grid patch) draws its keys on
the image. A PVTv2-B0 stage-1 layer is 3136 x 49 values per head.
"""
import base64
import json
import zlib
from pathlib import Path
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from ..attribution.api import explain
from ..attribution.targets import as_logits
from ..capture.model_state import evaluation_mode
from ..inputs import model_inputs
from ..capture.recorder import AttentionRecorder
from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError
from ..models import class_names
from ..capture.stages import StageLayer
from ..capture.windows import Windowed
from .stages import key_grid, stages_of

SCRIPT = Path(__file__).with_name("explorer.js")


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 9)).decode("ascii")


def unpack(text: str, dtype, shape) -> np.ndarray:
    """The inverse of the page's encoding (tests and research code read the data back)."""
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).reshape(shape)


LEVELS = 15
SCALE_STEPS = 32.0


def quantise_rows(attention: torch.Tensor, start: int, count: int):
    """(L, H, N, N) attention -> (uint8 (L, H, N, P) levels 0..15 of each row over the P patch
    keys, uint8 (L, H, N) log row maxima): level = round(15 sqrt(a / max)), s = round(-32 ln max)."""
    rows = attention[..., start:start + count].float()
    scales = rows.amax(-1)
    relative = (rows / scales.clamp_min(1e-12)[..., None]).clamp(0, 1)
    levels = torch.round(relative.sqrt() * LEVELS).to(torch.uint8)
    logs = torch.round(-SCALE_STEPS * scales.clamp_min(1e-30).log()).clamp(0, 255).to(torch.uint8)
    return levels.numpy(), logs.numpy()


def pack_nibbles(levels: np.ndarray) -> np.ndarray:
    """(..., P) values 0..15 -> (..., ceil(P / 2)) bytes: even index low nibble, odd high."""
    if levels.shape[-1] % 2:
        levels = np.concatenate([levels, np.zeros(levels.shape[:-1] + (1,), np.uint8)], -1)
    return (levels[..., 0::2] | (levels[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    both = np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)
    return both[..., :count]


def displayed(levels: np.ndarray) -> np.ndarray:
    """What the page draws for a single head, as 0..255 (round(255 (q / 15)^2))."""
    return np.round(255 * (levels.astype(np.float64) / LEVELS) ** 2).astype(int)


def _png(rgb: np.ndarray) -> str:
    from ..imaging import png_bytes

    return base64.b64encode(png_bytes(rgb, "an image for the explorer")).decode("ascii")


def dense_item(attention: torch.Tensor, layout) -> dict:
    """One image's (L, H, N, N) attention of a single-grid ViT, as the page stores it."""
    rows, scales = quantise_rows(attention, layout.patch_start, layout.num_patches)
    return {"attention": _pack(pack_nibbles(rows)), "scales": _pack(scales)}


def stage_item(layers: Sequence, image: int) -> dict:
    """One image's stage layers (hierarchical models), layer by layer: a window layer's blocks
    (heads, windows, n, n), padding slots zeroed, as rows of n keys; a pooled layer's rows
    (heads, queries, K) of every query token (prefix first) over the K keys of its key grid,
    the prefix keys left out (`quantise_rows`)."""
    attention, scales = [], []
    for layer in layers:
        if isinstance(layer, Windowed):
            rows, logs = quantise_rows(layer.blocks[image] * layer.pairs(), 0, layer.blocks.shape[-1])
        else:
            grid = key_grid(layer)
            count = grid[0] * grid[1]
            rows, logs = quantise_rows(layer.blocks[image], layer.blocks.shape[-1] - count, count)
        attention.append(_pack(pack_nibbles(rows)))
        scales.append(_pack(logs))
    return {"attention": attention, "scales": scales}


def _shared(table: List[str], array: torch.Tensor) -> int:
    """The position of `array` (int32, packed) in `table`, added once (layers share partitions and covers)."""
    packed = _pack(array.cpu().numpy().astype("<i4"))
    if packed not in table:
        table.append(packed)
    return table.index(packed)


def stage_geometry(layers: Sequence[StageLayer]) -> dict:
    """What the page needs to read stage layers: each stage's grid and the stage token
    covering every first-grid patch (`vitx.inspect.stages`), and per layer its stage, heads and
    label; a window layer its window partition (the grid token of every window slot, shared
    `indices`); a pooled layer its query count (prefix first), prefix count, key grid and the
    key covering every first-grid patch (shared `key_covers`)."""
    stages = stages_of(layers)
    indices, key_covers, shapes = [], [], []
    for number, layer in enumerate(layers):
        shape = {"stage": stages.stage[number], "heads": layer.blocks.shape[1], "label": stages.label(number)}
        if isinstance(layer, Windowed):
            shape.update(windows=layer.blocks.shape[2], n=layer.blocks.shape[3], index=_shared(indices, layer.index))
        else:
            keys = stages.keys[number]
            shape.update(pooled=True, queries=layer.blocks.shape[2], prefix=len(layer.prefix), keys=list(keys),
                         key_cover=_shared(key_covers, stages.key_cover[number]))
        shapes.append(shape)
    return {"stages": [{"grid": list(grid), "cover": _pack(cover.numpy().astype("<i4"))}
                       for grid, cover in zip(stages.grids, stages.cover)],
            "windows": shapes, "indices": indices, "key_covers": key_covers}


def window_levels(model: dict, image: int, layer: int):
    """The inverse of `stage_item` for one window layer (tests and research code): (levels
    (heads, windows, n, n) 0..15, log row maxima (heads, windows, n), grid token of each slot (windows, n))."""
    shape = model["windows"][layer]
    heads, count, n = shape["heads"], shape["windows"], shape["n"]
    item = model["images"][image]
    levels = unpack_nibbles(unpack(item["attention"][layer], np.uint8, (heads, count, n, (n + 1) // 2)), n)
    scales = unpack(item["scales"][layer], np.uint8, (heads, count, n))
    return levels, scales, unpack(model["indices"][shape["index"]], "<i4", (count, n))


def pooled_levels(model: dict, image: int, layer: int):
    """The inverse of `stage_item` for one pooled layer: (levels (heads, queries, K) 0..15 over
    the key grid, log row maxima (heads, queries), the key covering each first-grid patch (P,))."""
    shape = model["windows"][layer]
    heads, queries, count = shape["heads"], shape["queries"], shape["keys"][0] * shape["keys"][1]
    item = model["images"][image]
    levels = unpack_nibbles(unpack(item["attention"][layer], np.uint8, (heads, queries, (count + 1) // 2)), count)
    scales = unpack(item["scales"][layer], np.uint8, (heads, queries))
    return levels, scales, unpack(model["key_covers"][shape["key_cover"]], "<i4", (-1,))


def model_data(model: nn.Module, images, methods: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE,
               options=None) -> dict:
    """Everything the explorer shows for one model on `images` (anything `explain` takes).
    A hierarchical model (window or pooled layers) is stored by stage (`stage_geometry`)."""
    adapter, pixels, views, sources = model_inputs(model, images)
    items: List[dict] = []
    layout, geometry = None, None
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start:start + batch_size]
            with AttentionRecorder(model, adapter=adapter) as recorder:
                logits = as_logits(model(chunk)).float()
                recorder.check_recorded()
            layout = recorder.layout
            layers = [a.detach().to("cpu") for a in recorder.attentions]
            if isinstance(layers[0], StageLayer):
                geometry = geometry or stage_geometry(layers)
                heads, tokens = max(a.blocks.shape[1] for a in layers), layout.num_patches
                stored = [stage_item(layers, i) for i in range(chunk.shape[0])]
            else:
                stacked = torch.stack(layers, 1)  # (B, L, H, N, N)
                heads, tokens = stacked.shape[2], stacked.shape[3]
                stored = [dense_item(stacked[i], layout) for i in range(chunk.shape[0])]
            probabilities = logits.softmax(-1).cpu()
            for i, item in enumerate(stored):
                top = int(probabilities[i].argmax())
                items.append(dict(item, predicted=top, probability=round(float(probabilities[i, top]), 4)))
    names = class_names(model, logits.shape[-1])
    method_maps: Dict[str, list] = {}
    for method in methods:
        try:
            exp = explain(model, pixels, method=method, batch_size=batch_size, **(options or {}).get(method, {}))
        except VitxError:
            continue  # a method this model cannot run: the switcher simply lacks it
        method_maps[method] = [_pack(np.uint8(np.round(m.numpy() * 255))) for m in exp.maps]
    for i, item in enumerate(items):
        item["view"] = _png(views[i])
        item["methods"] = {m: maps[i] for m, maps in method_maps.items()}
        item["label"] = (names[item["predicted"]] if names and item["predicted"] < len(names)
                         else f"class {item['predicted']}")
        source = sources[i] if sources and i < len(sources) else None
        item["source"] = Path(source).name if source else f"image {i}"
    prefix = {name: index for name, index in layout.prefix.items()}
    return {"layers": len(layers), "heads": heads, "tokens": tokens, "grid": list(layout.grid),
            "patch_start": layout.patch_start, "prefix": prefix, "methods": list(method_maps), "images": items,
            **(geometry or {})}


def colormap_lut(name: str = "jet") -> str:
    """The 256-entry RGB lookup table of OpenCV's colour map (the static overlays' colours), hex."""
    from ..imaging import COLORMAPS

    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], COLORMAPS[name])[:, 0, ::-1]
    return lut.tobytes().hex()


def explorer_html(data: Dict[str, dict]) -> str:
    """The explorer for {model name: `model_data(...)`}: a container, the embedded data and
    the script, as one HTML fragment."""
    payload = json.dumps({"models": data, "lut": colormap_lut()}, separators=(",", ":")).replace("</", "<\\/")
    script = SCRIPT.read_text(encoding="utf-8")
    return (f'<div id="vitx-explorer" class="vx-root"><p class="note">Loading the explorer... '
            f'(it needs JavaScript and a browser with DecompressionStream)</p></div>\n'
            f'<script type="application/json" id="vitx-explorer-data">{payload}</script>\n'
            f"<script>{script}</script>")


EXPLAINER_TEXT = ("Hover over a patch to see where it attends (click to pin it, click again to release); "
                  "or choose a prefix token (cls, dist, registers). Pick the layer and the head, or fuse the heads "
                  "(mean, max), or switch to a method's map. Each row is scaled to its own maximum. The selected "
                  "patch is outlined in white.")


STAGES_TEXT = ("A hierarchical model (Swin, PiT, PVTv2, Twins, MViTv2) is shown by stage: each layer from the token of "
               "its stage that covers the chosen patch (outlined), over its keys (named in the layer list): a window "
               "layer's keys are its stage's grid, the token's window dashed; a pooled layer's keys are pooled from "
               "the stage's tokens, each key drawn over the patches it covers.")


def add_explorer_section(report, models, images, methods, title: str = "Interactive explorer", options=None,
                         batch_size: int = DEFAULT_BATCH_SIZE):
    section = report.section(title)
    section.text(EXPLAINER_TEXT)
    data = {}
    for name, model in models.items():
        try:
            data[name] = model_data(model, images, methods, batch_size=batch_size, options=options)
        except VitxError as exc:  # a model whose attention vitx cannot record: say why, show the others
            section.text(f"{name}: not shown ({exc})", "note")
    if any("stages" in d for d in data.values()):
        section.text(STAGES_TEXT)
    if data:
        section.raw(explorer_html(data))
    return section


__all__ = ["add_explorer_section", "explorer_html", "model_data", "quantise_rows", "unpack"]
