"""`Explanation`: what `vitx.explain` returns: maps, relevance, predictions and targets of a
batch (how they are drawn and saved: vitx.attribution.display)."""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ..capture.layout import TokenLayout
from .display import Display


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
class Explanation(Display):
    """One explanation per image of a batch (the data; `Display` draws and saves it).

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
    token_note: Optional[str] = None  # why `token` only stands in for what the head reads (an attention probe)

    def __post_init__(self):
        self._mark_non_finite()

    def _mark_non_finite(self) -> None:
        """An image whose model outputs hold NaN or inf has no prediction and nothing to
        explain: its map and relevance become NaN (never a plausible-looking number), its
        target -1, its top-k empty, and one warning names it."""
        bad = ~torch.isfinite(self.logits.float()).flatten(1).all(dim=1)
        if not bad.any():
            return
        import warnings

        self.maps, self.relevance = self.maps.clone(), self.relevance.float().clone()
        self.maps[bad], self.relevance[bad] = float("nan"), float("nan")
        if self.targets is not None:
            self.targets = self.targets.clone()
            self.targets[bad] = -1
        names = [self.image_name(i) for i in bad.nonzero().flatten().tolist()]
        listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.warn(f"the model's outputs contain NaN or infinite values for {listed} (NaN weights, or inputs "
                      "that overflow?): not explained, the map is NaN and there is no prediction", stacklevel=4)

    def image_name(self, index: int) -> str:
        """The source of image `index`, or 'image <index>' (its position in the batch)."""
        source = self.sources[index] if self.sources and index < len(self.sources) else None
        return str(source) if source else f"image {index}"

    def explained(self, index: int) -> bool:
        """False for an image whose model outputs are NaN or infinite (see `_mark_non_finite`)."""
        return bool(torch.isfinite(self.logits[index].float()).all())

    def __repr__(self) -> str:
        return (f"Explanation(method={self.method!r}, token={self.token!r}, images={len(self)}, "
                f"maps={tuple(self.maps.shape)}, targets={None if self.targets is None else self.targets.tolist()[:8]})")

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)

    def top(self, k: int = 5) -> List[List[Prediction]]:
        probs, indices = self.probabilities.topk(min(k, self.logits.shape[-1]), dim=-1)
        return [
            [Prediction(int(i), self.class_name(int(i)), float(p)) for p, i in zip(prow, irow)]
            if self.explained(row) else []  # NaN outputs: no prediction
            for row, (prow, irow) in enumerate(zip(probs, indices))
        ]

    @property
    def predictions(self) -> List[List[Prediction]]:
        """Top-5 (index, class name, probability) per image."""
        return self.top(5)

    def class_name(self, index: int) -> Optional[str]:
        return self.class_names[index] if self.class_names and 0 <= index < len(self.class_names) else None

    def label(self, index: int) -> str:
        """'name (class i)' or 'class i' for the class that map `index` explains."""
        if self.targets is None:
            return "custom target"
        target = int(self.targets[index])
        name = self.class_name(target)
        return f"{name} (class {target})" if name else f"class {target}"
