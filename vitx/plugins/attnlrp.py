"""AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022) for any ViT vitx runs.

One forward under `vitx.attribution.lrp.LRPRules` (LRP rules attached to the functions the
model calls: softmax, the attention matmuls, layer norm, non-linearities, linear layers) and
one backward of the target score; the relevance is pixels x modified gradient, summed over
each patch's pixels and channels (LXT's recipe for ViTs: relevance at the input). Prefix
tokens get 0. The explained quantity is the target score itself, so `token` has no effect.
"""
from vitx.plugin import LRP_VARIANTS, MODEL, Explainer, Option, hookimpl, input_relevance


class AttnLRP(Explainer):
    name = "attnlrp"
    summary = "layer-wise relevance propagation with AttnLRP (or CP-LRP) rules, relevance summed per patch"
    paper = "Achtibat et al. 2024, 'AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers'"
    requires = (MODEL,)
    options = (
        Option("variant", str, "attnlrp", "attnlrp: relevance through the attention softmax (uniform rule on "
               "q@k and attention@v); cp: attention held constant (CP-LRP, LXT's default for ViTs)", LRP_VARIANTS),
        Option("epsilon", float, 0.0, "epsilon of the epsilon rule on linear layers and convolutions (0, the "
               "default, as LXT: their plain gradient, which never divides by z)", minimum=0.0),
    )

    def explain(self, evidence):
        result = input_relevance(evidence.model, evidence.pixels, evidence.target.score,
                                 variant=self.variant, epsilon=self.epsilon)
        return evidence.pixels_to_tokens(result.relevance)


@hookimpl
def vitx_register_explainers(register):
    register(AttnLRP)
