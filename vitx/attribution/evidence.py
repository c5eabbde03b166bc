"""`Evidence`: everything the core gathered for one batch, handed to an explainer's math.

An explainer declares what it needs (`Explainer.requires`); the core records exactly that in
one forward (and one backward when gradients are asked for) and fills these fields. What it
did not ask for stays None. Methods that need more forward passes (integrated gradients,
perturbation, LRP) get `score` and `input_gradient`, which run the model the same way the
explained forward did: eval mode, the same target, the model's device and dtype.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..capture.layout import TokenLayout
from .targets import Target


@dataclass
class Evidence:
    model: nn.Module
    pixels: torch.Tensor  # (B, C, H, W) preprocessed, on the model's device, detached
    layout: TokenLayout
    query: torch.Tensor  # (N,) which token is explained
    output: Any  # the model's output of the explained forward (detached)
    target: Target
    attentions: Optional[List[Optional[torch.Tensor]]] = None  # per layer (B, heads, N, N), keep()'s or reduce()'s reduction
    attention_grads: Optional[List[torch.Tensor]] = None  # d(score)/d(attention), per layer
    tokens: Optional[List[torch.Tensor]] = None  # per block (B, N, D) token states
    token_grads: Optional[List[torch.Tensor]] = None
    folded: Optional[torch.Tensor] = None  # the running state of `Explainer.fold`, when the method folds
    extras: dict = field(default_factory=dict)  # adapter-provided pieces (e.g. final norm, head)
    rows: Optional[slice] = None  # which of the caller's images this batch is (explain() runs in chunks)

    def baseline(self, spec) -> torch.Tensor:
        """The baseline images of this batch for a `baseline=` option (vitx.baselines): what
        removed pixels become, in the model's input space."""
        from ..baselines import baseline_images

        return baseline_images(self.pixels, spec, self.extras["data_config"], self.rows)

    def score(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B,) target score of `pixels` (gradients flow when enabled by the caller); like
        `input_gradient`, a batch of k stacked copies of the explained batch is scored
        copy by copy (perturbation methods score many masked versions in one forward)."""
        return self._target_for(pixels.shape[0]).score(self.model(pixels))

    def _target_for(self, batch: int):
        """The target for `batch` images: the explained batch stacked batch // B times."""
        repeats = batch // self.pixels.shape[0]
        if repeats > 1 and self.target.indices is not None:
            from .targets import ClassTarget

            return ClassTarget(self.target.indices.repeat(repeats))
        return self.target

    def input_gradient(self, pixels: torch.Tensor):
        """(score (B,), d score / d pixels (B, C, H, W)) for a batch shaped like `self.pixels`
        (or a whole number of copies of it, e.g. the steps of a path stacked on the batch)."""
        with torch.enable_grad():
            x = pixels.detach().requires_grad_(True)
            score = self._target_for(x.shape[0]).score(self.model(x))
            (grad,) = torch.autograd.grad(score.sum(), x)
        return score.detach(), grad

    def pixels_to_tokens(self, relevance: torch.Tensor) -> torch.Tensor:
        """Pixel relevance (B, C, H, W) or (B, H, W) -> (B, N) token relevance: the sum over
        channels and over each patch's pixels; prefix tokens get 0."""
        if relevance.dim() == 4:
            relevance = relevance.sum(dim=1)
        grid = self.layout.grid
        height, width = relevance.shape[-2:]
        if height % grid[0] == 0 and width % grid[1] == 0:
            pooled = F.avg_pool2d(relevance[:, None], (height // grid[0], width // grid[1]))[:, 0]
            pooled = pooled * (height // grid[0]) * (width // grid[1])
        else:  # patches that do not tile the image exactly (e.g. a crop): area-weighted sum
            pooled = F.adaptive_avg_pool2d(relevance[:, None], grid)[:, 0] * (height * width / (grid[0] * grid[1]))
        tokens = relevance.new_zeros(relevance.shape[0], self.layout.num_tokens)
        start = self.layout.patch_start
        tokens[:, start:start + self.layout.num_patches] = pooled.flatten(1)
        return tokens
