"""The compatibility matrix as data: one row per model configuration.

tests/test_compat.py runs every row (supported methods against an independent reference,
refused methods against their precise error), and the docs' "Supported models" page is
generated from the same rows at build time (docs/_ext/vitx_reference.py; `readme_table`, printed
by benchmarks/compat_table.py, is the same table in Markdown), so the table cannot claim what the
tests do not check. To add a family, append a `Row`.

Models are tiny and random-init (image 32-64, depth 2, width 24), with sharpened qkv weights
so that attention is far from uniform and a wrong layer, order or layout changes the maps.
Non-square inputs make a transposed grid show.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import timm
import torch
import torchvision
from torch import nn

from helpers import _spread_attention, tiny_sdpa, tiny_torchvision

ATTENTION_METHODS = ("raw_attention", "rollout", "grad_rollout", "chefer2021")
ALL = ATTENTION_METHODS

# windowed pyramids (vitx.capture.windows): what the README says is recorded
WINDOW_NOTES = ("shifted windows as block-diagonal attention per stage, 2x2 patch merging as a mixing matrix; "
                "maps on the first stage's grid")
# pooled pyramids (vitx.capture.stages)
PIT_NOTES = ("full attention per stage over [cls, grid], the stride-2 depthwise pooling as a mixing matrix "
             "(tent weights over its kernel); maps on the first stage's grid")
TWINS_NOTES = ("locally-grouped windows as block-diagonal attention, sub-sampled attention times its key pooling, "
               "patch embeddings as mixing matrices; maps on the first stage's grid")
MVIT_NOTES = ("pooling attention times its key pooling, the pooled shortcut as a mixing matrix (tent weights over "
              "its max-pool window); maps on the first stage's grid")
HIERA_NOTES = ("mask units as block-diagonal attention over each stage's grid (slots through the unrolled order), "
               "pooled queries with the max-pooled residual as a mixing matrix; maps on the first stage's grid")
HIERA_DET_NOTES = ("windows (padded to whole windows) as block-diagonal attention over each stage's grid, pooled "
                   "queries with the max-pooled residual as a mixing matrix; maps on the first stage's grid")
PVT_NOTES = ("spatial-reduction attention times its key pooling, overlapping patch embeddings as mixing matrices "
             "(tent weights over each kernel); maps on the first stage's grid")



@dataclass(frozen=True)
class Row:
    name: str  # unique id of the configuration (the test id)
    framework: str  # README: timm, torchvision, PyTorch
    family: str  # README: family name
    loaded: str  # README: how the model is loaded
    factory: Callable[[], nn.Module]
    size: Tuple[int, int] = (32, 32)
    prefix: Sequence[str] = ()  # expected prefix tokens of the layout, in order
    methods: Sequence[str] = ALL  # attention methods that explain it
    refusal: Optional[str] = None  # regex of the error of every other attention method
    oracle: str = "weights"  # how the reference attention is obtained (compat_reference)
    token: Optional[object] = None  # token explained (None: the layout's default; an int: that token)
    layers: Optional[int] = None  # number of recorded layers when methods apply
    readme: bool = True  # listed in the README table
    notes: str = ""  # README: what is recorded / why refused


def timm_model(name, sharpen=True, **kwargs):
    def build():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
        if sharpen:
            _sharpen(model)
        return model

    return build


def _sharpen(model):
    """Scale every query/key projection so that attention is far from uniform."""
    _spread_attention(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("qk.weight", ".q.weight", ".k.weight", "q_proj.weight", "k_proj.weight", "query.weight",
                              "key.weight")):
                p.mul_(6.0)
            if name in ("cls_token", "dist_token", "reg_token"):  # some families start them near 0
                p.normal_(std=1.0)
            if name.endswith("proj_w.weight"):  # CaiT's post-softmax head mixing: keep it a mix
                p.copy_(torch.eye(p.shape[0]) + 0.3 * torch.rand_like(p))
            if name.endswith("logit_scale"):  # SwinV2's cosine attention ignores the scale of q and k
                p.fill_(4.0)
            if name.endswith(("norm1.weight", "norm2.weight")) and not p.any():  # SwinV2's zero-init post-norms
                p.fill_(1.0)


def loud_head(model):
    """Random heads give tiny logit gradients, so gradient maps are nearly the identity's: scale up."""
    with torch.no_grad():
        head = (model.get_classifier() if hasattr(model, "get_classifier")
                else getattr(model, "classifier", None) or model.head)
        for layer in head if isinstance(head, tuple) else (head,):  # a distilled model: both heads
            layer.weight.mul_(300.0)
    return model


def loud(build):
    """A factory whose model has a loud head (gradient maps that a wrong layer would change)."""
    return lambda: loud_head(build())


def torchvision_swin(name, patch=2, depths=(2, 2, 2), window=4):
    """torchvision's swin_t / swin_v2_t layout (their block and merging classes) at toy width."""
    def build():
        from torchvision.models import swin_transformer as tv

        v2 = name == "swin_v2_t"
        torch.manual_seed(0)
        model = tv.SwinTransformer(patch_size=[patch, patch], embed_dim=24, depths=list(depths),
                                   num_heads=[2] * len(depths), window_size=[window, window], num_classes=5,
                                   block=tv.SwinTransformerBlockV2 if v2 else None,
                                   downsample_layer=tv.PatchMergingV2 if v2 else tv.PatchMerging).eval()
        _sharpen(model)
        return model

    return build


def hf_swin(kind, patch=2, depths=(2, 2, 2)):
    """A random-init transformers SwinForImageClassification / Swinv2ForImageClassification."""
    def build():
        import transformers

        config_class, model_class = {
            "swin": (transformers.SwinConfig, transformers.SwinForImageClassification),
            "swinv2": (transformers.Swinv2Config, transformers.Swinv2ForImageClassification)}[kind]
        torch.manual_seed(0)
        config = config_class(image_size=32, patch_size=patch, embed_dim=24, depths=list(depths),
                              num_heads=[2] * len(depths), window_size=4, num_labels=5)
        model = model_class(config).eval()
        _sharpen(model)
        return model

    return build


def hf_pvt_v2():
    """A random-init transformers PvtV2ForImageClassification at toy width."""
    import transformers

    torch.manual_seed(0)
    config = transformers.PvtV2Config(depths=[1, 1, 1, 1], hidden_sizes=[16, 16, 16, 16],
                                      num_attention_heads=[1, 1, 1, 1], num_labels=5)
    model = transformers.PvtV2ForImageClassification(config).eval()
    _sharpen(model)
    return model


def cls_module(path, **kwargs):
    def build():
        module, _, name = path.rpartition(".")
        torch.manual_seed(0)
        return getattr(__import__(module, fromlist=[name]), name)(**kwargs).eval()

    return build


VIT = dict(patch_size=8, depth=2, embed_dim=24, num_heads=2)


def timm_name(example):
    return f"any timm name, e.g. `--model {example}`"


ROWS = [
    # --- plain ViTs through the generic timm adapter
    Row("vit", "timm", "ViT", timm_name("vit_base_patch16_224"), timm_model("vit_tiny_patch16_224", img_size=32, **VIT), prefix=["cls"], layers=2),
    Row("vit_nonsquare", "timm", "ViT", timm_name("vit_base_patch16_224"), timm_model("vit_tiny_patch16_224", img_size=(32, 48), **VIT),
        size=(32, 48), prefix=["cls"], readme=False),
    Row("vit_dynamic_size", "timm", "ViT", timm_name("vit_base_patch16_224"),
        timm_model("vit_tiny_patch16_224", img_size=32, dynamic_img_size=True, **VIT),
        size=(48, 32), prefix=["cls"], readme=False),
    Row("vit_gap", "timm", "ViT", timm_name("vit_base_patch16_224"),
        timm_model("vit_tiny_patch16_224", img_size=32, class_token=False, global_pool="avg", **VIT),
        prefix=[], token=5, readme=False),
    Row("vit_qknorm", "timm", "ViT", timm_name("vit_base_patch16_224"), timm_model("vit_tiny_patch16_224", img_size=32, qk_norm=True, **VIT),
        prefix=["cls"], readme=False),
    Row("deit", "timm", "DeiT / DeiT III", timm_name("deit3_small_patch16_224"), timm_model("deit_tiny_patch16_224", img_size=32, **VIT), prefix=["cls"]),
    Row("deit3", "timm", "DeiT / DeiT III", timm_name("deit3_small_patch16_224"), timm_model("deit3_small_patch16_224", img_size=(32, 48), **VIT),
        size=(32, 48), prefix=["cls"], readme=False),
    Row("deit_distilled", "timm", "DeiT distilled", timm_name("deit_base_distilled_patch16_224"),
        timm_model("deit_tiny_distilled_patch16_224", img_size=32, **VIT), prefix=["cls", "dist"]),
    Row("deit_distilled_dist_token", "timm", "DeiT distilled", timm_name("deit_base_distilled_patch16_224"),
        timm_model("deit_tiny_distilled_patch16_224", img_size=(48, 32), **VIT), size=(48, 32),
        prefix=["cls", "dist"], token="dist", readme=False),
    Row("registers", "timm", "ViT with registers (DINOv2-style)", timm_name("vit_base_patch14_reg4_dinov2"),
        timm_model("vit_base_patch16_reg4_gap_256", img_size=32, class_token=True, global_pool="token", **VIT),
        prefix=["cls", "reg0", "reg1", "reg2", "reg3"]),
    Row("flexivit", "timm", "FlexiViT", timm_name("flexivit_base"), timm_model("flexivit_small", img_size=32, **VIT), prefix=["cls"]),
    Row("eva02", "timm", "EVA / EVA-02", timm_name("eva02_base_patch14_224"), timm_model("eva02_tiny_patch14_224", img_size=32, **VIT),
        prefix=["cls"], oracle="nonfused", notes="rotary embeddings"),
    Row("beit", "timm", "BEiT", timm_name("beitv2_base_patch16_224"), timm_model("beit_base_patch16_224", img_size=(32, 48), **VIT), size=(32, 48),
        prefix=["cls"], oracle="nonfused", notes="relative position bias"),
    Row("vit_relpos", "timm", "ViT relpos", timm_name("vit_relpos_base_patch16_224"), timm_model("vit_relpos_small_patch16_224", img_size=32, **VIT),
        prefix=[], oracle="nonfused", token=5),
    # --- hybrids: a convolutional stem before a plain ViT
    Row("hybrid_resnet", "timm", "Hybrid ViT (ResNet stem)", timm_name("vit_small_r26_s32_224"),
        timm_model("vit_tiny_r_s16_p8_224", img_size=(64, 96), depth=2, embed_dim=24, num_heads=2),
        size=(64, 96), prefix=["cls"], notes="data config reads the image channels"),
    Row("vitamin", "timm", "ViTamin", timm_name("vitamin_small_224"), lambda: _vitamin(), size=(64, 96), prefix=[], token=3),
    # --- families with attention modules of their own
    Row("cait", "timm", "CaiT", timm_name("cait_s24_224"), timm_model("cait_xxs24_224", img_size=32, depth_token_only=2, **VIT),
        prefix=["cls"], layers=4,
        notes="talking-heads layers over the patches + class-attention rows, laid out over [cls, patches]"),
    Row("cait_nonsquare", "timm", "CaiT", timm_name("cait_s24_224"),
        timm_model("cait_xxs24_224", img_size=(32, 48), depth_token_only=1, **VIT),
        size=(32, 48), prefix=["cls"], layers=3, readme=False),
    Row("convit", "timm", "ConViT", timm_name("convit_small"),
        timm_model("convit_tiny", img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=4, local_up_to_layer=2),
        prefix=["cls"], layers=3, notes="gated positional attention (GPSA) as applied, class token joins late"),
    Row("tnt", "timm", "TNT", timm_name("tnt_s_patch16_224"),
        timm_model("tnt_s_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=24, inner_dim=8,
                   num_heads_outer=2, num_heads_inner=2, first_stride=2),
        prefix=["cls"], layers=2, notes="outer attention (inner attention stays inside a patch)"),
    Row("xcit", "timm", "XCiT", timm_name("xcit_small_12_p16_224"),
        timm_model("xcit_nano_12_p16_224", img_size=32, patch_size=8, depth=2, embed_dim=24, num_heads=2,
                   cls_attn_layers=2),
        prefix=["cls"], methods=("raw_attention",), layers=2,
        refusal=r"XCiT: method '\w+' cannot explain this model: its XCA layers attend across channels",
        notes="class-attention layers only; XCA is channel attention"),
    Row("samvit", "timm", "SAM ViT", timm_name("samvit_base_patch16"),
        timm_model("samvit_base_patch16", img_size=32, patch_size=4, depth=3, embed_dim=24, num_heads=2,
                   window_size=4, global_attn_indexes=(1,), use_rel_pos=False),
        prefix=[], token=20, layers=3, notes="window layers as block-diagonal attention over the grid"),
    Row("samvit_padded_windows", "timm", "SAM ViT", timm_name("samvit_base_patch16"),
        timm_model("samvit_base_patch16", img_size=(24, 40), patch_size=4, depth=3, embed_dim=24, num_heads=2,
                   window_size=3, global_attn_indexes=(1,), use_rel_pos=False),
        size=(24, 40), prefix=[], token=33, layers=3, readme=False),
    # --- torchvision and hand-written
    Row("torchvision_vit", "torchvision", "ViT (vit_b_16, ...)", "`--model torchvision/vit_b_16`", tiny_torchvision, prefix=["cls"], layers=3),
    Row("custom_sdpa", "PyTorch", "hand-written ViT calling F.scaled_dot_product_attention", "`vitx.explain(your_module, ...)`",
        tiny_sdpa, prefix=["cls"], layers=3),
    # --- refused: no single attention flow
    Row("volo", "timm", "VOLO", timm_name("volo_d1_224"), cls_module("timm.models.volo.VOLO", layers=(1, 1, 1, 1), img_size=32,
                                                    embed_dims=(24, 24, 24, 24), num_heads=(2, 2, 2, 2),
                                                    stem_hidden_dim=16, num_classes=5),
        methods=(), refusal=r"VOLO: .* outlook attention", notes="outlook attention"),
    Row("crossvit", "timm", "CrossViT", timm_name("crossvit_15_240"),
        timm_model("crossvit_tiny_240", img_size=(32, 64), patch_size=(8, 16), embed_dim=(24, 24), depth=((1, 1, 0),),
                   num_heads=(2, 2), mlp_ratio=(2, 2, 1)),
        size=(64, 64), methods=(), refusal=r"CrossViT: .* two branches with different patch grids",
        notes="two token sets"),
    # --- refused: hierarchical and windowed
    # --- windowed pyramids: window layers as block-diagonal attention over each stage's grid
    Row("swin", "timm", "Swin", timm_name("swin_tiny_patch4_window7_224"),
        loud(timm_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4, depths=(2, 2),
                        embed_dim=24, num_heads=(2, 2))),
        oracle="windows", layers=4, notes=WINDOW_NOTES),
    Row("swinv2", "timm", "SwinV2", timm_name("swinv2_tiny_window8_256"),
        loud(timm_model("swinv2_tiny_window8_256", img_size=(32, 64), patch_size=4, window_size=4, depths=(2, 2),
                        embed_dim=24, num_heads=(2, 2))),
        size=(32, 64), oracle="windows", layers=4, notes=WINDOW_NOTES),
    # --- pooled pyramids (vitx.capture.stages): attention per stage chained through the pooling
    Row("pit", "timm", "PiT", timm_name("pit_s_224"),
        timm_model("pit_ti_224", img_size=64, patch_size=8, stride=4, depth=(1, 1, 1), heads=(2, 2, 2),
                   base_dims=(12, 12, 12)),
        size=(64, 64), prefix=["cls"], oracle="windows", layers=3, notes=PIT_NOTES),
    Row("pvt_v2", "timm", "PVTv2", timm_name("pvt_v2_b0"),
        loud(timm_model("pvt_v2_b0", depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1))),
        size=(64, 64), oracle="windows", layers=4, notes=PVT_NOTES),
    Row("twins", "timm", "Twins", timm_name("twins_svt_small"),
        loud(timm_model("twins_svt_small", img_size=64, depths=(2, 1, 1, 1), embed_dims=(16, 16, 16, 16),
                        num_heads=(1, 1, 1, 1), wss=(4, 4, 2, 2))),
        size=(64, 64), oracle="windows", layers=5, notes=TWINS_NOTES),
    Row("mvitv2", "timm", "MViTv2", timm_name("mvitv2_tiny"), lambda: _mvit(), size=(64, 64), oracle="windows",
        layers=2, notes=MVIT_NOTES),
    Row("hiera", "timm", "Hiera", timm_name("hiera_tiny_224"),
        lambda: hiera_model(0.002, img_size=64, stages=(1, 1, 1, 1)),  # a quieter head: output within 1e-5
        size=(64, 64), oracle="windows", layers=4, notes=HIERA_NOTES),
    Row("hieradet", "timm", "Hiera (SAM2)", timm_name("sam2_hiera_tiny"),
        lambda: hiera_model(0.002, "sam2_hiera_tiny", stages=(1, 1, 1, 1), global_att_blocks=(),
                            window_spec=(8, 4, 2, 1)),
        size=(64, 64), oracle="windows", layers=4, notes=HIERA_DET_NOTES),
    Row("hf_pvt_v2", "transformers", "PVTv2", "`--model hf:DIR` (PvtV2ForImageClassification)",
        loud(hf_pvt_v2), size=(64, 64), oracle="windows", layers=4, notes=PVT_NOTES),
    Row("maxvit", "timm", "MaxViT / CoAtNet", timm_name("maxvit_tiny_tf_224"),
        timm_model("maxvit_tiny_tf_224", img_size=64, embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1),
                   stem_width=16),
        size=(64, 64), methods=(), refusal=r"MaxViT / CoAtNet: .* convolution \(MBConv\) stages",
        notes="block/grid attention, conv stages"),
    Row("coatnet", "timm", "MaxViT / CoAtNet", timm_name("maxvit_tiny_tf_224"),
        timm_model("coatnet_0_rw_224", img_size=64, embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1), stem_width=16),
        size=(64, 64), methods=(), refusal=r"MaxViT / CoAtNet: .* convolution \(MBConv\) stages", readme=False),
    Row("davit", "timm", "DaViT", timm_name("davit_tiny"),
        timm_model("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1)),
        methods=(), refusal=r"DaViT: .* window attention alternates with channel attention",
        notes="window + channel attention"),
    Row("levit", "timm", "LeViT", timm_name("levit_128"), timm_model("levit_128s", img_size=64), size=(64, 64), methods=(),
        refusal=r"LeViT: .* attention-subsample blocks", notes="attention-subsample"),
    Row("efficientformer", "timm", "EfficientFormer", timm_name("efficientformer_l1"),
        timm_model("efficientformer_l1", depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16)), size=(224, 224),
        methods=(), refusal=r"EfficientFormer: .* mix tokens by pooling", notes="pooling mixers"),
    Row("efficientformerv2", "timm", "EfficientFormerV2", timm_name("efficientformerv2_s0"),
        timm_model("efficientformerv2_s0", depths=(1, 1, 1, 1), img_size=64), size=(64, 64), methods=(),
        refusal=r"EfficientFormerV2: .* strided keys and values", notes="conv stages, strided attention"),
    Row("torchvision_swin", "torchvision", "Swin (swin_t, swin_v2_t)", "`--model torchvision/swin_t`",
        loud(torchvision_swin("swin_t", patch=4, depths=(2, 2))), oracle="windows", layers=4, notes=WINDOW_NOTES),
    Row("torchvision_swin_v2", "torchvision", "Swin (swin_t, swin_v2_t)", "`--model torchvision/swin_t`",
        loud(torchvision_swin("swin_v2_t", patch=4, depths=(2, 2))), size=(32, 64), oracle="windows", layers=4,
        readme=False),
    Row("hf_swin", "transformers", "Swin / SwinV2", "`--model hf:DIR` (SwinForImageClassification, ...)",
        loud(hf_swin("swin", patch=4, depths=(2, 2))), size=(32, 64), oracle="windows", layers=4, notes=WINDOW_NOTES),
    Row("hf_swinv2", "transformers", "Swin / SwinV2", "`--model hf:DIR` (SwinForImageClassification, ...)",
        loud(hf_swin("swinv2", patch=4, depths=(2, 2))), oracle="windows", layers=4, readme=False),
    Row("torchvision_maxvit", "torchvision", "MaxViT (maxvit_t)", "`--model torchvision/maxvit_t`",
        cls_module("torchvision.models.MaxVit", input_size=(64, 64), stem_channels=16, partition_size=2,
                   block_channels=[16, 16], block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0,
                   num_classes=5),
        size=(64, 64), methods=(), refusal=r"torchvision MaxViT .* MBConv stages", notes="block/grid attention"),
]


def _vitamin():
    """ViTamin-S's layout (MBConv stem, no projection, global pool) at toy width."""
    from timm.models.vitamin import VitCfg, VitConvCfg

    stem = VitCfg(embed_dim=(8, 16, 24), depths=(1, 1, 1), stem_width=8,
                  conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6), head_type="1d")
    return timm_model("vitamin_small_224", img_size=(64, 96), embed_cfg=stem, embed_dim=24, depth=2, num_heads=2)()


def _mvit():
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)
    model = MultiScaleVit(MultiScaleVitCfg(depths=(1, 1), embed_dim=(24, 48), num_heads=(1, 2)), img_size=(64, 64),
                          num_classes=5).eval()
    _sharpen(model)
    return model


def hiera_model(head_std=0.02, name="hiera_tiny_224", **kwargs):
    """A tiny timm Hiera or SAM2 Hiera (`name`; widths 16, 24, 36, 54, two heads), qkv sharpened,
    and a loud head: timm zero-initialises their classifier, so it gets random weights first."""
    model = timm_model(name, **{**dict(embed_dim=16, num_heads=2, head_mul=1.0, dim_mul=1.5), **kwargs})()
    with torch.no_grad():
        model.head.fc.weight.normal_(std=head_std)
    return loud_head(model)


def refused_methods(row: Row):
    return [m for m in ATTENTION_METHODS if m not in row.methods]


def readme_table(rows=ROWS) -> str:
    """The "Supported models" table in Markdown: one line per (framework, family)."""
    lines = ["| Framework | Family | Attention methods | How loaded | Notes |", "|---|---|---|---|---|"]
    seen = {}
    for row in rows:
        if row.readme:
            seen.setdefault((row.framework, row.family), row)
    for (framework, family), row in seen.items():
        methods = ", ".join(row.methods) if row.methods else "refused (use gradcam, integrated_gradients, occlusion, rise)"
        lines.append(f"| {framework} | {family} | {methods} | {row.loaded} | {row.notes} |")
    return "\n".join(lines)
