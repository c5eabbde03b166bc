"""Beyond Intuition (Chen, Li, Yu, Dou & Xiong, TMLR 2023): head-wise or token-wise token attribution.

The attention block's effect on the explained token is decomposed, and each block from
`first_block` on adds its decomposed attention to a rollout from R = I: R <- R + M_l R. The
last block's attention gradient, integrated along the straight path from 0 to the input
(`steps` points alpha x, alpha in linspace(0, 1)), averaged, clamped at 0 and averaged over
heads, W, then weighs R elementwise: the map is the explained token's row of W * R. Two
decompositions (`variant`), as the authors' code (jiaminchen-1031/transformerinterp,
ViT/baselines/ViT/ViT_explanation_generator.py) computes them for ViT:

- head (`generate_ours`, 'Ours-H'): heads weighted by how much each matters to the score,
  I_h = mean_ij |A_h^T dA_h| (dA: gradient of the target score w.r.t. the attention),
  normalised over the heads; M_l = sum_h I_h A_h. The authors run it from block 3 of ViT-B.
- token (`generate_ours_c`, 'Ours-T'): each source token weighted by how much the block's
  value path scales it, M_l = mean_h(A_h) diag(|W_o v_j| / |z_j|), with z_j the block's input
  token (the residual stream, before the LayerNorm), v_j its value vector (heads concatenated,
  with the value bias) and W_o the attention's output projection (without its bias); no
  gradient in the rollout. The final weighting is W * |R| (R is non-negative anyway). The
  authors run it from block 6 of ViT-B. W_o v_j is read by function (vitx.capture.
  value_transforms: one extra forward of three stacked copies, no gradient); on a model with
  a layer scale it includes that scale, what the value path really adds to the stream (their
  ViT has none).

Their code explains one image at a time (with a batch, the head-wise weights fail to reshape
and the token-wise head mean also averages over the images); here every image has its own.
"""
import numpy as np
import torch

from vitx.plugin import (
    ATTENTION, ATTENTION_GRAD, MAX_PER_PASS, MODEL, Explainer, Option, VitxError, hookimpl, norm_ratio,
)


LRP_VARIANTS = ("head", "token")


def head_wise(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """(B, N, N): the heads summed with weights I_h = mean |A_h^T dA_h|, normalised over heads."""
    importance = (attention.transpose(-1, -2) @ gradient).abs().mean(dim=(-1, -2))  # (B, heads)
    importance = importance / importance.sum(dim=1, keepdim=True).clamp(min=1e-30)
    return (importance[:, :, None, None] * attention).sum(dim=1)


def token_wise(attention: torch.Tensor, block_input: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """(B, N, N): the head mean of the attention times diag(|W_o v_j| / |z_j|) on the right."""
    return attention.mean(dim=1) * norm_ratio(block_input, transformed)[:, None, :]


class BeyondIntuition(Explainer):
    name = "beyond_intuition"
    summary = ("rollout of I + head-importance-weighted attention (or, token-wise, attention x |W_o v| / |z|), "
               "times the path-integrated last-layer attention gradient")
    paper = ("Chen, Li, Yu, Dou & Xiong 2023, 'Beyond Intuition: Rethinking Token Attributions inside "
             "Transformers' (TMLR)")
    requires = (ATTENTION, ATTENTION_GRAD, MODEL)
    options = (
        Option("variant", str, "head", "head: heads weighted by mean |A^T dA| (Ours-H); token: head-mean attention "
               "times each token's |W_o v| / |z| (Ours-T, one extra forward)", LRP_VARIANTS),
        Option("steps", int, 20, "points alpha on the path 0 -> image for the last block's attention gradient",
               minimum=1, maximum=1024),
        Option("first_block", int, 0, "first block rolled out, counted from 0 (the authors use 3 of ViT-B's 12 "
               "head-wise, 6 token-wise)", minimum=0),
        Option("internal_batch_size", int, 5, "path points stacked into one recorded forward/backward pass", minimum=1,
               maximum=MAX_PER_PASS, aliases=("steps_per_pass",)),
    )

    def explain(self, evidence):
        attentions = evidence.attentions
        if self.first_block >= len(attentions):
            raise VitxError(f"beyond_intuition: first_block {self.first_block} but the model has "
                            f"{len(attentions)} attention layers")
        steps = [head_wise(a.float(), g.float()) for a, g in
                 zip(attentions[self.first_block:], evidence.attention_grads[self.first_block:])] \
            if self.variant == "head" else self._token_steps(evidence)
        n = attentions[0].shape[-1]
        relevance = torch.eye(n, device=attentions[0].device).expand(attentions[0].shape[0], n, n)
        for step in steps:
            relevance = relevance + step @ relevance
        if self.variant == "token":
            relevance = relevance.abs()
        query = evidence.query.to(relevance.dtype)
        return torch.einsum("i,bij->bj", query, self._last_gradient(evidence) * relevance)

    def _token_steps(self, evidence):
        inputs, transformed = evidence.value_transforms()
        if len(inputs) != len(evidence.attentions):
            raise VitxError(f"beyond_intuition: {len(evidence.attentions)} attention layers but {len(inputs)} blocks")
        return [token_wise(a.float(), z.float(), y.float()) for a, z, y in
                zip(evidence.attentions[self.first_block:], inputs[self.first_block:], transformed[self.first_block:])]

    def _last_gradient(self, evidence):
        """W: the last block's attention gradient averaged over the path alpha x, clamped at 0,
        head mean, (B, N, N)."""
        pixels, total = evidence.pixels, 0
        alphas = np.linspace(0, 1, self.steps)
        for first in range(0, self.steps, self.internal_batch_size):
            chunk = alphas[first:first + self.internal_batch_size]
            last = evidence.attention_gradients(torch.cat([float(a) * pixels for a in chunk]))[-1].float()
            total = total + last.reshape(len(chunk), pixels.shape[0], *last.shape[1:]).sum(dim=0)
        return (total / self.steps).clamp(min=0).mean(dim=1)


@hookimpl
def vitx_register_explainers(register):
    register(BeyondIntuition)
