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

`Windowed` supports exactly what the attention-flow methods do to a layer (vitx.attribution.ops
dispatches on it): head reductions over dim 1, elementwise products, clamp and scaling with a
tensor of the same structure, and `vecmat` (a row vector times the layer), plus `dense()` for
tests.
"""
from typing import Optional, Sequence, Tuple

import torch


class Merge:
    """A stage transition as an (N_next x N) mixing matrix: next token i = mean of its sources.

    `sources`: (N_next, k) grid indices of each next-stage token's sources in the previous
    grid, -1 for a padding source (dropped).
    """

    def __init__(self, sources: torch.Tensor, num_tokens: int):
        self.sources = sources
        self.num_tokens = num_tokens  # N of the previous grid

    def weights(self, dtype) -> torch.Tensor:
        valid = (self.sources >= 0).to(dtype)
        return valid / valid.sum(dim=1, keepdim=True).clamp(min=1)

    def pull(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N_next) -> (B, N): row @ M."""
        spread = row.unsqueeze(-1) * self.weights(row.dtype).to(row.device)
        out = row.new_zeros(row.shape[0], self.num_tokens)
        keep = (self.sources >= 0).flatten().to(row.device)
        return out.index_add_(1, self.sources.flatten().to(row.device)[keep], spread.flatten(1)[:, keep])

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.sources.shape[0], self.num_tokens)
        rows = torch.arange(self.sources.shape[0])[:, None].expand_as(self.sources)
        keep = self.sources >= 0
        out[rows[keep], self.sources[keep]] = self.weights(torch.float32)[keep]
        return out


def patch_merge(before: Tuple[int, int], after: Tuple[int, int], device=None) -> Merge:
    """The 2x2 patch merging of Swin (timm, Hugging Face, torchvision): next (i, j) takes the
    tokens (2i + a, 2j + b), a, b in {0, 1}, of the previous grid (odd sides zero-padded)."""
    (h, w), (h2, w2) = before, after
    i, j = torch.meshgrid(torch.arange(h2), torch.arange(w2), indexing="ij")
    sources = []
    for a in (0, 1):
        for b in (0, 1):
            r, c = 2 * i + a, 2 * j + b
            sources.append(torch.where((r < h) & (c < w), r * w + c, torch.full_like(r, -1)).flatten())
    return Merge(torch.stack(sources, dim=1).to(device), h * w)


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


class Windowed:
    """One window layer (or its gradient, or a reduction of it) over a stage's grid.

    blocks: (B, heads, windows, n, n), or (B, windows, n, n) once heads are reduced, or None
    (a layer kept only for its place in the chain, see `skeleton`). index: (windows, n) grid
    token of each slot, -1 = padding. grid: the stage's (h, w). entry: the `Merge` from the
    previous stage's grid into this one (applied before this layer), or None.
    """

    def __init__(self, blocks: Optional[torch.Tensor], index: torch.Tensor, grid: Tuple[int, int],
                 entry: Optional[Merge] = None):
        self.blocks, self.index, self.grid, self.entry = blocks, index, tuple(grid), entry

    # --- structure
    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def heads(self) -> bool:
        return self.blocks.dim() == 5

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape of the dense matrix it stands for: (B, heads, N, N) or (B, N, N)."""
        lead = self.blocks.shape[:2] if self.heads else self.blocks.shape[:1]
        return tuple(lead) + (self.num_tokens, self.num_tokens)

    def dim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self):
        return self.blocks.dtype

    @property
    def device(self):
        return self.blocks.device

    @property
    def requires_grad(self) -> bool:
        return self.blocks is not None and self.blocks.requires_grad

    def like(self, blocks: Optional[torch.Tensor]) -> "Windowed":
        return Windowed(blocks, self.index, self.grid, self.entry)

    def skeleton(self) -> "Windowed":
        """The layer without its values: what a method that reads other layers keeps of it."""
        return self.like(None)

    @property
    def valid(self) -> torch.Tensor:
        """(windows, n) real (non-padding) slots."""
        return (self.index >= 0).to(self.blocks.device)

    def pairs(self) -> torch.Tensor:
        """(windows, n, n) entries between two real tokens: the entries a window layer can have."""
        valid = self.valid
        return valid[:, :, None] & valid[:, None, :]

    # --- elementwise and head reductions (what the methods' math applies to a layer)
    def _blocks(self, other):
        return other.blocks if isinstance(other, Windowed) else other

    def __mul__(self, other):
        return self.like(self.blocks * self._blocks(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.like(self.blocks / self._blocks(other))

    def __getitem__(self, key):
        return self.like(self.blocks[key])  # (images, heads) keys: the two leading dims are the dense ones

    def _reduce(self, how, dim):
        if dim != 1 or not self.heads:
            raise ValueError("a window layer reduces over its heads only (dim=1)")
        return self.like(getattr(self.blocks, how)(dim=1))

    def mean(self, dim):
        return self._reduce("mean", dim)

    def sum(self, dim):
        return self._reduce("sum", dim)

    def amax(self, dim):
        return self._reduce("amax", dim)

    def amin(self, dim):
        return self._reduce("amin", dim)

    def clamp(self, min=None, max=None):  # noqa: A002 (torch's names)
        return self.like(self.blocks.clamp(min=min, max=max))

    def clamp_(self, min=None, max=None):  # noqa: A002
        self.blocks.clamp_(min=min, max=max)
        return self

    def to(self, *args, **kwargs):
        return self.like(self.blocks.to(*args, **kwargs))

    def float(self):
        return self.like(self.blocks.float())

    def detach(self):
        return self if self.blocks is None else self.like(self.blocks.detach())

    # --- products
    def vecmat(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N) row -> row @ A (B, N), window by window: gather the row into the window
        slots, one small product per window, scatter back. Heads must be reduced."""
        valid = self.valid
        index = self.index.to(row.device).clamp(min=0)
        gathered = row[:, index] * valid  # (B, windows, n); padding slots carry nothing
        out = torch.einsum("bwi,bwij->bwj", gathered.to(self.blocks.dtype), self.blocks)
        result = row.new_zeros(row.shape[0], self.num_tokens)
        return result.index_add_(1, self.index.to(row.device)[valid], out[:, valid].to(row.dtype))

    def dense(self) -> torch.Tensor:
        """The (B, [heads,] N, N) matrix it stands for (tests and small grids only)."""
        pairs = self.pairs()
        windows, n = self.index.shape
        rows = self.index.to(pairs.device)[:, :, None].expand(windows, n, n)[pairs]
        cols = self.index.to(pairs.device)[:, None, :].expand(windows, n, n)[pairs]
        out = self.blocks.new_zeros(self.shape)
        out[..., rows, cols] = self.blocks[..., pairs]
        return out
