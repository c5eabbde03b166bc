"""TokenTM (Wu et al., CVPR 2024, 'Token Transformation Matters: Towards Faithful Post-hoc
Explanation for Vision Transformer').

Attention says where a token's information goes; how much a block changes the token (its
length and direction) says how much that information counts. For two token states E -> E'
across a sub-layer, the transformation weight of token j is
    w_j = |E'_j| / |E_j| * softmax_j(cos(E_j, E'_j))       (NECC: normalised cosine coherence).
Per block l, with A_l the head mean of the attention and G_l the head mean of ReLU(dA_l):
    U_attn = I + (A_l diag(w_attn)) * G_l      (w over block input -> stream after attention)
    U_l    = (I + diag(w_mlp)) U_attn          (w over stream after attention -> block output)
and C = U_L ... U_1 C_0 with C_0 = diag(|E_0|) (the token embeddings' norms); the map is
the explained token's row of C. The authors' code is not public; this follows the
re-implementation in LibraGrad's code (decompv, `transform_TokenTM`), which the paper's
Eqs. describe.
"""
import torch
import torch.nn.functional as F

from vitx.plugin import (
    ATTENTION, ATTENTION_GRAD, BLOCK_STATES, Explainer, VitxError, hookimpl, norm_ratio, rollout_row,
)


def transformation_weights(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(B, N): length ratio times the token-softmax of the cosine between the two states."""
    coherence = F.cosine_similarity(before, after, dim=-1).softmax(dim=-1)
    return norm_ratio(before, after) * coherence


class TokenTM(Explainer):
    name = "tokentm"
    summary = "rollout of (I + diag(w_mlp)) (I + A diag(w_attn) * mean ReLU(dA)) from diag(|E_0|), w: token length x direction change"
    paper = ("Wu et al. 2024, 'Token Transformation Matters: Towards Faithful Post-hoc Explanation for Vision "
             "Transformer' (CVPR)")
    requires = (ATTENTION, ATTENTION_GRAD, BLOCK_STATES)

    def explain(self, evidence):
        states, attentions, gradients = evidence.block_states, evidence.attentions, evidence.attention_grads
        if len(states) != len(attentions):
            raise VitxError(f"tokentm: {len(attentions)} attention layers but {len(states)} blocks")
        first = states[0][0].float()
        eye = torch.eye(first.shape[1], dtype=first.dtype, device=first.device)
        layers = [torch.diag_embed(first.norm(dim=-1))]
        for layer, ((before, mid, after), attention, gradient) in enumerate(zip(states, attentions, gradients)):
            if before.shape[1] != attention.shape[-1]:
                raise VitxError(f"tokentm: block {layer} holds {before.shape[1]} tokens but its attention is laid out "
                                f"over {attention.shape[-1]}: a token joins mid-network, where its transformation "
                                "is undefined; use rollout, grad_rollout or chefer2021")
            before, mid, after = before.float(), mid.float(), after.float()
            mixed = attention.float().mean(dim=1) * transformation_weights(before, mid)[:, None, :]
            attention_step = eye + mixed * gradient.float().clamp(min=0).mean(dim=1)
            layers.append(attention_step + transformation_weights(mid, after)[:, :, None] * attention_step)
        return rollout_row(layers, evidence.query)


@hookimpl
def vitx_register_explainers(register):
    register(TokenTM)
