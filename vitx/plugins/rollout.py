"""Attention rollout (Abnar & Zuidema 2020): attention propagated through the residual path."""
import torch

from vitx.plugin import (
    HEAD_FUSIONS, Explainer, Option, discard_lowest, fuse_heads, hookimpl, rollout_row, with_residual,
)


# Folding costs N^3 per layer against roughly 12 N D^2 for the layer itself: under 10 % of a
# ViT-S (D 384) forward up to about 24x24 patches (384 px at patch 16), so longer sequences
# (518 px DINOv2: 1370 tokens, +50 %) keep per-layer maps.
FOLD_MAX_TOKENS = 577


class Rollout(Explainer):
    name = "rollout"
    summary = "attention rollout: fused heads + identity for the residual, multiplied through the layers"
    windows = True  # window layers of hierarchical models (vitx.capture.windows)
    paper = "Abnar & Zuidema 2020, 'Quantifying Attention Flow in Transformers'"
    options = (
        Option("head_fusion", str, "mean", "how heads are fused in each layer", HEAD_FUSIONS),
        Option("discard_ratio", float, 0.0, "fraction of the lowest attention dropped per layer", minimum=0.0, maximum=0.99),
    )

    def fused_heads(self):
        return self.head_fusion  # rollout reads nothing per head

    def keep(self, layer, attention):
        return fuse_heads(attention, self.head_fusion)  # heads are never needed again

    def fold(self, layer, attention, running, query):
        """Forward order: P_l = F_l P_(l-1), one (B, N, N) product alive instead of a map per layer.
        The N^3 product per layer is cheap against the forward only for short sequences, so
        longer ones keep the per-layer maps and the O(L N^2) row products."""
        if attention.shape[-1] > FOLD_MAX_TOKENS:
            return None
        fused = fuse_heads(attention, self.head_fusion).float()
        factor = with_residual(discard_lowest(fused, self.discard_ratio, query))
        return factor if running is None else torch.bmm(factor, running)

    def explain(self, evidence):
        if evidence.folded is not None:  # the row of P_L = F_L ... F_1
            row = evidence.query.to(evidence.folded.dtype).expand(evidence.folded.shape[0], -1)
            return torch.bmm(row.unsqueeze(1), evidence.folded).squeeze(1)
        return super().explain(evidence)

    def attribute(self, attentions, query, gradients=None):
        return rollout_row(attentions, query, lambda layer, fused: with_residual(discard_lowest(fused, self.discard_ratio, query)))


@hookimpl
def vitx_register_explainers(register):
    register(Rollout)
