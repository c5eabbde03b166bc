"""`Explanation`: what `vitx.explain` returns: maps, predictions, and ways to look at them."""
from dataclasses import dataclass
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
    targets: Optional[torch.Tensor]  # explained class per image; None for a callable target
    method: str
    token: str
    layout: TokenLayout
    views: List[np.ndarray]
    class_names: Optional[Sequence[str]] = None
    sources: Optional[List[Optional[str]]] = None
    target_description: str = "class"  # what `logits` holds when `targets` is None: that target's score

    def __post_init__(self):
        if not torch.isfinite(self.logits).all():
            import warnings

            warnings.warn("the model's outputs contain NaN or infinite values (NaN weights or inputs?): its "
                          "predictions, probabilities and maps are meaningless", stacklevel=3)

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

    def panel(self, index: int, colormap: str = "jet") -> np.ndarray:
        """Input | heatmap | overlay for one image."""
        return draw_panel(self.views[index], self.maps[index].numpy(), colormap=colormap)
