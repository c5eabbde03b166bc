"""Beyond Intuition (Chen, Li, Yu, Dou & Xiong, TMLR 2023), head-wise token attribution.

The attention block's effect on the explained token is decomposed per head and weighted by
how much each head matters to the score: I_h = mean_ij |A_h^T dA_h| (dA: gradient of the
target score w.r.t. the attention), normalised over the heads. From R = I, each block from
`first_block` on adds R <- R + (sum_h I_h A_h) R. The last block's attention gradient,
integrated along the straight path from 0 to the input (`steps` points alpha x, alpha in
linspace(0, 1)), averaged, clamped at 0 and averaged over heads, W, then weighs R
elementwise: the map is the explained token's row of W * R. As the authors' code
(`generate_ours` in jiaminchen-1031/transformerinterp), there for ViT-B with first_block 3.
"""
import numpy as np
import torch

import vitx
from vitx.attribution.explainer import ATTENTION, ATTENTION_GRAD, MODEL, Explainer, Option
from vitx.errors import VitxError


class BeyondIntuition(Explainer):
    name = "beyond_intuition"
    summary = "rollout of I + head-importance-weighted attention, times the path-integrated last-layer attention gradient"
    paper = ("Chen, Li, Yu, Dou & Xiong 2023, 'Beyond Intuition: Rethinking Token Attributions inside "
             "Transformers' (TMLR)")
    requires = (ATTENTION, ATTENTION_GRAD, MODEL)
    options = (
        Option("steps", int, 20, "points alpha on the path 0 -> image for the last block's attention gradient",
               minimum=1, maximum=1024),
        Option("first_block", int, 0, "first block rolled out, counted from 0 (the authors use 3 of ViT-B's 12)",
               minimum=0),
        Option("internal_batch_size", int, 5, "path points stacked into one recorded forward/backward pass", minimum=1,
               aliases=("steps_per_pass",)),
    )

    def explain(self, evidence):
        attentions, gradients = evidence.attentions, evidence.attention_grads
        if self.first_block >= len(attentions):
            raise VitxError(f"beyond_intuition: first_block {self.first_block} but the model has "
                            f"{len(attentions)} attention layers")
        n = attentions[0].shape[-1]
        relevance = torch.eye(n, device=attentions[0].device).expand(attentions[0].shape[0], n, n)
        for attention, gradient in zip(attentions[self.first_block:], gradients[self.first_block:]):
            attention, gradient = attention.float(), gradient.float()
            importance = (attention.transpose(-1, -2) @ gradient).abs().mean(dim=(-1, -2))  # (B, heads)
            importance = importance / importance.sum(dim=1, keepdim=True).clamp(min=1e-30)
            fused = (importance[:, :, None, None] * attention).sum(dim=1)
            relevance = relevance + fused @ relevance
        pixels, total = evidence.pixels, 0
        alphas = np.linspace(0, 1, self.steps)
        for first in range(0, self.steps, self.internal_batch_size):
            chunk = alphas[first:first + self.internal_batch_size]
            last = evidence.attention_gradients(torch.cat([float(a) * pixels for a in chunk]))[-1].float()
            total = total + last.reshape(len(chunk), pixels.shape[0], *last.shape[1:]).sum(dim=0)
        weights = (total / self.steps).clamp(min=0).mean(dim=1)
        query = evidence.query.to(relevance.dtype)
        return torch.einsum("i,bij->bj", query, weights * relevance)


@vitx.hookimpl
def vitx_register_explainers(register):
    register(BeyondIntuition)
