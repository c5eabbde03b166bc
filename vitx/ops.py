"""Stable import path for plugins: `from vitx.ops import fuse_heads, rollout_row, ...`."""
from .attribution.ops import *  # noqa: F401,F403
from .attribution.ops import HEAD_FUSIONS, discard_lowest, fuse_heads, rollout_row, with_residual  # noqa: F401
