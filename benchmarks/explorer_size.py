"""Size of the `vitx inspect --interactive` report for 12-layer ViTs, Swin-T, PVTv2-B0 and PiT-Ti
at 224 px (benchmarks/README.md numbers).

Random-init timm models (no hub download); the images are random noise, so the attention
is whatever the initialisation gives (Swin-T: the explorer stores each layer's window blocks,
by stage; PVTv2 and PiT each layer's rows over its pooled keys, by stage). Prints the size of
the whole report.html and of the explorer's embedded data for each model.
Usage: python benchmarks/explorer_size.py [N_IMAGES [MODEL ...]]
"""
import re
import sys
import tempfile
import time

import timm
import torch

from vitx.inspect.inspection import inspect_models


MODELS = ("deit_tiny_patch16_224", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "pvt_v2_b0", "pit_ti_224")


def main(count=8, names=MODELS):
    torch.manual_seed(0)
    images = torch.rand(count, 3, 224, 224)
    for name in names:
        model = timm.create_model(name, pretrained=False).eval()
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            path = inspect_models({name: model}, images, folder, methods=["raw_attention", "rollout", "grad_rollout",
                                                                           "chefer2021"], show=count, interactive=True)
            seconds = time.perf_counter() - start
            page = path.read_text()
        data = re.search(r'id="vitx-explorer-data">(.*?)</script>', page, re.S).group(1)
        attentions = [m for m in model.modules() if hasattr(m, "num_heads") and (hasattr(m, "qkv") or hasattr(m, "kv"))]
        heads = sorted({m.num_heads for m in attentions})
        print(f"{name}: {len(attentions)} layers x {'-'.join(map(str, heads))} heads, {count} images at 224 px: "
              f"report.html {len(page) / 1e6:.1f} MB "
              f"(explorer data {len(data) / 1e6:.1f} MB), {seconds:.0f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, sys.argv[2:] or MODELS)
