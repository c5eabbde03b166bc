"""A stable import path for third-party plugins: `from vitx.ops import fuse_heads, rollout_row, ...`.

It re-exports the five helpers below from `vitx.attribution.ops` (the example plugin,
examples/vitx-example-plugin, uses it). vitx's built-in plugins import `vitx.attribution.ops`
directly, which also holds the helpers not re-exported here (`layer_row`, `skip`,
`add_identity`, `norm_ratio`, ...).
"""
from .attribution.ops import HEAD_FUSIONS, discard_lowest, fuse_heads, rollout_row, with_residual

__all__ = ["HEAD_FUSIONS", "discard_lowest", "fuse_heads", "rollout_row", "with_residual"]
