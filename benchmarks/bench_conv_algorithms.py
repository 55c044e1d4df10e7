"""Convolution algorithms side by side, for RESULTS.md: cyconv im2col vs Winograd vs torch's conv2d
at ResNet-18/ResNet-20/LeNet-5 layer shapes, forward and forward + backward, 1 and 2 threads.

    python benchmarks/bench_conv_algorithms.py [--isa avx2] [--rounds 5]

The sides alternate within each round (im2col, winograd, torch, then the next round) and each
figure is the median over rounds, so a neighbour's load on a shared machine hits all sides alike.
--isa avx2 re-runs itself with machine.tier_env("avx2") (cyconv, ATen, oneDNN, MKL, OpenBLAS).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

LAYERS = [  # name, batch, C (= O, but LeNet's 50), H = W, kernel
    *[(f"r18 {c}x{h}x{h} b{n}", n, c, h, 3) for c, h in ((64, 56), (128, 28), (256, 14), (512, 7)) for n in (1, 32)],
    *[(f"r20 {c}x{h}x{h} b64", 64, c, h, 3) for c, h in ((16, 32), (32, 16), (64, 8))],
    ("lenet conv2 20->50 14x14 b64", 64, 20, 14, 5),
]


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def run(rounds):
    import numpy as np
    import torch

    import cyconv
    import cyconv.functional as F

    print(f"cyconv isa {cyconv.get_isa()}, torch {torch.__version__} "
          f"{torch.backends.cpu.get_cpu_capability()}, {rounds} rounds, medians (ms)")
    print("| layer | T | phase | algorithm | im2col | winograd | torch | wino/im2col | wino/torch | auto/torch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, N, C, H, r in LAYERS:
        O = 50 if r == 5 else C
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = (rng.standard_normal((O, C, r, r)) / np.sqrt(C * r * r)).astype(np.float32)
        gy = np.ones((N, O, H, H), np.float32)
        tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        tgy = torch.from_numpy(gy)
        chosen = F.conv_algorithm(C, O, H, H, r, r, 1, r // 2, batch=N)
        wino = chosen if chosen.startswith("winograd") else ("winograd2" if r == 5 else "winograd4")
        for threads in (1, 2):
            cyconv.set_num_threads(threads)
            torch.set_num_threads(threads)
            for phase in ("fwd", "fwd+bwd"):
                def ours(algorithm):
                    F.conv2d(x, w, None, 1, r // 2, algorithm=algorithm)
                    if phase == "fwd+bwd":
                        F.conv2d_backward(gy, x, w, 1, r // 2, algorithm=algorithm)

                def theirs():
                    if phase == "fwd":
                        with torch.no_grad():
                            torch.nn.functional.conv2d(tx, tw, None, padding=r // 2)
                    else:
                        tx.grad = tw.grad = None
                        torch.nn.functional.conv2d(tx, tw, None, padding=r // 2).backward(tgy)

                sides = {"im2col": lambda: ours("im2col"), "winograd": lambda: ours(wino), "torch": theirs}
                times = {k: [] for k in sides}
                for f in sides.values():
                    f()  # warm up
                for _ in range(rounds):
                    for k, f in sides.items():
                        t0 = time.perf_counter()
                        f()
                        times[k].append(time.perf_counter() - t0)
                m = {k: median(v) * 1e3 for k, v in times.items()}
                auto = m["winograd"] if chosen == wino else m["im2col"]
                print(f"| {name} | {threads} | {phase} | {wino}{'' if chosen == wino else ' (auto: im2col)'} | "
                      f"{m['im2col']:.2f} | {m['winograd']:.2f} | {m['torch']:.2f} | "
                      f"{m['winograd'] / m['im2col']:.2f} | {m['winograd'] / m['torch']:.2f} | "
                      f"{auto / m['torch']:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--isa", choices=machine.TIERS, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.isa and os.environ.get("CYCONV_BENCH_CHILD") != "1":
        env = dict(os.environ, CYCONV_BENCH_CHILD="1", **machine.tier_env(args.isa))
        return subprocess.call([sys.executable, __file__, "--rounds", str(args.rounds)], env=env)
    run(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
