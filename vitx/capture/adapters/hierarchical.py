"""Families whose attention cannot be chained into one token-by-token flow.

Attention-flow methods (rollout, gradient rollout, Chefer et al.) multiply one
(tokens x tokens) attention matrix per layer over a single token set, and raw attention reads
one such matrix as a map over the image. That is undefined, as far as vitx writes it, when a
model interleaves windowed attention with convolution stages (MaxViT, CoAtNet, ...), mixes
tokens by pooling, convolution or channel attention rather than token attention (DaViT,
EfficientFormer, ...), attends from a subsampled grid (LeViT), or keeps two token sets
(CrossViT). These models are claimed here by class, so that an attention method refuses
before any forward with a message naming the real cause and the methods that do apply
(token-feature, gradient and perturbation methods), and the recorder's generic checks (which
would only see "batch 128" or "different token counts") are never the user's explanation.
A family that becomes explainable gets its own adapter and leaves this table: Swin and SwinV2
(timm, torchvision, Hugging Face) did, with their window layers written as block-diagonal
attention per stage and the patch merging as a mixing matrix (vitx.capture.windows, adapters
timm_swin / torchvision_swin / hf_swin), and so did PiT, PVTv2, Twins, MViTv2, Hiera and SAM2's Hiera (timm, PvtV2 in
Hugging Face), their attention chained through the pooling between stages (vitx.capture.stages,
adapters timm_pooled, hf_pvt_v2, timm_mvit, timm_hiera).
"""
from contextlib import contextmanager

from ...errors import VitxError
from ..layout import MEAN_TOKEN, TokenLayout
from ..support import hierarchical_refusal
from .base import Adapter

WINDOWED_PYRAMID = (
    "attention runs inside local windows and patch merging shrinks the token grid between stages, "
    "so no layer has one attention over all tokens and no two stages share a token set"
)

# class path -> (family, why attention methods are undefined for it)
FAMILIES = {
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2Cr": (
        "SwinV2-CR", "shifted-window " + WINDOWED_PYRAMID + "; vitx writes the window layers of timm's "
        "SwinTransformer / SwinTransformerV2 as block-diagonal attention per stage, not yet those of this variant"),
    "timm.models.maxxvit.MaxxVit": (
        "MaxViT / CoAtNet", "convolution (MBConv) stages and stride-2 downsampling sit between the attention "
        "layers, and MaxViT's attention runs inside blocks and dilated grids, never over all tokens"),
    "torchvision.models.maxvit.MaxVit": (
        "torchvision MaxViT (maxvit_t)", "MBConv stages and stride-2 downsampling sit between the attention "
        "layers, which run inside blocks and dilated grids, never over all tokens"),
    "timm.models.davit.DaVit": (
        "DaViT", "window attention alternates with channel attention (which mixes features, not tokens) in "
        "a four-stage pyramid"),
    "timm.models.levit.Levit": (
        "LeViT", "attention on a convolutional feature map that attention-subsample blocks shrink (their "
        "queries come from a subsampled grid, so queries and keys are different token sets)"),
    "timm.models.levit.LevitDistilled": (
        "LeViT", "attention on a convolutional feature map that attention-subsample blocks shrink (their "
        "queries come from a subsampled grid, so queries and keys are different token sets)"),
    "timm.models.efficientformer.EfficientFormer": (
        "EfficientFormer", "its first stages mix tokens by pooling, not attention, and downsample; attention "
        "only runs in the last stage on a 7x7 grid, so no attention describes how the image reached it"),
    "timm.models.efficientformer_v2.EfficientFormerV2": (
        "EfficientFormerV2", "convolution stages downsample the image and its attention (in the last stages "
        "only) uses strided keys and values, so queries and keys are different token sets"),
    "timm.models.gcvit.GlobalContextVit": ("GCViT", "window attention with global-context queries " + "in a "
                                           "four-stage pyramid whose token grid shrinks between stages"),
    "timm.models.nest.Nest": ("NesT", "attention inside nested blocks that are aggregated (merged) between levels"),
    "timm.models.tiny_vit.TinyVit": ("TinyViT", "windowed attention after convolution stages, in a pyramid"),
    "timm.models.focalnet.FocalNet": ("FocalNet", "focal modulation (convolutions), not token attention"),
    "timm.models.fastvit.FastVit": ("FastViT", "convolutional token mixers, attention only in the last stage "
                                    "of a pyramid"),
    "timm.models.volo.VOLO": (
        "VOLO", "its first stage mixes tokens with outlook attention (each token's k x k neighbourhood "
        "weighted by a linear layer, not a softmax over tokens), then the grid is downsampled and class "
        "attention reads it"),
    "timm.models.crossvit.CrossVit": (
        "CrossViT", "two branches with different patch grids exchange information only through their "
        "class tokens (cross-attention), so there is no single token set to chain attention over"),
}

# Hugging Face config model_type -> (family, why): Swin-like families in transformers that the
# transformers adapter claims and refuses for attention methods; plain Swin and SwinV2 are
# claimed first by the transformers_swin adapter (hf_swin.py) and rolled out by stage
HF_FAMILIES = {
    "swin": ("Swin (transformers)", "shifted-window " + WINDOWED_PYRAMID),
    "swinv2": ("SwinV2 (transformers)", "shifted-window " + WINDOWED_PYRAMID),
    "donut-swin": ("Donut Swin (transformers)", "shifted-window " + WINDOWED_PYRAMID),
    "maskformer-swin": ("MaskFormer Swin (transformers)", "shifted-window " + WINDOWED_PYRAMID),
}


def hf_refusal(model_type: str, explainer):
    """The refusal of an attention method for a transformers model of a `HF_FAMILIES` type, else None."""
    if model_type not in HF_FAMILIES:
        return None
    return hierarchical_refusal(*HF_FAMILIES[model_type], explainer)


def class_path(model) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


class HierarchicalAdapter(Adapter):
    """Claims the families of `FAMILIES`; records no attention and refuses attention methods.

    Methods that need no attention (gradients, perturbation, token features) still run: the
    adapter gives them the model's data config and, from the token count of the last stage
    they record, a grid with the input's aspect ratio.
    """

    name = "hierarchical"
    priority = 1000  # before every framework adapter: some of these have timm-looking attention

    def matches(self, model):
        return class_path(model) in FAMILIES

    def family(self, model):
        return FAMILIES[class_path(model)]

    def refuse(self, model, explainer):
        return hierarchical_refusal(*self.family(model), explainer)

    @contextmanager
    def attach(self, model, record):
        yield  # nothing to record: no attention of these families is a token-by-token flow

    def attention_refusal(self, model):
        """Why nothing was recorded (read by the recorder instead of its generic message)."""
        family, why = self.family(model)
        return f"{family} has no token-by-token attention to record: {why}"

    def layout(self, model, input_size, num_tokens):
        return TokenLayout(prefix={}, num_prefix=0, grid=grid_for(num_tokens, input_size), default_token=MEAN_TOKEN)

    def data_config(self, model):
        if class_path(model).startswith("torchvision."):
            from .base import IMAGENET_MEAN, IMAGENET_STD

            # torchvision's weights: swin_t resizes to 232 then crops 224; maxvit_t resizes to 224
            crop = 1.0 if type(model).__name__ == "MaxVit" else 224 / 232
            return {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": IMAGENET_MEAN,
                    "std": IMAGENET_STD, "crop_pct": crop, "crop_mode": "center"}
        return super().data_config(model)


def grid_for(num_tokens, input_size):
    """The h x w grid of `num_tokens` tokens whose aspect ratio is closest to the input's."""
    if not num_tokens:
        raise VitxError("no token states were recorded, so the token grid is unknown")
    aspect = input_size[0] / input_size[1] if input_size else 1.0
    best = None
    for h in range(1, num_tokens + 1):
        if num_tokens % h == 0:
            w = num_tokens // h
            score = abs(h / w - aspect)
            if best is None or score < best[0]:
                best = (score, (h, w))
    return best[1]
