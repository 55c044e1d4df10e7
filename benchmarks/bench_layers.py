"""Where the time goes, layer by layer, against this machine's float32 peak: every op of cyconv's compiled
predictor for resnet18 and mobilenet_v2 (224x224, batch 1 and 32) beside the same layers in ONNX Runtime
(its own profiler, per node), and every step of LeNet-5's training step (forward and backward apart).

    python benchmarks/bench_layers.py [--models resnet18 mobilenet_v2] [--batches 1 32] [--threads 2 1]
                                      [--isa avx2] [--repeats 10] [--quick] [--algorithm auto|im2col|measure]
                                      [--stat median|min] [--peak GFLOPS] [--no-ort] [--lenet]
                                      [--train-batches 64 256]

Per row: the op (named after its first layer; a BatchNorm folded into a convolution and an activation or
pooling fused into it are part of it), the convolution's algorithm, its FLOPs (2 per multiply-add of
im2col + GEMM; Winograd computes the same output with fewer multiplies), cyconv's median time with the op
run alone (Predictor.profile), GFLOP/s and the share of the peak (benchmarks/machine.py's fma_peak at the
tier and thread count), the multiplies the algorithm saves against im2col (F(m x m, r x r):
(m r)^2 / (m + r - 1)^2 per output; direct and depthwise: 1), and ONNX Runtime's time for the nodes of the
same layers (a node ONNX Runtime fused is named after one of its layers, so its time goes to the cyconv
op holding that layer; its layout reorders get a row of their own) and cyconv's time over it. The last
lines compare the sum of the rows with each side's whole call; "largest losses" ranks the ops by the
time cyconv loses to ONNX Runtime.

--isa sets cyconv's tier (in this process) and the peak's; ONNX Runtime runs its best kernels whatever it
says. --algorithm sets cyconv's convolution algorithm for every layer (set_conv_algorithm: "measure"
times each layer's candidates when the predictor is compiled). --lenet adds LeNet-5's training step at
--train-batches: the steps training runs (Conv2d -> ReLU -> MaxPool2d fused), each forward and backward
timed apart in the order a step runs them, the loss and the SGD step as rows of their own; PyTorch's
side of the same rows is bench_e2e.py's layers section. Both sides run in this one process, cyconv first:
the timings are medians of --repeats runs each (on a shared machine, the load average printed with the
tables says how far to trust them).
"""

import argparse
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import machine  # noqa: E402  (the peak at a tier)
import runtimes  # noqa: E402  (the ONNX Runtime session and its per-node times)

MODELS = ("resnet18", "mobilenet_v2")
SIZE = 224
SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
STATS = {"median": statistics.median, "min": min}


def saves(algorithm, kernel):
    """How many times fewer multiplies the algorithm does than im2col + GEMM for one output."""
    if algorithm and algorithm.startswith("winograd"):
        m, r = int(algorithm[len("winograd"):]), kernel
        return (m * r) ** 2 / (m + r - 1) ** 2
    return 1.0


def ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds >= 1e-4 else f"{seconds * 1e3:.4f}"


def rate_cells(flops, seconds, peak):
    if not flops or not seconds:
        return ["", ""]
    rate = flops / seconds / 1e9
    return [f"{rate:.1f}", f"{100 * rate / peak:.0f}%" if peak else "?"]


# ---------------------------------------------------------------------------------------------------------
# Inference: the compiled predictor, op by op, beside ONNX Runtime's nodes

def model_ops(trace, op_names):
    """{trace node name: the name of the predictor op that holds it}: a node belongs to the op of its own
    name or, folded or fused into one, to the nearest op before it in the trace."""
    owner, current = {}, None
    for node in trace.nodes:
        current = node.name if node.name in op_names else current
        owner[node.name] = current
    return owner


def ort_owner(node, owner):
    """The cyconv op an ONNX Runtime node's time belongs to: its name, less the suffixes ONNX Runtime adds
    ("_nchwc", ...), is a layer's; anything else is ONNX Runtime's own (layout reorders)."""
    name = node
    while name not in owner and "_" in name:
        name = name.rsplit("_", 1)[0]
    return owner.get(name) or "(ORT layout reorders and other inserted nodes)"


def profile_model(name, batch, threads, args, tmp):
    import cyconv
    from cyconv import graph, models
    from cyconv import onnx as cyconv_onnx

    rng = np.random.default_rng(0)
    model = getattr(models, name)(rng=rng).eval()
    x = np.random.default_rng([1, batch]).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)
    with cyconv.set_num_threads(threads):
        predictor = cyconv.compile(model, batch_size=batch, input_shape=(3, SIZE, SIZE))
        rows = predictor.profile(x, repeats=args.repeats, statistic=args.stat)
    *ops, whole = rows
    ort, ort_whole = {}, None
    if args.ort:
        onnx_path = Path(tmp) / f"{name}.onnx"
        if not onnx_path.exists():
            cyconv_onnx.export(model, onnx_path, input_shape=(3, SIZE, SIZE))
        session = runtimes.ort_session(onnx_path, threads, profile_prefix=Path(tmp) / f"ort-{name}-{batch}-{threads}")
        feed = {session.get_inputs()[0].name: x}
        warmup = 2
        times = []
        for i in range(warmup + args.repeats):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        ort_whole = STATS[args.stat](times[warmup:])
        owner = model_ops(graph.trace(model), {op[0] for op in ops})
        for node, seconds in runtimes.ort_node_times(session, skip=warmup, statistic=STATS[args.stat]).items():
            key = ort_owner(node, owner)
            ort[key] = ort.get(key, 0.0) + seconds
    kernels = {node.name: node.module.kernel_size[0] for node in graph.trace(model).nodes
               if hasattr(node.module, "kernel_size") and type(node.module).__name__ == "Conv2d"}
    return ops, whole, ort, ort_whole, kernels


def model_table(name, batch, threads, peak, result, args):
    ops, whole, ort, ort_whole, kernels = result
    header = ["op", "layers", "algorithm", "MFLOP", "cyconv ms", "GFLOP/s", "% peak", "saves x",
              "% peak of the multiplies done", "ORT ms", "cyconv / ORT"]
    lines = [f"#### {name}, batch {batch}, {threads} thread{'s' if threads > 1 else ''} "
             f"(peak {peak:.0f} GFLOP/s)" if peak else f"#### {name}, batch {batch}, {threads} threads", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op, layers, algorithm, macs, seconds in ops:
        o = ort.get(op)
        saved = saves(algorithm, kernels.get(op, 3))
        lines.append("| " + " | ".join([
            op, layers, algorithm or "", f"{2 * macs / 1e6:.1f}" if macs else "", ms(seconds),
            *rate_cells(2 * macs, seconds, peak), f"{saved:.2f}" if algorithm else "",
            rate_cells(2 * macs / saved, seconds, peak)[1] if algorithm else "",
            ms(o) if o is not None else "", f"{seconds / o:.2f}" if o else ""]) + " |")
    for key in sorted(k for k in ort if k.startswith("(")):
        lines.append(f"| {key} | | | | | | | | | {ms(ort[key])} | |")
    total, ort_total = sum(op[4] for op in ops), sum(ort.values())
    flops = 2 * whole[3]
    lines.append("| " + " | ".join([
        "**sum of the ops**", "", "", f"{flops / 1e6:.0f}", ms(total), *rate_cells(flops, total, peak), "", "",
        ms(ort_total) if ort else "", f"{total / ort_total:.2f}" if ort else ""]) + " |")
    lines.append("| " + " | ".join([
        "**whole call**", "", "", "", ms(whole[4]), *rate_cells(flops, whole[4], peak), "", "",
        ms(ort_whole) if ort_whole else "", f"{whole[4] / ort_whole:.2f}" if ort_whole else ""]) + " |")
    if ort:
        losses = sorted(((op[4] - ort.get(op[0], 0.0), op[0]) for op in ops if op[0] in ort), reverse=True)[:6]
        lines += ["", "Largest losses to ONNX Runtime (cyconv ms - ORT ms): " + "; ".join(
            f"{op} {lost * 1e3:+.3f}" for lost, op in losses) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# LeNet-5's training step, step by step

def lenet_training(batch, threads, args):
    """[(step name, layers, forward algorithm, backward algorithm, forward FLOPs, backward FLOPs,
    forward seconds, backward seconds)] and the whole step's median seconds."""
    import cyconv
    from cyconv import functional as F
    from cyconv import graph, models, nn, optim

    stat = STATS[args.stat]
    rng = np.random.default_rng([7, batch])
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    with cyconv.set_num_threads(threads):
        model = models.lenet5(rng=np.random.default_rng(0))
        opt = optim.SGD(model.parameters(), **SGD)
        model(x)
        runner = graph.runner(model)
        shapes = graph.shapes(runner.trace, (1, 28, 28))
        steps = runner.steps
        fwd = {id(s): [] for s in steps}
        bwd = {id(s): [] for s in steps}
        extra = {"loss": [], "sgd step": [], "zero_grad": []}
        whole = []

        def timed(bucket, fn):
            t0 = time.perf_counter()
            out = fn()
            bucket.append(time.perf_counter() - t0)
            return out

        for r in range(args.repeats + 1):
            t_step = time.perf_counter()
            timed(extra["zero_grad"], opt.zero_grad)
            values = {0: x}
            for s in steps:
                values[s.out] = timed(fwd[id(s)], lambda s=s: s.forward(*(values[v] for v in s.inputs)))
            loss, grad = timed(extra["loss"], lambda: F.softmax_cross_entropy(values[runner.output], y))
            grads = {runner.output: grad}
            for s in reversed(steps):
                g = grads.pop(s.out, None)
                if g is None:
                    continue
                input_grad = runner.learns[s.inputs[0]]
                result = timed(bwd[id(s)], lambda s=s, g=g, ig=input_grad: s.backward(g, ig))
                if input_grad:
                    grads[s.inputs[0]] = result[0]
            timed(extra["sgd step"], opt.step)
            whole.append(time.perf_counter() - t_step)
            if r == 0:  # warm-up
                for bucket in (*fwd.values(), *bwd.values(), *extra.values(), whole):
                    bucket.clear()
        rows = []
        for s in steps:
            layer = s.layers[0]
            in_shape = shapes[s.inputs[0]]
            macs, fa, ba = 0, "", ""
            if isinstance(layer, nn.Conv2d):
                O, Ho, Wo = layer.output_shape(in_shape)
                kh, kw = layer.kernel_size
                macs = batch * O * Ho * Wo * in_shape[0] // layer.groups * kh * kw
                if len(s.layers) > 1 and type(s).__name__ != "_Step":
                    fa = ba = "im2col (fused)"
                else:
                    args_ = (layer.algorithm, in_shape[0], O, *in_shape[1:], layer.kernel_size, layer.stride,
                             layer.padding, layer.dilation, layer.groups, batch, np.float32)
                    fa = F.resolve_conv_algorithm("bench_layers", *args_)
                    ba = F.resolve_conv_algorithm("bench_layers", *args_, direction="backward")
            elif isinstance(layer, nn.Linear):
                macs = batch * layer.in_features * layer.out_features
            input_grad = runner.learns[s.inputs[0]]
            rows.append((s.name, "+".join(type(m).__name__ for m in s.layers), fa, ba, 2 * macs,
                         2 * macs * (2 if input_grad else 1), stat(fwd[id(s)]),
                         stat(bwd[id(s)]) if bwd[id(s)] else 0.0))
        for name, times in extra.items():
            rows.append((name, "", "", "", 0, 0, stat(times), 0.0))
    return rows, stat(whole)


def lenet_table(batch, threads, peak, result):
    rows, whole = result
    header = ["step", "layers", "algorithm fwd / bwd", "fwd MFLOP", "fwd ms", "fwd GFLOP/s", "fwd % peak",
              "bwd MFLOP", "bwd ms", "bwd GFLOP/s", "bwd % peak"]
    lines = [f"#### LeNet-5 training step, batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
             + (f" (peak {peak:.0f} GFLOP/s)" if peak else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, layers, fa, ba, ff, bf, ft, bt in rows:
        algo = "" if not fa else (fa if fa == ba else f"{fa} / {ba}")
        lines.append("| " + " | ".join([
            name, layers, algo, f"{ff / 1e6:.1f}" if ff else "", ms(ft), *rate_cells(ff, ft, peak),
            f"{bf / 1e6:.1f}" if bf else "", ms(bt) if bt else "", *rate_cells(bf, bt, peak)]) + " |")
    total = sum(r[6] + r[7] for r in rows)
    flops = sum(r[4] + r[5] for r in rows)
    share = f", {100 * flops / total / 1e9 / peak:.0f}% of peak" if peak else ""
    lines += ["", f"Sum of the rows {total * 1e3:.2f} ms ({flops / total / 1e9:.1f} GFLOP/s{share}); the step "
              f"timed whole {whole * 1e3:.2f} ms."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--isa", choices=machine.TIERS, default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed runs per op (default 10, 3 with --quick)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--stat", choices=tuple(STATS), default="median",
                   help="each time is the median of the runs (default) or the min (a busy machine's best case)")
    p.add_argument("--peak", type=float, default=None, metavar="GFLOPS",
                   help="the float32 peak of one thread at the tier, GFLOP/s (default: fma_peak.c now, which a "
                        "busy machine lowers; RESULTS.md's quiet figure for this CPU is 116)")
    p.add_argument("--algorithm", choices=("auto", "im2col", "measure"), default="auto")
    p.add_argument("--no-ort", dest="ort", action="store_false")
    p.add_argument("--lenet", action="store_true", help="also LeNet-5's training step, step by step")
    p.add_argument("--train-batches", type=int, nargs="+", default=[64, 256])
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 10)
    import cyconv
    from cyconv import functional as F

    isa = args.isa or cyconv.supported_isas()[0]
    cyconv.set_isa(isa)
    F.set_conv_algorithm(args.algorithm)
    if args.ort:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            args.ort = False
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()
    peaks = {n: args.peak * n if args.peak else machine.fma_peak(isa, n) for n in args.threads}
    out = [f"### Per layer against the peak, tier {isa}, algorithm {args.algorithm} "
           f"({started:%Y-%m-%d %H:%M} UTC)", "",
           f"- command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`",
           f"- times: the {args.stat} of {args.repeats} runs; float32 peak "
           f"({'--peak' if args.peak else 'fma_peak.c'}, {isa}): "
           + ", ".join(f"{n}T {peaks[n]:.0f} GFLOP/s" for n in peaks if peaks[n]),
           f"- cyconv {cyconv.__version__} {cyconv.build_info()}; ONNX Runtime: "
           + (__import__("onnxruntime").__version__ + " (its best kernels for this CPU whatever --isa)"
              if args.ort else "not run"),
           f"- load average at start {tuple(round(v, 2) for v in load)}", ""]
    with tempfile.TemporaryDirectory(prefix="bench_layers-") as tmp:
        for name in args.models:
            for threads in args.threads:
                for batch in args.batches:
                    result = profile_model(name, batch, threads, args, tmp)
                    out += [model_table(name, batch, threads, peaks[threads], result, args), ""]
                    print(out[-2], "\n", file=sys.stderr, flush=True)
    if args.lenet:
        for threads in args.threads:
            for batch in args.train_batches:
                out += [lenet_table(batch, threads, peaks[threads], lenet_training(batch, threads, args)), ""]
    out.append(f"- load average at end {tuple(round(v, 2) for v in os.getloadavg())}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
