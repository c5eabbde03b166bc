"""Chefer, Gur & Wolf (ICCV 2021), 'Generic Attention-model Explainability', self-attention rule.

R = I; for each block, R <- R + mean_heads((dA * A)^+) R, where dA is the gradient of the
target logit w.r.t. the post-softmax attention A; the map is R[token, patches]. Since
R_L = (I + Abar_L) ... (I + Abar_1), the explained token's row is a rollout of (I + Abar).
"""
from vitx.plugin import GRAD_MODE_OPTION, Explainer, add_identity, hookimpl, rollout_row


class Chefer2021(Explainer):
    name = "chefer2021"
    summary = "relevance R += mean_heads((dA * A)^+) R per block, from R = I (no renormalisation)"
    paper = "Chefer, Gur & Wolf 2021, 'Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers'"
    needs_grad = True
    options = (GRAD_MODE_OPTION,)
    windows = True  # window layers of hierarchical models (vitx.capture.windows)

    def reduce(self, layer, attention, gradient):
        return (gradient * attention).clamp_(min=0).sum(dim=1)  # the core divides by the heads: the head mean

    def attribute(self, attentions, query, gradients=None):
        """attentions: per-head (B, h, N, N) with `gradients`, or (without) the per-layer head
        means of (dA * A)^+ that `reduce` left."""
        if gradients is not None:
            attentions = [(g * a).clamp(min=0).mean(dim=1) for a, g in zip(attentions, gradients)]

        return rollout_row(attentions, query, lambda layer, fused: add_identity(fused))


@hookimpl
def vitx_register_explainers(register):
    register(Chefer2021)
