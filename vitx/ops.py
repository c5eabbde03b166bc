"""Stable import path for plugins: `from vitx.ops import fuse_heads, rollout_row, ...`."""
from .attribution.ops import HEAD_FUSIONS, discard_lowest, fuse_heads, rollout_row, with_residual

__all__ = ["HEAD_FUSIONS", "discard_lowest", "fuse_heads", "rollout_row", "with_residual"]
