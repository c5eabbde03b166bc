"""Speed of vitx's methods relative to plain inference, and batched vs. per-image loop.

Prints a markdown table (the one in benchmarks/README.md). Models are randomly initialised: speed
does not depend on the weights. Usage: python benchmarks/bench_speed.py [--device cuda]
[--models deit_tiny_patch16_224,vit_small_patch16_224] [--batches 1,16] [--repeats 5]
[--methods libragrad,tokentm,chefer2021:grad_mode=libragrad]: with --methods, the time per
image of each listed method (options after ':') and its ratio to plain inference instead.
"""
import argparse
import statistics
import time

import timm
import torch

import vitx


def timed(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_forward(model, x):
    with torch.no_grad():
        return model(x)


def plain_forward_backward(model, x):
    logits = model(x.requires_grad_(True))
    logits.gather(1, logits.argmax(-1, keepdim=True)).sum().backward()
    model.zero_grad(set_to_none=True)


def original_loop_rollout(model, x):
    """The vit_explain.py shape: one image at a time, hooks on attn_drop, full N x N matrix
    products, rollout matrix built for every layer (row normalisation fixed)."""
    blocks = [b.attn for b in model.blocks]
    for attn in blocks:
        attn.fused_attn = False
    store = []
    handles = [a.attn_drop.register_forward_hook(lambda m, i, o: store.append(o.cpu())) for a in blocks]
    try:
        for image in x:
            store.clear()
            with torch.no_grad():
                model(image[None])
            result = torch.eye(store[0].shape[-1])
            for attention in store:
                fused = attention.mean(dim=1)
                a = (fused + torch.eye(fused.shape[-1])) / 2
                a = a / a.sum(dim=-1, keepdim=True)
                result = torch.matmul(a, result)
            result[0, 0, 1:]
    finally:
        for h in handles:
            h.remove()
        for attn in blocks:
            attn.fused_attn = True


def method_spec(spec):
    """'name:key=value:key=value' -> (name, options); values parsed by the method's own Options."""
    name, *pairs = spec.strip().split(":")
    return name, dict(pair.split("=", 1) for pair in pairs)


def cases(args):
    """(model name, batch, model, random batch, plain-forward seconds, device) for every model and
    batch size asked for, after printing the machine line."""
    device = torch.device(args.device)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, timm {timm.__version__}\n")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval().to(device)
        for batch in map(int, args.batches.split(",")):
            x = torch.randn(batch, 3, 224, 224, device=device)
            yield name, batch, model, x, timed(lambda: plain_forward(model, x), args.repeats, device), device


def method_costs(args):
    """| model | batch | method | ms per image | vs. inference |: one line per method and batch size."""
    print("| model | batch | method | ms / image | vs. inference |")
    print("|---|---|---|---|---|")
    for name, batch, model, x, base, device in cases(args):
        for spec in args.methods.split(","):
            method, options = method_spec(spec)
            took = timed(lambda: vitx.explain(model, x, method=method, target=0, batch_size=batch, **options),
                         args.repeats, device)
            print(f"| {name} | {batch} | {spec.strip()} | {took / batch * 1e3:.1f} | {took / base:.1f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="deit_tiny_patch16_224,vit_small_patch16_224")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="", help="instead: per-image time of these methods, comma-separated, "
                        "each 'name' or 'name:option=value' (e.g. chefer2021:grad_mode=libragrad)")
    args = parser.parse_args()
    if args.methods:
        return method_costs(args)
    print("| model | batch | inference ms | raw_attention | rollout | fwd+bwd ms | grad_rollout | loop img/s | vitx rollout img/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, batch, model, x, base, device in cases(args):
        raw = timed(lambda: vitx.explain(model, x, method="raw_attention", batch_size=batch), args.repeats, device)
        roll = timed(lambda: vitx.explain(model, x, method="rollout", batch_size=batch), args.repeats, device)
        fb = timed(lambda: plain_forward_backward(model, x.clone()), args.repeats, device)
        grad = timed(lambda: vitx.explain(model, x, method="grad_rollout", batch_size=batch), args.repeats, device)
        loop = timed(lambda: original_loop_rollout(model, x), max(1, args.repeats // 2), device)
        print(f"| {name} | {batch} | {base * 1e3:.1f} | {raw / base:.2f}x | {roll / base:.2f}x | {fb * 1e3:.1f} "
              f"| {grad / fb:.2f}x | {batch / loop:.1f} | {batch / roll:.1f} | {loop / roll:.2f}x |", flush=True)
    print("\nraw_attention, rollout: time / inference; grad_rollout: time / (forward+backward);"
          " speed-up: per-image loop with full-matrix rollout vs. vitx batched rollout")


if __name__ == "__main__":
    main()
