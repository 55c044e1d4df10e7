"""LeNet-5 training steps, data-parallel over MPI on this machine, and the model of N machines that
benchmarks/RESULTS.md quotes.

    python benchmarks/bench_distributed.py [--batches 64 256] [--steps 40] [--repeats 3] [--quick]

Measured: training steps (forward, loss, backward, gradient allreduce, SGD update) at global batches 64 and
256, float32, on
    1 rank x 1 thread     one core's compute, which the model scales from
    1 rank x 2 threads    the whole machine, one process
    2 ranks x 1 thread    the whole machine, data-parallel (cyconv.distributed.DistributedSGD)
    2 ranks, overlapped   the same, the classifier's gradients (97% of the bytes) reduced by Iallreduce while
                          the features' backward runs (buckets + gradients_ready)
Each configuration is a fresh launch (`mpiexec -n 2 python bench_distributed.py --worker JOB`; one rank runs
without mpiexec), alternating for --repeats rounds. Per configuration: images/s (global batch x steps over
the wall time of the timed steps), the median step time of each phase, and the time in the allreduce
(DistributedOptimizer.allreduce_seconds: waiting for the slower rank included). The 2-rank launch also times
the allreduce alone, after a barrier: the transfer without the waiting. Data are random images (the kernels'
cost does not depend on the values); the weights are LeNet-5's at seed 0.

Modelled: N machines like this one (one rank each, all its cores), a ring allreduce of the gradients
(2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency) at 10 and 25 Gb/s, against the compute time per step
measured here; with a per-rank batch fixed (the global batch grows with N) and with the global batch fixed.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = [  # (name, ranks, threads per rank, overlapped, environment)
    ("1 rank x 1 thread", 1, 1, False, {}),
    ("1 rank x 2 threads", 1, 2, False, {}),
    ("2 ranks x 1 thread", 2, 1, False, {}),
    ("2 ranks x 1 thread, overlapped", 2, 1, True, {}),
    # MPICH moves a started Iallreduce on only inside MPI calls, and the conv backward is one long call;
    # its progress thread moves it on meanwhile, but spins on a core of its own.
    ("2 ranks, overlapped, MPICH progress thread", 2, 1, True, {"MPIR_CVAR_ASYNC_PROGRESS": "1"}),
]
WARMUP = 5
ALLREDUCE_ALONE = 50  # allreduce calls timed alone, after a barrier each
LATENCY_S = 25e-6  # per message, MPI over TCP on 10/25 GbE (typically 15-50 us)
BANDWIDTHS_GBPS = (10, 25)
MACHINES = (2, 4, 8, 16, 32, 64)


# ---------------------------------------------------------------------------------------------------------
# Worker: one launch, every batch size


def work(job):
    import cyconv
    import cyconv.functional as F
    from cyconv import distributed, models

    distributed.init()
    cyconv.set_num_threads(job["threads"])
    rank, ranks = distributed.rank(), distributed.world_size()
    model = models.lenet5(rng=np.random.default_rng(0))
    features, classifier = model[:7], model[7:]  # conv blocks + flatten; fc1, relu, fc2
    buckets = [classifier.parameters(), features.parameters()] if job["overlap"] else None
    opt = distributed.DistributedSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, buckets=buckets)
    rng = np.random.default_rng(1)
    results = {}
    for batch in job["batches"]:
        part = distributed.shard(batch)
        xs = [rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)[part] for _ in range(4)]
        ys = [rng.integers(0, 10, batch)[part] for _ in range(4)]
        phases = {k: [] for k in ("forward", "backward_classifier", "backward_features", "allreduce", "update",
                                  "step")}
        for step in range(WARMUP + job["steps"]):
            if step == WARMUP:
                distributed.sum_over_ranks([0])  # the timed steps start together
                started = time.perf_counter()
            x, y = xs[step % 4], ys[step % 4]
            t0 = time.perf_counter()
            loss, grad = F.softmax_cross_entropy(classifier(features(x)), y)
            t1 = time.perf_counter()
            opt.zero_grad()
            grad = classifier.backward(grad, input_grad=True)
            opt.gradients_ready(classifier.parameters())  # starts that bucket's allreduce when overlapped
            t2 = time.perf_counter()
            features.backward(grad)
            t3 = time.perf_counter()
            before = opt.allreduce_seconds
            opt.step()
            t4 = time.perf_counter()
            if step >= WARMUP:
                reduce = opt.allreduce_seconds - before
                for k, v in (("forward", t1 - t0), ("backward_classifier", t2 - t1),
                             ("backward_features", t3 - t2), ("allreduce", reduce), ("update", t4 - t3 - reduce),
                             ("step", t4 - t0)):
                    phases[k].append(v)
        elapsed = time.perf_counter() - started
        results[str(batch)] = {"images_per_s": batch * job["steps"] / elapsed,
                               "median_ms": {k: 1e3 * statistics.median(v) for k, v in phases.items()}}
    info = {"threads": cyconv.get_num_threads(), "ranks": ranks, "build": cyconv.build_info()}
    if ranks > 1:
        info["allreduce_alone_ms"] = allreduce_alone(sum(p.data.size for p in model.parameters()))
        from mpi4py import MPI
        info["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    if rank == 0:
        print(json.dumps({"results": results, "info": info}), flush=True)


def allreduce_alone(size):
    """Median and min (ms) of an in-place float32 Iallreduce of `size` elements, each after a barrier."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buffer = np.ones(size, np.float32)
    times = []
    for _ in range(ALLREDUCE_ALONE):
        comm.Barrier()
        t = time.perf_counter()
        comm.Iallreduce(MPI.IN_PLACE, buffer, MPI.SUM).Wait()
        times.append(time.perf_counter() - t)
    return {"median": 1e3 * statistics.median(times), "min": 1e3 * min(times)}


# ---------------------------------------------------------------------------------------------------------
# Parent


def mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def launch(name, ranks, threads, overlap, environment, batches, steps):
    job = {"threads": threads, "overlap": overlap, "batches": batches, "steps": steps}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **environment)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"bench_distributed: {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values, digits=0):
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def measured_table(runs, batches):
    lines = []
    for batch in batches:
        lines += [f"\nglobal batch {batch}: images/s median (min-max) over rounds; per step, medians of the rounds' "
                  "medians, ms",
                  "| configuration | images/s | step | forward+loss | backward fc | backward conv | allreduce | "
                  "update |", "|---|---|---|---|---|---|---|---|"]
        for name, *_ in CONFIGS:
            rounds = [r["results"][str(batch)] for r in runs[name]]
            ms = {k: statistics.median(r["median_ms"][k] for r in rounds) for k in rounds[0]["median_ms"]}
            lines.append(f"| {name} | {spread([r['images_per_s'] for r in rounds])} | {ms['step']:.2f} | "
                         f"{ms['forward']:.2f} | {ms['backward_classifier']:.2f} | {ms['backward_features']:.2f} | "
                         f"{ms['allreduce']:.2f} | {ms['update']:.2f} |")
    alone = [r["info"]["allreduce_alone_ms"] for r in runs["2 ranks x 1 thread"]]
    lines.append(f"\nallreduce alone (after a barrier), 2 ranks: median {spread([a['median'] for a in alone], 2)} "
                 f"ms, min {min(a['min'] for a in alone):.2f} ms over rounds")
    return "\n".join(lines)


def ring_allreduce_s(machines, nbytes, gbps, latency=LATENCY_S):
    return 2 * (machines - 1) / machines * nbytes / (gbps * 1e9 / 8) + 2 * (machines - 1) * latency


def compute_s(phases):
    """A step's time without communication: the phases' sum (one rank has no allreduce to wait for)."""
    return sum(phases[k] for k in ("forward", "backward_classifier", "backward_features", "update"))


def machines_table(title, cell, nbytes):
    """A table of MACHINES rows by BANDWIDTHS_GBPS columns, cell(machines, ring allreduce seconds) each."""
    return [f"\n{title}", "| machines | " + " | ".join(f"{g} Gb/s" for g in BANDWIDTHS_GBPS) + " |",
            "|---|" + "---|" * len(BANDWIDTHS_GBPS),
            *(f"| {n} | " + " | ".join(cell(n, ring_allreduce_s(n, nbytes, g)) for g in BANDWIDTHS_GBPS) + " |"
              for n in MACHINES)]


def model_tables(runs, batches, nbytes, step_ms=None):
    """N machines like this one, one rank each with all its cores: this machine's 1 rank x 2 threads, its
    phases scaled to the step times step_ms ({batch: ms}) if given (measured without other load)."""
    one = {}
    for batch in batches:
        rounds = [r["results"][str(batch)]["median_ms"] for r in runs["1 rank x 2 threads"]]
        one[batch] = {k: statistics.median(r[k] for r in rounds) / 1e3 for k in rounds[0]}
        if step_ms:
            scale = step_ms[batch] / 1e3 / one[batch]["step"]
            one[batch] = {k: v * scale for k, v in one[batch].items()}
    source = f"its phases scaled to steps of {', '.join(f'{v:g} ms (batch {b})' for b, v in step_ms.items())}" \
        if step_ms else "as measured above"
    lines = [f"\none machine: 1 rank x 2 threads, {source}",
             f"gradient volume per step: {nbytes:,} bytes ({nbytes / 1e6:.2f} MB); ring allreduce "
             f"2(N-1)/N x bytes / bandwidth + 2(N-1) x {LATENCY_S * 1e6:.0f} us"]
    lines += machines_table("ring allreduce, ms per step:",
                            lambda n, t: f"{1e3 * t:.2f}", nbytes)
    for batch in batches:
        c = one[batch]
        compute = compute_s(c)
        before_conv_backward = c["forward"] + c["backward_classifier"]

        def speedups(n, t):
            plain = n * compute / (compute + t)
            overlapped = n * compute / (before_conv_backward + max(c["backward_features"], t) + c["update"])
            return f"{plain:.1f} / {overlapped:.1f}"
        lines += machines_table(f"per-machine batch {batch} (global batch {batch} x N): compute {1e3 * compute:.1f} ms "
                                "per step on one machine; speedup over one machine, no overlap / the classifier's "
                                "allreduce overlapped with the conv backward (a NIC or thread that progresses it)",
                                speedups, nbytes)
    for batch in batches:
        compute = compute_s(one[batch])
        lines += machines_table(f"global batch {batch} fixed (each machine {batch}/N images; compute taken as "
                                f"{1e3 * compute:.1f}/N ms, which small batches do not quite reach): speedup over one "
                                "machine, and where the allreduce takes longer than the compute",
                                lambda n, t: f"{compute / (compute / n + t):.1f}"
                                             f"{' (comm > compute)' if t > compute / n else ''}", nbytes)
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="global batches (even)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per batch and launch (default 40)")
    p.add_argument("--repeats", type=int, default=None, help="rounds over the configurations (default 3)")
    p.add_argument("--quick", action="store_true", help="10 steps, 1 round")
    p.add_argument("--model-step-ms", nargs="+", metavar="BATCH=MS",
                   help="also model machines whose training step on 1 rank x 2 threads takes MS ms at BATCH "
                        "(measured without other load, e.g. bench_e2e's), the phases in the proportions measured here")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        work(json.loads(args.worker))
        return 0
    if mpiexec() is None:
        raise SystemExit('bench_distributed: needs mpiexec and mpi4py: pip install "cyconv[mpi]"')
    steps = args.steps or (10 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)

    import cyconv
    from cyconv.models import lenet5

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    runs = {name: [] for name, *_ in CONFIGS}
    for r in range(repeats):
        for name, ranks, threads, overlap, environment in CONFIGS:
            out = launch(name, ranks, threads, overlap, environment, args.batches, steps)
            runs[name].append(out)
            print(f"round {r + 1}/{repeats} {name:<42} " + ", ".join(
                f"b{b} {out['results'][str(b)]['images_per_s']:.0f} img/s" for b in args.batches),
                file=sys.stderr, flush=True)
    nbytes = 4 * sum(p.data.size for p in lenet5(rng=np.random.default_rng(0)).parameters())
    info = runs["2 ranks x 1 thread"][0]["info"]
    print(f"# bench_distributed {started:%Y-%m-%d %H:%M} UTC: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after; "
          f"cyconv {cyconv.__version__} {info['build']['isa']} tier, {info['mpi']}; {steps} timed steps after "
          f"{WARMUP}, {repeats} rounds")
    print(measured_table(runs, args.batches))
    print(model_tables(runs, args.batches, nbytes))
    if args.model_step_ms:
        step_ms = {int(b): float(ms) for b, ms in (item.split("=") for item in args.model_step_ms)}
        print(model_tables(runs, args.batches, nbytes, step_ms))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "steps": steps, "started": started.isoformat()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
