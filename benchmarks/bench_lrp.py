"""Cost of vitx's LRP methods relative to a plain forward (time per image, one batch).

Prints a markdown table: milliseconds per image of a plain forward (no_grad), then each
method's time as a multiple of it. For torchvision models it also times LXT's own CP-LRP
(its torchvision ViT patch, forward + backward), the peer in the issue's table. Models are
randomly initialised: the cost does not depend on the weights.

Usage: python benchmarks/bench_lrp.py [--device cuda] [--batch 16] [--repeats 3]
       [--models tv_tiny,timm_tiny,vit_small_patch16_224,tv_small,tv_vit_b_16]
"""
import argparse
import functools
import importlib.util
import os
import sys
import types

import timm
import torch
from torch import nn
from torchvision.models import vision_transformer

import vitx
from bench_speed import timed  # benchmarks/ is on sys.path when run as a script

METHODS = (("chefer2021", {}), ("attnlrp", {"variant": "cp"}), ("attnlrp", {"variant": "attnlrp"}),
           ("transformer_attribution", {}))


def build(name):
    """(model, image size) for a short name."""
    torch.manual_seed(0)
    if name == "tv_tiny":
        model = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=24, mlp_dim=48, num_classes=5)
        nn.init.normal_(model.heads.head.weight, std=0.5)
        return model, 32
    if name == "tv_small":  # torchvision's ViT at vit_small's size (LXT can run it)
        model = vision_transformer.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=6,
                                                     hidden_dim=384, mlp_dim=1536, num_classes=1000)
        nn.init.normal_(model.heads.head.weight, std=0.02)
        return model, 224
    if name == "tv_vit_b_16":
        model = vision_transformer.vit_b_16()
        nn.init.normal_(model.heads.head.weight, std=0.02)
        return model, 224
    if name == "timm_tiny":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                                 embed_dim=24, num_heads=2, num_classes=5), 32
    return timm.create_model(name, pretrained=False), 224


def lxt_cp_lrp():
    """LXT's CP-LRP for torchvision's ViT as a function (model, x, score=None) -> relevance
    (score: output -> (B,) explained score; default the predicted class's logit), patching
    torch's classes only for the duration of each call (LXT 2.1's package __init__ needs an
    older transformers, so only its rule and patch modules are loaded)."""
    try:
        root = os.path.dirname(importlib.util.find_spec("lxt").origin)
    except (AttributeError, ImportError):
        return None
    for name in ("lxt.efficient", "lxt.efficient.models"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [os.path.join(root, *name.split(".")[1:])]
            sys.modules[name] = stub
    from lxt.efficient.models.vit_torch import cp_LRP

    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)

    def run(model, x, score=None):
        saved = {c: c.__dict__["forward"] for c in classes}
        try:
            for target, patch in cp_LRP.items():
                patch(target)
            x = x.clone().requires_grad_(True)
            out = model(x)
            value = score(out) if score else out.gather(1, out.argmax(-1, keepdim=True))
            (grad,) = torch.autograd.grad(value.sum(), x)
            return x * grad
        finally:
            for c in classes:
                c.forward = saved[c]
                if "original_forward" in c.__dict__:
                    del c.original_forward

    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="tv_tiny,timm_tiny,vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    lxt = lxt_cp_lrp()
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, batch {args.batch}\n")
    names = [m + (f" {o['variant']}" if o else "") for m, o in METHODS]
    print("| model | forward ms/img | " + " | ".join(names) + " | LXT CP-LRP |")
    print("|---" * (len(names) + 3) + "|")
    for name in args.models.split(","):
        model, size = build(name)
        model = model.to(device).eval()
        x = torch.randn(args.batch, 3, size, size, device=device)

        def forward():
            with torch.no_grad():
                model(x)

        base = timed(forward, args.repeats, device)
        cells = []
        for method, options in METHODS:
            run = functools.partial(vitx.explain, model, x, method=method, batch_size=args.batch, **options)
            cells.append(f"{timed(run, args.repeats, device) / base:.1f}x")
        peer = "-"
        if lxt is not None and isinstance(model, vision_transformer.VisionTransformer):
            for p in model.parameters():
                p.requires_grad_(False)
            peer = f"{timed(functools.partial(lxt, model, x), args.repeats, device) / base:.1f}x"
            for p in model.parameters():
                p.requires_grad_(True)
        print(f"| {name} | {1000 * base / args.batch:.2f} | " + " | ".join(cells) + f" | {peer} |")


if __name__ == "__main__":
    main()
