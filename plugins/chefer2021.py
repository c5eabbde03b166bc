"""Chefer, Gur & Wolf (ICCV 2021), 'Generic Attention-model Explainability', self-attention rule.

R = I; for each block, R <- R + mean_heads((dA * A)^+) R, where dA is the gradient of the
target logit w.r.t. the post-softmax attention A; the map is R[token, patches]. Since
R_L = (I + Abar_L) ... (I + Abar_1), the explained token's row is a rollout of (I + Abar).
"""
import torch

import vitx
from vitx.attribution.explainer import Explainer
from vitx.attribution.ops import rollout_row


class Chefer2021(Explainer):
    name = "chefer2021"
    summary = "relevance R += mean_heads((dA * A)^+) R per block, from R = I (no renormalisation)"
    paper = "Chefer, Gur & Wolf 2021, 'Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers'"
    needs_grad = True

    def attribute(self, attentions, query, gradients=None):
        eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype, device=attentions[0].device)
        layers = [eye + (gradient * attention).clamp(min=0).mean(dim=1) for attention, gradient in zip(attentions, gradients)]
        return rollout_row(layers, query)


@vitx.hookimpl
def vitx_register_explainers(register):
    register(Chefer2021)
