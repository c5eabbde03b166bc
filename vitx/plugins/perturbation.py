"""Model-agnostic perturbation baselines: occlusion and RISE. Only the model's forward is used.

- Occlusion (Zeiler & Fergus 2014): replace a window of `window` x `window` patches by the
  baseline, slid one patch at a time; a patch's relevance is the drop of the target score,
  f(x) - f(x occluded), averaged over the windows that cover it (captum's Occlusion with
  patch-sized strides).
- RISE (Petsiuk, Das & Saenko 2018): random binary masks on a coarse grid, upsampled
  bilinearly with a random shift; saliency(pixel) = sum_i f(x . M_i + b . (1 - M_i)) M_i(pixel)
  / (masks * p); a patch's relevance is its pixels' mean. Seeded: the same masks for every
  image, so a batch gives what each image gives alone.
Masked copies are stacked on the batch, `internal_batch_size` images per forward pass (the older
spelling `batch` is still accepted).
"""
import math

import torch
import torch.nn.functional as F

from vitx.plugin import MASKED_IMAGES_OPTION, MAX_SEED, MODEL, Explainer, Option, baseline_option, hookimpl


def _patch_masks(grid, size, cells, device):
    """(windows, 1, H, W) masks that are 0 on each window of patches (None: 1 patch), and
    (windows, h*w) which patches each window covers."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    covers = []
    for top in range(gh - cells + 1):
        for left in range(gw - cells + 1):
            covers.append(((rows >= top) & (rows < top + cells) & (cols >= left) & (cols < left + cells)).flatten())
    covers = torch.stack(covers).float().to(device)
    pixels = F.interpolate(covers.view(-1, 1, gh, gw), size=size, mode="nearest")
    return 1 - pixels, covers


class Occlusion(Explainer):
    name = "occlusion"
    summary = "drop of the target score when a window of patches is replaced by the baseline"
    paper = "Zeiler & Fergus 2014, 'Visualizing and Understanding Convolutional Networks'"
    requires = (MODEL,)
    forward_only = True
    options = (
        Option("window", int, 1, "side of the occluded square, in patches (slid one patch at a time)", minimum=1,
               maximum=1024),
        baseline_option("here the occluded window"),
        MASKED_IMAGES_OPTION,
    )

    def explain(self, evidence):
        pixels, layout = evidence.pixels, evidence.layout
        window = min(self.window, *layout.grid)
        fill = evidence.baseline(self.baseline)
        masks, covers = _patch_masks(layout.grid, pixels.shape[-2:], window, pixels.device)
        with torch.no_grad():
            full = evidence.score(pixels)
        drops = full[None] - evidence.masked_scores(fill, masks, self.internal_batch_size)  # (windows, B)
        per_patch = (drops.T @ covers) / covers.sum(0)  # mean over the windows covering each patch
        relevance = per_patch.new_zeros(pixels.shape[0], layout.num_tokens)
        relevance[:, layout.patch_start:layout.patch_start + layout.num_patches] = per_patch
        return relevance


def rise_masks(count, cells, size, probability, generator):
    """(count, H, W) RISE masks: a cells grid of Bernoulli(p) cells, upsampled bilinearly to
    (cells + 1) cell sizes and cropped at a random shift within one cell."""
    (ch, cw), (height, width) = cells, size
    cell_h, cell_w = math.ceil(height / ch), math.ceil(width / cw)
    grid = (torch.rand(count, 1, ch, cw, generator=generator) < probability).float()
    up = F.interpolate(grid, size=((ch + 1) * cell_h, (cw + 1) * cell_w), mode="bilinear", align_corners=False)
    shift_y = torch.randint(0, cell_h, (count,), generator=generator).tolist()
    shift_x = torch.randint(0, cell_w, (count,), generator=generator).tolist()
    return torch.stack([up[i, 0, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(shift_y, shift_x))])


class RISE(Explainer):
    name = "rise"
    summary = "score-weighted average of random smooth masks (Monte Carlo estimate of E[f(x . M) | M(pixel) = 1])"
    paper = "Petsiuk, Das & Saenko 2018, 'RISE: Randomized Input Sampling for Explanation of Black-box Models'"
    requires = (MODEL,)
    forward_only = True
    options = (
        Option("masks", int, 1000, "number of random masks", minimum=1, maximum=100_000),
        Option("cells", int, 0, "mask grid side (0: the patch grid)", minimum=0, maximum=256),
        Option("probability", float, 0.5, "probability that a cell is kept", minimum=0.01, maximum=1.0),
        baseline_option("here the masked ones"),
        Option("seed", int, 0, "seed of the masks", minimum=0, maximum=MAX_SEED),
        MASKED_IMAGES_OPTION,
    )

    def explain(self, evidence):
        pixels, layout = evidence.pixels, evidence.layout
        size = tuple(pixels.shape[-2:])
        cells = layout.grid if self.cells == 0 else (self.cells, self.cells)
        generator = torch.Generator().manual_seed(self.seed)
        fill = evidence.baseline(self.baseline)
        saliency = pixels.new_zeros(pixels.shape[0], *size)
        chunk = 256
        for first in range(0, self.masks, chunk):
            masks = rise_masks(min(chunk, self.masks - first), cells, size, self.probability, generator).to(pixels.device)
            scores = evidence.masked_scores(fill, masks[:, None], self.internal_batch_size)  # (m, B)
            saliency += torch.einsum("mb,mhw->bhw", scores, masks.to(scores.dtype))
        saliency /= self.masks * self.probability
        area = size[0] * size[1] / layout.num_patches
        return evidence.pixels_to_tokens(saliency) / area


@hookimpl
def vitx_register_explainers(register):
    register(Occlusion)
    register(RISE)
