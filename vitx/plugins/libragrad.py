"""LibraGrad's FullGrad on tokens (Mehri, Soleymani Baghshah & Pilehvar, CVPR 2025).

One forward under LibraGrad's balanced backward (`vitx.attribution.libragrad`) and one
backward of the target score. A token's relevance is its embedding x gradient (summed over
channels: input x gradient where the blocks start) plus the bias x gradient terms of every
linear layer and LayerNorm at that token (FullGrad, Srinivas & Fleuret 2019, as LibraGrad's
code computes it per token). Under LibraGrad these, with the head's own bias terms, add up to
the score exactly (FullGrad-completeness, the property the paper restores). Every other
gradient method takes LibraGrad as its option `grad_mode=libragrad`.
"""
from vitx.plugin import MODEL, Explainer, Option, VitxError, hookimpl, token_fullgrad


class LibraGrad(Explainer):
    name = "libragrad"
    summary = "FullGrad on tokens under LibraGrad's balanced gradients: embedding x grad + bias x grad per token"
    paper = ("Mehri, Soleymani Baghshah & Pilehvar 2025, 'LibraGrad: Balancing Gradient Flow for Universally "
             "Better Vision Transformer Attributions' (CVPR)")
    requires = (MODEL,)
    one_token_set = True  # the token embeddings where the blocks start: one token grid
    options = (
        Option("biases", str, "include", "include: FullGrad (embedding and bias terms); exclude: LibraGrad "
               "input x gradient at the token embeddings alone", ("include", "exclude")),
    )

    def explain(self, evidence):
        result = token_fullgrad(evidence.model, evidence.pixels, evidence.target.score)
        relevance = result.relevance if self.biases == "include" else result.embeddings
        if relevance.shape[1] != evidence.layout.num_tokens:
            raise VitxError(f"libragrad: the first LayerNorm sees {relevance.shape[1]} tokens but the model's "
                            f"layout has {evidence.layout.num_tokens}; the token embeddings are not where vitx looks")
        return relevance


@hookimpl
def vitx_register_explainers(register):
    register(LibraGrad)
