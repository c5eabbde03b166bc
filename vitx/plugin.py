"""The plugin door: everything an explainer plugin may use, in one import.

    from vitx.plugin import ATTENTION, Explainer, Option, hookimpl, rollout_row

vitx's own methods (`vitx/plugins/`, one module each) import only this module, exactly as a
third-party package does, and an import contract (.importlinter) checks it: what a plugin can
rely on is this list, and the core can move behind it. A method is its declarations (`name`,
`options`, `requires`, capabilities) and its math; the core records what `requires` names,
runs the forward and backward passes, and hands the method an `Evidence`.
"""
from .attribution.explainer import Explainer
from .attribution.libragrad import GRAD_MODE_OPTION, token_fullgrad
from .attribution.lrp import VARIANTS as LRP_VARIANTS
from .attribution.lrp import input_relevance
from .attribution.ops import (
    HEAD_FUSIONS, add_identity, discard_lowest, fuse_heads, layer_row, norm_ratio, rollout_row, skip, with_residual,
)
from .attribution.options import MASKED_IMAGES_OPTION, MAX_PER_PASS, MAX_SEED, Option, baseline_option
from .capture.requirements import ATTENTION, ATTENTION_GRAD, BLOCK_STATES, MODEL, TOKEN_GRAD, TOKENS
from .errors import VitxError
from .hookspecs import hookimpl

__all__ = [
    # declaring a method
    "Explainer", "Option", "hookimpl", "VitxError",
    # what the core records for it (Explainer.requires)
    "ATTENTION", "ATTENTION_GRAD", "BLOCK_STATES", "MODEL", "TOKEN_GRAD", "TOKENS",
    # options several methods share
    "GRAD_MODE_OPTION", "MASKED_IMAGES_OPTION", "MAX_PER_PASS", "MAX_SEED", "baseline_option",
    # the attention-flow math (vitx.attribution.ops)
    "HEAD_FUSIONS", "add_identity", "discard_lowest", "fuse_heads", "layer_row", "norm_ratio", "rollout_row", "skip",
    "with_residual",
    # relevance through the model (LRP rules, LibraGrad's FullGrad)
    "LRP_VARIANTS", "input_relevance", "token_fullgrad",
]
