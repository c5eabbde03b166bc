"""Window attention whose queries are pooled (Hiera's first block of a stage), as a stage layer.

Inside each window, the queries are pooled from the window's input tokens (a max over each
q_stride group), the keys are the window's input tokens themselves. So the layer attends
from the Nq output tokens to the N_in input tokens, block-sparse: each window is a small
(nq x nk) block whose rows are output-grid tokens (`queries`, (windows, nq)) and whose
columns are input-grid tokens (`keys`, (windows, nk)). Global attention with pooled queries
is the one-window case. Its residual path pools the input tokens the same way (`skip`, a
`Merge` with equal weights over each pooled token's window), so as a token flow the layer is
the `Pooled` layer A + S with A stored by windows: (B, heads, windows, nq, nk) instead of a
dense (Nq x N_in), which at 224 px would be 784 x 3136 per head.
"""
from typing import Optional

import torch

from .stages import Merge, Pooled


class PooledWindows(Pooled):
    """blocks: (B, [heads,] windows, nq, nk); queries: (windows, nq) output-grid token of each
    query slot; keys: (windows, nk) input-grid token of each key slot; skip: the pooling of
    the residual path, (Nq x N_in)."""

    block_dims = 4

    def __init__(self, blocks, grid, queries: torch.Tensor, keys: torch.Tensor, skip: Merge,
                 entry: Optional[Merge] = None, mix: Optional[str] = None):
        super().__init__(blocks, grid, entry, skip=skip, mix=mix)
        self.queries, self.key_slots = queries, keys

    def like(self, blocks, mix=None):
        return PooledWindows(blocks, self.grid, self.queries, self.key_slots, self.skip, self.entry, mix or self.mix)

    def row_sums(self) -> torch.Tensor:
        sums = self.blocks.sum(dim=-1)  # (B, windows, nq)
        out = sums.new_zeros(sums.shape[0], self.num_tokens)
        out[:, self.queries.to(sums.device).flatten()] = sums.flatten(1)
        return out

    def attend(self, row: torch.Tensor) -> torch.Tensor:
        """Gather the row into the query slots, one (nq x nk) product per window, scatter the
        result onto the key slots' input tokens."""
        gathered = row[:, self.queries.to(row.device)]  # (B, windows, nq)
        out = torch.einsum("bwq,bwqk->bwk", gathered.to(self.blocks.dtype), self.blocks).to(row.dtype)
        result = row.new_zeros(row.shape[0], self.num_inputs)
        return result.index_add_(1, self.key_slots.to(row.device).flatten(), out.flatten(1))

    def attention_dense(self) -> torch.Tensor:
        windows, nq, nk = self.blocks.shape[-3:]
        rows = self.queries.to(self.blocks.device)[:, :, None].expand(windows, nq, nk).flatten()
        cols = self.key_slots.to(self.blocks.device)[:, None, :].expand(windows, nq, nk).flatten()
        out = self.blocks.new_zeros(self.shape).float()
        out[..., rows, cols] = self.blocks.float().flatten(-3)
        return out
