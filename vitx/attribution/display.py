"""How an `Explanation` is looked at: panels with titles, overlays, notebook reprs, a
matplotlib figure and files. A mixin over the Explanation's data (maps, views, targets,
predictions), so the data class stays the data and every way of drawing it lives here."""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import overlay as draw_overlay
from ..imaging import panel as draw_panel
from ..imaging import png_bytes


class Display:
    """Drawing and saving, for a class with `maps`, `views`, `targets`, `method`, `token`,
    `sources`, `label()`, `top()`, `probabilities` and `explained()` (`Explanation`)."""

    def upsample(self, size=None, mode: str = "bicubic") -> torch.Tensor:
        """Maps resized to `size` (default: the view size), clamped to [0, 1]."""
        size = size or self.views[0].shape[:2]
        up = F.interpolate(self.maps[:, None].float(), size=tuple(size), mode=mode, align_corners=False)
        return up[:, 0].clamp(0, 1)

    def overlay(self, index: Optional[int] = None, alpha: float = 0.5, colormap: str = "jet"):
        """uint8 RGB heatmap overlays on the views (a list, or one array for `index`)."""
        indices = range(len(self)) if index is None else [index]
        drawn = [draw_overlay(self.views[i], self.maps[i].numpy(), alpha, colormap) for i in indices]
        return drawn if index is None else drawn[0]

    def title(self, index: int) -> List[str]:
        """The panel's title lines: explained class and its probability (and the prediction
        when that is another class), then method, token and source."""
        if not self.explained(index):
            return ["not explained: the model's output is NaN or infinite", self._second_line(index)]
        if self.targets is None:  # a callable target (similarity, text...): no class, no probability
            return ["custom target (a score computed from the model output)", self._second_line(index)]
        top = self.top(1)[index][0]
        target = int(self.targets[index])
        probability = float(self.probabilities[index, target])
        first = f"{self.label(index)}: p = {100 * probability:.1f} %"
        if top.index != target:
            first += f"; predicted {top.name or 'class'} ({top.index}) {100 * top.probability:.1f} %"
        return [first, self._second_line(index)]

    def _second_line(self, index: int) -> str:
        second = f"method {self.method}, token {self.token}"
        source = self.sources[index] if self.sources and index < len(self.sources) else None
        return second + (f", {Path(source).name}" if source else "")

    def panel(self, index: int, colormap: str = "jet", title: bool = True) -> np.ndarray:
        """Input | heatmap | overlay for one image (uint8 RGB), under a title strip with the
        explained class, its probability, the method and the token."""
        return draw_panel(self.views[index], self.maps[index].nan_to_num(0.0).numpy(), colormap=colormap,
                          title=self.title(index) if title else None)

    # ------------------------------------------------------------- notebooks and files
    # Jupyter shows `_repr_html_` (panels with captions) and keeps `_repr_png_` as the
    # plain-image fallback; both show at most DISPLAY_LIMIT images of a large batch.

    DISPLAY_LIMIT = 8

    def _repr_png_(self) -> bytes:
        panels = [self.panel(i) for i in range(min(len(self), self.DISPLAY_LIMIT))]
        width = max(p.shape[1] for p in panels)
        padded = [np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
        return png_bytes(np.concatenate(padded))

    def _repr_html_(self) -> str:
        import base64
        import html

        shown = min(len(self), self.DISPLAY_LIMIT)
        parts = [f"<div><b>vitx Explanation</b>: {len(self)} image(s), method {html.escape(self.method)}, "
                 f"token {html.escape(str(self.token))}" + (f" (first {shown} shown)" if shown < len(self) else "")
                 + "</div>"]
        for i in range(shown):
            data = base64.b64encode(png_bytes(self.panel(i, title=False))).decode("ascii")
            caption = html.escape(" - ".join(self.title(i)))
            parts.append(f'<figure style="margin:0.5em 0"><img src="data:image/png;base64,{data}" alt="{caption}">'
                         f"<figcaption>{caption}</figcaption></figure>")
        return "\n".join(parts)

    def show(self, indices: Optional[Sequence[int]] = None, colormap: str = "jet"):
        """Draw the panels with matplotlib (pyplot, for notebooks and scripts); returns the Figure."""
        import matplotlib.pyplot as plt

        indices = list(range(min(len(self), self.DISPLAY_LIMIT)) if indices is None else indices)
        panels = [self.panel(i, colormap=colormap) for i in indices]
        figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
        for ax, image in zip(axes[:, 0], panels):
            ax.imshow(image)
            ax.axis("off")
        figure.tight_layout()
        return figure

    def file_names(self, folder=None, suffixes=(".png",)) -> List[str]:
        """`<image stem>_<method>` for each image (`image<i>` without a source), unique, and never
        the name of an input file in `folder` (vitx.files.output_names, as the CLI names them)."""
        from ..files import output_names

        sources = [(self.sources[i] if self.sources and i < len(self.sources) else None) or ""
                   for i in range(len(self))]
        return output_names(sources, self.method, Path(folder or "."), suffixes)

    def save(self, folder, maps: bool = True, colormap: str = "jet") -> List[Path]:
        """Write each image's titled panel as `<name>.png` (and its map as `<name>.npy`) into
        `folder`; returns the PNG paths."""
        from ..imaging import save_png

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, name in enumerate(self.file_names(folder, (".png", ".npy") if maps else (".png",))):
            save_png(folder / f"{name}.png", self.panel(i, colormap=colormap))
            if maps:
                np.save(folder / f"{name}.npy", self.maps[i].numpy().astype(np.float32))
            written.append(folder / f"{name}.png")
        return written
