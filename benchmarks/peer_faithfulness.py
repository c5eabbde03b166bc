"""Faithfulness of vitx's methods against the peer libraries, on one model and the same images.

Model: a torchvision `VisionTransformer` trained here on Fashion-MNIST (grayscale repeated to
3 channels, normalised with the dataset's mean and std; 28x28 images, 4x4 patches: a 7x7
grid). `--train` makes it (seeded, a few minutes on 2 CPU cores) and writes its weights
(safetensors) and a JSON (recipe, test accuracy, seconds, command) into benchmarks/results/.

Protocol (the default, evaluate): N test images drawn by a seeded permutation, in batches.
For each batch every method explains the model's *predicted* class and gives a 7x7 patch map:
every vitx method (`vitx.explain`), and the peers through their own public APIs:
  captum IntegratedGradients (32 steps, Gauss-Legendre, baseline 0 = the dataset mean),
  LXT CP-LRP (its torchvision-ViT patches, relevance = input x gradient),
  torchcam LeGrad (all blocks; its patch-resolution map),
  pytorch-grad-cam GradCAM (ViT recipe on the last block's ln_1, its 28x28 map averaged per patch);
pixel attributions are summed per patch over channels and pixels. A seeded random map is
scored alongside. Every map is scored by vitx's own metrics (vitx/evaluate/metrics.py,
baseline `dataset_mean`: removed patches become 0 after normalisation): pos./neg. AUC = the
accuracy-based perturbation AUCs (lower / higher is better), deletion / insertion = the
target-probability AUCs (lower / higher). Cost = a method's time over a plain no-grad forward
of the same batches (time.perf_counter, each method warmed up once before timing).
Protocols (`--protocols`): `dataset_mean` (above), `blur`, `mean` (each image's mean colour), and ROAD noisy linear imputation
(vitx/evaluate/road.py, pos./neg. only, on the first `--road-images` images). Every AUC has
its 95 % percentile-bootstrap interval over images (vitx/evaluate/confidence.py); vitx's best
method is compared to each peer by a paired bootstrap (benchmarks/faithfulness_report.py);
methods below the random map are flagged; rank agreement between protocols is printed.
Writes benchmarks/results/peer_faithfulness.{md,json} and prints the tables, the paired
comparisons, and how close the peers are to the vitx methods that implement the same
definition.

Usage: python benchmarks/peer_faithfulness.py --train
       python benchmarks/peer_faithfulness.py [--n 500] [--batch 50] [--rise-masks 1000]
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models.vision_transformer import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # reference_models (the data loader) lives next to vitx
import vitx  # noqa: E402
from bench_lrp import lxt_cp_lrp  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from vitx.datasets import dataset_info, load_split  # noqa: E402
from vitx.attribution.api import list_methods  # noqa: E402
from faithfulness_report import (  # noqa: E402
    acceptance, agreement, agreement_lines, intervals, random_flags, table, timed_maps,
)
from vitx.evaluate.metrics import Curves, per_image_aucs, perturbation_curves  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS, INFO = RESULTS / "peer_vit.safetensors", RESULTS / "peer_vit.json"
CONFIG = dict(image_size=28, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
FASHION = dataset_info("fashion_mnist")
DATA_CONFIG = {"input_size": (3, 28, 28), "mean": FASHION.mean * 3, "std": FASHION.std * 3}
METRICS = (("positive_accuracy_auc", "pos. AUC (lower)", min), ("negative_accuracy_auc", "neg. AUC (higher)", max),
           ("deletion_auc", "deletion (lower)", min), ("insertion_auc", "insertion (higher)", max))


def fashion(train):
    """(images (N, 1, 28, 28) normalised, labels) of a split: load_split's transform, done at once."""
    ds = load_split("fashion_mnist", train=train, augment=False)
    x = ((ds.data.float() / 255 - FASHION.mean[0]) / FASHION.std[0])[:, None]
    assert torch.allclose(x[0], ds[0][0], atol=1e-5)  # the same as the dataset's own transform
    return x, ds.targets


def rgb(x):
    return x.expand(-1, 3, -1, -1)


def train(args):
    torch.manual_seed(args.seed)
    model = VisionTransformer(**CONFIG)
    x, y = fashion(train=True)
    steps = args.epochs * math.ceil(len(x) / args.train_batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
    start = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        for idx in torch.randperm(len(x)).split(args.train_batch):
            batch = x[idx]
            flip = torch.rand(len(idx), 1, 1, 1) < 0.5  # random horizontal flip
            batch = torch.where(flip, batch.flip(-1), batch)
            loss = F.cross_entropy(model(rgb(batch)), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    tx, ty = fashion(train=False)
    with torch.no_grad():
        correct = sum((model(rgb(tx[i:i + 500])).argmax(-1) == ty[i:i + 500]).sum().item() for i in range(0, len(tx), 500))
    info = {"config": CONFIG, "data": "fashion_mnist, grayscale repeated to 3 channels, normalised with mean/std",
            "mean": FASHION.mean, "std": FASHION.std, "recipe": {k: vars(args)[k] for k in ("epochs", "lr", "train_batch", "seed")} | {"optimizer": "AdamW wd 0.05",
            "schedule": "5% linear warm-up, cosine", "augment": "horizontal flip", "label_smoothing": 0.1},
            "test_accuracy": correct / len(tx), "train_seconds": round(seconds, 1),
            "threads": torch.get_num_threads(), "command": "python " + " ".join(sys.argv)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS)
    INFO.write_text(json.dumps(info, indent=2) + "\n")
    print(f"test accuracy {info['test_accuracy']:.4f} after {seconds:.0f} s -> {WEIGHTS}")


def patch_sum(pixels):
    """(B, C, 28, 28) pixel attributions -> (B, 7, 7) sums over channels and each patch's pixels."""
    return F.avg_pool2d(pixels.detach().sum(1, keepdim=True), CONFIG["patch_size"])[:, 0] * CONFIG["patch_size"] ** 2


def peers(model):
    """{name: (library, fn(pixels, targets) -> (B, 7, 7) map)} for the four peer methods."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import LeGrad

    grid = CONFIG["image_size"] // CONFIG["patch_size"]
    lxt = lxt_cp_lrp()  # explains the argmax class: the predicted one, as every other method here

    def captum_ig(pixels, targets):
        return patch_sum(IntegratedGradients(model).attribute(
            pixels, baselines=torch.zeros_like(pixels), target=targets, n_steps=32, method="gausslegendre"))

    def torchcam_legrad(pixels, targets):
        with LeGrad(model, list(model.encoder.layers)) as extractor:
            return extractor(targets.tolist(), model(pixels), normalized=False)[0].detach()

    def vit_reshape(tokens):  # pytorch-grad-cam's ViT recipe: drop the cls token, (B, N, D) -> (B, D, h, w)
        return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    def gradcam(pixels, targets):
        with GradCAM(model=model, target_layers=[model.encoder.layers[-1].ln_1], reshape_transform=vit_reshape) as cam:
            out = cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return F.avg_pool2d(torch.from_numpy(out)[:, None], CONFIG["patch_size"])[:, 0]

    return {"IntegratedGradients (32 steps)": ("captum", captum_ig),
            "CP-LRP": ("LXT", lambda pixels, targets: patch_sum(lxt(model, pixels))),
            "LeGrad": ("torchcam", torchcam_legrad), "GradCAM (last ln_1)": ("pytorch-grad-cam", gradcam)}


def vitx_methods(model, batch, rise_masks):
    options = {"integrated_gradients": {"steps": 32, "rule": "gausslegendre", "baseline": "dataset_mean"},
               "rise": {"masks": rise_masks, "baseline": "dataset_mean"}, "occlusion": {"baseline": "dataset_mean"},
               "shapley": {"baseline": "dataset_mean", "permutations": 16}}
    names = [(m, m, options.get(m, {})) for m in sorted(list_methods())]
    names.append(("attnlrp (cp)", "attnlrp", {"variant": "cp"}))
    for method in ("integrated_gradients", "input_x_gradient", "gradcam", "grad_rollout", "chefer2021"):
        names.append((f"{method} (libragrad)", method, {**options.get(method, {}), "grad_mode": "libragrad"}))
    def run(pixels, targets, method, opts):  # the raw patch relevance (`.maps` is it rescaled to [0, 1] per image)
        exp = vitx.explain(model, pixels, method=method, target=targets, batch_size=batch, **opts)
        return exp.layout.patch_map(exp.relevance).detach()

    return {name: ("vitx", lambda pixels, targets, m=method, o=opts: run(pixels, targets, m, o))
            for name, method, opts in names}


def correlation(a, b):
    """Pearson correlation of two methods' patch maps: over all values, and per image (mean, min)."""
    a, b = torch.cat(a).flatten(1).double(), torch.cat(b).flatten(1).double()
    pooled = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    each = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)
    return {"pooled": pooled, "per_image_mean": each.mean().item(), "per_image_min": each.min().item()}


def evaluate(args):
    model = VisionTransformer(**CONFIG)
    model.load_state_dict(load_file(WEIGHTS))
    model.eval()
    info = json.loads(INFO.read_text())
    x, y = fashion(train=False)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    methods = vitx_methods(model, args.batch, args.rise_masks) | peers(model)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = [name for name in wanted if name not in methods]
        if unknown:
            raise SystemExit(f"--only: unknown methods {unknown}; known: {sorted(methods)}")
        methods = {name: methods[name] for name in wanted}
    warm = rgb(x[order[:2]])
    with torch.no_grad():
        warm_targets = model(warm).argmax(-1)
    for _, fn in methods.values():  # warm-up (and a check that each runs) before any timing
        assert fn(warm, warm_targets).shape == (2, 7, 7)
    protocols = {p: (("positive", "negative") if p == "road" else ("positive", "negative", "deletion", "insertion"))
                 for p in args.protocols.split(",")}
    curves = {p: {name: Curves() for name in list(methods) + ["random"]} for p in protocols}
    seconds = dict.fromkeys(list(methods) + ["forward"], 0.0)
    kept = {name: [] for name in ("integrated_gradients", "IntegratedGradients (32 steps)", "attnlrp (cp)", "CP-LRP",
                                  "legrad", "LeGrad", "gradcam", "GradCAM (last ln_1)", "input_x_gradient (libragrad)")}
    start = time.perf_counter()
    for b, idx in enumerate(order.split(args.batch)):
        pixels, labels = rgb(x[idx]).contiguous(), y[idx]
        with torch.no_grad():
            targets = model(pixels).argmax(-1)  # every method explains the predicted class
        maps = timed_maps(model, methods, pixels, targets, seconds, args.seed * 1_000_003 + b)
        for name, m in maps.items():
            for protocol, tests in protocols.items():
                chosen = slice(None) if protocol != "road" else slice(0, max(0, args.road_images - b * args.batch))
                if len(pixels[chosen]):
                    perturbation_curves(model, pixels[chosen], m[chosen], labels[chosen], targets[chosen], DATA_CONFIG,
                                        protocol, curves[protocol][name], tests=tests)
            if name in kept:
                kept[name].append(m)
        print(f"batch {b + 1}/{math.ceil(len(order) / args.batch)}: {time.perf_counter() - start:.0f} s", flush=True)
    library = {name: lib for name, (lib, _) in methods.items()} | {"random": "-"}
    costs = {name: seconds[name] / seconds["forward"] for name in methods}
    per_image = {p: {name: per_image_aucs(c) for name, c in per.items()} for p, per in curves.items()}
    cis = {p: intervals(v, args.bootstrap, args.seed) for p, v in per_image.items()}
    sections, checks, flags = [], {}, {}
    for protocol, values in per_image.items():
        metrics = [m for m in METRICS if m[0] in values["random"]]
        flags[protocol] = random_flags(values, metrics, args.bootstrap, args.seed)
        checks[protocol] = acceptance(values, library, metrics, args.bootstrap, args.seed)
        count = len(next(iter(values["random"].values())))
        sections.append(f"### Protocol `{protocol}` ({count} images)\n\n" + table(cis[protocol], library, costs, metrics,
                                                                                  flags[protocol])
                        + "\n\nvitx's best vs. each peer (paired bootstrap, 95 %):\n\n"
                        + "\n".join(f"- {line}" for line in checks[protocol]))
    ranks = agreement(cis, METRICS)
    header = (f"{len(order)} Fashion-MNIST test images (seed {args.seed}), batch {args.batch}; model "
              f"{info['config']}, test accuracy {info['test_accuracy']:.4f}; forward "
              f"{1000 * seconds['forward'] / len(order):.3f} ms/image, {torch.get_num_threads()} threads\n")
    pairs = [("integrated_gradients", "IntegratedGradients (32 steps)"), ("attnlrp (cp)", "CP-LRP"),
             ("input_x_gradient (libragrad)", "CP-LRP"),
             ("legrad", "LeGrad"), ("gradcam", "GradCAM (last ln_1)")]
    agree = {f"{a} vs. {b}": correlation(kept[a], kept[b]) for a, b in pairs if kept.get(a) and kept.get(b)}
    report = (header + "\n" + "\n\n".join(sections) + "\n\nRank agreement of the protocols (method orders):\n\n"
              + "\n".join(f"- {line}" for line in agreement_lines(ranks)) +
              "\n\nPearson correlation of the patch maps, all values pooled (raw scales) and per image:\n" +
              "\n".join(f"{k}: {v['pooled']:.6f} (per image: mean {v['per_image_mean']:.6f}, min {v['per_image_min']:.6f})"
                        for k, v in agree.items()) + "\n")
    print("\n" + report)
    print(f"total {time.perf_counter() - start:.0f} s")
    stem = args.out or ("peer_faithfulness_only" if args.only else "peer_faithfulness")
    (RESULTS / f"{stem}.md").write_text(report)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"n": len(order), "batch": args.batch, "seed": args.seed, "protocols": list(protocols), "model": info,
         "auc": {p: {n: {k: vars(ci) for k, ci in v.items()} for n, v in c.items()} for p, c in cis.items()},
         "library": library, "below_random": flags, "agreement": ranks, "cost_vs_forward": costs,
         "seconds": seconds, "acceptance": checks, "correlation": agree,
         "command": "python " + " ".join(sys.argv)}, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train the model (else: evaluate the saved one)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--n", type=int, default=500, help="test images to evaluate")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="comma-separated method names to run (default: all); "
                        "the results then go to peer_faithfulness_only.{md,json}")
    parser.add_argument("--out", default="", help="results file stem in benchmarks/results/ (default: peer_faithfulness, "
                        "or peer_faithfulness_only with --only)")
    parser.add_argument("--protocols", default="dataset_mean,blur,road",
                        help="removal protocols (vitx.evaluate.metrics.PROTOCOLS)")
    parser.add_argument("--road-images", type=int, default=100, help="images scored with ROAD (its solves are costly)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples over images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train(args) if args.train else evaluate(args)


if __name__ == "__main__":
    main()
