"""Pictures of the views in `vitx.views`: labelled grids of small maps and per-layer plots.

Every function returns an (H, W, 3) uint8 RGB array (save with `vitx.imaging.save_png`),
drawn with OpenCV so that no plotting library is needed.
"""
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..imaging import COLORMAPS, line_chart, overlay

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(canvas, text, origin, scale=0.4, colour=(0, 0, 0)):
    cv2.putText(canvas, text, origin, FONT, scale, colour, 1, cv2.LINE_AA)


def colourise(values: np.ndarray, size: int, low=None, high=None, colormap="viridis") -> np.ndarray:
    """(h, w) values -> (size, size, 3) uint8, nearest-neighbour so patches stay visible."""
    values = np.asarray(values, dtype=np.float64)
    low = values.min() if low is None else low
    high = values.max() if high is None else high
    scaled = np.clip((values - low) / ((high - low) or 1.0), 0, 1)
    big = cv2.resize(np.uint8(scaled * 255), (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(big, COLORMAPS[colormap])[..., ::-1].copy()


def tile_grid(tiles: Sequence[Sequence[np.ndarray]], row_labels=(), column_labels=(), gap: int = 2) -> np.ndarray:
    """Rows of equally sized RGB tiles on white, with optional row and column labels."""
    height, width = tiles[0][0].shape[:2]
    left = 8 + 7 * max((len(label) for label in row_labels), default=0)
    top = 18 if column_labels else 2
    columns = max(len(row) for row in tiles)
    canvas = np.full((top + len(tiles) * (height + gap), left + columns * (width + gap), 3), 255, np.uint8)
    for c, label in enumerate(column_labels):
        _text(canvas, str(label), (left + c * (width + gap) + 2, 13), 0.38)
    for r, row in enumerate(tiles):
        y = top + r * (height + gap)
        if r < len(row_labels):
            _text(canvas, str(row_labels[r]), (4, y + height // 2 + 4), 0.38)
        for c, tile in enumerate(row):
            x = left + c * (width + gap)
            canvas[y:y + height, x:x + width] = tile
    return canvas


def _upscale(view: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(view, (size, size), interpolation=cv2.INTER_NEAREST if view.shape[0] < size else cv2.INTER_AREA)


def attention_grid(maps, view: np.ndarray, cell: int = 72) -> np.ndarray:
    """(layers, heads, h, w) attention maps as overlays on the view: a row per layer, a
    column per head; each map scaled to its own maximum (the pattern, not the magnitude)."""
    base = _upscale(view, cell)
    rows = []
    for layer in np.asarray(maps):
        rows.append([overlay(base, head / max(head.max(), 1e-12), alpha=0.6) for head in layer])
    return tile_grid(rows, [f"L{i}" for i in range(len(rows))], [f"head {h}" for h in range(len(rows[0]))])


def method_row(view: np.ndarray, maps: Dict[str, np.ndarray], cell: int = 112) -> np.ndarray:
    """The input, then each method's map over it, side by side."""
    base = _upscale(view, cell)
    tiles = [base] + [overlay(base, m) for m in maps.values()]
    return tile_grid([tiles], (), ["input"] + list(maps))


def filters_figure(components, variance=None, cell: int = 48, columns: int = 7) -> np.ndarray:
    """Principal components of the patch filters: RGB for 3-channel inputs, grey otherwise,
    each scaled symmetrically around 0 (mid-grey = 0)."""
    components = np.asarray(components, dtype=np.float64)
    tiles = []
    for comp in components:
        peak = np.abs(comp).max() or 1.0
        image = np.uint8(np.clip((comp / peak + 1) / 2, 0, 1) * 255).transpose(1, 2, 0)
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
        tiles.append(cv2.resize(np.ascontiguousarray(image), (cell, cell), interpolation=cv2.INTER_NEAREST))
    while len(tiles) % columns:
        tiles.append(np.full((cell, cell, 3), 255, np.uint8))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    labels = [f"PC{i + 1}" + (f" {100 * float(variance[i]):.0f}%" if variance is not None else "")
              for i in range(min(columns, len(components)))]
    return tile_grid(rows, (), labels)


def activations_figure(activations, view: np.ndarray, count: int = 15, cell: int = 64, columns: int = 8):
    """The input, then the `count` patch-embedding channels that vary most over the image."""
    activations = np.asarray(activations, dtype=np.float64)
    order = np.argsort(-activations.reshape(len(activations), -1).var(axis=1))[:count]
    tiles = [_upscale(view, cell)] + [colourise(activations[c], cell) for c in order]
    labels = ["input"] + [f"ch {c}" for c in order]
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    rows[-1] = rows[-1] + [np.full((cell, cell, 3), 255, np.uint8)] * (columns - len(rows[-1]))
    return np.concatenate([tile_grid([row], (), labels[i * columns:(i + 1) * columns])
                           for i, row in enumerate(rows)], axis=0)


def position_similarity_figure(similarity, cell: int = 40) -> np.ndarray:
    """The ViT paper's grid: tile (i, j) is position (i, j)'s cosine similarity to every
    position, on a shared -1..1 scale."""
    similarity = np.asarray(similarity)
    rows = [[colourise(similarity[i, j], cell, -1.0, 1.0) for j in range(similarity.shape[1])]
            for i in range(similarity.shape[0])]
    return tile_grid(rows, [str(i) for i in range(len(rows))], [str(j) for j in range(similarity.shape[1])])


def layer_scatter(series: Dict[str, np.ndarray], title: str, y_label: str, size=(300, 420),
                  y_range: Optional[Sequence[float]] = None, reference: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Per-layer values of every head (a dot each), one colour per model: x is the depth.

    series: name -> (layers, heads) array. reference: label -> value, drawn as a grey
    horizontal line (e.g. what uniform attention would give).
    """
    reference = reference or {}
    height, width = size
    left, right, top, bottom = 46, width - 12, 30 + 14 * len(series), height - 30
    canvas = np.full((height, width, 3), 255, np.uint8)
    _text(canvas, title, (left, 16), 0.45)
    values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in series.values()] +
                            [np.asarray(list(reference.values()), dtype=np.float64)])
    low, high = y_range if y_range is not None else (0.0, float(values.max()) * 1.05 or 1.0)
    layers = max(np.asarray(v).shape[0] for v in series.values())

    def to_y(value):
        return int(bottom - (value - low) / ((high - low) or 1.0) * (bottom - top))

    cv2.rectangle(canvas, (left, top), (right, bottom), (200, 200, 200), 1)
    for tick in np.linspace(low, high, 5):
        _text(canvas, f"{tick:.3g}", (2, to_y(tick) + 4), 0.33, (90, 90, 90))
    span = (right - left) / max(layers, 1)
    for layer in range(layers):
        _text(canvas, str(layer), (int(left + (layer + 0.5) * span) - 3, bottom + 14), 0.35, (90, 90, 90))
    _text(canvas, "layer", (right - 36, height - 4), 0.35, (90, 90, 90))
    _text(canvas, y_label, (left, top - 4), 0.35, (90, 90, 90))
    for label, value in reference.items():
        y = to_y(value)
        for x in range(left, right, 8):
            cv2.line(canvas, (x, y), (min(x + 4, right), y), (150, 150, 150), 1)
        _text(canvas, label, (right - 7 * len(label) - 4, y - 4), 0.33, (120, 120, 120))
    for m, (name, value) in enumerate(series.items()):
        colour = PALETTE[m % len(PALETTE)]
        offset = (m + 1) / (len(series) + 1) - 0.5
        for layer, heads in enumerate(np.asarray(value, dtype=np.float64)):
            x = int(left + (layer + 0.5 + 0.6 * offset) * span)
            for v in heads:
                cv2.circle(canvas, (x, to_y(v)), 3, colour, -1, cv2.LINE_AA)
        _text(canvas, name, (left + 4, 28 + 14 * m), 0.38, colour)
    return canvas


def training_curves(history: List[dict]) -> np.ndarray:
    """Train loss and test accuracy per epoch, side by side."""
    loss = line_chart("train loss", {"loss": ([h["train_loss"] for h in history], (200, 60, 40))}, size=(260, 320))
    accuracy = line_chart("test accuracy", {"accuracy": ([h["test_accuracy"] for h in history], (40, 120, 220))},
                          size=(260, 320))
    return np.concatenate([loss, accuracy], axis=1)
