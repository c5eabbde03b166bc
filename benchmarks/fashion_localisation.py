"""Localisation of the bundled models on Fashion-MNIST (benchmarks/README.md numbers).

Fashion-MNIST garments sit on an exactly black background, so the object mask is free:
pixel > THRESHOLD. Writes a seeded sample of the test split as images/ + masks/ and runs
`evaluate_localisation` (Chefer et al. protocol + pointing game) for each bundled model.
Usage: python benchmarks/fashion_localisation.py [N] [OUT]
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import vitx
from vitx.evaluate.localisation import evaluate_localisation
from vitx.evaluate.masks import mask_folder
from vitx.datasets import load_split

THRESHOLD = 10
METHODS = ["raw_attention", "rollout", "grad_rollout", "chefer2021"]


def write_folder(folder: Path, count: int):
    from PIL import Image

    data = load_split("fashion_mnist", train=False, augment=False)
    data.transform = None
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count].tolist()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for i in picks:
        image = data[i][0].convert("L")
        image.save(folder / "images" / f"{i:05d}.png")
        Image.fromarray(np.uint8(np.asarray(image) > THRESHOLD) * 255).save(folder / "masks" / f"{i:05d}.png")


def main(count=500, out=None):
    folder = Path(out or tempfile.mkdtemp())
    write_folder(folder, count)
    pairs = mask_folder(folder)
    print(f"{len(pairs)} Fashion-MNIST test images, mask = pixel > {THRESHOLD}; pointing game with tolerance 0 "
          "(the published 15 px would cover half of a 28 px image)")
    for name in ("fashion_vit", "fashion_deit"):
        model = vitx.load_model(name)
        results = strict = evaluate_localisation(model, pairs, METHODS, batch_size=100, tolerance=0)
        print(f"\n{name}\n| method | pixel accuracy | mIoU | mAP | pointing game (tol. 0) |\n|---|---|---|---|---|")
        for method, r in results.items():
            print(f"| {method} | {r['pixel_accuracy']:.4f} | {r['mIoU']:.4f} | {r['mAP']:.4f} | "
                  f"{strict[method]['pointing_game']:.4f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500, sys.argv[2] if len(sys.argv) > 2 else None)
