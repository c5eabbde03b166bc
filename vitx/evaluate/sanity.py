"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): model-parameter randomisation.

A map that explains a model must change when the model's learned weights are destroyed.
Cascading randomisation re-initialises the model from the top down, one group at a time:
the head (every parameter registered after the transformer blocks: final norm, classifier),
then the blocks from the last to the first, then the embeddings (patch projection, prefix
tokens, positions). After each step every method explains the *same* images for the *same*
classes (the trained model's predictions), and its maps are compared with the trained
model's maps:

- Spearman rank correlation of the patch maps (per image, then averaged): 1 = same ranking;
- SSIM (`skimage.metrics.structural_similarity`, data range 1) of the maps upsampled to
  the input size (what an overlay shows).

A method passes when, with every layer randomised, its mean Spearman correlation is below
`threshold` (default 0.5): its maps depend on what the model learned. A method whose maps
do not change (an edge detector, a centre prior) fails.

Re-initialisation redraws each parameter tensor from a Gaussian with that tensor's own
mean and standard deviation (seeded): activations keep their scale, the learned structure
is gone, and it works for any module type. Everything happens on a deep copy: the model
passed in is never modified.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..batches import DEFAULT_BATCH_SIZE
from ..errors import VitxError

DEFAULT_THRESHOLD = 0.5


def transformer_blocks(model: nn.Module) -> Tuple[str, List[nn.Module]]:
    """(prefix, blocks): the ModuleList / Sequential of identical blocks that holds most of
    the parameters (timm `blocks`, torchvision `encoder.layers`, the reference ViT's `blocks`)."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        children = list(module)
        if len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, children), size
    if best is None:
        raise VitxError(f"{type(model).__name__}: found no list of transformer blocks to randomise")
    return best


def cascade_groups(model: nn.Module) -> List[Tuple[str, List[str]]]:
    """[(step name, parameter names)] from the top down: head, blocks last to first, embeddings."""
    prefix, blocks = transformer_blocks(model)
    names = [name for name, _ in model.named_parameters()]
    block_of = {}
    for index in range(len(blocks)):
        start = f"{prefix}.{index}." if prefix else f"{index}."
        for name in names:
            if name.startswith(start):
                block_of[name] = index
    positions = [i for i, name in enumerate(names) if name in block_of]
    first, last = min(positions), max(positions)
    head = [n for i, n in enumerate(names) if i > last and n not in block_of]
    embedding = [n for i, n in enumerate(names) if i < first and n not in block_of]
    groups = [("head", head)] if head else []
    for index in reversed(range(len(blocks))):
        groups.append((f"block {index}", [n for n in names if block_of.get(n) == index]))
    if embedding:
        groups.append(("embedding", embedding))
    return groups


@torch.no_grad()
def randomise_(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Redraw the named parameters in place from N(mean, std) of each tensor."""
    parameters = dict(model.named_parameters())
    for name in names:
        p = parameters[name]
        values = p.detach().float()
        std = float(values.std()) if values.numel() > 1 else 0.0
        noise = torch.randn(p.shape, generator=generator)
        p.copy_((noise * std + float(values.mean())).to(p.dtype))


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank correlation of each row of (B, n) `a` with the same row of `b` (ties get average
    ranks). A constant row has no ranking: two constant rows are identical (1), a constant
    row against a varying one is unrelated (0)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    na, nb = np.sqrt((ra ** 2).sum(-1)), np.sqrt((rb ** 2).sum(-1))
    both_constant = (na == 0) & (nb == 0)
    denominator = np.where((na == 0) | (nb == 0), 1.0, na * nb)
    rho = np.where((na == 0) | (nb == 0), 0.0, (ra * rb).sum(-1) / denominator)
    return np.where(both_constant, 1.0, rho)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM of each (H, W) map pair in [0, 1] (B, H, W); the window shrinks for small maps."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[-2:])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise VitxError(f"maps of {a.shape[-2]}x{a.shape[-1]} pixels are too small for SSIM")
    return np.array([structural_similarity(x, y, data_range=1.0, win_size=window) for x, y in zip(a, b)])


@dataclass
class SanityResult:
    """steps[0] is the trained model ("trained"); spearman[method][k], ssim[method][k] are
    the mean similarities at step k (1 at step 0), *_std their spread over the images."""

    steps: List[str]
    spearman: Dict[str, List[float]] = field(default_factory=dict)
    ssim: Dict[str, List[float]] = field(default_factory=dict)
    spearman_std: Dict[str, List[float]] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    count: int = 0

    def passed(self, method: str) -> bool:
        return self.spearman[method][-1] < self.threshold

    def rows(self):
        """One row per method: Spearman and SSIM after the head, half-way and fully randomised."""
        middle = len(self.steps) // 2
        return [[method, f"{self.spearman[method][1]:.3f}", f"{self.spearman[method][middle]:.3f}",
                 f"{self.spearman[method][-1]:.3f}", f"{self.ssim[method][-1]:.3f}",
                 "pass" if self.passed(method) else "FAIL"] for method in self.spearman]

    def header(self):
        middle = self.steps[len(self.steps) // 2]
        return ["method", f"Spearman ({self.steps[1]})", f"Spearman (to {middle})", "Spearman (all)", "SSIM (all)",
                f"all < {self.threshold:g}"]

    def as_dict(self) -> dict:
        return {"steps": self.steps, "spearman": self.spearman, "spearman_std": self.spearman_std,
                "ssim": self.ssim, "threshold": self.threshold, "count": self.count,
                "passed": {m: self.passed(m) for m in self.spearman}}


def sanity_check(model: nn.Module, images, methods: Sequence[str], seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                 threshold: float = DEFAULT_THRESHOLD, options: Optional[Dict[str, dict]] = None,
                 progress: bool = False) -> SanityResult:
    """Cascading model-parameter randomisation for each method on `images` (anything
    `vitx.explain` takes). Returns a `SanityResult`; `model` is left as it was."""
    from tqdm import tqdm

    from ..attribution.api import explain

    if not methods:
        raise VitxError("no methods to check")
    options = options or {}
    trained = {m: explain(model, images, method=m, batch_size=batch_size, **options.get(m, {})) for m in methods}
    first = next(iter(trained.values()))
    targets = first.targets
    size = first.views[0].shape[:2] if first.views else None
    groups = cascade_groups(model)
    result = SanityResult(steps=["trained"] + [name for name, _ in groups], threshold=threshold, count=len(targets))
    for method, exp in trained.items():
        result.spearman[method], result.ssim[method], result.spearman_std[method] = [1.0], [1.0], [0.0]
    randomised = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for _, names in tqdm(groups, desc="sanity", disable=not progress, leave=False):
        randomise_(randomised, names, generator)
        for method, exp in trained.items():
            other = explain(randomised, images, method=method, target=targets, batch_size=batch_size,
                            **options.get(method, {}))
            rho = spearman(exp.maps.flatten(1).numpy(), other.maps.flatten(1).numpy())
            big = tuple(size) if size is not None else tuple(4 * s for s in exp.maps.shape[-2:])
            similarity = ssim(_upsample(exp.maps, big), _upsample(other.maps, big))
            result.spearman[method].append(float(rho.mean()))
            result.spearman_std[method].append(float(rho.std()))
            result.ssim[method].append(float(similarity.mean()))
    return result


def _upsample(maps: torch.Tensor, size) -> np.ndarray:
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return up.clamp(0, 1).double().numpy()
