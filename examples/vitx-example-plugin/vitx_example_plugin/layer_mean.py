"""`layer_mean`: the explained token's head-averaged attention, averaged over all layers.

A whole explainer plugin: options, the math, and one hook. vitx does the rest.
"""
from vitx.plugin import Explainer, Option, fuse_heads, hookimpl


class LayerMean(Explainer):
    name = "layer_mean"
    summary = "head-averaged attention from the explained token, averaged over layers"
    options = (Option("first_layer", int, 0, "first layer included in the average", minimum=0),)

    def keep(self, layer, attention):
        return fuse_heads(attention, "mean") if layer >= self.first_layer else None

    def attribute(self, attentions, query, gradients=None):
        kept = [a for a in attentions if a is not None]
        return sum(query @ a for a in kept) / len(kept)


@hookimpl
def vitx_register_explainers(register):
    register(LayerMean)
