"""Layers of hierarchical ViTs: attention over one stage's tokens, chained through the stages.

A hierarchical model changes its token set between stages (patch merging, pooling, a strided
convolution), and some attend from one token set to another (keys or queries pooled). No
layer is then one (N x N) matrix over a single token set, yet each is still linear in the
tokens it mixes, so an attention-flow method can chain them from the last stage down to the
first, as row-vector products that never build a dense (N x N) matrix:

- `Merge`: a token set built from another by a local operator (2x2 patch merging, a strided
  or depthwise convolution, average or max pooling), written as an (N_next x N) mixing matrix
  that spreads each new token over its real sources by no learned weight: the operator's own
  weights mix channels, not tokens, and differ per channel, so no source is preferred, as
  rollout's residual identity prefers none. Where footprints overlap (a 3x3 stride-2
  convolution or pooling), a source read by c windows gives each of them 1/c of itself, and
  each row is normalised to 1: a bilinear "tent" (1/4 centre, 1/8 edges, 1/16 corners for
  3x3 stride 2), so a uniform row over the new tokens stays uniform over the old ones instead
  of printing the overlap count as a checkerboard. Without overlap (2x2 patch merging) that is
  the plain mean. Padding sources are dropped (a border token takes its real sources only);
  prefix tokens (a class token) map to their own prefix token.
- `StageLayer`: the protocol every such layer follows, and what vitx.attribution.ops asks of
  it: head reductions and elementwise products over its stored `blocks`, `vecmat` (a row
  times the layer), `discard_lowest`, `add_identity` (Chefer's A + I), `with_residual`
  (rollout's (A + I) / 2), `skeleton`, and `entry`, the merge from the previous layer's token
  set into this layer's (applied before the layer). `dense()` writes it out for tests.
- `Pooled` (here): attention from Nq query tokens to Nk key tokens, where the keys are pooled
  from the layer's N_in input tokens (`keys`, an (Nk x N_in) Merge) and the queries may be
  pooled too (`skip`, the (Nq x N_in) Merge of the residual path). As a token flow the layer
  is A @ P_keys, and its residual path S = skip (or the identity); rollout's (A P + S) / 2 is
  applied inside `vecmat`, so an (Nq x N_in) matrix is never built.
- `Windowed` (vitx.capture.windows): block-diagonal window attention (Swin).

A layer's output tokens are `prefix` (named, first) then its `grid` row by row; the first
layer's tokens are what the maps cover, the last layer's are where the explained token lives.
"""
from typing import Optional, Sequence, Tuple

import torch


class Merge:
    """A stage transition as an (N_next x N) mixing matrix: next token i = mean of its sources.

    `sources`: (N_next, k) token indices of each next token's sources in the previous token
    set, -1 for a padding source (dropped). `before`, `grid`: the two token sets' grids where
    the merge knows them (a pooling's key grid is what the views draw a pooled layer's keys on);
    `kernel`: the (kh, kw) footprint the k = kh * kw sources of a row lie in, row-major (which
    of two overlapping windows a token lies nearer the centre of).
    """

    def __init__(self, sources: torch.Tensor, num_tokens: int, grid: Optional[Tuple[int, int]] = None,
                 before: Optional[Tuple[int, int]] = None, kernel: Optional[Tuple[int, int]] = None):
        self.sources = sources
        self.num_tokens = num_tokens  # N of the previous token set
        self.grid = None if grid is None else tuple(int(g) for g in grid)
        self.before = None if before is None else tuple(int(g) for g in before)
        self.kernel = None if kernel is None else tuple(int(k) for k in kernel)
        self._weights: Optional[torch.Tensor] = None  # see `weights`

    @property
    def num_outputs(self) -> int:
        return self.sources.shape[0]

    def weights(self, dtype) -> torch.Tensor:
        """(N_next, k): each real source weighted by 1 / (windows that read it), rows summing to 1
        (computed once per merge: `pull` runs for every layer of every batch)."""
        if self._weights is None:
            valid = self.sources >= 0
            coverage = torch.bincount(self.sources[valid], minlength=self.num_tokens).to(torch.float64)
            share = torch.where(valid, 1.0 / coverage[self.sources.clamp(min=0)].clamp(min=1),
                                torch.zeros((), dtype=torch.float64))
            self._weights = share / share.sum(dim=1, keepdim=True).clamp(min=1e-300)
        return self._weights.to(dtype)

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


def _with_prefix(sources: torch.Tensor, prefix: int) -> torch.Tensor:
    """Grid sources shifted past `prefix` leading tokens, each prefix token its own source."""
    if not prefix:
        return sources
    own = torch.full((prefix, sources.shape[1]), -1, dtype=sources.dtype)
    own[:, 0] = torch.arange(prefix)
    return torch.cat([own, torch.where(sources >= 0, sources + prefix, sources)])


def _axis(size: int, out: int, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """(out, kernel) source positions along one side, -1 outside [0, size)."""
    pos = torch.arange(out)[:, None] * stride - padding + torch.arange(kernel)[None, :]
    return torch.where((pos >= 0) & (pos < size), pos, torch.full_like(pos, -1))


def _grid_sources(rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """Per-side sources (h2, kh), (w2, kw) -> (h2 * w2, kh * kw) flat token sources."""
    r, c = rows[:, None, :, None], cols[None, :, None, :]
    flat = torch.where((r >= 0) & (c >= 0), r * width + c, torch.full_like(r * c, -1))
    return flat.reshape(rows.shape[0] * cols.shape[0], -1)


def conv_merge(before: Tuple[int, int], after: Tuple[int, int], kernel, stride, padding, prefix: int = 0,
               device=None) -> Merge:
    """A strided local operator (convolution, pooling, 2x2 patch merging) from grid `before` to
    grid `after`: next (i, j) takes the real tokens of its kernel footprint (rows
    stride * i - padding + [0, kernel)), sources beyond the grid (zero padding, a padded odd
    side) dropped. `prefix` tokens lead both token sets and map to themselves."""
    kernel, stride, padding = (pair(v) for v in (kernel, stride, padding))
    rows = _axis(before[0], after[0], kernel[0], stride[0], padding[0])
    cols = _axis(before[1], after[1], kernel[1], stride[1], padding[1])
    sources = _with_prefix(_grid_sources(rows, cols, before[1]), prefix)
    return Merge(sources.to(device), prefix + before[0] * before[1], after, before, kernel)


def adaptive_merge(before: Tuple[int, int], after: Tuple[int, int], device=None) -> Merge:
    """Adaptive average pooling from grid `before` to `after` (torch's bins: floor(i * h / h2)
    to ceil((i + 1) * h / h2)), each output the mean of its bin."""
    def axis(size, out):
        start = [(i * size) // out for i in range(out)]
        stop = [-(-((i + 1) * size) // out) for i in range(out)]
        span = max(b - a for a, b in zip(start, stop))
        pos = torch.tensor(start)[:, None] + torch.arange(span)[None, :]
        return torch.where(pos < torch.tensor(stop)[:, None], pos, torch.full_like(pos, -1))

    sources = _grid_sources(axis(before[0], after[0]), axis(before[1], after[1]), before[1])
    return Merge(sources.to(device), before[0] * before[1], after, before)


def pair(value) -> Tuple[int, int]:
    return (int(value), int(value)) if not isinstance(value, (tuple, list)) else tuple(int(v) for v in value)


def lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """(B, M) -> bool mask of each row's k smallest entries (ties broken by position).

    By selection (kthvalue, O(M)) rather than a partial sort (topk, ~6x slower at 1370
    tokens): entries below the k-th value, then as many entries equal to it as make k."""
    threshold = flat.kthvalue(k, dim=-1, keepdim=True).values
    drop = flat < threshold
    ties = flat == threshold
    missing = k - drop.sum(dim=-1, keepdim=True)
    return drop | (ties & (ties.cumsum(dim=-1) <= missing))


class StageLayer:
    """One attention layer of a hierarchical model (or its gradient, or a reduction of it).

    blocks: the stored attention values, heads on dim 1 ((B, heads, ...) or (B, ...) once
    heads are reduced), or None (a layer kept only for its place in the chain: `skeleton`).
    grid, prefix: the layer's output tokens (prefix names, then the grid row by row).
    entry: the `Merge` from the previous layer's tokens into this layer's input, or None.
    Subclasses define the products (`vecmat`, `dense`) and the rollout factors.
    """

    skip: Optional[Merge] = None  # the residual path's merge (None: the identity)

    def __init__(self, blocks: Optional[torch.Tensor], grid: Tuple[int, int], entry: Optional[Merge],
                 prefix: Sequence[str] = ()):
        self.blocks, self.grid, self.entry, self.prefix = blocks, tuple(grid), entry, tuple(prefix)

    # --- structure
    @property
    def num_tokens(self) -> int:
        """The layer's output (query) tokens."""
        return len(self.prefix) + self.grid[0] * self.grid[1]

    @property
    def num_inputs(self) -> int:
        """The tokens the layer reads (after its entry)."""
        return self.num_tokens if self.skip is None else self.skip.num_tokens

    @property
    def reads(self) -> int:
        """The previous layer's tokens this one starts from (before its entry)."""
        return self.num_inputs if self.entry is None else self.entry.num_tokens

    @property
    def heads(self) -> bool:
        return self.blocks.dim() == self.block_dims + 1

    block_dims = 3  # dims of `blocks` without heads

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape of the dense matrix it stands for: (B, heads, N_out, N_in) or (B, N_out, N_in)."""
        lead = self.blocks.shape[:2] if self.heads else self.blocks.shape[:1]
        return tuple(lead) + (self.num_tokens, self.num_inputs)

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

    def like(self, blocks: Optional[torch.Tensor]) -> "StageLayer":
        raise NotImplementedError

    def skeleton(self) -> "StageLayer":
        """The layer without its values: what a method that reads other layers keeps of it."""
        return self.like(None)

    # --- the chain
    def enter(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N_in) row -> (B, N_prev): back through the merge into this layer."""
        return row if self.entry is None else self.entry.pull(row)

    def carry(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N_out) -> (B, N_prev) through the layer's residual path and entry only (no
        attention): how a row reaches earlier stages past a layer it does not read."""
        return self.enter(row if self.skip is None else self.skip.pull(row))

    # --- elementwise and head reductions (what the methods' math applies to a layer)
    def _blocks(self, other):
        return other.blocks if isinstance(other, StageLayer) else other

    def __mul__(self, other):
        return self.like(self.blocks * self._blocks(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.like(self.blocks / self._blocks(other))

    def __getitem__(self, key):
        return self.like(self.blocks[key])  # (images, heads) keys: the two leading dims are the dense ones

    def _reduce(self, how, dim):
        if dim != 1 or not self.heads:
            raise ValueError("a stage layer reduces over its heads only (dim=1)")
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

    # --- what each kind defines
    def vecmat(self, row: torch.Tensor) -> torch.Tensor:
        """(B, N_out) row -> row @ layer (B, N_in); heads must be reduced."""
        raise NotImplementedError

    def discard_lowest(self, ratio: float) -> "StageLayer":
        raise NotImplementedError

    def add_identity(self) -> "StageLayer":
        raise NotImplementedError

    def with_residual(self) -> "StageLayer":
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The (B, [heads,] N_out, N_in) matrix it stands for (tests and small grids only)."""
        raise NotImplementedError


def drop_lowest(blocks: torch.Tensor, candidates: torch.Tensor, ratio: float, keep: Optional[torch.Tensor]):
    """Zero the lowest `ratio` of each image's `candidates` entries of `blocks` (B, ...), never
    an entry of `keep` (broadcast over the batch)."""
    k = int(int(candidates.sum()) * ratio)
    if k == 0:
        return blocks
    batch = blocks.shape[0]
    drop = lowest(blocks.masked_fill(~candidates, float("inf")).reshape(batch, -1), k).reshape(blocks.shape)
    return blocks.masked_fill(drop if keep is None else drop & ~keep, 0.0)


class Pooled(StageLayer):
    """Attention from a layer's (pooled) queries to its pooled keys, over its input tokens.

    blocks: (B, [heads,] Nq, Nk). keys: the (Nk x N_in) Merge that pools the keys from the
    input tokens (None: the keys are the input tokens). skip: the (Nq x N_in) Merge of the
    residual path (None: the identity, Nq = N_in). `mix` records the rollout factor asked for
    and applied lazily by `vecmat`: None (the attention A P), "identity" (A P + S: Chefer) or
    "residual" ((A P + S) / 2 with rows renormalised: rollout).
    """

    def __init__(self, blocks, grid, entry=None, prefix=(), keys: Optional[Merge] = None,
                 skip: Optional[Merge] = None, mix: Optional[str] = None):
        super().__init__(blocks, grid, entry, prefix)
        self.keys, self.skip, self.mix = keys, skip, mix

    def like(self, blocks, mix=None):
        return Pooled(blocks, self.grid, self.entry, self.prefix, self.keys, self.skip, mix or self.mix)

    @property
    def square(self) -> bool:
        """Queries and keys are the input tokens themselves (an ordinary attention)."""
        return self.keys is None and self.skip is None

    def _pull_keys(self, row):
        return row if self.keys is None else self.keys.pull(row)

    def _pull_skip(self, row):
        return row if self.skip is None else self.skip.pull(row)

    def row_sums(self) -> torch.Tensor:
        """(B, Nq) the attention each query gives (what rollout's residual renormalises by)."""
        return self.blocks.sum(dim=-1)

    def attend(self, row: torch.Tensor) -> torch.Tensor:
        """(B, Nq) -> row @ A P (B, N_in): the attention part of the flow."""
        return self._pull_keys(torch.einsum("bq,bqk->bk", row.to(self.blocks.dtype), self.blocks).to(row.dtype))

    def attention_dense(self) -> torch.Tensor:
        """(B, [heads,] Nq, N_in): A P written out."""
        keys = torch.eye(self.blocks.shape[-1]) if self.keys is None else self.keys.dense()
        return self.blocks.float() @ keys.to(self.blocks.device)

    def vecmat(self, row: torch.Tensor) -> torch.Tensor:
        if self.mix == "residual":  # rows of (A P + S) / 2 sum to (sum_k A + 1) / 2: divide the row first
            row = row / (self.row_sums().to(row.dtype) + 1)
        out = self.attend(row)
        return out if self.mix is None else out + self._pull_skip(row)

    def pairs(self) -> torch.Tensor:
        """The entries the layer can have, over `blocks` without batch and heads: all of them."""
        return torch.ones(self.blocks.shape[1 - self.block_dims:], dtype=torch.bool, device=self.blocks.device)

    def discard_lowest(self, ratio):
        """The lowest `ratio` of the attention entries (Nq x Nk, per window where there are
        windows) dropped; a square layer keeps its diagonal (every token's own path), as window
        layers do."""
        if ratio <= 0:
            return self
        candidates = self.pairs()
        keep = torch.eye(self.blocks.shape[-1], dtype=torch.bool, device=self.blocks.device) if self.square else None
        return self.like(drop_lowest(self.blocks, candidates, ratio, keep))

    def add_identity(self):
        return self.like(self.blocks, "identity")

    def with_residual(self):
        return self.like(self.blocks, "residual")

    def dense(self) -> torch.Tensor:
        out = self.attention_dense()
        if self.mix is None:
            return out
        skip = torch.eye(self.num_tokens) if self.skip is None else self.skip.dense()
        out = out + skip.to(out.device)
        return out / out.sum(dim=-1, keepdim=True) if self.mix == "residual" else out
