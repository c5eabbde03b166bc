"""`Evidence`: everything the core gathered for one batch, handed to an explainer's math.

An explainer declares what it needs (`Explainer.requires`); the core records exactly that in
one forward (and one backward when gradients are asked for) and fills these fields. What it
did not ask for stays None. Methods that need more forward passes (integrated gradients,
perturbation, LRP) get `score` and `input_gradient`, which run the model the same way the
explained forward did: eval mode, the same target, the model's device and dtype.
"""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, List, Optional

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
    block_states: Optional[List[tuple]] = None  # per block (input, stream after attention, output), (B, N, D)
    data_config: Optional[dict] = None  # the model's mean / std / input size (methods that need the model)
    head: Optional[Callable] = None  # tokens -> output (final norm, pooling, classifier), for token methods
    graph_attentions: Optional[list] = None  # the recorded attention still on the forward's graph (LeGrad)
    graph_tokens: Optional[list] = None  # the recorded token states still on the forward's graph
    rules: Callable[[], ContextManager] = nullcontext  # the method's gradient mode, for its own forwards
    adapter: Any = None  # the adapter that recorded the explained forward
    rows: Optional[slice] = None  # which of the caller's images this batch is (explain() runs in chunks)

    @property
    def extras(self) -> dict:
        """The adapter pieces by name, as plugins written before the typed fields read them."""
        return {"data_config": self.data_config, "head": self.head, "graph_attentions": self.graph_attentions,
                "graph_tokens": self.graph_tokens}

    def baseline(self, spec) -> torch.Tensor:
        """The baseline images of this batch for a `baseline=` option (vitx.baselines): what
        removed pixels become, in the model's input space."""
        from ..baselines import baseline_images

        return baseline_images(self.pixels, spec, self.data_config, self.rows)

    def score(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B,) target score of `pixels` (gradients flow when enabled by the caller); like
        `input_gradient`, a batch of k stacked copies of the explained batch is scored
        copy by copy (perturbation methods score many masked versions in one forward)."""
        with self.rules():
            output = self.model(pixels)
        return self._target_for(pixels.shape[0]).score(output)

    def masked_scores(self, fill: torch.Tensor, masks: torch.Tensor, per_pass: int) -> torch.Tensor:
        """(M, B) target scores of the batch under each of M masks (M, 1 or C, H, W), 1 = keep
        the pixel, 0 = replace it by `fill` (the baseline images); `per_pass` masked images per
        forward. The one removal operator of the perturbation methods (occlusion, RISE,
        Shapley), so they remove pixels exactly as the metrics do."""
        batch = self.pixels.shape[0]
        step = max(1, per_pass // batch)
        out = []
        with torch.no_grad():
            for first in range(0, masks.shape[0], step):
                mask = masks[first:first + step, None].to(self.pixels.dtype)  # (m, 1, 1 or C, H, W)
                images = self.pixels[None] * mask + fill[None] * (1 - mask)
                out.append(self.score(images.flatten(0, 1)).view(-1, batch))
        return torch.cat(out)

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
            with self.rules():
                output = self.model(x)
            score = self._target_for(x.shape[0]).score(output)
            (grad,) = torch.autograd.grad(score.sum(), x)
        return score.detach(), grad

    def attention_gradients(self, pixels: torch.Tensor) -> List[torch.Tensor]:
        """d score / d attention per layer, (B, heads, N, N), for another batch shaped like
        `self.pixels` (e.g. scaled copies of it), recorded the way the explained forward was:
        same adapter, target and gradient mode."""
        from ..capture.recorder import AttentionRecorder

        with self.rules(), AttentionRecorder(self.model, adapter=self.adapter) as recorder, torch.enable_grad():
            output = self.model(pixels.detach().requires_grad_(True))
            score = self._target_for(pixels.shape[0]).score(output).sum()
            return [g.detach() for g in recorder.gradients(score)]

    def value_transforms(self):
        """Per block, (its input tokens z, W_o v: each token's value through the attention's
        output projection), (B, N, D) each, for the explained images: one forward of three
        stacked copies, no gradient (vitx.capture.value_transforms)."""
        from ..capture.value_transforms import value_transforms

        with self.rules():
            return value_transforms(self.model, self.adapter, self.pixels)

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
