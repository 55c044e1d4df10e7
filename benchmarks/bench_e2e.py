"""cyconv vs PyTorch eager, LeNet-5, float32, end to end, side by side on this machine.

    python benchmarks/bench_e2e.py [--isa avx2] [--threads 1 2] [--repeats 5] [--quick] [--json out.json]
                                   [--algorithm auto|im2col|measure]

Prints markdown tables for benchmarks/RESULTS.md: training step, inference, 2-thread scaling, training
with the other core busy, peak memory, the machine's SGEMM and FMA peaks and a per-layer breakdown at
batch 64. A default run takes a few minutes on 2 cores, --quick under one.

--isa runs every library at one ISA tier (default: the best this CPU has): cyconv's kernels, PyTorch
(its ATen kernels, oneDNN and MKL) and OpenBLAS, through the environment of benchmarks/machine.py, so
an AVX-512 machine measures what an AVX2 or SSE-only one would see, side by side.

--algorithm sets cyconv's convolution algorithm (CYCONV_CONV_ALGO in its workers' environment): "auto"
(the default: conv_algorithm()'s choice per layer, im2col for LeNet-5's 5x5 layers, which training runs
fused with their ReLU and pooling), "im2col", or "measure" (each layer's fastest candidate, timed on its
first call; the convolutions then run unfused). The header says which; run once per algorithm to compare.

How the comparison is kept fair:
- Every measurement runs in a fresh worker process (this file with --worker, JSON on stdout), one
  framework per process: two OpenMP runtimes in one process would spin against each other. The parent
  imports cyconv and NumPy but never torch.
- cyconv and torch workers alternate (c, t, c, t, ...) for --repeats rounds, so drift in the machine's
  speed hits both alike. Tables give the median (min-max) over all timed iterations of all rounds.
- Both run at the same ISA tier (--isa; machine.tier_env gives each worker's environment).
- Both start from the same weights (cyconv's lenet5(seed 0), copied into a torch.nn.Sequential built
  from the same layer list), see the same batches (N(0,1) images, random labels, fixed seeds) and run on
  the same number of threads (set through the API and OMP_NUM_THREADS / the BLAS variables).
- Before any timing, 3 training steps in each framework must end with the same losses and weights
  (1e-4 relative) or the script stops: a benchmark of two different computations is worthless.

What a worker measures:
- train: zero_grad + forward + softmax cross-entropy + backward + SGD(lr 0.01, momentum 0.9,
  wd 5e-4) step, on a pool of 4 batches, after warm-up steps; one process per (batch, threads).
- infer: eval mode (torch: also no_grad), every inference batch size in one process per thread count,
  smallest first, each with its own warm-up.
- layers: each layer of the network on its in-network input (the activations of a real forward
  pass), forward and backward timed separately; torch's forward records autograd, its backward is
  y.backward(grad) with the .grad fields reset outside the timing (as in
  ../shared/perf/pytorch-cpu-anchor.md beside the checkout); conv1 computes no input gradient, as in the
  network.
- busy: the training step at batch 64 on 1 and 2 threads while another process spins on one core
  (what a laptop with a browser open sees); mean time per step, since a descheduled thread makes
  the step times bimodal.
- memory: ru_maxrss after imports and model build, then after ~100 training steps at batch 64.
- sgemm: 2048x2048 @ 2048x2048 float32 with numpy (threadpoolctl) and torch.mm, the ceiling that
  every "eff. GFLOP/s" is read against; and the FMA peak measured by benchmarks/fma_peak.c at the tier.

Left out on purpose: data loading (the batches are in memory), torch.compile, float64.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py: tier environments, FMA peak)

FRAMEWORKS = ("cyconv", "torch")
TRAIN_BATCHES = (64, 256)
INFER_BATCHES = (1, 64, 256, 1000)
LAYER_BATCH = 64
EXTRA_LAYER_ROWS = ["loss", "sgd step", "zero_grad"]  # per-layer table rows beyond the network's layers
MEMORY_BATCH = 64
CHECK_BATCH, CHECK_STEPS = 64, 3
CHECK_RTOL = 1e-4      # losses and weights after CHECK_STEPS steps
UPDATE_RTOL = 1e-3     # the weight change of those steps (float32 gradients summed in other orders)
SGD_ARGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
SEED = 0               # lenet5(rng=default_rng(SEED)): the shared initial weights
DATA_SEED = 1234
GEMM_N = 2048
SGEMM = "sgemm"        # the `threads` under which Results files the SGEMM job (it runs all counts)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# (warm-up, timed) iterations per worker. A round of a default run is ~35 s of timed work on a quiet
# 2-core machine plus ~20 s of process start-up (torch's import is ~1.5 s); 5 rounds ~ 5 minutes.
ITERS = {
    "default": {"train": {64: (10, 40), 256: (3, 12)},
                "infer": {1: (20, 200), 64: (5, 30), 256: (2, 8), 1000: (1, 4)},
                "layers": (5, 25), "memory": 100, "sgemm": (1, 5), "busy": (10, 60)},
    "quick": {"train": {64: (3, 10), 256: (2, 3)},
              "infer": {1: (5, 30), 64: (2, 5), 256: (1, 3), 1000: (1, 2)},
              "layers": (2, 5), "memory": 30, "sgemm": (1, 2), "busy": (3, 20)},
}
SECTIONS = ("train", "infer", "layers", "memory", "sgemm", "busy")


# =====================================================================================================
# Network description and FLOP counts (parent side: from cyconv's model, shared with the torch worker)

def describe(model):
    """cyconv Sequential -> [{"name", "kind", ...hyper-parameters}], enough to rebuild it in torch."""
    from cyconv import nn

    spec = []
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            d = {"kind": "conv", "in": layer.in_channels, "out": layer.out_channels,
                 "kernel": list(layer.kernel_size), "stride": list(layer.stride),
                 "padding": list(layer.padding), "bias": layer.bias is not None}
        elif isinstance(layer, nn.Linear):
            d = {"kind": "fc", "in": layer.in_features, "out": layer.out_features,
                 "bias": layer.bias is not None}
        elif isinstance(layer, nn.MaxPool2d):
            d = {"kind": "pool", "kernel": list(layer.kernel_size), "stride": list(layer.stride),
                 "padding": list(layer.padding)}
        elif isinstance(layer, (nn.ReLU, nn.Flatten)):
            d = {"kind": type(layer).__name__.lower()}
        else:
            raise TypeError(f"describe(): no torch twin for {type(layer).__name__}")
        spec.append(d)
    _name_layers(spec)
    return spec


def _name_layers(spec):
    """conv1, relu1, pool1, conv2, ..., flatten, fc1: numbered per kind unless the kind occurs once."""
    kinds = [d["kind"] for d in spec]
    seen = {}
    for d in spec:
        seen[d["kind"]] = seen.get(d["kind"], 0) + 1
        d["name"] = d["kind"] + (str(seen[d["kind"]]) if kinds.count(d["kind"]) > 1 else "")


def _window(size, kernel, stride, padding):
    return [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding)]


def forward_flops(spec, input_shape=(1, 28, 28)):
    """{layer name: forward FLOPs per image} for the layers with weights (2 per multiply-add, bias
    ignored), walking the per-image shape through the network."""
    shape, flops = list(input_shape), {}
    for d in spec:
        if d["kind"] == "conv":
            ho, wo = _window(shape[1:], d["kernel"], d["stride"], d["padding"])
            flops[d["name"]] = 2 * d["out"] * ho * wo * d["in"] * d["kernel"][0] * d["kernel"][1]
            shape = [d["out"], ho, wo]
        elif d["kind"] == "pool":
            shape = [shape[0], *_window(shape[1:], d["kernel"], d["stride"], d["padding"])]
        elif d["kind"] == "flatten":
            shape = [int(np.prod(shape))]
        elif d["kind"] == "fc":
            flops[d["name"]] = 2 * d["in"] * d["out"]
            shape = [d["out"]]
    return flops


def train_flops(fwd):
    """Training step per image: forward + grad-weight everywhere + grad-input everywhere but the first
    layer with weights (nobody needs d loss / d image). Each of those products costs a forward."""
    first = next(iter(fwd))
    return 3 * sum(fwd.values()) - fwd[first]


# =====================================================================================================
# Worker side: one framework per process. Both "sides" offer the same small interface.

def make_batches(batch, count, seed):
    """`count` (images N(0,1), labels) pairs, the same for both frameworks."""
    rng = np.random.default_rng([DATA_SEED, seed, batch])
    return [(rng.standard_normal((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch))
            for _ in range(count)]


def layer_grad(shape, index):
    """The gradient fed to layer `index`'s backward in the per-layer benchmark."""
    return np.random.default_rng([DATA_SEED, 99, index]).standard_normal(shape, dtype=np.float32)


class CyconvSide:
    name = "cyconv"

    def __init__(self, job):
        import cyconv
        from cyconv import functional, models, optim

        cyconv.set_num_threads(job["threads"])
        self.F = functional
        self.model = models.lenet5(rng=np.random.default_rng(SEED))
        self.model.load_state_dict(dict(np.load(job["weights"])))
        self.opt = optim.SGD(self.model.parameters(), **SGD_ARGS)

    def batch(self, x, y):
        return x, y

    def train_step(self, x, y):
        self.opt.zero_grad()
        loss, grad = self.F.softmax_cross_entropy(self.model(x), y)
        self.model.backward(grad)
        self.opt.step()
        return loss

    def eval(self):
        self.model.eval()

    def infer(self, x):
        return self.model(x)

    def state_dict(self):
        return self.model.state_dict()

    def layer_cases(self, spec, x, y):
        """[(name, prepare, forward, backward)]: forward() returns what backward(out) needs."""
        model, cases = self.model, []
        inputs = []
        for layer in model:
            inputs.append(x)
            x = layer(x)
        for i, (d, layer, inp) in enumerate(zip(spec, model, inputs)):
            grad = layer_grad(layer(inp).shape, i)
            input_grad = i > 0  # conv1: no input gradient, as in the network

            def fwd(layer=layer, inp=inp):
                return layer(inp)

            def bwd(out, layer=layer, grad=grad, input_grad=input_grad):
                layer.backward(grad, input_grad=input_grad)

            cases.append((d["name"], None, fwd, bwd))
        # softmax_cross_entropy returns the loss and its gradient in one call: all of it is "forward".
        cases.append(("loss", None, lambda: self.F.softmax_cross_entropy(x, y), None))
        self.train_step(*self.batch(inputs[0], y))  # momentum buffers exist, grads are real
        cases.append(("sgd step", None, self.opt.step, None))
        cases.append(("zero_grad", None, self.opt.zero_grad, None))
        return cases


class TorchSide:
    name = "torch"

    def __init__(self, job):
        import torch

        torch.set_num_threads(job["threads"])
        self.torch = torch
        self.model = torch_model(torch, job["spec"])
        self.model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(job["weights"]).items()})
        self.opt = torch.optim.SGD(self.model.parameters(), **SGD_ARGS)
        self.loss_fn = torch.nn.functional.cross_entropy

    def batch(self, x, y):
        return self.torch.from_numpy(x), self.torch.from_numpy(y.astype(np.int64))

    def train_step(self, x, y):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def eval(self):
        self.model.eval()

    def infer(self, x):
        with self.torch.no_grad():
            return self.model(x)

    def state_dict(self):
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}

    def layer_cases(self, spec, x, y):
        torch, cases = self.torch, []
        inputs = []
        with torch.no_grad():
            for layer in self.model:
                inputs.append(x)
                x = layer(x)
        for i, (d, layer, inp) in enumerate(zip(spec, self.model, inputs)):
            leaf = inp.clone().requires_grad_(i > 0)  # conv1: no input gradient, as in the network
            with torch.no_grad():
                grad = torch.from_numpy(layer_grad(tuple(layer(leaf).shape), i))
            cases.append((d["name"], self._reset(leaf, layer), lambda m=layer, a=leaf: m(a),
                          lambda out, g=grad: out.backward(g)))
        logits = x.clone().requires_grad_(True)
        cases.append(("loss", self._reset(logits), lambda: self.loss_fn(logits, y),
                      lambda loss: loss.backward()))
        self.train_step(inputs[0], y)  # momentum buffers exist, grads are real
        grads = [p.grad for p in self.model.parameters()]

        def restore_grads():  # zero_grad() sets them to None; the step needs them back
            for p, g in zip(self.model.parameters(), grads):
                p.grad = g

        cases.append(("sgd step", restore_grads, self.opt.step, None))
        cases.append(("zero_grad", restore_grads, self.opt.zero_grad, None))
        return cases

    @staticmethod
    def _reset(leaf, module=None):
        """Before each iteration, outside the timing: drop the .grad of the input and parameters, so
        every backward allocates and writes fresh gradients as in a training step after zero_grad()."""
        params = list(module.parameters()) if module is not None else []

        def reset():
            leaf.grad = None
            for p in params:
                p.grad = None
        return reset


def torch_model(torch, spec):
    """The torch.nn.Sequential twin of the cyconv network described by `spec`."""
    nn, layers = torch.nn, []
    for d in spec:
        if d["kind"] == "conv":
            layers.append(nn.Conv2d(d["in"], d["out"], tuple(d["kernel"]), tuple(d["stride"]),
                                    tuple(d["padding"]), bias=d["bias"]))
        elif d["kind"] == "fc":
            layers.append(nn.Linear(d["in"], d["out"], bias=d["bias"]))
        elif d["kind"] == "pool":
            layers.append(nn.MaxPool2d(tuple(d["kernel"]), tuple(d["stride"]), tuple(d["padding"])))
        else:
            layers.append({"relu": nn.ReLU, "flatten": nn.Flatten}[d["kind"]]())
    return nn.Sequential(*layers)


def time_calls(fn, warmup, iters):
    """Seconds per call of fn(), `iters` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def task_train(side, job):
    batches = [side.batch(x, y) for x, y in make_batches(job["batch"], 4, seed=1)]
    state = {"i": 0}

    def step():
        side.train_step(*batches[state["i"] % len(batches)])
        state["i"] += 1

    warmup, iters = job["iters"]
    return {f"train b{job['batch']}": time_calls(step, warmup, iters)}


def task_infer(side, job):
    side.eval()
    out = {}
    for batch, (warmup, iters) in sorted(job["iters"].items(), key=lambda kv: int(kv[0])):
        x, _ = side.batch(*make_batches(int(batch), 1, seed=2)[0])
        out[f"infer b{batch}"] = time_calls(lambda: side.infer(x), warmup, iters)
    return out


def task_layers(side, job):
    x, y = side.batch(*make_batches(LAYER_BATCH, 1, seed=3)[0])
    warmup, iters = job["iters"]
    out = {}
    for name, prepare, fwd, bwd in side.layer_cases(job["spec"], x, y):
        f_times, b_times = [], []
        for i in range(warmup + iters):
            if prepare:
                prepare()
            t0 = time.perf_counter()
            result = fwd()
            t1 = time.perf_counter()
            if bwd:
                bwd(result)
            t2 = time.perf_counter()
            if i >= warmup:
                f_times.append(t1 - t0)
                b_times.append(t2 - t1)
        out[f"layer {name} fwd"] = f_times
        if bwd:
            out[f"layer {name} bwd"] = b_times
    return out


def task_check(side, job):
    """CHECK_STEPS training steps; the losses go back as JSON, the weights into job["out"]."""
    losses = [float(side.train_step(*side.batch(x, y)))
              for x, y in make_batches(CHECK_BATCH, CHECK_STEPS, seed=4)]
    np.savez(job["out"], **side.state_dict())
    return {"losses": losses}


def task_sgemm(job):
    """C = A @ B at every thread count in one process (BLAS pools are re-sized, not re-created)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32) for _ in range(2))
    c = np.empty_like(a)
    warmup, iters = job["iters"]
    out = {}
    if job["framework"] == "cyconv":  # the cyconv side of the SGEMM table is plain numpy
        from threadpoolctl import threadpool_limits
        for n in job["thread_list"]:
            with threadpool_limits(n, user_api="blas"):
                out[f"sgemm {n}T"] = time_calls(lambda: np.matmul(a, b, out=c), warmup, iters)
    else:
        import torch
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        for n in job["thread_list"]:
            torch.set_num_threads(n)
            out[f"sgemm {n}T"] = time_calls(lambda: torch.mm(ta, tb, out=tc), warmup, iters)
    return out


def task_memory(job):
    """Peak RSS of a training run, and of the process before it (imports + model build)."""
    side = (CyconvSide if job["framework"] == "cyconv" else TorchSide)(job)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = [side.batch(x, y) for x, y in make_batches(MEMORY_BATCH, 4, seed=5)]
    for i in range(job["steps"]):
        side.train_step(*batches[i % len(batches)])
    return {"baseline_kib": baseline, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def worker_info(framework):
    info = {"pid": os.getpid(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if framework == "torch":
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cpu_capability=torch.backends.cpu.get_cpu_capability())
    else:
        import cyconv
        from cyconv.functional import get_conv_algorithm

        info.update(cyconv_threads=cyconv.get_num_threads(), build=cyconv.build_info(),
                    conv_algo=get_conv_algorithm())
    return info


def run_worker_job(job):
    task = job["task"]
    if task == "sgemm":
        result = task_sgemm(job)
    elif task == "busy":
        side = (CyconvSide if job["framework"] == "cyconv" else TorchSide)(job)
        result = {f"busy b{job['batch']}": task_train(side, job)[f"train b{job['batch']}"]}
    elif task == "memory":
        result = task_memory(job)
    else:
        side = (CyconvSide if job["framework"] == "cyconv" else TorchSide)(job)
        result = {"train": task_train, "infer": task_infer, "layers": task_layers,
                  "check": task_check}[task](side, job)
    result["info"] = worker_info(job["framework"])
    return result


# =====================================================================================================
# Parent side: launching workers

def launch(job, threads):
    """Run one job in a fresh `python bench_e2e.py --worker` process with every thread knob at
    `threads` and every library at the job's ISA tier; return its JSON. A failing worker stops the
    whole run with its stderr."""
    env = dict(os.environ, **{k: str(threads) for k in THREAD_ENV}, **job["tier_env"])
    if job["framework"] == "cyconv":
        env["CYCONV_CONV_ALGO"] = job.get("algorithm", "auto")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench_e2e: worker {job['framework']} {job['task']} failed "
                         f"(exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def log(message):
    print(message, file=sys.stderr, flush=True)


class Results:
    """Times per (framework, threads, key), concatenated over rounds; worker info kept for the header."""

    def __init__(self):
        self.times, self.info, self.raw = {}, {}, []

    def add(self, framework, threads, job, result):
        info = result.pop("info")
        self.info.setdefault(framework, info)
        self.raw.append({"framework": framework, "threads": threads, "task": job["task"],
                         "times_s": result, "info": info})
        for key, times in result.items():
            self.times.setdefault((framework, threads, key), []).extend(times)

    def stats(self, framework, threads, key):
        """(median, min, max) in seconds, or None when not measured."""
        t = self.times.get((framework, threads, key))
        return (statistics.median(t), min(t), max(t)) if t else None


def round_jobs(args, iters, common):
    """The jobs of one round: [(threads, job, label)], each run once per framework. The SGEMM job
    measures every thread count itself (its keys name them) in an environment sized for the largest."""
    jobs = []
    if "sgemm" in args.sections:
        jobs.append((SGEMM, {**common, "task": "sgemm", "thread_list": args.threads,
                             "iters": iters["sgemm"]}, "sgemm"))
    for threads in args.threads:
        if "train" in args.sections:
            for batch in TRAIN_BATCHES:
                jobs.append((threads, {**common, "task": "train", "threads": threads, "batch": batch,
                                       "iters": iters["train"][batch]}, f"train b{batch} {threads}T"))
        if "infer" in args.sections:
            jobs.append((threads, {**common, "task": "infer", "threads": threads,
                                   "iters": {str(b): v for b, v in iters["infer"].items()}},
                         f"infer {threads}T"))
        if "layers" in args.sections:
            jobs.append((threads, {**common, "task": "layers", "threads": threads,
                                   "iters": iters["layers"]}, f"layers {threads}T"))
    return jobs


def run_rounds(args, iters, common, results):
    jobs = round_jobs(args, iters, common)
    for r in range(args.repeats):
        for threads, job, label in jobs:
            for framework in FRAMEWORKS:  # c, t, c, t, ...: drift hits both alike
                env_threads = max(args.threads) if threads == SGEMM else threads
                t0 = time.perf_counter()
                result = launch({**job, "framework": framework}, env_threads)
                key, times = next((k, v) for k, v in result.items() if k != "info")
                log(f"round {r + 1}/{args.repeats}  {label:<15} {framework:<6} "
                    f"({time.perf_counter() - t0:4.1f} s)  {key}: median "
                    f"{statistics.median(times) * 1e3:.3f} ms")
                results.add(framework, threads, job, result)


def run_busy(args, iters, common, results):
    """Training at batch 64 on every thread count while a spinning process holds one core."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        for r in range(args.repeats):
            for threads in args.threads:
                for framework in FRAMEWORKS:
                    job = {**common, "task": "busy", "framework": framework, "threads": threads,
                           "batch": 64, "iters": iters["busy"]}
                    result = launch(job, threads)
                    times = result["busy b64"]
                    log(f"round {r + 1}/{args.repeats}  busy b64 {threads}T  {framework:<6} mean "
                        f"{statistics.mean(times) * 1e3:.3f} ms")
                    results.add(framework, threads, job, result)
    finally:
        spinner.kill()
        spinner.wait()


def run_memory(args, iters, common):
    threads = max(args.threads)
    out = {}
    for framework in FRAMEWORKS:
        job = {**common, "task": "memory", "framework": framework, "threads": threads,
               "steps": iters["memory"]}
        out[framework] = launch(job, threads)
        log(f"memory {framework}: {out[framework]}")
    return out, threads


def run_check(common, threads, tmp):
    """Both frameworks train CHECK_STEPS steps from the same weights on the same batches; their losses
    and weights must agree. Returns the differences; exits if they do not agree."""
    w0 = dict(np.load(common["weights"]))
    losses, weights = {}, {}
    for framework in FRAMEWORKS:
        out = str(Path(tmp) / f"check-{framework}.npz")
        result = launch({**common, "task": "check", "framework": framework, "threads": threads,
                         "out": out}, threads)
        losses[framework], weights[framework] = result["losses"], dict(np.load(out))
    c, t = weights["cyconv"], weights["torch"]
    diff = {
        "losses_cyconv": losses["cyconv"], "losses_torch": losses["torch"],
        "loss_rel": max(abs(a - b) / abs(b) for a, b in zip(losses["cyconv"], losses["torch"])),
        "weight_rel": {k: _rel(c[k], t[k]) for k in w0},
        "update_rel": {k: _rel(c[k] - w0[k], t[k] - w0[k]) for k in w0},
        "threads": threads,
    }
    bad = (diff["loss_rel"] > CHECK_RTOL or max(diff["weight_rel"].values()) > CHECK_RTOL
           or max(diff["update_rel"].values()) > UPDATE_RTOL)
    log(check_line(diff))
    if bad:
        raise SystemExit("bench_e2e: CORRECTNESS CHECK FAILED: cyconv and torch do not compute the same "
                         f"training step ({check_line(diff)}); refusing to benchmark")
    return diff


def _rel(a, b):
    """max |a - b| relative to max |b|."""
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / scale if scale else float(np.max(np.abs(a - b)))


def check_line(diff):
    threads = f"{diff['threads']} thread" + ("s" if diff["threads"] > 1 else "")
    return (f"after {CHECK_STEPS} training steps (batch {CHECK_BATCH}, {threads}): "
            f"loss max rel diff {diff['loss_rel']:.1e} (tol {CHECK_RTOL:.0e}), "
            f"weights max rel diff {max(diff['weight_rel'].values()):.1e} (tol {CHECK_RTOL:.0e}), "
            f"weight updates max rel diff {max(diff['update_rel'].values()):.1e} (tol {UPDATE_RTOL:.0e})")


# =====================================================================================================
# Parent side: the report

def sig(x):
    """3 significant figures without exponent notation: 0.123, 1.23, 12.3, 123, 1234."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def fmt(stats, scale):
    if stats is None:
        return "–"
    med, lo, hi = (v * scale for v in stats)
    return f"{sig(med)} ({sig(lo)}–{sig(hi)})"


def speedup(results, threads, key):
    """torch time / cyconv time: > 1 means cyconv is faster."""
    c, t = results.stats("cyconv", threads, key), results.stats("torch", threads, key)
    return f"{t[0] / c[0]:.2f}" if c and t else "–"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sgemm_peak(results, threads):
    """The best SGEMM median (GFLOP/s) of the two libraries at this thread count, or None."""
    rates = [2 * GEMM_N ** 3 / s[0] / 1e9 for f in FRAMEWORKS
             if (s := results.stats(f, SGEMM, f"sgemm {threads}T"))]
    return max(rates) if rates else None


def train_table(results, threads_list, step_flops):
    rows = []
    for threads in threads_list:
        peak = sgemm_peak(results, threads)
        for batch in TRAIN_BATCHES:
            key = f"train b{batch}"
            c, t = results.stats("cyconv", threads, key), results.stats("torch", threads, key)
            gflops = [batch * step_flops / s[0] / 1e9 if s else None for s in (c, t)]
            rows.append([threads, batch, fmt(c, 1e3), fmt(t, 1e3), speedup(results, threads, key),
                         *(f"{batch / s[0]:.0f}" if s else "–" for s in (c, t)),
                         *(f"{g:.1f}" if g else "–" for g in gflops),
                         *(f"{100 * g / peak:.0f}%" if g and peak else "–" for g in gflops)])
    return table(["threads", "batch", "cyconv ms/step", "torch ms/step", "× torch", "cyconv img/s",
                  "torch img/s", "cyconv eff. GFLOP/s", "torch eff. GFLOP/s", "cyconv % SGEMM",
                  "torch % SGEMM"], rows)


def infer_table(results, threads_list, fwd_flops):
    rows = []
    for threads in threads_list:
        for batch in INFER_BATCHES:
            key = f"infer b{batch}"
            c, t = results.stats("cyconv", threads, key), results.stats("torch", threads, key)
            rows.append([threads, batch, fmt(c, 1e3), fmt(t, 1e3), speedup(results, threads, key),
                         *(f"{batch / s[0]:.0f}" if s else "–" for s in (c, t)),
                         *(f"{batch * fwd_flops / s[0] / 1e9:.1f}" if s else "–" for s in (c, t))])
    return table(["threads", "batch", "cyconv ms/batch", "torch ms/batch", "× torch", "cyconv img/s",
                  "torch img/s", "cyconv eff. GFLOP/s", "torch eff. GFLOP/s"], rows)


def scaling_table(results, threads_list, batch=64):
    lo, hi = min(threads_list), max(threads_list)
    rows = []
    for f in FRAMEWORKS:
        a, b = (results.stats(f, n, f"train b{batch}") for n in (lo, hi))
        rows.append([f, fmt(a, 1e3), fmt(b, 1e3), f"{a[0] / b[0]:.2f}" if a and b else "–",
                     f"{100 * a[0] / b[0] / (hi / lo):.0f}%" if a and b else "–"])
    return table(["framework", f"{lo}T ms/step", f"{hi}T ms/step", f"speed-up {hi}T/{lo}T",
                  "parallel efficiency"], rows)


def memory_table(memory):
    rows = []
    for f in FRAMEWORKS:
        m = memory[f]
        rows.append([f, f"{m['baseline_kib'] / 1024:.0f}", f"{m['peak_kib'] / 1024:.0f}",
                     f"{(m['peak_kib'] - m['baseline_kib']) / 1024:.0f}"])
    return table(["framework", "after imports + model build MiB", "peak MiB",
                  "peak − baseline MiB"], rows)


def sgemm_table(results, threads_list, fma_peaks):
    rows = []
    for threads in threads_list:
        peak = fma_peaks.get(threads)
        for f, lib in zip(FRAMEWORKS, ("numpy (OpenBLAS)", "torch.mm (MKL)")):
            s = results.stats(f, SGEMM, f"sgemm {threads}T")
            if not s:
                continue
            rate = [2 * GEMM_N ** 3 / v / 1e9 for v in s]  # min time gives the max rate
            rows.append([lib, threads, f"{sig(rate[0])} ({sig(rate[2])}–{sig(rate[1])})",
                         fmt(s, 1e3), f"{sig(peak)}" if peak else "–",
                         f"{100 * rate[0] / peak:.0f}%" if peak else "–"])
    return table(["library", "threads", "GFLOP/s", "ms per GEMM", "FMA peak GFLOP/s (measured)",
                  "% of FMA peak"], rows)


def busy_table(results, threads_list, batch=64):
    """Mean time per step and images/s with the other core busy; each row against the same
    framework's 1-thread run under the same load."""
    rows = []
    lo = min(threads_list)
    for f in FRAMEWORKS:
        base = results.times.get((f, lo, f"busy b{batch}"))
        for threads in threads_list:
            t = results.times.get((f, threads, f"busy b{batch}"))
            if not t:
                continue
            mean = statistics.mean(t)
            rows.append([f, threads, f"{sig(mean * 1e3)}", f"{batch / mean:.0f}",
                         f"{statistics.mean(base) / mean:.2f}" if base else "–"])
    return table(["framework", "threads", "mean ms/step", "img/s", f"× {lo} thread(s), same load"], rows)


def layer_table(results, threads, names):
    """One row per layer (and the loss and optimizer calls), the sum of the medians, and a line that
    compares that sum with the training step measured whole: the gap is framework glue."""
    rows, sums = [], {}
    for name in names:
        row = [name]
        for phase in ("fwd", "bwd"):
            key = f"layer {name} {phase}"
            c, t = results.stats("cyconv", threads, key), results.stats("torch", threads, key)
            for f, s in zip(FRAMEWORKS, (c, t)):
                if s:
                    sums[f] = sums.get(f, 0.0) + s[0]
                    sums[f, phase] = sums.get((f, phase), 0.0) + s[0]
            row += [fmt(c, 1e6), fmt(t, 1e6), speedup(results, threads, key)]
        rows.append(row)
    rows.append(["**Σ medians**"] + [
        item for phase in ("fwd", "bwd")
        for item in (*(f"{sums.get((f, phase), 0) * 1e6:.0f}" for f in FRAMEWORKS), "")])
    text = table(["layer", "cyconv fwd µs", "torch fwd µs", "× torch", "cyconv bwd µs", "torch bwd µs",
                  "× torch"], rows)
    steps = {f: results.stats(f, threads, f"train b{LAYER_BATCH}") for f in FRAMEWORKS}
    if all(steps.values()):
        text += "\n\nΣ fwd + bwd of all rows vs the training step measured whole (median): " + "; ".join(
            f"{f} {sums.get(f, 0) * 1e3:.2f} vs {steps[f][0] * 1e3:.2f} ms" for f in FRAMEWORKS) + "."
    return text


def cpu_model():
    """'model name (family F model M, avx512f)' of the first CPU; hypervisors often shorten the name,
    and family/model still tell the core generation (AMD family 25 model 17: Zen 4 Genoa)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0]
                      .splitlines() if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    avx512 = "avx512f" if "avx512f" in fields.get("flags", "").split() else "no avx512f"
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}, {avx512})")


def header(args, results, started, flops, checks, wall):
    import cyconv
    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({Path(i['filepath']).parent.name}/"
                     f"{Path(i['filepath']).name})"
                     for i in threadpool_info() if i["user_api"] == "blas")
    tinfo = results.info.get("torch", {})
    fwd, step = flops
    parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in fwd.items())
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    build = results.info.get("cyconv", {}).get("build", {})
    return "\n".join([
        f"## cyconv vs PyTorch eager: LeNet-5 end to end (float32), ISA tier {args.isa}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall:.0f} s",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs ({affinity} usable); load average at "
        f"start {args.load_start}, at end {tuple(round(x, 2) for x in os.getloadavg())}",
        f"- tier {args.isa}: every worker's environment has "
        + (", ".join(f"{k}={v}" for k, v in args.tier_env.items()) or "nothing forced")
        + f"; cyconv ran on {build.get('isa', '?')} (compiler {build.get('compiler', '?')}, BLAS "
        f"{build.get('blas', '?')}), torch on CPU capability {tinfo.get('cpu_capability', '?')}",
        f"- cyconv's convolution algorithm: {results.info.get('cyconv', {}).get('conv_algo', args.algorithm)} "
        "(--algorithm, CYCONV_CONV_ALGO)",
        f"- Python {platform.python_version()}, cyconv {cyconv.__version__} (OpenMP "
        f"{'on' if cyconv.openmp_enabled() else 'off'}), numpy {np.__version__} (BLAS in this parent "
        f"process: {blas}), torch {tinfo.get('torch', _version('torch'))}",
        f"- threads: {', '.join(map(str, args.threads))} (torch.set_num_threads, cyconv.set_num_threads, "
        f"and {', '.join(THREAD_ENV[:3])}... in each worker's environment)",
        f"- method: {args.repeats} round(s), each worker a fresh process with one framework, cyconv and "
        f"torch alternated; median (min–max) over all timed iterations of all rounds"
        + ("; **--quick**: few iterations, indicative only" if args.quick else ""),
        f"- iterations per worker and round, warm-up + timed: {_iters_text(args.iters)}",
        f"- FLOPs per image: forward {sum(fwd.values()) / 1e6:.2f} MFLOP ({parts}); training step "
        f"{step / 1e6:.2f} MFLOP (forward + grad-weight everywhere + grad-input everywhere except "
        f"{next(iter(fwd))})",
        *(f"- same computation: {check_line(check)}" for check in checks),
        "- `× torch` = torch time / cyconv time (> 1: cyconv is faster)",
    ])


def _iters_text(iters):
    """'train b64 10+40, b256 3+12; ...': warm-up + timed iterations per worker."""
    def pair(v):
        return f"{v[0]}+{v[1]}"

    def per_batch(d):
        return ", ".join(f"b{b} {pair(v)}" for b, v in d.items())

    return (f"train {per_batch(iters['train'])}; infer {per_batch(iters['infer'])}; layers "
            f"{pair(iters['layers'])} per layer; sgemm {pair(iters['sgemm'])} per thread count; "
            f"memory {iters['memory']} steps")


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def report(args, results, memory, flops, checks, names, started, wall):
    fwd, step = flops
    out = [header(args, results, started, flops, checks, wall)]
    if "train" in args.sections:
        out += ["", "### Training step (zero_grad + forward + cross-entropy + backward + SGD step), "
                    "random data in memory", "", train_table(results, args.threads, step),
                "", "eff. GFLOP/s = training-step FLOPs / time; % SGEMM = of the faster library's "
                    "2048² SGEMM median at the same thread count (table below)."]
        if len(args.threads) > 1:
            out += ["", f"### {max(args.threads)} threads vs {min(args.threads)}, training step, batch 64",
                    "", scaling_table(results, args.threads)]
    if "infer" in args.sections:
        out += ["", "### Inference (eval mode; torch under no_grad)", "",
                infer_table(results, args.threads, sum(fwd.values()))]
    if memory:
        mem, threads = memory
        out += ["", f"### Peak resident memory, training at batch {MEMORY_BATCH}, {threads} threads, "
                    f"after {args.memory_steps} steps",
                "", memory_table(mem), "",
                "ru_maxrss of a worker that does only this; baseline = ru_maxrss after imports and "
                "model build (torch's import alone is most of its baseline)."]
    if "busy" in args.sections:
        out += ["", "### Training step, batch 64, with the other core busy (a spinning process)", "",
                busy_table(results, args.threads), "",
                "Mean over all timed steps (a descheduled thread makes step times bimodal); each "
                "framework against its own 1-thread run under the same load."]
    if "sgemm" in args.sections:
        out += ["", f"### SGEMM peak ({GEMM_N}×{GEMM_N} @ {GEMM_N}×{GEMM_N}, float32) and FMA peak at tier "
                    f"{args.isa}", "", sgemm_table(results, args.threads, args.fma_peaks), "",
                "FMA peak: benchmarks/fma_peak.c, 12 independent multiply-add chains per thread on the "
                "tier's vectors, best of 3."]
    if "layers" in args.sections:
        for threads in args.threads:
            out += ["", f"### Per layer, batch {LAYER_BATCH}, {threads} thread(s), µs per call", "",
                    layer_table(results, threads, names + EXTRA_LAYER_ROWS)]
        out += ["", "Each layer on its in-network input; conv1 without input gradient. cyconv's "
                    "`loss` computes the loss and its gradient in one call (all under fwd); `sgd step` "
                    "and `zero_grad` are the optimizer's calls (under fwd)."]
    return "\n".join(out)


# =====================================================================================================
# Command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="thread counts to measure (default: 1 2)")
    p.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="rounds of alternating cyconv/torch workers (default: 5, 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="few iterations: a smoke test, < 1 minute")
    p.add_argument("--json", metavar="FILE", help="also write every measurement and the header as JSON")
    p.add_argument("--sections", default="train,infer,layers,memory,sgemm,busy",
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all); "
                        "the correctness check always runs")
    p.add_argument("--isa", choices=machine.TIERS, default=None,
                   help="run every library at this ISA tier (default: the best this CPU has)")
    p.add_argument("--torch-knobs", choices=("all", "aten"), default="all",
                   help="with --isa below the CPU's best: force PyTorch down through ATen, oneDNN and MKL "
                        "(all, the default: what a CPU of that tier runs) or ATEN_CPU_CAPABILITY alone")
    p.add_argument("--algorithm", choices=("auto", "im2col", "measure"), default="auto",
                   help="cyconv's convolution algorithm (CYCONV_CONV_ALGO in its workers; default: auto)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        import cyconv

        args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
        args.sections = {s.strip() for s in args.sections.split(",") if s.strip()}
        unknown = args.sections - set(SECTIONS)
        if unknown or args.repeats < 1 or min(args.threads) < 1:
            p.error(f"bad --sections {sorted(unknown)}, --repeats or --threads")
        args.threads = sorted(set(args.threads))
        supported = cyconv.supported_isas()
        args.isa = args.isa or supported[0]
        if args.isa not in supported:
            p.error(f"--isa {args.isa}: this CPU cannot run it (supported: {', '.join(supported)})")
        args.tier_env = machine.tier_env(args.isa, args.torch_knobs)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker_job(json.loads(args.worker))))
        return 0

    from cyconv import models

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    args.load_start = tuple(round(x, 2) for x in os.getloadavg())
    iters = ITERS["quick" if args.quick else "default"]
    args.memory_steps, args.iters = iters["memory"], iters
    model = models.lenet5(rng=np.random.default_rng(SEED))
    spec = describe(model)
    fwd = forward_flops(spec)
    flops = (fwd, train_flops(fwd))
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench_e2e-") as tmp:
        weights = str(Path(tmp) / "lenet5-seed0.npz")
        np.savez(weights, **model.state_dict())
        common = {"weights": weights, "spec": spec, "tier_env": args.tier_env, "algorithm": args.algorithm}
        checks = [run_check(common, threads, tmp) for threads in args.threads]
        memory = run_memory(args, iters, common) if "memory" in args.sections else None
        run_rounds(args, iters, common, results)
        if "busy" in args.sections:
            run_busy(args, iters, common, results)
    args.fma_peaks = {n: machine.fma_peak(args.isa, n) for n in args.threads} if "sgemm" in args.sections else {}
    wall = time.perf_counter() - t_start
    text = report(args, results, memory, flops, checks, [d["name"] for d in spec], started, wall)
    print(text)
    if args.json:
        dump = {"markdown": text, "started_utc": started.isoformat(), "argv": sys.argv,
                "isa": args.isa, "tier_env": args.tier_env, "fma_peaks": args.fma_peaks,
                "threads": args.threads, "repeats": args.repeats, "quick": args.quick,
                "flops_per_image": {"forward": fwd, "train_step": flops[1]}, "checks": checks,
                "memory": memory[0] if memory else None, "runs": results.raw}
        Path(args.json).write_text(json.dumps(dump, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
