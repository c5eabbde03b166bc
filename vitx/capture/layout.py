"""Where the tokens of a ViT's sequence come from.

Every ViT family orders its sequence differently: [cls, patches] (ViT), [cls, dist,
patches] (distilled DeiT), [cls, reg x4, patches] (register models), [patches] (global
pool). Explainers never guess this: they receive a query vector over tokens (which token
is explained) and return one relevance per token; the layout picks out the patch grid.
"""
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch

from ..errors import VitxError

MEAN_TOKEN = "mean"


@dataclass(frozen=True)
class TokenLayout:
    """Prefix tokens by name (e.g. {'cls': 0, 'dist': 1}), then an h x w patch grid.

    `default_token` is the token the model's head reads: 'cls' for token pooling,
    'mean' (the average of the patch tokens) for global average pooling.
    """

    prefix: Dict[str, int]
    num_prefix: int
    grid: Tuple[int, int]
    default_token: str = "cls"
    patch_start: int = field(default=-1)
    # hierarchical models (Swin, PiT, PVTv2): the explained token lives on the LAST stage's
    # tokens (this many, led by `query_prefix`, e.g. PiT's class token), while relevance and
    # maps are over the first stage's tokens; 0: the same tokens
    query_tokens: int = 0
    query_prefix: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.patch_start < 0:
            object.__setattr__(self, "patch_start", self.num_prefix)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def tokens(self) -> Tuple[str, ...]:
        """Names accepted by `query`: the prefix tokens, then 'mean'."""
        return tuple(self.prefix) + (MEAN_TOKEN,)

    def query(self, token=None, device=None) -> torch.Tensor:
        """(N,) weights over the sequence that define the explained token.

        One-hot for a real token; uniform over the patch tokens for 'mean', which is what a
        global-average-pool head reads.
        """
        token = self.default_token if token is None else token
        if self.query_tokens:
            return self._last_stage_query(token, device)
        q = torch.zeros(self.num_tokens, device=device)
        if token == MEAN_TOKEN:
            q[self.patch_start:self.patch_start + self.num_patches] = 1.0 / self.num_patches
        elif isinstance(token, int) and 0 <= token < self.num_tokens:
            q[token] = 1.0
        elif token in self.prefix:
            q[self.prefix[token]] = 1.0
        else:
            raise VitxError(
                f"this model has no token {token!r}; valid tokens: {', '.join(self.tokens)}"
            )
        return q

    def _last_stage_query(self, token, device) -> torch.Tensor:
        """A prefix token of the last stage by name, 'mean' (its patch tokens: what a
        global-average-pool head reads) or a token index of the last stage."""
        q = torch.zeros(self.query_tokens, device=device)
        start = len(self.query_prefix)
        if token == MEAN_TOKEN:
            q[start:] = 1.0 / (self.query_tokens - start)
        elif token in self.query_prefix:
            q[self.query_prefix.index(token)] = 1.0
        elif isinstance(token, int) and 0 <= token < self.query_tokens:
            q[token] = 1.0
        else:
            names = "".join(f"'{name}', " for name in self.query_prefix)
            raise VitxError(f"this model has no token {token!r}; valid tokens: {names}'mean', or an index of its "
                            f"last stage's {self.query_tokens} tokens")
        return q

    def patch_map(self, relevance: torch.Tensor) -> torch.Tensor:
        """(B, N) relevance over tokens -> (B, h, w) relevance over the patch grid."""
        if relevance.shape[-1] != self.num_tokens:
            raise VitxError(
                f"relevance has {relevance.shape[-1]} tokens but the layout expects "
                f"{self.num_tokens} ({self.num_prefix} prefix + {self.grid[0]}x{self.grid[1]} patches)"
            )
        patches = relevance[..., self.patch_start:self.patch_start + self.num_patches]
        return patches.reshape(*relevance.shape[:-1], *self.grid)


def infer_layout(num_tokens: int, grid: Tuple[int, int], prefix_names=("cls",)) -> TokenLayout:
    """Layout for a model that only tells us its patch grid: the extra tokens come first.

    The first extra token is called 'cls' (the common convention); any further ones are
    'prefix1', 'prefix2', ... A model without extra tokens is explained from the mean token.
    """
    num_prefix = num_tokens - grid[0] * grid[1]
    if num_prefix < 0:
        raise VitxError(
            f"attention has {num_tokens} tokens, fewer than the {grid[0]}x{grid[1]} patch grid"
        )
    names = {}
    for i in range(num_prefix):
        names[prefix_names[i] if i < len(prefix_names) else f"prefix{i}"] = i
    default = next(iter(names)) if names else MEAN_TOKEN
    return TokenLayout(prefix=names, num_prefix=num_prefix, grid=grid, default_token=default)
