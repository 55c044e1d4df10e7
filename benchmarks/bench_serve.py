"""`cyconv serve` under load: N concurrent clients on localhost, throughput and p50/p99 latency, with
batching on and off, against the same server code running ONNX Runtime on the exported model.

    python benchmarks/bench_serve.py [--clients 1 8 32 64] [--seconds 10] [--repeats 3] [--threads 2]
                                     [--stress-clients 512 --stress-seconds 20] [--json out.json] [--quick]
                                     [--spin]

Prints markdown tables for benchmarks/RESULTS.md. A default run takes about 6 minutes; --quick about one.

What it runs:
- Three servers, each its own process (this file with --server), on 127.0.0.1, LeNet-5 (random weights:
  they do not change the time; or --checkpoint), float32, --threads threads: cyconv batching on
  (--max-batch 64, --max-wait-ms 2, the defaults), cyconv batching off (--max-batch 1), and ONNX Runtime
  on the model `cyconv export` writes, batching on, behind the very same app (serve.create_app with
  ORT's session as the model call; ORT on the same number of intra-op threads).
- Idle threads sleep, in both: OMP_WAIT_POLICY=passive for cyconv's OpenMP threads, ORT's
  session.intra_op.allow_spinning=0 (--spin leaves both at their default, spinning). A thread that
  spins for its next parallel region holds a core; here the event loop and the clients need it, and on a
  shared machine a thread spinning at a barrier burns the time slice its partner waits for.
- The clients: one process on the same 2 cores, asyncio (uvloop), each client one keep-alive connection
  sending POST /predict?raw=1 with a 28x28 PNG of an MNIST-like digit (what a program calling the API
  sends; the page's drawings go through prepare_digit as well) and waiting for the answer before the
  next. A request is failed unless it is answered 200 (503 is counted apart). Each measurement runs for
  --seconds after one second of warm-up, so it is bounded in time; the servers are on this machine only.
  The client side is a minimal HTTP/1.1 writer and reader, so that the load generator costs as little CPU
  as possible of the two cores it shares with the server: the server under test is uvicorn's.
- Rounds: for each client count, the three servers in turn (on, off, ORT, on, off, ORT, ...) for
  --repeats rounds, so drift in the machine's speed hits all alike; tables give the median over rounds
  (and the min-max of throughput).
- Stress: --stress-clients clients against the batching server for --stress-seconds, each retrying at
  once on 503: counts of every status (only 200 and 503 allowed), and the server's resident memory
  (VmRSS) after the 32-client warm-up, at the end of the stress, and 3 s later.
"""

import argparse
import asyncio
import contextlib
import datetime
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------------------
# Server side (a child process)


def serve_main(args):
    import cyconv
    from cyconv import serve
    from cyconv.checkpoint import load_model

    cyconv.set_num_threads(args.threads)
    if args.server == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not args.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        model = serve.ServedModel(lambda x: session.run(None, {name: x})[0], (1, 28, 28), range(10),
                                  description=f"{args.onnx}: ONNX Runtime {ort.__version__}")
    else:
        model = serve.ServedModel.from_model(load_model(args.checkpoint)[0], batch_size=args.max_batch)
    app = serve.create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    sys.exit(serve.run(app, host=HOST, port=args.port, log_level="warning"))


class Server:
    """A server process of this file; stopped with SIGTERM (it must exit 0)."""

    def __init__(self, kind, checkpoint, onnx, threads, max_batch, max_wait_ms=2.0, spin=False):
        self.kind, self.port = kind, _free_port()
        cmd = [sys.executable, __file__, "--server", "onnxruntime" if kind == "onnxruntime" else "cyconv",
               "--port", str(self.port), "--checkpoint", str(checkpoint), "--onnx", str(onnx),
               "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if spin:
            cmd.append("--spin")
        else:  # libgomp reads it once, when it is loaded: before the server imports cyconv
            env["OMP_WAIT_POLICY"] = "passive"
        self.process = subprocess.Popen(cmd, env=env)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {kind} did not start")
            time.sleep(0.1)

    def rss_mb(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        if status != 0:
            raise RuntimeError(f"server {self.kind} exited with {status} after SIGTERM, expected 0")


def _free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# Client side


def digit_png():
    """A 28x28 white-on-black digit 7, as MNIST has them, as PNG bytes."""
    from PIL import Image, ImageDraw

    picture = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(picture)
    draw.line([(7, 7), (21, 7), (12, 22)], fill=255, width=3)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def request_bytes(port, body):
    head = (f"POST /predict?raw=1 HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-type: image/png\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _client(port, request, start_at, stop_at, latencies, statuses, retry_503=True):
    """One keep-alive connection: request, wait for the answer, again, until stop_at. Latencies of the
    answers after start_at (the warm-up's are dropped)."""
    reader = writer = None
    while time.perf_counter() < stop_at:
        sent = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
                sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done = time.perf_counter()
            if b"connection: close" in lower:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status, done = 0, time.perf_counter()
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
        if sent >= start_at:
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(done - sent)
    if writer is not None:
        writer.close()


async def _load(port, clients, seconds, warmup):
    request = request_bytes(port, digit_png())
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    latencies, statuses = [], {}
    await asyncio.gather(*(_client(port, request, start_at, stop_at, latencies, statuses)
                           for _ in range(clients)))
    return latencies, statuses


def load(port, clients, seconds, warmup=1.0):
    """Run `clients` clients for `seconds` (after `warmup`): images/s, p50 and p99 latency (ms), statuses."""
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    latencies, statuses = runner(_load(port, clients, seconds, warmup))
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"images_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "statuses": {str(k): v for k, v in sorted(statuses.items())}}


# ---------------------------------------------------------------------------------------------------------
# The run


SERVERS = {"cyconv, batching on": ("cyconv", 64), "cyconv, batching off": ("cyconv", 1),
           "ONNX Runtime, batching on": ("onnxruntime", 64)}


def main(args):
    import cyconv
    import cyconv.onnx
    from cyconv import models, optim
    from cyconv.checkpoint import save_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        model = models.lenet5(rng=np.random.default_rng(0))
        checkpoint = save_checkpoint(work / "checkpoint.npz", model=model, optimizer=optim.SGD(model.parameters(), lr=0.1),
                                     model_name="lenet5", epoch=0, config={"model": "lenet5"}, metrics=[])
    from cyconv.checkpoint import load_model
    onnx_path = work / "lenet5.onnx"
    cyconv.onnx.export(load_model(checkpoint)[0], onnx_path, input_shape=(1, 28, 28))

    results = {"date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "spin": args.spin, "load_average": {"start": os.getloadavg()},
               "cpu": _cpu(), "threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
               "python": platform.python_version(), "cyconv": cyconv.__version__, "isa": cyconv.get_isa(),
               "load": {}, "stress": None}
    servers = {name: Server(kind, checkpoint, onnx_path, args.threads, batch, spin=args.spin)
               for name, (kind, batch) in SERVERS.items()}
    try:
        for clients in args.clients:
            rounds = {name: [] for name in servers}
            for _ in range(args.repeats):
                for name, server in servers.items():
                    rounds[name].append(load(server.port, clients, args.seconds))
                    print(f"{clients:4d} clients  {name:28s} {rounds[name][-1]}", file=sys.stderr)
            results["load"][clients] = {name: _median(r) for name, r in rounds.items()}
        on = servers["cyconv, batching on"]
        for name, server in servers.items():
            if server is not on:
                server.stop()
        servers = {"cyconv, batching on": on}
        if args.stress_clients:
            load(on.port, 32, 2.0, warmup=0.5)
            before = on.rss_mb()
            stress = load(on.port, args.stress_clients, args.stress_seconds, warmup=0.0)
            at_end = on.rss_mb()
            time.sleep(3)
            after = on.rss_mb()
            results["stress"] = {"clients": args.stress_clients, "seconds": args.stress_seconds, **stress,
                                 "rss_before_mb": before, "rss_end_mb": at_end, "rss_after_mb": after}
            print(f"stress {results['stress']}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    results["load_average"]["end"] = os.getloadavg()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _median(rounds):
    ips = [r["images_per_s"] for r in rounds]
    statuses = {}
    for r in rounds:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {"images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips),
            "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
            "p99_ms": statistics.median(r["p99_ms"] for r in rounds), "statuses": statuses}


def report(results):
    load = results["load_average"]
    lines = [f"{results['date']}, `{results['command']}`, {results['cpu']}, {results['threads']} threads, "
             f"tier {results['isa']}, idle threads {'spinning' if results['spin'] else 'sleeping'}; medians of "
             f"{results['repeats']} rounds of {results['seconds']:g} s; load average (1, 5, 15 min) "
             f"{'/'.join(f'{x:.1f}' for x in load['start'])} at the start, "
             f"{'/'.join(f'{x:.1f}' for x in load['end'])} at the end",
             "", "| clients | server | images/s (min-max) | p50 ms | p99 ms | failed | 503 |",
             "|---|---|---|---|---|---|---|"]
    for clients, by_server in results["load"].items():
        for name, r in by_server.items():
            failed = sum(v for k, v in r["statuses"].items() if k not in ("200", "503"))
            lines.append(f"| {clients} | {name} | {r['images_per_s']:.0f} ({r['min']:.0f}-{r['max']:.0f}) | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {failed} | {r['statuses'].get('503', 0)} |")
    lines += ["", "| clients | batching on / off | cyconv / ONNX Runtime |", "|---|---|---|"]
    for clients, r in results["load"].items():
        on = r["cyconv, batching on"]["images_per_s"]
        lines.append(f"| {clients} | {on / r['cyconv, batching off']['images_per_s']:.2f}x | "
                     f"{on / r['ONNX Runtime, batching on']['images_per_s']:.2f}x |")
    s = results["stress"]
    if s:
        lines += ["", f"stress: {s['clients']} clients for {s['seconds']:g} s: statuses {s['statuses']}; "
                      f"{s['images_per_s']:.0f} images/s answered 200, p99 {s['p99_ms']:.1f} ms; resident memory "
                      f"{s['rss_before_mb']:.0f} MB before, {s['rss_end_mb']:.0f} MB at the end, "
                      f"{s['rss_after_mb']:.0f} MB 3 s later"]
    return "\n".join(lines)


def _cpu():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs"
    return platform.processor() or "unknown CPU"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", help="a LeNet-5 checkpoint (default: random weights)")
    p.add_argument("--stress-clients", type=int, default=512)
    p.add_argument("--stress-seconds", type=float, default=20.0)
    p.add_argument("--json")
    p.add_argument("--spin", action="store_true",
                   help="leave the model's threads spinning when idle (OpenMP's and ONNX Runtime's default)")
    p.add_argument("--quick", action="store_true", help="32 clients, 1 round of 5 s, stress of 5 s")
    # A server process of this file:
    p.add_argument("--server", choices=("cyconv", "onnxruntime"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--max-wait-ms", type=float, default=2.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds, args.repeats, args.stress_seconds = [32], 5.0, 1, 5.0
    return args


if __name__ == "__main__":
    arguments = parse_args()
    serve_main(arguments) if arguments.server else main(arguments)
