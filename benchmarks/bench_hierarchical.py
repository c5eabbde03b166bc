"""Memory and time of the attention-flow methods on Swin-T at 224 px, against plain inference
(raw_attention, rollout) and a forward + backward (grad_rollout, chefer2021). The pooled
families (vitx.capture.stages) run the same way with --configs, e.g.
pit_s_224:224:1,pvt_v2_b2:224:1,mvitv2_tiny:224:1.

Window layers are kept compact (vitx.capture.windows: per layer 3 x 64 x 49^2 values for a
Swin-T stage-1 layer rather than 3 x 3136^2), so the target is within 1.3x of the forward
(+ backward). This is bench_memory.py (one fresh process per mode, CPU peak RSS or CUDA max
allocated over the built model, median time) with Swin configurations; its options apply:

    python benchmarks/bench_hierarchical.py [--device cuda] [--repeats 3] [--configs MODEL:PX:BATCH,...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import main  # noqa: E402

DEFAULTS = ["--configs", "swin_tiny_patch4_window7_224:224:1,swin_tiny_patch4_window7_224:224:8",
            "--modes", "forward,raw_attention,rollout,fwd_bwd,grad_rollout,chefer2021"]

if __name__ == "__main__":
    sys.argv[1:1] = DEFAULTS  # options given on the command line come later and win
    main()
