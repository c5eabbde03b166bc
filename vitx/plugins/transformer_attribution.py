"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021), on vitx's LRP rules.

For each block, Abar = I + mean_heads((dA * R_A)^+), where dA is the plain gradient of the
target score w.r.t. the attention A (recorded by the core) and R_A the LRP relevance of A
(A x modified gradient, from one AttnLRP backward, with relevance 1 at the explained score
as in the paper's implementation). The map is the explained token's row of
Abar_L ... Abar_1 (R = I; R += mean_heads((dA * R_A)^+) R, no renormalisation).

The paper propagates with its own LRP rules (alpha-beta on linear layers); this uses the
AttnLRP rules of `vitx.attribution.lrp` (epsilon on linear layers, identity on
non-linearities, uniform on the attention products), which is what 'built on the LRP
machinery' means here.
"""
import torch

from vitx.plugin import (
    ATTENTION, ATTENTION_GRAD, MODEL, Explainer, Option, VitxError, hookimpl, input_relevance, rollout_row,
)


class TransformerAttribution(Explainer):
    name = "transformer_attribution"
    summary = "rollout of I + mean_heads((dA * LRP relevance of A)^+), from R = I"
    paper = "Chefer, Gur & Wolf 2021, 'Transformer Interpretability Beyond Attention Visualization' (CVPR)"
    requires = (ATTENTION, ATTENTION_GRAD, MODEL)
    options = (
        Option("epsilon", float, 0.0, "epsilon of the epsilon rule on linear layers and convolutions", minimum=0.0),
    )

    def explain(self, evidence):
        result = input_relevance(evidence.model, evidence.pixels, evidence.target.score,
                                 variant="attnlrp", epsilon=self.epsilon, attention=True)
        gradients = evidence.attention_grads
        if len(result.attention) != len(gradients):
            raise VitxError(
                f"transformer_attribution: the LRP pass saw {len(result.attention)} attention maps but the "
                f"recorder {len(gradients)}; this model's attention is not computed by a softmax vitx can see"
            )
        score = result.score
        unit = torch.where(score >= 0, score + 1e-12, score - 1e-12)[:, None, None, None]  # relevance 1 at the score
        layers = []
        for relevance, gradient in zip(result.attention, gradients):
            if relevance.numel() != gradient.numel():
                raise VitxError(f"transformer_attribution: attention of shape {tuple(relevance.shape)} in the LRP "
                                f"pass but {tuple(gradient.shape)} recorded")
            weighted = (gradient * (relevance.reshape(gradient.shape) / unit)).clamp(min=0).mean(dim=1)
            layers.append(torch.eye(weighted.shape[-1], dtype=weighted.dtype, device=weighted.device) + weighted)
        return rollout_row(layers, evidence.query)


@hookimpl
def vitx_register_explainers(register):
    register(TransformerAttribution)
