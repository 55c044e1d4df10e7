"""Convolution algorithms side by side, for RESULTS.md: cyconv im2col vs Winograd vs torch's conv2d
at ResNet-18/ResNet-20/LeNet-5 layer shapes, forward and forward + backward, 1 and 2 threads.

    python benchmarks/bench_conv_algorithms.py [--isa avx2] [--rounds 5] [--section winograd|depthwise|direct]

--section depthwise: MobileNetV2's 3x3 depthwise layers (csrc/depthwise.c) against torch's conv2d with
groups=C; --section direct: ResNet's strided 1x1 shortcuts, 3x3 stride-2 layers and the 7x7 stem,
cyconv im2col vs direct (csrc/direct.c) vs torch.

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


# MobileNetV2's depthwise layers: C, H = W, stride (3x3, padding 1)
DEPTHWISE = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1), (576, 14, 1),
             (576, 14, 2), (960, 7, 1)]
# ResNet-18/50's layers direct.c is for: name, C, O, H = W, kernel, stride, padding
DIRECT = [("r18 stem 7x7 s2", 3, 64, 224, 7, 2, 3), ("r18 shortcut 64->128 1x1 s2", 64, 128, 56, 1, 2, 0),
          ("r18 shortcut 128->256 1x1 s2", 128, 256, 28, 1, 2, 0),
          ("r18 shortcut 256->512 1x1 s2", 256, 512, 14, 1, 2, 0),
          ("r18 3x3 s2 64->128", 64, 128, 56, 3, 2, 1), ("r18 3x3 s2 256->512", 256, 512, 14, 3, 2, 1)]


def timed(sides, rounds):
    """Median ms per side, the sides alternating within each round after one warm-up call each."""
    times = {k: [] for k in sides}
    for f in sides.values():
        f()
    for _ in range(rounds):
        for k, f in sides.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: median(v) * 1e3 for k, v in times.items()}


def run_depthwise(rounds):
    import numpy as np
    import torch

    import cyconv
    import cyconv.functional as F

    print(f"cyconv isa {cyconv.get_isa()}, torch {torch.__version__} "
          f"{torch.backends.cpu.get_cpu_capability()}, {rounds} rounds, medians (ms)")
    print("| layer | T | phase | cyconv | torch | cyconv/torch |")
    print("|---|---|---|---|---|---|")
    for C, H, s in DEPTHWISE:
        for N in (1, 32):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((C, 1, 3, 3)) / 3).astype(np.float32)
            Ho = (H - 1) // s + 1
            gy = np.ones((N, C, Ho, Ho), np.float32)
            tx, tw, tgy = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_(), torch.from_numpy(gy)
            for threads in (1, 2):
                cyconv.set_num_threads(threads)
                torch.set_num_threads(threads)
                for phase in ("fwd", "fwd+bwd"):
                    def ours():
                        F.conv2d(x, w, None, s, 1, groups=C)
                        if phase == "fwd+bwd":
                            F.conv2d_backward(gy, x, w, s, 1, groups=C)

                    def theirs():
                        if phase == "fwd":
                            with torch.no_grad():
                                torch.nn.functional.conv2d(tx, tw, None, s, 1, groups=C)
                        else:
                            tx.grad = tw.grad = None
                            torch.nn.functional.conv2d(tx, tw, None, s, 1, groups=C).backward(tgy)

                    m = timed({"cyconv": ours, "torch": theirs}, rounds)
                    print(f"| dw {C}x{H}x{H} s{s} b{N} | {threads} | {phase} | {m['cyconv']:.3f} | {m['torch']:.3f} | "
                          f"{m['cyconv'] / m['torch']:.2f} |", flush=True)


def run_direct(rounds):
    import numpy as np
    import torch

    import cyconv
    import cyconv.functional as F

    print(f"cyconv isa {cyconv.get_isa()}, torch {torch.__version__} "
          f"{torch.backends.cpu.get_cpu_capability()}, {rounds} rounds, medians (ms), forward")
    print("| layer | N | T | im2col | direct | torch | direct/im2col | direct/torch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, C, O, H, k, s, p in DIRECT:
        for N in (1, 32):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((N, C, H, H), dtype=np.float32)
            w = (rng.standard_normal((O, C, k, k)) / np.sqrt(C * k * k)).astype(np.float32)
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            for threads in (1, 2):
                cyconv.set_num_threads(threads)
                torch.set_num_threads(threads)

                def theirs():
                    with torch.no_grad():
                        torch.nn.functional.conv2d(tx, tw, None, s, p)

                m = timed({"im2col": lambda: F.conv2d(x, w, None, s, p, algorithm="im2col"),
                           "direct": lambda: F.conv2d(x, w, None, s, p, algorithm="direct"), "torch": theirs}, rounds)
                print(f"| {name} {C}x{H}x{H} | {N} | {threads} | {m['im2col']:.2f} | {m['direct']:.2f} | "
                      f"{m['torch']:.2f} | {m['direct'] / m['im2col']:.2f} | {m['direct'] / m['torch']:.2f} |",
                      flush=True)


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
    ap.add_argument("--section", choices=("winograd", "depthwise", "direct"), default="winograd")
    args = ap.parse_args()
    if args.isa and os.environ.get("CYCONV_BENCH_CHILD") != "1":
        env = dict(os.environ, CYCONV_BENCH_CHILD="1", **machine.tier_env(args.isa))
        return subprocess.call([sys.executable, __file__, "--rounds", str(args.rounds), "--section", args.section],
                               env=env)
    {"winograd": run, "depthwise": run_depthwise, "direct": run_direct}[args.section](args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
