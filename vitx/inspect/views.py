"""What a ViT learned and where it looks, as arrays: the numbers behind `vitx inspect`.

Every view works on any model vitx can record (through its adapter), and returns tensors,
not pictures, so research code can test and compare them; `vitx.figures` draws them.

- `attention_maps`: every layer x head attention from a token to the patches, one image;
  `stage_attention` (vitx.inspect.stages): the same for a hierarchical model (Swin, PiT,
  PVTv2, Twins, MViTv2), each layer on its own stage's grid or its pooled keys' grid.
- `patch_filters` / `patch_activations`: principal components of the patch projection
  (as in the ViT paper, Fig. 7 left) and its output on an image.
- `position_embedding` / `position_similarity`: cosine similarity of each patch position's
  learned embedding to all others (ViT paper, Fig. 7 centre).
- `attention_distance` / `attention_entropy` / `attention_statistics`: how far (in pixels)
  and how diffusely each head looks, averaged over a set of images (ViT paper, Fig. 7 right).
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..capture.adapters.base import patch_conv
from ..attribution.targets import as_logits
from ..capture.model_state import evaluation_mode
from ..inputs import model_inputs
from ..capture.recorder import AttentionRecorder
from ..unwrap import unwrap
from ..capture.stages import StageLayer
from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError
from ..capture.layout import TokenLayout
from ..registry import find_adapter
from .stages import StageAttention, stage_attention  # noqa: F401  (vitx.views.stage_attention)


# ----------------------------------------------------------------------------- attention


@dataclass
class AttentionMaps:
    """maps[token]: (layers, heads, h, w) attention from `token` to every patch, one image."""

    maps: Dict[str, torch.Tensor]
    layout: TokenLayout
    view: np.ndarray
    logits: torch.Tensor


class StagedModel(VitxError):
    """A view over one token grid was asked of a hierarchical model (a grid per stage)."""


def single_grid(attentions, what: str) -> None:
    """Refuse, in one line, stage layers of a hierarchical model (a grid per stage,
    vitx.capture.stages) in a view that lays every layer over one token grid
    (`stage_attention` shows them by stage)."""
    if any(isinstance(a, StageLayer) for a in attentions):
        from ..capture.support import window_methods

        raise StagedModel(f"{what} lays every layer over one token grid, but this model's window or pooled layers "
                          "run on a grid per stage (Swin, PiT, PVTv2, Twins, MViTv2, Hiera): see vitx.views.stage_attention "
                          "(each layer on its stage's grid or its pooled keys' grid), or explain it with "
                          f"{', '.join(window_methods())}, whose maps lie on its first stage's grid")


def attention_maps(model: nn.Module, image, tokens=None, adapter=None) -> AttentionMaps:
    """Each layer's and head's attention row of every prefix token (cls, dist, registers),
    or of the mean patch token for a model without one, on the patch grid."""
    model = unwrap(model)
    adapter, pixels, views, _ = model_inputs(model, image, adapter)
    with evaluation_mode(model), torch.no_grad(), AttentionRecorder(model, adapter=adapter) as recorder:
        logits = as_logits(model(pixels[:1]))
        layout = recorder.layout
    single_grid(recorder.attentions, "the per-layer attention figure")
    stacked = torch.stack([a[0] for a in recorder.attentions])  # (L, H, N, N)
    tokens = tokens or (list(layout.prefix) or [layout.default_token])
    maps = {}
    for token in tokens:
        rows = torch.einsum("n,lhnm->lhm", layout.query(token, device=stacked.device), stacked)
        maps[token] = layout.patch_map(rows).float().cpu()
    return AttentionMaps(maps=maps, layout=layout, view=views[0], logits=logits[0].cpu())


@lru_cache(maxsize=16)
def patch_distances(grid: Tuple[int, int], pixels_per_patch: Tuple[float, float]) -> torch.Tensor:
    """(P, P) Euclidean distance in pixels between the centres of every pair of patches
    (cached: every layer of every batch asks for the same grid)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([ys.flatten() * pixels_per_patch[0], xs.flatten() * pixels_per_patch[1]], 1).double()
    return torch.cdist(centres, centres)


def attention_distance(attention: torch.Tensor, layout: TokenLayout, pixels_per_patch) -> torch.Tensor:
    """(B, H, N, N) attention -> (H,) mean attention distance in pixels.

    For every patch query, the attention-weighted distance to the patch keys, averaged over
    queries and images (the ViT paper's "attention distance"). Prefix tokens have no place
    in the image, so each row is renormalised over the patch keys: a head that parks its
    attention on the cls token is judged by where the rest of it goes.
    """
    start, count = layout.patch_start, layout.num_patches
    patches = attention[..., start:start + count, start:start + count].double()
    patches = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)
    distances = patch_distances(tuple(layout.grid), tuple(pixels_per_patch)).to(patches.device)
    return (patches * distances).sum(-1).mean(dim=(0, 2)).float()


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) attention -> (H,) mean entropy (nats) of the attention rows.

    0 when every token attends to one token; log N when attention is uniform.
    """
    a = attention.double()
    return -(a * a.clamp_min(1e-30).log()).sum(-1).mean(dim=(0, 2)).float()


@dataclass
class AttentionStatistics:
    """distance, entropy: (layers, heads), averaged over `count` images; the values a head
    with uniform attention would have, for reference."""

    distance: torch.Tensor
    entropy: torch.Tensor
    count: int
    num_tokens: int
    uniform_distance: float

    @property
    def uniform_entropy(self) -> float:
        return float(np.log(self.num_tokens))


def attention_statistics(model: nn.Module, images, batch_size: int = DEFAULT_BATCH_SIZE, adapter=None) -> AttentionStatistics:
    """Mean attention distance and entropy per layer and head over a set of images.

    Each layer is reduced as it is recorded, so memory stays at one layer's attention.
    """
    model = unwrap(model)
    adapter, pixels, _, _ = model_inputs(model, images, adapter)
    sums: Optional[torch.Tensor] = None
    geometry = {}
    with evaluation_mode(model), torch.no_grad():
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start:start + batch_size]
            size = tuple(chunk.shape[-2:])

            def reduce(layer, attention, size=size):
                single_grid([attention], "attention distance and entropy")
                layout = adapter.layout(model, size, attention.shape[-1])
                per_pixel = (size[0] / layout.grid[0], size[1] / layout.grid[1])
                geometry.update(grid=tuple(layout.grid), per_pixel=per_pixel, tokens=attention.shape[-1])
                return torch.stack([attention_distance(attention, layout, per_pixel),
                                    attention_entropy(attention)]) * attention.shape[0]

            with AttentionRecorder(model, adapter=adapter, keep=reduce) as recorder:
                model(chunk)
                recorder.check_recorded()
            layer_sums = torch.stack(recorder.attentions)  # (L, 2, H), on the model's device
            sums = layer_sums if sums is None else sums + layer_sums
    count = pixels.shape[0]
    sums = sums.cpu()  # one host copy for the whole set
    uniform = float(patch_distances(geometry["grid"], geometry["per_pixel"]).mean())
    return AttentionStatistics(distance=sums[:, 0] / count, entropy=sums[:, 1] / count, count=count,
                               num_tokens=geometry["tokens"], uniform_distance=uniform)


# ----------------------------------------------------------------------- patch embedding


def patch_embedding(model: nn.Module) -> nn.Conv2d:
    conv = patch_conv(model)
    if conv is None:
        raise VitxError(f"{type(model).__name__} has no patch-embedding Conv2d (kernel == stride)")
    return conv


def patch_filters(model: nn.Module, count: int = 28) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first `count` principal components of the patch projection's filters.

    -> (components (k, C, p, p), explained variance ratio (k,)). Each of the D filters is a
    point in C*p*p space; the components are the directions along which they vary most.
    """
    weight = patch_embedding(model).weight.detach().float().cpu()
    filters = weight.flatten(1)
    centred = filters - filters.mean(0, keepdim=True)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2
    k = min(count, directions.shape[0])
    return directions[:k].reshape(k, *weight.shape[1:]), (variance / variance.sum().clamp_min(1e-12))[:k]


def patch_activations(model: nn.Module, image, adapter=None) -> Tuple[torch.Tensor, np.ndarray]:
    """The patch projection's output for one image: (D, h, w), and the view."""
    model = unwrap(model)
    adapter, pixels, views, _ = model_inputs(model, image, adapter)
    conv = patch_embedding(model)
    captured: List[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda module, args, output: captured.append(output.detach()))
    try:
        with evaluation_mode(model), torch.no_grad():
            model(pixels[:1])
    finally:
        handle.remove()
    return captured[0][0].float().cpu(), views[0]


# -------------------------------------------------------------------- position embedding


def position_embedding(model: nn.Module, adapter=None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The learned position embedding of the patch tokens, (h*w, D), and its grid.

    Found by name (`pos_embed`: timm and the reference models; `pos_embedding`:
    torchvision); the prefix tokens' rows (if the embedding has them) come first and are
    dropped. The grid is the model's native one, from its input size and patch stride.
    """
    adapter = adapter or find_adapter(model)
    size = adapter.preprocessing(model)["input_size"][-2:]
    stride = patch_embedding(model).stride
    grid = (size[0] // stride[0], size[1] // stride[1])
    patches = grid[0] * grid[1]
    for name, parameter in model.named_parameters():
        if name.split(".")[-1] in ("pos_embed", "pos_embedding") and parameter.dim() == 3 \
                and parameter.shape[1] >= patches:
            return parameter.detach()[0, -patches:].float().cpu(), grid
    raise VitxError(f"{type(model).__name__} has no learned position embedding for a {grid[0]}x{grid[1]} grid "
                    "(models with relative or rotary positions have none to show)")


def position_similarity(embedding: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """(h*w, D) -> (h, w, h, w): [i, j] is the cosine similarity map of position (i, j)."""
    unit = torch.nn.functional.normalize(embedding.double(), dim=-1)
    return (unit @ unit.T).reshape(*grid, *grid).float()
