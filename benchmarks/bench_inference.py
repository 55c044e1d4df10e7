"""LeNet-5 inference, side by side: cyconv compiled (cyconv.compile), cyconv eager (model(x)), ONNX Runtime
on cyconv's exported file, and PyTorch eager; float32, the same weights.

    python benchmarks/bench_inference.py [--isa avx2] [--threads 1 2] [--repeats 3] [--quick]
    python benchmarks/bench_inference.py --layers [--isa avx2] [--threads 1 2]

--layers times where each framework's time goes at batch 1 and 64, per layer group (conv1+relu+pool,
conv2+relu+pool, flatten+fc1+relu, fc2): cyconv's as the differences between predictors compiled for the
model's prefixes, ONNX Runtime's from its own profiler (per node, as its graph optimiser fused them).

Each framework runs in a fresh process per thread count (two OpenMP runtimes in one process would fight),
and first checks that its outputs equal cyconv eager's on the same batch (1e-4 relative) or the script
stops. Workers alternate (c, e, o, t, c, ...) for --repeats rounds; the tables give the median (min-max)
of all timed calls of all rounds, in ms per batch, and each framework's time over ONNX Runtime's.
Threads: cyconv.set_num_threads, intra_op_num_threads (inter_op 1, sequential execution) and
torch.set_num_threads, plus OMP_NUM_THREADS and the BLAS variables in each worker's environment.
--isa forces cyconv, PyTorch and OpenBLAS down to a tier (benchmarks/machine.py); ONNX Runtime has no
such switch and runs its best kernels for the CPU, which the header says.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_e2e  # noqa: E402  (describe, torch_model, time_calls, cpu_model, THREAD_ENV)
import machine  # noqa: E402
import runtimes  # noqa: E402  (the ONNX Runtime session and its per-node times)

FRAMEWORKS = ("cyconv", "cyconv-eager", "onnxruntime", "torch")
BATCHES = (1, 64, 256, 1000)
ITERS = {"default": {1: (50, 500), 64: (5, 40), 256: (3, 12), 1000: (1, 5)},
         "quick": {1: (10, 50), 64: (2, 5), 256: (1, 3), 1000: (1, 2)}}
CHECK_RTOL = 1e-4
SEED = 0


def batch(n, seed=1):
    return np.random.default_rng([seed, n]).standard_normal((n, 1, 28, 28), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# Worker: one framework, one thread count, every batch size


def build(job):
    """(name, callable x -> numpy logits) for job's framework."""
    framework, threads = job["framework"], job["threads"]
    if framework in ("cyconv", "cyconv-eager"):
        import cyconv
        from cyconv import models

        cyconv.set_num_threads(threads)
        model = models.lenet5(rng=np.random.default_rng(SEED))
        model.load_state_dict(dict(np.load(job["weights"])))
        model.eval()
        if framework == "cyconv-eager":
            return model
        predictor = cyconv.compile(model, batch_size=max(BATCHES), input_shape=(1, 28, 28))
        return predictor
    if framework == "onnxruntime":
        session = runtimes.ort_session(job["onnx"], threads)
        return lambda x: session.run(None, {"input": x})[0]
    import torch

    torch.set_num_threads(threads)
    net = bench_e2e.torch_model(torch, job["spec"])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(job["weights"]).items()})
    net.eval()

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()
    return run


GROUPS = (("conv1+relu+pool", 3), ("conv2+relu+pool", 6), ("flatten+fc1+relu", 9), ("fc2", 10))
LAYER_BATCHES = {1: (100, 1000), 64: (10, 100)}


def layer_times(job):
    """{group: {batch: median seconds}} for job's framework (cyconv compiled, or onnxruntime)."""
    times = {name: {} for name, _ in GROUPS}
    if job["framework"] == "cyconv":
        import cyconv
        from cyconv import models

        cyconv.set_num_threads(job["threads"])
        model = models.lenet5(rng=np.random.default_rng(SEED))
        model.load_state_dict(dict(np.load(job["weights"])))
        model.eval()
        for n, (warmup, iters) in LAYER_BATCHES.items():
            x, previous = batch(n), 0.0
            for name, end in GROUPS:
                predictor = cyconv.compile(model[:end], batch_size=n, input_shape=(1, 28, 28))
                t = statistics.median(bench_e2e.time_calls(lambda: predictor(x), warmup, iters))
                times[name][n], previous = t - previous, t
        return times
    for n, (warmup, iters) in LAYER_BATCHES.items():
        session = runtimes.ort_session(job["onnx"], job["threads"])
        x = batch(n)
        for _ in range(warmup):
            session.run(None, {"input": x})
        session = runtimes.ort_session(job["onnx"], job["threads"],
                                       profile_prefix=Path(job["tmp"]) / f"ort-{job['threads']}-{n}")
        for _ in range(warmup + iters):
            session.run(None, {"input": x})
        for node, seconds in runtimes.ort_node_times(session, skip=warmup).items():
            # A fused node keeps the name of its first layer ("0.Conv2d"...): its group is that layer's.
            index = int("".join(c for c in node.split(".")[0] if c.isdigit()) or 0)
            group = next(name for name, end in GROUPS if index < end)
            times[group][n] = times[group].get(n, 0.0) + seconds
    return times


def layers_table(results, threads):
    lines = ["| layers | cyconv b1 µs | ORT b1 µs | cyconv b64 µs | ORT b64 µs |", "|---|---|---|---|---|"]
    for name, _ in GROUPS:
        cells = [f"{results[f, threads][name].get(str(n), results[f, threads][name].get(n, 0)) * 1e6:.0f}"
                 for n in LAYER_BATCHES for f in ("cyconv", "onnxruntime")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def work(job):
    if job.get("mode") == "layers":
        return {"layers": layer_times(job)}
    forward = build(job)
    reference = np.load(job["reference"])
    got = forward(batch(64))
    rel = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
    times = {}
    for n, (warmup, iters) in sorted(job["iters"].items(), key=lambda kv: int(kv[0])):
        x = batch(int(n))
        times[n] = bench_e2e.time_calls(lambda: forward(x), warmup, iters)
    info = {}
    if job["framework"] == "onnxruntime":
        import onnxruntime
        info["version"] = onnxruntime.__version__
    elif job["framework"] == "torch":
        import torch
        info.update(version=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability())
    else:
        import cyconv
        info["build"] = cyconv.build_info()
    return {"times": times, "check_rel": rel, "info": info}


# ---------------------------------------------------------------------------------------------------------
# Parent


def launch(job, env_extra):
    env = dict(os.environ, **{k: str(job["threads"]) for k in bench_e2e.THREAD_ENV}, **env_extra)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench_inference: worker {job['framework']} ({job['threads']}T) failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def available(framework):
    module = {"onnxruntime": "onnxruntime", "torch": "torch"}.get(framework)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def fmt(times):
    if not times:
        return "–"
    med = statistics.median(times) * 1e3
    return f"{bench_e2e.sig(med)} ({bench_e2e.sig(min(times) * 1e3)}–{bench_e2e.sig(max(times) * 1e3)})"


def table(results, threads, frameworks):
    header = ["batch"] + [f"{f} ms" for f in frameworks] + [f"{f} / ORT" for f in frameworks if f != "onnxruntime"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in BATCHES:
        meds = {f: statistics.median(results[f, threads][str(n)]) if results.get((f, threads)) else None
                for f in frameworks}
        ort_med = meds.get("onnxruntime")
        ratios = [f"{meds[f] / ort_med:.2f}" if meds[f] and ort_med else "–" for f in frameworks if f != "onnxruntime"]
        cells = [str(n)] + [fmt(results.get((f, threads), {}).get(str(n))) for f in frameworks] + ratios
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--isa", choices=machine.TIERS, default=None)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--layers", action="store_true", help="per-layer times of cyconv and ONNX Runtime instead")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))))
        return 0

    import cyconv
    import cyconv.onnx as conx
    from cyconv import models

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 3)
    isa = args.isa or cyconv.supported_isas()[0]
    env_extra = machine.tier_env(isa)
    iters = {str(n): v for n, v in ITERS["quick" if args.quick else "default"].items()}
    frameworks = [f for f in FRAMEWORKS if available(f)]
    results, infos = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_inference-") as tmp:
        model = models.lenet5(rng=np.random.default_rng(SEED)).eval()
        weights, onnx_path, reference = (str(Path(tmp) / name) for name in ("w.npz", "lenet5.onnx", "ref.npy"))
        np.savez(weights, **model.state_dict())
        conx.export(model, onnx_path, input_shape=(1, 28, 28))
        np.save(reference, model(batch(64)))
        common = {"weights": weights, "onnx": onnx_path, "reference": reference,
                  "spec": bench_e2e.describe(model), "iters": iters, "tmp": tmp}
        if args.layers:
            lines = [f"## Where LeNet-5's inference time goes, ISA tier {isa} ({bench_e2e.cpu_model()}; "
                     f"{started:%Y-%m-%d %H:%M} UTC)", "",
                     f"- command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`",
                     "- medians per call; cyconv: differences between predictors of the model's prefixes; ORT: "
                     "its profiler's per-node kernel times (fused nodes counted in their first layer's group)"]
            for threads in args.threads:
                layer_results = {(f, threads): launch({**common, "framework": f, "threads": threads,
                                                       "mode": "layers"}, env_extra)["layers"]
                                 for f in ("cyconv", "onnxruntime")}
                lines += ["", f"### {threads} thread(s)", "", layers_table(layer_results, threads)]
            print("\n".join(lines))
            return 0
        for r in range(repeats):
            for threads in args.threads:
                for framework in frameworks:
                    out = launch({**common, "framework": framework, "threads": threads}, env_extra)
                    if out["check_rel"] > CHECK_RTOL:
                        raise SystemExit(f"bench_inference: {framework} computes something else (max rel diff "
                                         f"{out['check_rel']:.1e} > {CHECK_RTOL}); refusing to benchmark")
                    infos[framework] = out["info"]
                    for n, t in out["times"].items():
                        results.setdefault((framework, threads), {}).setdefault(n, []).extend(t)
                    print(f"round {r + 1}/{repeats} {threads}T {framework:<12} b1 "
                          f"{statistics.median(out['times']['1']) * 1e3:.3f} ms, check {out['check_rel']:.1e}",
                          file=sys.stderr, flush=True)
    build = infos.get("cyconv", {}).get("build", {})
    lines = [
        f"## LeNet-5 inference: cyconv vs ONNX Runtime vs PyTorch (float32), ISA tier {isa}", "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {time.perf_counter() - t0:.0f} s",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`",
        f"- CPU: {bench_e2e.cpu_model()}; Python {platform.python_version()}; cyconv on {build.get('isa', '?')} "
        f"({build.get('compiler', '?')}, BLAS {build.get('blas', '?')}); onnxruntime "
        f"{infos.get('onnxruntime', {}).get('version', 'not installed')} (its own kernels for this CPU: it has no "
        f"ISA switch); torch {infos.get('torch', {}).get('version', 'not installed')} (CPU capability "
        f"{infos.get('torch', {}).get('cpu_capability', '?')})",
        f"- environment of every worker: {', '.join(f'{k}={v}' for k, v in env_extra.items())}",
        f"- {repeats} round(s), each framework a fresh process per thread count, alternated; median (min–max) "
        "of all timed calls; outputs checked against cyconv eager before timing; `/ ORT` = time over ONNX "
        "Runtime's (< 1: faster than ORT)",
        f"- cyconv = `cyconv.compile(model)` (a Predictor), cyconv-eager = `model(x)` in eval mode",
    ]
    for threads in args.threads:
        lines += ["", f"### {threads} thread(s), ms per batch", "", table(results, threads, frameworks)]
    text = "\n".join(lines)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"markdown": text, "results": {f"{f} {t}T": v for (f, t), v in
                                                                              results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
