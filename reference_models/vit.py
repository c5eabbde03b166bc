"""A small ViT for 28/32 px images, optionally with a DeiT distillation token.

Attention goes through `F.scaled_dot_product_attention`, so vitx records it with its
generic capture; `plugin.py` adds the token layout (cls, dist) and the preprocessing.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


@dataclass
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    local_ffn: bool = False
    distill_token: bool = False
    mean: List[float] = field(default_factory=lambda: [0.5])
    std: List[float] = field(default_factory=lambda: [0.5])
    class_names: Optional[List[str]] = None

    def to_dict(self):
        return asdict(self)


class FeedForward(nn.Module):
    """MLP; with `local`, a depth-wise 3x3 conv on the patch grid between the two layers
    (LocalViT: locality the plain ViT has to learn from data)."""

    def __init__(self, dim, hidden, local):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.local = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if local else None

    def forward(self, x, num_prefix, grid):
        x = F.gelu(self.fc1(x))
        if self.local is not None:
            prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
            b, n, c = patches.shape
            patches = patches.transpose(1, 2).reshape(b, c, *grid)
            patches = F.gelu(self.local(patches)).flatten(2).transpose(1, 2)
            x = torch.cat([prefix, patches], dim=1)
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self, config: ViTConfig, drop_path: float):
        super().__init__()
        self.heads = config.heads
        self.norm1, self.norm2 = nn.LayerNorm(config.dim), nn.LayerNorm(config.dim)
        self.qkv, self.proj = nn.Linear(config.dim, 3 * config.dim), nn.Linear(config.dim, config.dim)
        self.ffn = FeedForward(config.dim, int(config.dim * config.mlp_ratio), config.local_ffn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, num_prefix, grid):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop_path(self.proj(attended))
        return x + self.drop_path(self.ffn(self.norm2(x), num_prefix, grid))


class ViT(nn.Module):
    """Patch embedding, cls (+ dist) token, learned position embedding, pre-norm blocks.

    Training with a distillation token returns (cls_logits, dist_logits); at inference the
    two heads' softmax outputs are averaged and returned as log-probabilities, so
    softmax(output) is the averaged prediction.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.class_names = config.class_names
        self.grid = (config.img_size // config.patch_size,) * 2
        self.num_prefix_tokens = 2 if config.distill_token else 1
        self.patch_embed = nn.Conv2d(config.in_chans, config.dim, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.distill_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_prefix_tokens + self.grid[0] * self.grid[1], config.dim) * 0.02)
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.head_dist = nn.Linear(config.dim, config.num_classes) if config.distill_token else None
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)

    def position_embedding(self, grid):
        """The learned embedding, interpolated when the input grid differs (curriculum)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        prefix, patches = self.pos_embed[:, :self.num_prefix_tokens], self.pos_embed[:, self.num_prefix_tokens:]
        patches = patches.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
        return torch.cat([prefix, patches.flatten(2).transpose(1, 2)], dim=1)

    def forward_features(self, x):
        x = self.patch_embed(x)
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        prefix = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        x = torch.cat([p.expand(x.shape[0], -1, -1) for p in prefix] + [x], dim=1) + self.position_embedding(grid)
        for block in self.blocks:
            x = block(x, self.num_prefix_tokens, grid)
        return self.norm(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_head(self, x):
        """Normalised tokens (B, N, D) -> the output (timm's convention; vitx applies it to
        intermediate blocks' tokens, e.g. for LeGrad)."""
        logits = self.head(x[:, 0])
        if self.head_dist is None:
            return logits
        dist_logits = self.head_dist(x[:, 1])
        if self.training:
            return logits, dist_logits
        return torch.log((logits.softmax(-1) + dist_logits.softmax(-1)) / 2)
