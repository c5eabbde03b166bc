"""Gradient rollout: attention weighted by its gradient for the target class, then rolled out."""
from vitx.plugin import GRAD_MODE_OPTION, Explainer, Option, discard_lowest, hookimpl, rollout_row, with_residual


class GradRollout(Explainer):
    name = "grad_rollout"
    summary = "class-specific rollout: mean over heads of attention * d(logit)/d(attention), clamped at 0"
    windows = True  # window layers of hierarchical models (vitx.capture.windows)
    paper = "Gildenblat 2020, 'Exploring Explainability for Vision Transformers' (vit-explain)"
    needs_grad = True
    options = (
        Option("discard_ratio", float, 0.9, "fraction of the lowest weighted attention dropped per layer", minimum=0.0, maximum=0.99),
        GRAD_MODE_OPTION,
    )

    def reduce(self, layer, attention, gradient):
        return (attention * gradient).sum(dim=1)  # the core divides by the heads: the head mean

    def attribute(self, attentions, query, gradients=None):
        """attentions: per-head (B, h, N, N) with `gradients`, or (without) the per-layer head
        means of attention * gradient that `reduce` left."""
        if gradients is not None:
            attentions = [(attention * gradient).mean(dim=1) for attention, gradient in zip(attentions, gradients)]

        def factor(layer, weighted):
            return with_residual(discard_lowest(weighted.clamp(min=0), self.discard_ratio, query))

        return rollout_row(attentions, query, factor)


@hookimpl
def vitx_register_explainers(register):
    register(GradRollout)
