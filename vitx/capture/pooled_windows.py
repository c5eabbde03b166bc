"""Window attention whose queries are pooled (Hiera's first block of a stage), as a stage layer.

Inside each window, the queries are pooled from the window's input tokens (a max over each
q_stride group), the keys are the window's input tokens themselves. So the layer attends
from the Nq output tokens to the N_in input tokens, block-sparse: each window is a small
(nq x nk) block whose rows are output-grid tokens (`queries`, (windows, nq)) and whose
columns are input-grid tokens (`keys`, (windows, nk)), -1 for a padding slot (SAM2's Hiera
pads the grid to whole windows). Global attention with pooled queries is the one-window
case. Its residual path pools the input tokens the same way (`skip`, a `Merge` with equal
weights over each pooled token's window), so as a token flow the layer is the `Pooled` layer
A + S with A stored by windows: (B, heads, windows, nq, nk) instead of a dense
(Nq x N_in), which at 224 px would be 784 x 3136 per head. Padding slots are not image
tokens: their rows and columns are dropped, as for `Windowed`.
"""
from typing import Optional

import torch

from .stages import Merge, Pooled


class PooledWindows(Pooled):
    """blocks: (B, [heads,] windows, nq, nk); queries: (windows, nq) output-grid token of each
    query slot; keys: (windows, nk) input-grid token of each key slot (-1: padding); skip: the
    pooling of the residual path, (Nq x N_in)."""

    block_dims = 4

    def __init__(self, blocks, grid, queries: torch.Tensor, keys: torch.Tensor, skip: Merge,
                 entry: Optional[Merge] = None, mix: Optional[str] = None):
        super().__init__(blocks, grid, entry, skip=skip, mix=mix)
        self.queries, self.key_slots = queries, keys

    def like(self, blocks, mix=None):
        return PooledWindows(blocks, self.grid, self.queries, self.key_slots, self.skip, self.entry, mix or self.mix)

    def pairs(self) -> torch.Tensor:
        """(windows, nq, nk) entries between a real query and a real key."""
        device = self.blocks.device
        return (self.queries.to(device) >= 0)[:, :, None] & (self.key_slots.to(device) >= 0)[:, None, :]

    def _scatter(self, values: torch.Tensor, slots: torch.Tensor, size: int) -> torch.Tensor:
        """(B, windows, n) slot values -> (B, size) summed onto their tokens, padding dropped."""
        slots = slots.to(values.device)
        real = slots >= 0
        return values.new_zeros(values.shape[0], size).index_add_(1, slots[real], values[:, real])

    def row_sums(self) -> torch.Tensor:
        """(B, Nq) the attention each query gives to real keys."""
        sums = (self.blocks * (self.key_slots.to(self.blocks.device) >= 0)[:, None, :]).sum(dim=-1)
        return self._scatter(sums, self.queries, self.num_tokens)

    def attend(self, row: torch.Tensor) -> torch.Tensor:
        """Gather the row into the query slots, one (nq x nk) product per window, scatter the
        result onto the key slots' input tokens."""
        queries = self.queries.to(row.device)
        gathered = row[:, queries.clamp(min=0)] * (queries >= 0)  # (B, windows, nq); padding carries nothing
        out = torch.einsum("bwq,bwqk->bwk", gathered.to(self.blocks.dtype), self.blocks).to(row.dtype)
        return self._scatter(out, self.key_slots, self.num_inputs)

    def attention_dense(self) -> torch.Tensor:
        pairs = self.pairs()
        windows, nq, nk = pairs.shape
        rows = self.queries.to(pairs.device)[:, :, None].expand(windows, nq, nk)[pairs]
        cols = self.key_slots.to(pairs.device)[:, None, :].expand(windows, nq, nk)[pairs]
        out = self.blocks.new_zeros(self.shape).float()
        out[..., rows, cols] = self.blocks.float()[..., pairs]
        return out
