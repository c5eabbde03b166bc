"""LeGrad (Bousselham et al. 2024): how each block's own prediction depends on its attention.

For each block l, the model's final norm and head read that block's tokens (pooled by the
mean over all tokens, as the paper's code does, or the way the head pools them) and give a
score s_l for the target; dA_l = d s_l / d A_l for that block's post-softmax attention.
Relevance of a patch = mean over blocks of ReLU(dA_l) averaged over heads and queries (no
attention values multiplied in), the column of that patch's key.
"""
import torch

from vitx.plugin import ATTENTION, MODEL, TOKENS, Explainer, Option, VitxError, hookimpl


class LeGrad(Explainer):
    name = "legrad"
    summary = "mean over blocks of ReLU(d s_l / d A_l), s_l = head(norm(block l's tokens)); heads and queries averaged"
    paper = "Bousselham et al. 2024, 'LeGrad: An Explainability Method for Vision Transformers via Feature Formation Sensitivity'"
    requires = (ATTENTION, TOKENS, MODEL)
    options = (
        Option("layers", int, 0, "how many of the last blocks are averaged (0: all)", minimum=0, maximum=1024),
        Option("pool", str, "mean", "how a block's tokens reach the head: their mean (paper) or as the head reads them",
               ("mean", "model")),
    )

    def explain(self, evidence):
        head = evidence.head
        if head is None:
            raise VitxError(
                "legrad needs the model's final norm and head, which its adapter does not provide (Adapter.head)"
            )
        attentions, tokens = evidence.graph_attentions, evidence.graph_tokens
        if len(attentions) != len(tokens):
            raise VitxError(f"legrad: {len(attentions)} attention layers but {len(tokens)} blocks")
        count = len(tokens) if self.layers == 0 else min(self.layers, len(tokens))
        total = 0
        for layer in range(len(tokens) - count, len(tokens)):
            states = tokens[layer]
            if self.pool == "mean":
                states = states.mean(dim=1, keepdim=True).expand_as(states)  # norm is per token: norm(mean)
            score = evidence.target.score(head(states)).sum()
            (grad,) = torch.autograd.grad(score, attentions[layer], retain_graph=True)
            total = total + grad.clamp(min=0).mean(dim=(1, 2))  # (B, N keys)
        relevance = total / count
        layout = evidence.layout
        relevance[:, :layout.patch_start] = 0
        return relevance


@hookimpl
def vitx_register_explainers(register):
    register(LeGrad)
