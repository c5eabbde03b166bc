"""`Explanation`: what `vitx.explain` returns: maps, predictions, and ways to look at them."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import overlay as draw_overlay
from ..imaging import panel as draw_panel
from ..capture.layout import TokenLayout


class Prediction(NamedTuple):
    index: int
    name: Optional[str]
    probability: float


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per image: shift so the minimum is >= 0, then divide by the maximum -> [0, 1].

    Non-negative maps are only divided by their maximum (as the original rollout script
    does), so a patch with twice the relevance stays twice as bright.
    """
    flat = maps.flatten(1)
    flat = flat - flat.amin(dim=1, keepdim=True).clamp(max=0)
    peak = flat.amax(dim=1, keepdim=True)
    return (flat / torch.where(peak > 0, peak, torch.ones_like(peak))).reshape(maps.shape)


@dataclass
class Explanation:
    """One explanation per image of a batch.

    maps: (B, h, w) in [0, 1], one value per patch. relevance: (B, N) raw relevance of
    every token, before normalisation. views: what the model saw, as uint8 RGB arrays.
    """

    maps: torch.Tensor
    relevance: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    method: str
    token: str
    layout: TokenLayout
    views: List[np.ndarray]
    class_names: Optional[Sequence[str]] = None
    sources: Optional[List[Optional[str]]] = None

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)

    def top(self, k: int = 5) -> List[List[Prediction]]:
        probs, indices = self.probabilities.topk(min(k, self.logits.shape[-1]), dim=-1)
        return [
            [Prediction(int(i), self.class_name(int(i)), float(p)) for p, i in zip(prow, irow)]
            for prow, irow in zip(probs, indices)
        ]

    @property
    def predictions(self) -> List[List[Prediction]]:
        """Top-5 (index, class name, probability) per image."""
        return self.top(5)

    def class_name(self, index: int) -> Optional[str]:
        return self.class_names[index] if self.class_names and index < len(self.class_names) else None

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

    def label(self, index: int) -> str:
        """'name (class i)' or 'class i' for the class that map `index` explains."""
        target = int(self.targets[index])
        name = self.class_name(target)
        return f"{name} (class {target})" if name else f"class {target}"

    def title(self, index: int) -> List[str]:
        """The panel's title lines: explained class and its probability (and the prediction
        when that is another class), then method, token and source."""
        target = int(self.targets[index])
        probability = float(self.probabilities[index, target])
        first = f"{self.label(index)}: p = {100 * probability:.1f} %"
        top = self.top(1)[index][0]
        if top.index != target:
            first += f"; predicted {top.name or 'class'} ({top.index}) {100 * top.probability:.1f} %"
        second = f"method {self.method}, token {self.token}"
        source = self.sources[index] if self.sources and index < len(self.sources) else None
        if source:
            second += f", {Path(source).name}"
        return [first, second]

    def panel(self, index: int, colormap: str = "jet", title: bool = True) -> np.ndarray:
        """Input | heatmap | overlay for one image (uint8 RGB), under a title strip with the
        explained class, its probability, the method and the token."""
        return draw_panel(self.views[index], self.maps[index].numpy(), colormap=colormap,
                          title=self.title(index) if title else None)
