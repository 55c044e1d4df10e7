"""Modern networks, side by side on the same weights: resnet18 and mobilenet_v2 inference (224x224, batch 1
and 32) in cyconv (cyconv.compile), ONNX Runtime and OpenVINO (on torch.onnx.export's file of the same
network) and PyTorch eager; resnet20 training steps (32x32, SGD momentum 0.9, weight decay 5e-4, batch 64 and
128) in cyconv and PyTorch eager. float32.

    python benchmarks/bench_modern.py [--threads 1 2] [--repeats 3] [--quick] [--isa avx2]
                                      [--only resnet18 mobilenet_v2 resnet20] [--algorithm auto measure im2col]

The torch networks are tests/torch_models.py's (torchvision's structure and parameter names, no
torchvision); cyconv's are cyconv.models', loaded with the torch weights converted by
{k: v.numpy()}. Each framework runs in a fresh process per thread count and first checks its outputs
against PyTorch's on the same batch (1e-3 of the largest logit) or the script stops. Workers alternate over
--repeats rounds; the tables give the median (min-max) of every timed call of every round, in ms per batch,
and cyconv's time over each other framework's. --isa forces cyconv, PyTorch (ATen, oneDNN, MKL) and OpenBLAS
down to a tier (benchmarks/machine.py); ONNX Runtime and OpenVINO have no such switch (their best kernels for
the CPU): the header says so. OpenVINO runs in float32 (INFERENCE_PRECISION_HINT f32), as the others do.
--algorithm runs cyconv once per convolution algorithm given (CYCONV_CONV_ALGO in its worker's environment:
"auto", the default, is conv_algorithm()'s choice per layer, "measure" the fastest candidate timed per layer
when the predictor is compiled or the layer first runs, "im2col" every layer on im2col + GEMM), each its own
column ("cyconv" for auto, "cyconv-<algorithm>" for the others); every one is compared with the faster of ONNX
Runtime and OpenVINO and with PyTorch.
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import bench_e2e  # noqa: E402  (time_calls, cpu_model, sig, THREAD_ENV)
import machine  # noqa: E402
import runtimes  # noqa: E402  (the ONNX Runtime session)

INFER_MODELS = ("resnet18", "mobilenet_v2")
TRAIN_MODEL = "resnet20"
INFER_FRAMEWORKS = ("cyconv", "onnxruntime", "openvino", "torch")
TRAIN_FRAMEWORKS = ("cyconv", "torch")
INFER_BATCHES = (1, 32)
TRAIN_BATCHES = (64, 128)
SIZE = 224
ITERS = {"default": {"infer": {1: (5, 30), 32: (2, 6)}, "train": {64: (3, 12), 128: (2, 8)}},
         "quick": {"infer": {1: (2, 8), 32: (1, 2)}, "train": {64: (1, 3), 128: (1, 2)}}}
SGD = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)
CHECK = 1e-3


def images(n, size, seed=1):
    return np.random.default_rng([seed, n, size]).standard_normal((n, 3, size, size), dtype=np.float32)


def labels(n, seed=2):
    return np.random.default_rng([seed, n]).integers(0, 10, n)


# ---------------------------------------------------------------------------------------------------------
# Workers


def build_infer(job):
    """A callable x -> numpy logits for job's framework and model."""
    framework, threads = job["framework"], job["threads"]
    if framework.startswith("cyconv"):
        import cyconv
        from cyconv import models

        cyconv.set_num_threads(threads)
        model = getattr(models, job["model"])()
        model.load_state_dict(dict(np.load(job["weights"])))
        return cyconv.compile(model.eval(), batch_size=max(INFER_BATCHES), input_shape=(3, SIZE, SIZE))
    if framework == "onnxruntime":
        session = runtimes.ort_session(job["onnx"], threads)
        return lambda x: session.run(None, {"input": x})[0]
    if framework == "openvino":
        import openvino as ov

        core = ov.Core()
        # float32 arithmetic as the others (on a CPU with AMX or AVX-512 BF16 OpenVINO's default is bfloat16)
        compiled = core.compile_model(job["onnx"], "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                                           "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()
        return run
    import torch
    import torch_models

    torch.set_num_threads(threads)
    model = getattr(torch_models, job["model"])()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(job["weights"]).items()})
    model.eval()

    def forward(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return forward


def build_train(job):
    """A callable (x, y) -> loss that runs one SGD step of resnet20 in job's framework."""
    framework, threads = job["framework"], job["threads"]
    if framework.startswith("cyconv"):
        import cyconv
        from cyconv import functional as F, models, optim

        cyconv.set_num_threads(threads)
        model = models.resnet20()
        model.load_state_dict(dict(np.load(job["weights"])))
        model.train()
        opt = optim.SGD(model.parameters(), **SGD)

        def step(x, y):
            loss, grad = F.softmax_cross_entropy(model(x), y)
            opt.zero_grad()
            model.backward(grad)
            opt.step()
            return loss
        return step
    import torch
    import torch_models

    torch.set_num_threads(threads)
    model = torch_models.resnet20()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(job["weights"]).items()})
    model.train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return float(loss)
    return step


def work(job):
    times = {}
    if job["mode"] == "infer":
        forward = build_infer(job)
        reference = np.load(job["reference"])
        got = forward(images(2, SIZE))
        diff = float(np.max(np.abs(got - reference)) / np.max(np.abs(reference)))
        for n, (warmup, iters) in job["iters"].items():
            x = images(int(n), SIZE)
            times[n] = bench_e2e.time_calls(lambda: forward(x), warmup, iters)
    else:
        step = build_train(job)
        first = step(images(8, 32), labels(8))  # the first step's loss: the same weights and batch give the same
        diff = abs(first - job["reference_loss"]) / job["reference_loss"]
        for n, (warmup, iters) in job["iters"].items():
            x, y = images(int(n), 32), labels(int(n))
            times[n] = bench_e2e.time_calls(lambda: step(x, y), warmup, iters)
    return {"times": times, "check": diff, "info": info(job["framework"])}


def info(framework):
    if framework.startswith("cyconv"):
        import cyconv
        return dict(cyconv.build_info(), conv_algo=os.environ.get("CYCONV_CONV_ALGO", "auto"))
    module = __import__(framework)
    out = {"version": module.__version__}
    if framework == "torch":
        out["cpu_capability"] = module.backends.cpu.get_cpu_capability()
    return out


# ---------------------------------------------------------------------------------------------------------
# Parent


def cyconv_variant(algorithm):
    """The framework name of cyconv run with CYCONV_CONV_ALGO=algorithm."""
    return "cyconv" if algorithm == "auto" else f"cyconv-{algorithm}"


def launch(job, env_extra):
    env = dict(os.environ, **{k: str(job["threads"]) for k in bench_e2e.THREAD_ENV}, **env_extra)
    if job["framework"].startswith("cyconv"):
        env["CYCONV_CONV_ALGO"] = job["framework"].partition("-")[2] or "auto"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench_modern: worker {job['framework']} {job['model']} ({job['threads']}T) failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["check"] <= CHECK:
        raise SystemExit(f"bench_modern: {job['framework']} {job['model']} differs from PyTorch by "
                         f"{result['check']:.2e} of the largest value")
    return result


def available(framework):
    try:
        __import__(framework)
        return True
    except ImportError:
        return False


def prepare(tmp, name):
    """Weights (npz), ONNX file and PyTorch's reference output or first loss for model `name`."""
    import torch
    import torch_models

    torch.manual_seed(0)
    model = getattr(torch_models, name)()
    if name == TRAIN_MODEL:
        model.train()
    else:
        model.eval()
        with torch.no_grad():  # BatchNorm statistics away from the initial 0 and 1
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    weights = str(Path(tmp) / f"{name}.npz")
    np.savez(weights, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    out = {"weights": weights}
    if name == TRAIN_MODEL:
        loss = torch.nn.CrossEntropyLoss()(model(torch.from_numpy(images(8, 32))), torch.from_numpy(labels(8)))
        out["reference_loss"] = float(loss.detach())
        return out
    onnx_path = str(Path(tmp) / f"{name}.onnx")
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(model, torch.from_numpy(images(1, SIZE)), onnx_path, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    reference = str(Path(tmp) / f"{name}.npy")
    with torch.no_grad():
        np.save(reference, model(torch.from_numpy(images(2, SIZE))).numpy())
    out.update(onnx=onnx_path, reference=reference)
    return out


def fmt(times):
    if not times:
        return "–"
    return (f"{bench_e2e.sig(statistics.median(times) * 1e3)} ({bench_e2e.sig(min(times) * 1e3)}–"
            f"{bench_e2e.sig(max(times) * 1e3)})")


def table(results, model, threads, frameworks, batches):
    """ms per batch per framework, then each cyconv variant's time over the faster of ONNX Runtime and
    OpenVINO ("engines") and over PyTorch's."""
    ours = [f for f in frameworks if f.startswith("cyconv")]
    engines = [f for f in frameworks if f in ("onnxruntime", "openvino")]
    against = (["engines"] if engines else []) + (["torch"] if "torch" in frameworks else [])
    header = ["batch"] + [f"{f} ms" for f in frameworks] + [f"{c} / {a}" for c in ours for a in against]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in batches:
        runs = {f: results.get((model, f, threads), {}).get(str(n)) for f in frameworks}
        med = {f: statistics.median(t) if t else None for f, t in runs.items()}
        timed = [med[f] for f in engines if med[f]]
        med["engines"] = min(timed) if timed else None
        ratios = [f"{med[c] / med[a]:.2f}" if med[c] and med[a] else "–" for c in ours for a in against]
        lines.append("| " + " | ".join([str(n)] + [fmt(runs[f]) for f in frameworks] + ratios) + " |")
    return "\n".join(lines)


def expand(args, frameworks):
    """frameworks with cyconv replaced by one variant per --algorithm."""
    out = []
    for f in frameworks:
        out += [cyconv_variant(a) for a in dict.fromkeys(args.algorithm)] if f == "cyconv" else [f]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--isa", choices=machine.TIERS, default=None)
    p.add_argument("--only", nargs="+", choices=(*INFER_MODELS, TRAIN_MODEL), default=None)
    p.add_argument("--algorithm", nargs="+", choices=("auto", "im2col", "measure"), default=["auto"],
                   help="cyconv's convolution algorithms, one column each (CYCONV_CONV_ALGO; default: auto)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))))
        return 0
    if not available("torch"):
        raise SystemExit("bench_modern: needs torch (the reference networks and their weights)")
    import cyconv

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 3)
    isa = args.isa or cyconv.supported_isas()[0]
    env_extra = machine.tier_env(isa)
    iters = ITERS["quick" if args.quick else "default"]
    names = args.only or [*INFER_MODELS, TRAIN_MODEL]
    results, infos = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_modern-") as tmp:
        prepared = {name: prepare(tmp, name) for name in names}
        jobs = []
        for name in names:
            train = name == TRAIN_MODEL
            frameworks = expand(args, [f for f in (TRAIN_FRAMEWORKS if train else INFER_FRAMEWORKS) if available(f)])
            for threads in args.threads:
                for framework in frameworks:
                    jobs.append(dict(prepared[name], mode="train" if train else "infer", model=name,
                                     framework=framework, threads=threads,
                                     iters={str(k): v for k, v in iters["train" if train else "infer"].items()}))
        for _ in range(repeats):
            for job in jobs:
                result = launch(job, env_extra)
                key = (job["model"], job["framework"], job["threads"])
                for n, times in result["times"].items():
                    results.setdefault(key, {}).setdefault(n, []).extend(times)
                infos[job["framework"]] = result["info"]
    lines = [f"## Modern networks, ISA tier {isa} ({bench_e2e.cpu_model()}; {started:%Y-%m-%d %H:%M} UTC)", "",
             f"- command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}` ({repeats} rounds, "
             f"{time.perf_counter() - t0:.0f} s)",
             "- " + "; ".join(f"{f}: {json.dumps(i, sort_keys=True)}" for f, i in sorted(infos.items())),
             f"- ONNX Runtime and OpenVINO run their own best kernels for the CPU whatever --isa says", ""]
    for name in names:
        train = name == TRAIN_MODEL
        frameworks = expand(args, [f for f in (TRAIN_FRAMEWORKS if train else INFER_FRAMEWORKS) if available(f)])
        for threads in args.threads:
            what = f"training step, 32x32, SGD" if train else f"inference, {SIZE}x{SIZE}"
            lines += [f"### {name} {what}, {threads} thread{'s' if threads > 1 else ''}, ms per batch", "",
                      table(results, name, threads, frameworks, TRAIN_BATCHES if train else INFER_BATCHES), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
