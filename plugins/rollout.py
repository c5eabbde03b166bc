"""Attention rollout (Abnar & Zuidema 2020): attention propagated through the residual path."""
import vitx
from vitx.attribution.explainer import Explainer, Option
from vitx.attribution.ops import HEAD_FUSIONS, discard_lowest, fuse_heads, rollout_row, with_residual


class Rollout(Explainer):
    name = "rollout"
    summary = "attention rollout: fused heads + identity for the residual, multiplied through the layers"
    windows = True  # window layers of hierarchical models (vitx.capture.windows)
    paper = "Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"
    options = (
        Option("head_fusion", str, "mean", "how heads are fused in each layer", HEAD_FUSIONS),
        Option("discard_ratio", float, 0.0, "fraction of the lowest attention dropped per layer", minimum=0.0, maximum=0.99),
    )

    def keep(self, layer, attention):
        return fuse_heads(attention, self.head_fusion)  # heads are never needed again

    def attribute(self, attentions, query, gradients=None):
        return rollout_row(attentions, query, lambda layer, fused: with_residual(discard_lowest(fused, self.discard_ratio, query)))


@vitx.hookimpl
def vitx_register_explainers(register):
    register(Rollout)
