"""Pictures of the views in `vitx.inspect.views`, of evaluation results and of training runs.

Every function returns an (H, W, 3) uint8 RGB array (save with `vitx.imaging.save_png`,
embed with `Report`). Charts (curves, per-layer statistics) are matplotlib figures rendered
off-screen with the Agg canvas (no pyplot, no global state, no display needed); image
mosaics (attention grids, filters) are tiles composed with OpenCV, which draws the overlays.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..imaging import COLORMAPS, overlay

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def new_figure(width: float = 6.4, height: float = 4.0, dpi: int = 100) -> Figure:
    """A matplotlib Figure on its own Agg canvas (thread-safe, no pyplot state)."""
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def render(figure: Figure) -> np.ndarray:
    """Draw a Figure and return its pixels as (H, W, 3) uint8 RGB."""
    canvas = figure.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


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


def attention_grid(maps, view: np.ndarray, cell: int = 72, layer_labels: Optional[Sequence[str]] = None) -> np.ndarray:
    """(layers, heads, h, w) attention maps as overlays on the view: a row per layer (labelled
    L0, L1, ... or `layer_labels`), a column per head; each map scaled to its own maximum
    (the pattern, not the magnitude)."""
    base = _upscale(view, cell)
    rows = []
    for layer in np.asarray(maps):
        rows.append([overlay(base, head / max(head.max(), 1e-12), alpha=0.6) for head in layer])
    labels = list(layer_labels) if layer_labels is not None else [f"L{i}" for i in range(len(rows))]
    return tile_grid(rows, labels, [f"head {h}" for h in range(len(rows[0]))])


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


def layer_scatter(series: Dict[str, np.ndarray], title: str, y_label: str, size=(4.0, 5.6),
                  y_range: Optional[Sequence[float]] = None, reference: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Per-layer values of every head (a dot each), one colour per model: x is the depth.

    series: name -> (layers, heads) array. reference: label -> value, drawn as a grey dashed
    horizontal line (e.g. what uniform attention would give). size: (height, width) inches.
    """
    figure = new_figure(size[1], size[0])
    axes = figure.add_subplot()
    count = len(series)
    layers = 0
    for m, (name, value) in enumerate(series.items()):
        value = np.asarray(value, dtype=np.float64)
        layers = max(layers, value.shape[0])
        offset = 0.6 * ((m + 1) / (count + 1) - 0.5)
        xs = np.repeat(np.arange(value.shape[0]) + offset, value.shape[1])
        axes.scatter(xs, value.ravel(), s=18, color=PALETTE[m % len(PALETTE)], label=name,
                     edgecolors="none")
        axes.plot(np.arange(value.shape[0]) + offset, value.mean(1), color=PALETTE[m % len(PALETTE)], lw=1,
                  alpha=0.6)
    for label, level in (reference or {}).items():
        axes.axhline(level, color="0.5", ls="--", lw=1, label=label)
    axes.set_xticks(range(layers))
    axes.set_xlabel("layer")
    axes.set_ylabel(y_label)
    axes.set_title(title)
    if y_range is not None:
        axes.set_ylim(*y_range)
    else:
        axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return render(figure)


def training_curves(history: List[dict]) -> np.ndarray:
    """Train loss and test accuracy per epoch, side by side, with the best epoch marked."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    figure = new_figure(9.0, 3.4)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, color=PALETTE[3])
    loss_axes.set_title("train loss")
    loss_axes.set_ylabel("cross-entropy")
    accuracy = np.asarray([h["test_accuracy"] for h in history], dtype=np.float64)
    accuracy_axes.plot(epochs, 100 * accuracy, marker="o", ms=3, color=PALETTE[0])
    best = int(accuracy.argmax())
    accuracy_axes.annotate(f"{100 * accuracy[best]:.2f} %", (epochs[best], 100 * accuracy[best]),
                           textcoords="offset points", xytext=(0, -14), ha="center", fontsize="small")
    accuracy_axes.set_title("test accuracy")
    accuracy_axes.set_ylabel("%")
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    return render(figure)


def compared_curves(histories: Mapping[str, List[dict]]) -> np.ndarray:
    """Several runs' train loss and test accuracy per epoch on shared axes (one colour per
    run, its last accuracy in the legend), so that their speed and end points compare."""
    figure = new_figure(10.0, 3.6)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        colour = PALETTE[i % len(PALETTE)]
        epochs = [h.get("epoch", j + 1) for j, h in enumerate(history)]
        accuracy = [100 * h["test_accuracy"] for h in history]
        loss_axes.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, color=colour, label=name)
        accuracy_axes.plot(epochs, accuracy, marker="o", ms=3, color=colour, label=f"{name} ({accuracy[-1]:.2f} %)")
    loss_axes.set_title("train loss")
    accuracy_axes.set_title("test accuracy")
    accuracy_axes.set_ylabel("%")
    for axes in (loss_axes, accuracy_axes):
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return render(figure)


def image_table(tiles: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str], row_labels: Sequence[str] = (),
                cell: float = 1.15) -> np.ndarray:
    """Rows of RGB images (e.g. one input and its maps per row) under column titles, drawn with
    matplotlib so that titles of any length stay legible; `cell`: inches per image."""
    rows, columns = len(tiles), max(len(row) for row in tiles)
    figure = new_figure(cell * columns + 0.4, cell * rows + 0.5)
    grid = figure.subplots(rows, columns, squeeze=False)
    for r, row in enumerate(tiles):
        for c in range(columns):
            axes = grid[r][c]
            axes.set_xticks([])
            axes.set_yticks([])
            if c < len(row):
                axes.imshow(row[c], interpolation="nearest")
            else:
                axes.set_axis_off()
            if r == 0 and c < len(column_titles):
                axes.set_title(column_titles[c], fontsize="x-small")
            if c == 0 and r < len(row_labels):
                axes.set_ylabel(row_labels[r], fontsize="small")
    return render(figure)


EVALUATION_TESTS = (("positive_accuracy", "positive perturbation (lower is better)", "fraction of patches removed",
                     "top-1 accuracy"),
                    ("negative_accuracy", "negative perturbation (higher is better)", "fraction of patches removed",
                     "top-1 accuracy"),
                    ("deletion", "deletion (lower is better)", "fraction of patches removed", "target probability"),
                    ("insertion", "insertion (higher is better)", "fraction of patches inserted",
                     "target probability"))


def evaluation_curves(results: Mapping[str, dict]) -> np.ndarray:
    """`vitx evaluate` results: one panel per test, every method a line (AUC in the legend),
    the random map in grey and dashed."""
    from ..evaluate.metrics import DELETION_STEPS, PERTURBATION_FRACTIONS

    figure = new_figure(16.0, 4.0)
    panels = figure.subplots(1, len(EVALUATION_TESTS), sharey=True)
    for axes, (test, title, x_label, y_label) in zip(panels, EVALUATION_TESTS):
        for i, (method, result) in enumerate(results.items()):
            values = result["curves"][test]
            xs = PERTURBATION_FRACTIONS if "accuracy" in test else \
                [step / DELETION_STEPS for step in range(DELETION_STEPS + 1)]
            area = result.get("auc", {}).get(f"{test}_auc")
            label = method + (f" ({area:.3f})" if area is not None else "")
            style = dict(color="0.5", ls="--") if method == "random" else dict(color=PALETTE[i % len(PALETTE)])
            axes.plot(xs[:len(values)], values, marker="o", ms=3, label=label, **style)
        axes.set_title(title, fontsize="medium")
        axes.set_xlabel(x_label)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", title="method (AUC)", title_fontsize="small")
    panels[0].set_ylabel("top-1 accuracy / target probability")
    return render(figure)


def sanity_curves(result) -> np.ndarray:
    """Cascading randomisation (a `vitx.evaluate.sanity.SanityResult`): Spearman correlation
    and SSIM between the trained and the randomised model's maps, per step, per method."""
    figure = new_figure(11.0, 4.0)
    rank_axes, ssim_axes = figure.subplots(1, 2, sharey=True)
    steps = list(range(len(result.steps)))
    for i, method in enumerate(result.spearman):
        colour = PALETTE[i % len(PALETTE)]
        rank_axes.plot(steps, result.spearman[method], marker="o", ms=3, color=colour, label=method)
        ssim_axes.plot(steps, result.ssim[method], marker="o", ms=3, color=colour, label=method)
    rank_axes.axhline(result.threshold, color="0.5", ls="--", lw=1, label=f"pass below {result.threshold:g}")
    for axes, title in ((rank_axes, "Spearman rank correlation"), (ssim_axes, "SSIM")):
        axes.set_xticks(steps, result.steps, rotation=60, ha="right", fontsize="small")
        axes.set_xlabel("randomised down to")
        axes.set_title(f"{title} with the trained model's maps", fontsize="medium")
        axes.set_ylim(min(-0.1, axes.get_ylim()[0]), 1.05)
        axes.grid(alpha=0.3)
    rank_axes.set_ylabel("similarity")
    rank_axes.legend(fontsize="small")
    return render(figure)


def write_sanity(result, out) -> list:
    """sanity.json, sanity.md and sanity.png (similarity per cascade step) in `out`."""
    import json
    from pathlib import Path

    from ..imaging import save_png
    from ..markdown import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sanity.json").write_text(json.dumps(result.as_dict(), indent=1))
    (out / "sanity.md").write_text(
        f"Cascading randomisation (Adebayo et al. 2018), {result.count} images, steps: "
        f"{', '.join(result.steps[1:])}\n\n{markdown_table(result.header(), result.rows())}\n")
    save_png(out / "sanity.png", sanity_curves(result))
    return [out / "sanity.json", out / "sanity.md", out / "sanity.png"]
