"""Raw attention: what one layer's heads look at from the explained token."""
from vitx.plugin import HEAD_FUSIONS, Explainer, Option, VitxError, fuse_heads, hookimpl, layer_row, skip


class RawAttention(Explainer):
    name = "raw_attention"
    summary = "attention from the explained token to every patch, in one layer (one head or heads fused)"
    paper = "Vaswani et al. 2017; Dosovitskiy et al. 2021 (ViT attention maps)"
    windows = True  # hierarchical models: a later stage's row is carried to the first grid (ops.layer_row)
    options = (
        Option("layer", int, -1, "layer to read (negative counts from the last; all stages of a hierarchical model)"),
        Option("head", int, None, "single head to read; default fuses all heads"),
        Option("head_fusion", str, "mean", "how heads are fused when no head is given", HEAD_FUSIONS),
    )

    def keep(self, layer, attention):
        if self.layer >= 0 and layer != self.layer:
            return skip(attention)  # a layer counted from the front is known before the forward ends
        if self.head is None:
            return fuse_heads(attention, self.head_fusion)
        if not 0 <= self.head < attention.shape[1]:
            raise VitxError(f"raw_attention: head {self.head} out of range for {attention.shape[1]} heads")
        return attention[:, self.head]

    def attribute(self, attentions, query, gradients=None):
        if not -len(attentions) <= self.layer < len(attentions):
            raise VitxError(f"raw_attention: layer {self.layer} out of range for {len(attentions)} layers")
        return layer_row(attentions, self.layer, query)


@hookimpl
def vitx_register_explainers(register):
    register(RawAttention)
