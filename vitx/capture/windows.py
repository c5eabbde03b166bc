"""Window attention of hierarchical ViTs (Swin, SwinV2) as compact block-diagonal matrices.

A window layer mixes the tokens of its stage's grid: each token attends only inside its
window, so the layer is one (tokens x tokens) matrix over the grid that is block-diagonal
up to a permutation. The permutation is the cyclic shift followed by the window partition
(`window_index`). `Windowed` keeps only the blocks, (B, heads, windows, n, n), plus the grid
token of every window slot (-1 for a padding slot), so a Swin-T stage-1 layer at 224 px costs
3 x 64 x 49^2 values instead of 3 x 3136^2.

Padding slots (zeros the model appends to fill the last windows) are not image tokens: their
rows and columns are dropped, as for SAM's windows (vitx.capture.adapters.timm_sam), so a
border row may sum to less than one (the rest went to the padding's constant values).

Between stages, patch merging concatenates each 2x2 group of tokens and projects it: linear
in those four tokens, with a learned channel mix. As a token-mixing matrix it is written
with equal weights (`Merge`): each next-stage token takes 1/4 of its row from each of its
real source tokens (1/count at a padded border), as the residual identity of rollout gives
equal weight to what it cannot attribute. A layer carries the merge that feeds it (`entry`),
so a list of layers is a chain from the first stage's grid to the last.

`Windowed` is a `StageLayer` (vitx.capture.stages): it supports exactly what the
attention-flow methods do to a layer (vitx.attribution.ops asks the layer): head reductions
over dim 1, elementwise products, clamp and scaling with a tensor of the same structure,
`vecmat` (a row vector times the layer) and the rollout factors, plus `dense()` for tests.
"""
from typing import Optional, Sequence, Tuple

import torch

from .stages import Merge, StageLayer, conv_merge, drop_lowest

__all__ = ["Merge", "Windowed", "patch_merge", "window_index"]


def patch_merge(before: Tuple[int, int], after: Tuple[int, int], device=None) -> Merge:
    """The 2x2 patch merging of Swin (timm, Hugging Face, torchvision): next (i, j) takes the
    tokens (2i + a, 2j + b), a, b in {0, 1}, of the previous grid (odd sides zero-padded)."""
    return conv_merge(before, after, 2, 2, 0, device=device)


def window_index(grid: Tuple[int, int], window: Sequence[int], shift: Sequence[int],
                 pad_first: bool = False, device=None) -> torch.Tensor:
    """(windows, n) grid token of each window slot, in the model's window order, -1 = padding.

    The model rolls the grid by -shift, pads it to whole windows and partitions it row-major
    (timm, Hugging Face); torchvision pads first and rolls the padded grid (`pad_first`).
    """
    (h, w), (wh, ww) = grid, window
    ph, pw = -(-h // wh) * wh, -(-w // ww) * ww
    r, c = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")  # slot positions
    if pad_first:
        r, c = (r + shift[0]) % ph, (c + shift[1]) % pw
        real = (r < h) & (c < w)
    else:
        real = (r < h) & (c < w)
        r, c = (r + shift[0]) % h, (c + shift[1]) % w
    index = torch.where(real, r * w + c, torch.full_like(r, -1))
    index = index.reshape(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    return index.to(device)


class Windowed(StageLayer):
    """One window layer (or its gradient, or a reduction of it) over a stage's grid.

    blocks: (B, heads, windows, n, n), or (B, windows, n, n) once heads are reduced, or None
    (a layer kept only for its place in the chain, see `skeleton`). index: (windows, n) grid
    token of each slot, -1 = padding. grid: the stage's (h, w). entry: the `Merge` from the
    previous stage's grid into this one (applied before this layer), or None.
    """

    block_dims = 4

    def __init__(self, blocks: Optional[torch.Tensor], index: torch.Tensor, grid: Tuple[int, int],
                 entry: Optional[Merge] = None):
        super().__init__(blocks, grid, entry)
        self.index = index

    def like(self, blocks: Optional[torch.Tensor]) -> "Windowed":
        return Windowed(blocks, self.index, self.grid, self.entry)

    @property
    def valid(self) -> torch.Tensor:
        """(windows, n) real (non-padding) slots."""
        return (self.index >= 0).to(self.blocks.device)

    def pairs(self) -> torch.Tensor:
        """(windows, n, n) entries between two real tokens: the entries a window layer can have."""
        valid = self.valid
        return valid[:, :, None] & valid[:, None, :]

    # --- products and rollout factors
    def vecmat(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N) row -> row @ A (B, N), window by window: gather the row into the window
        slots, one small product per window, scatter back. Heads must be reduced."""
        valid = self.valid
        index = self.index.to(row.device).clamp(min=0)
        gathered = row[:, index] * valid  # (B, windows, n); padding slots carry nothing
        out = torch.einsum("bwi,bwij->bwj", gathered.to(self.blocks.dtype), self.blocks)
        result = row.new_zeros(row.shape[0], self.num_tokens)
        return result.index_add_(1, self.index.to(row.device)[valid], out[:, valid].to(row.dtype))

    def discard_lowest(self, ratio: float) -> "Windowed":
        """Among the entries a window layer can have (between two real tokens of one window),
        keeping every token's diagonal entry: the query lives on the last stage's tokens, and
        the default one (the mean) reaches every token of every stage."""
        if ratio <= 0:
            return self
        eye = torch.eye(self.index.shape[-1], dtype=torch.bool, device=self.blocks.device)
        return self.like(drop_lowest(self.blocks, self.pairs(), ratio, eye))

    def add_identity(self) -> "Windowed":
        """A + I: the identity lies inside the diagonal blocks; padding slots get none."""
        return self.like(self.blocks + torch.diag_embed(self.valid.to(self.dtype)))

    def with_residual(self) -> "Windowed":
        """(A + I) / 2 per window, the entries to padding slots dropped first, rows renormalised."""
        mixed = self.like(self.blocks * self.pairs()).add_identity().blocks / 2
        return self.like(mixed / mixed.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mixed.dtype).tiny))

    def dense(self) -> torch.Tensor:
        """The (B, [heads,] N, N) matrix it stands for (tests and small grids only)."""
        pairs = self.pairs()
        windows, n = self.index.shape
        rows = self.index.to(pairs.device)[:, :, None].expand(windows, n, n)[pairs]
        cols = self.index.to(pairs.device)[:, None, :].expand(windows, n, n)[pairs]
        out = self.blocks.new_zeros(self.shape)
        out[..., rows, cols] = self.blocks[..., pairs]
        return out
