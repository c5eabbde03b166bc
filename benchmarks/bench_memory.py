"""Peak memory and time of vitx's methods against plain inference / a training step.

Every (model, size, batch, mode) runs in a fresh subprocess, so one mode's allocations
never hide another's: CPU peak RSS (getrusage) over what the process held once the model
was built, and on a GPU torch.cuda.max_memory_allocated over the allocation after
building. Ratios: raw_attention and rollout against plain inference (no_grad, fused
attention); grad_rollout and chefer2021 against a plain forward + backward (fused
attention, gradients for the input and every parameter, what a training step computes).
Models are random-init timm models (memory and time do not depend on the weights).

python benchmarks/bench_memory.py [--device cuda] [--configs vit_small_patch16_224:224:1,...]
  [--modes forward,rollout,fwd_bwd,grad_rollout,chefer2021] [--repeats 3]
A config is MODEL:IMAGE_SIZE:BATCH. Default: vit_small at 224 px, batch 1 and 16, and a
DINOv2-size ViT-S/14 (vit_small_patch14_dinov2, 1370 tokens) at 518 px, batch 1 and 2
(batch 16 at 518 px needs ~8 GiB for the training step itself: pass it on a bigger machine).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = ("forward", "raw_attention", "rollout", "fwd_bwd", "grad_rollout", "chefer2021")
DEFAULT_CONFIGS = ("vit_small_patch16_224:224:1,vit_small_patch16_224:224:16,"
                   "vit_small_patch14_dinov2:518:1,vit_small_patch14_dinov2:518:2")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib() -> float:
    """Resident memory now (Linux /proc), the baseline the peak is measured over."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


def child(model_name, size, batch, mode, device_name, repeats, dtype_name):
    import timm
    import torch

    import vitx

    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    try:
        model = timm.create_model(model_name, pretrained=False, img_size=size, num_classes=1000)
    except TypeError:  # a model built for any input size (PVTv2) takes no img_size
        model = timm.create_model(model_name, pretrained=False, num_classes=1000)
    model = model.eval().to(device=device, dtype=dtype)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)

    def run():
        if mode == "forward":
            with torch.no_grad():
                model(x)
        elif mode == "fwd_bwd":
            logits = model(x.clone().requires_grad_(True))
            logits.gather(1, logits.argmax(-1, keepdim=True)).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            vitx.explain(model, x, method=mode, batch_size=batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    # once per process, not per explanation, so not counted as a method's memory: the plugins, and the
    # ImageNet class names an Explanation of a 1000-class model reads (cached)
    vitx.list_methods()
    vitx.models.imagenet_class_names()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mib()
    start = time.perf_counter()
    run()  # the first call: its peak is the one measured (nothing earlier in this process is larger)
    first = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else peak_rss_mib() - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_mib": peak, "seconds": statistics.median(times) if times else first}))


# glibc keeps freed heap memory and fragments it, so CPU peak RSS of one run varied by up to
# 2x between identical runs (160-290 MiB for rollout, vit_small, batch 16). With every
# allocation over 64 KiB mmap'ed and unmapped on free, RSS follows the live tensors and the
# peak repeats to the MiB; that costs page faults, so timing runs in a second, default process.
EXACT_RSS = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _child(args, config, mode, repeats, env=None):
    command = [sys.executable, __file__, "--child", mode, "--configs", config, "--device", args.device,
               "--repeats", str(repeats), "--dtype", args.dtype]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return None, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def measure(args, config, mode):
    """{peak_mib, seconds}: CPU memory from a run with EXACT_RSS, time from a default one."""
    if args.device.startswith("cuda"):
        return _child(args, config, mode, args.repeats)
    memory, error = _child(args, config, mode, 0, env={**os.environ, **EXACT_RSS})
    if memory is None:
        return None, error
    timing, error = _child(args, config, mode, args.repeats)
    return (None, error) if timing is None else ({"peak_mib": memory["peak_mib"], "seconds": timing["seconds"]}, None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--modes", default="forward,rollout,fwd_bwd,grad_rollout,chefer2021")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, size, batch = args.configs.split(":")
        return child(model, int(size), int(batch), args.child, args.device, args.repeats, args.dtype)

    import torch

    what = "CUDA max allocated" if args.device.startswith("cuda") else "CPU peak RSS"
    print(f"device: {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}, dtype {args.dtype}; "
          f"memory: {what} over the built model, one fresh process per mode; time: median of {args.repeats}\n")
    print("| model | px | batch | mode | peak MiB | memory ratio | ms | time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        model, size, batch = config.split(":")
        results = {}
        for mode in args.modes.split(","):
            results[mode], error = measure(args, config, mode)
            reference = "forward" if mode in ("raw_attention", "rollout") else "fwd_bwd" \
                if mode in ("grad_rollout", "chefer2021") else None
            result, base = results[mode], results.get(reference)
            if result is None:
                print(f"| {model} | {size} | {batch} | {mode} | failed: {error} | | | |", flush=True)
                continue
            ratio = f"{result['peak_mib'] / base['peak_mib']:.2f}x {reference}" if base else "1x"
            time_ratio = f"{result['seconds'] / base['seconds']:.2f}x" if base else "1x"
            print(f"| {model} | {size} | {batch} | {mode} | {result['peak_mib']:.0f} | {ratio} "
                  f"| {result['seconds'] * 1e3:.0f} | {time_ratio} |", flush=True)


if __name__ == "__main__":
    main()
