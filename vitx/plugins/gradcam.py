"""Grad-CAM on tokens (Selvaraju et al. 2017), the Vision Transformer recipe of pytorch-grad-cam.

A late block's token features A (B, N, D) and their gradient dA: the patch tokens are the
'pixels' of a feature map (prefix tokens such as cls are left out, as the recipe's
reshape_transform does), each channel is weighted by its gradient averaged over the patch
tokens, and cam = ReLU(sum_c w_c A_c). Hierarchical models (Swin) are explained through the
last stage's feature map, the same way.
"""
from vitx.plugin import GRAD_MODE_OPTION, TOKEN_GRAD, TOKENS, Explainer, Option, VitxError, hookimpl


def default_layer(layout) -> int:
    """The last block's input (the output of the one before) when the head reads prefix
    tokens (cls): the last block's output reaches it through those only, so its patch
    tokens get no gradient (pytorch-grad-cam's ViT recipe reads blocks[-1].norm1). Otherwise
    (global pooling, hierarchical stages) the last block's output."""
    return -2 if layout.num_prefix > 0 else -1


class GradCAM(Explainer):
    name = "gradcam"
    summary = "ReLU(sum_c mean_patches(dA_c) * A_c) on one block's token features (Grad-CAM, ViT recipe)"
    paper = "Selvaraju et al. 2017, 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization'"
    requires = (TOKENS, TOKEN_GRAD)
    options = (
        Option("layer", int, None, "block whose output is read (negative counts from the last); default: the last "
               "block's input when the head reads a cls token, else the last block (stage)"),
        GRAD_MODE_OPTION,
    )

    def explain(self, evidence):
        tokens, grads, layout = evidence.tokens, evidence.token_grads, evidence.layout
        layer = default_layer(layout) if self.layer is None else self.layer
        if not -len(tokens) <= layer < len(tokens):
            raise VitxError(f"gradcam: layer {layer} out of range for {len(tokens)} blocks")
        features, grad = tokens[layer], grads[layer]
        if features.shape[1] != layout.num_tokens:
            raise VitxError(
                f"gradcam: block {layer} has {features.shape[1]} tokens but the explained grid has "
                f"{layout.num_tokens}: pick a block of the last stage"
            )
        patches = slice(layout.patch_start, layout.patch_start + layout.num_patches)
        weights = grad[:, patches].mean(dim=1)  # (B, D): gradient averaged over the patch tokens
        cam = (features * weights[:, None]).sum(-1).clamp(min=0)
        relevance = cam.new_zeros(cam.shape)
        relevance[:, patches] = cam[:, patches]
        return relevance


@hookimpl
def vitx_register_explainers(register):
    register(GradCAM)
