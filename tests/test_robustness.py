"""Robustness: Python threads calling the kernels and training at once, memory that stays flat over
thousands of calls (and failed calls), and training that survives SIGKILL and stops cleanly on Ctrl-C.

Concurrent results are compared bit for bit with serial ones at the same thread count (the kernels'
results depend on nothing else). Leaks are measured, not timed: resident memory after a warm-up and
after the loop, with a bound far above noise but below what leaking one output per call would cost.
Ctrl-C during an atomic write is sent, in-process, while other threads run kernels, to the process or
to one of those threads. The fault tests run `python -m cyconv train` on the verified MNIST copy
(conftest's mnist_dir) and kill or interrupt it exactly where atomic_write's test hook
(_files._test_pause) stops it, and Ctrl-C it at moments drawn from a seeded RNG; nothing depends on how
fast a step runs.
"""

import gc
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
from cyconv import _files
from cyconv._files import atomic_write
from cyconv.checkpoint import load_checkpoint
from cyconv.data import MNIST
from cyconv.models import lenet5, mlp
from cyconv.optim import SGD
from cyconv.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, TrainingInterrupted, predict_logits, train

from conftest import distinct_array, random_array

TIMING = {"epoch_time_s", "images_per_s", "eval_time_s"}


def without_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def quiet(*args, **kwargs):
    pass


def run_threads(targets):
    """Start one thread per callable at the same moment; return their results, re-raising the first
    exception (an exception in a thread does not fail a test by itself)."""
    start = threading.Barrier(len(targets))
    results, errors = [None] * len(targets), []

    def wrap(i, target):
        try:
            start.wait()
            results[i] = target()
        except BaseException as error:  # re-raised by the caller, after every thread has ended
            errors.append(error)

    threads = [threading.Thread(target=wrap, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a thread hangs"
    if errors:
        raise errors[0]
    return results


def assert_same_arrays(a: dict, b: dict, what):
    assert a.keys() == b.keys(), what
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


@pytest.fixture(scope="module")
def two_threads():
    # Process-global, so set once for the whole module: each Python thread then runs OpenMP regions of
    # up to 2 threads, concurrently with the others.
    with cyconv.set_num_threads(2):
        yield


# ---------------------------------------------------------------------------------------------------------
# Concurrency


def random_mnist(n_train, n_test, seed):
    rng = np.random.default_rng(seed)
    return MNIST(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, np.uint8),
                 rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, np.uint8))


TRAIN_JOBS = [
    (TrainConfig(model="lenet5", epochs=1, batch_size=32, lr=0.02, seed=1), 1),
    (TrainConfig(model="lenet5", epochs=1, batch_size=48, lr=0.02, seed=2), 2),
    (TrainConfig(model="mlp", hidden=32, epochs=2, batch_size=16, lr=0.05, seed=3), 3),
]


def train_job(config, data_seed):
    result = train(config, random_mnist(128, 32, data_seed), progress=False, log=quiet)
    return result.model.state_dict(), result.optimizer.state_dict(), without_timing(result.metrics)


def test_concurrent_training_equals_serial_training(two_threads):
    serial = [train_job(*job) for job in TRAIN_JOBS]
    concurrent = run_threads([lambda job=job: train_job(*job) for job in TRAIN_JOBS])
    for (config, _), want, got in zip(TRAIN_JOBS, serial, concurrent):
        assert_same_arrays(got[0], want[0], f"{config.model} seed {config.seed} weights")
        assert_same_arrays(got[1], want[1], f"{config.model} seed {config.seed} optimizer")
        assert got[2] == want[2]


def test_concurrent_inference_equals_serial_inference(two_threads):
    rng = np.random.default_rng(5)
    models = [lenet5(rng=np.random.default_rng(10)).eval(), lenet5(rng=np.random.default_rng(11)).eval(),
              mlp(hidden=64, rng=np.random.default_rng(12)).eval()]
    inputs = [random_array(rng, (n, 1, 28, 28), np.float32) for n in (40, 1, 64)]  # 1: the split-GEMM path
    serial = [predict_logits(m, x, 16) for m, x in zip(models, inputs)]

    def infer(model, x, want):
        for i in range(5):
            got = predict_logits(model, x, 16)
            np.testing.assert_array_equal(got, want, err_msg=f"pass {i}")

    run_threads([lambda a=a: infer(*a) for a in zip(models, inputs, serial)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_are_safe_while_another_kernel_runs(two_threads, dtype):
    """conv2d (forward and backward) in a loop in one thread while the other kernels run in another:
    every call gives the serial answer."""
    rng = np.random.default_rng(6)
    x = random_array(rng, (6, 3, 17, 16), dtype)
    w = random_array(rng, (5, 3, 3, 3), dtype)
    b = random_array(rng, (5,), dtype)
    gy = random_array(rng, (6, 5, 9, 8), dtype)
    p = distinct_array(rng, (6, 4, 14, 15), dtype)  # distinct: no max-pooling ties, no ReLU kinks
    gp = random_array(rng, (6, 4, 7, 7), dtype)
    lx, lw, lb = (random_array(rng, s, dtype) for s in ((30, 70), (20, 70), (20,)))
    lgy = random_array(rng, (30, 20), dtype)
    param, grad, buf = (random_array(rng, (3000,), dtype) for _ in range(3))

    def convolutions():
        y = F.conv2d(x, w, b, 2, 1)
        return [y, *F.conv2d_backward(gy, x, w, 2, 1)]

    def others():
        y, idx = F.max_pool2d(p, 2, return_indices=True)
        r = F.relu(p)
        p_, b_ = param.copy(), buf.copy()
        F.sgd_update(p_, grad, b_, 0.1, 0.9, 1e-3)
        return [y, idx, F.max_pool2d_backward(gp, idx, p.shape), r, F.relu_backward(p, r),
                F.linear(lx, lw, lb), *F.linear_backward(lgy, lx, lw), p_, b_]

    def loop(compute, want, times):
        for i in range(times):
            for j, (g, e) in enumerate(zip(compute(), want)):
                np.testing.assert_array_equal(g, e, err_msg=f"iteration {i}, output {j}")

    wants = convolutions(), others()
    run_threads([lambda: loop(convolutions, wants[0], 60), lambda: loop(others, wants[1], 150)])


# ---------------------------------------------------------------------------------------------------------
# Leaks

# Each loop allocates (and must free) well over LEAK_BOUND over its ITERATIONS, so leaking one output
# array per call would fail; allocator noise and caches stay far below it.
LEAK_BOUND = 20 * 2**20
ITERATIONS = 3000


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth(step, iterations=ITERATIONS, warmup=200):
    for _ in range(warmup):
        step()
    gc.collect()
    before = rss_bytes()
    for _ in range(iterations):
        step()
    gc.collect()
    return rss_bytes() - before


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
# AddressSanitizer keeps freed memory in quarantine, so resident memory grows by design.
not_under_asan = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                    reason="AddressSanitizer's quarantine holds freed memory")


@pytest.fixture
def one_thread():
    # The kernels allocate nothing in C (scratch comes from Python), so the thread count does not change
    # what could leak; one thread keeps thousands of tiny calls quick on a busy machine.
    with cyconv.set_num_threads(1):
        yield


@needs_proc
@not_under_asan
def test_kernel_loops_keep_memory_flat(one_thread):
    rng = np.random.default_rng(7)
    dtype = np.float32
    x = random_array(rng, (4, 3, 16, 16), dtype)
    w, b = random_array(rng, (8, 3, 3, 3), dtype), random_array(rng, (8,), dtype)
    gy = random_array(rng, (4, 8, 16, 16), dtype)
    p = distinct_array(rng, (4, 8, 16, 16), dtype)
    gp = random_array(rng, (4, 8, 8, 8), dtype)
    lx, lw, lb, lgy = (random_array(rng, s, dtype) for s in ((32, 128), (64, 128), (64,), (32, 64)))
    model = mlp(hidden=64, rng=np.random.default_rng(0))
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, labels = random_array(rng, (32, 1, 28, 28), dtype), rng.integers(0, 10, 32)
    inputs = [x, w, b, gy, p, gp, lx, lw, lb, lgy, images, labels]

    def step():
        F.conv2d(x, w, b, 1, 1)
        F.conv2d_backward(gy, x, w, 1, 1)
        y, idx = F.max_pool2d(p, 2, return_indices=True)
        F.max_pool2d_backward(gp, idx, p.shape)
        F.relu_backward(p, F.relu(p))
        F.linear(lx, lw, lb)
        F.linear_backward(lgy, lx, lw)
        _, grad = F.softmax_cross_entropy(model(images), labels)
        optimizer.zero_grad()
        model.backward(grad)
        optimizer.step()

    step()  # the model keeps (a view of) its last input for backward: count references after that
    refcounts = [sys.getrefcount(a) for a in inputs]
    # ~340 KB allocated per step: ~1 GB over the loop.
    growth = rss_growth(step)
    assert growth < LEAK_BOUND, f"resident memory grew by {growth / 2**20:.1f} MB over {ITERATIONS} steps"
    # A leaked reference to an input costs no memory when the input is the same object every time.
    assert [sys.getrefcount(a) for a in inputs] == refcounts


def failing_calls(rng):
    """Calls that each raise ValueError or TypeError, several after allocating outputs or scratch."""
    f32, f64 = np.float32, np.float64
    x = random_array(rng, (4, 3, 16, 16), f32)
    w3 = random_array(rng, (8, 3, 3, 3), f32)
    w2 = random_array(rng, (8, 2, 3, 3), f32)
    gy = random_array(rng, (4, 8, 16, 16), f32)
    p = random_array(rng, (4, 8, 16, 16), f32)
    _, idx = F.max_pool2d(p, 2, return_indices=True)
    bad_idx = idx.copy()
    bad_idx[-1, -1, -1, -1] = 10**6  # found by the kernel, after grad_x is allocated
    gp = random_array(rng, (4, 8, 8, 8), f32)
    lx, lw = random_array(rng, (32, 128), f32), random_array(rng, (64, 128), f32)
    frozen = random_array(rng, (256,), f32)
    frozen.flags.writeable = False
    logits = random_array(rng, (32, 10), f32)
    conv = cyconv.nn.Conv2d(3, 8, 3, rng=np.random.default_rng(0))
    return [
        (ValueError, lambda: F.conv2d(x, w2)),                               # channel mismatch
        (TypeError, lambda: F.conv2d(x, w3.astype(f64))),                    # mixed dtypes
        (TypeError, lambda: F.conv2d(x.astype(np.int32), w3)),               # int input
        (ValueError, lambda: F.conv2d(x, w3, padding=-1)),
        (ValueError, lambda: F.conv2d_backward(gy[:, :, :8], x, w3, 1, 1)),  # wrong grad_y shape
        (ValueError, lambda: F.max_pool2d_backward(gp, bad_idx, p.shape)),
        (ValueError, lambda: F.max_pool2d(p, 40)),                           # kernel larger than input
        (ValueError, lambda: F.relu_backward(p[:2], p)),
        (TypeError, lambda: F.relu(p.tolist())),
        (ValueError, lambda: F.linear(lx, lw[:, :100])),
        (ValueError, lambda: F.linear_backward(lx, lx, lw)),
        (ValueError, lambda: F.sgd_update(frozen, frozen, None, 0.1)),       # not writeable
        (ValueError, lambda: F.softmax_cross_entropy(logits, np.full(32, 10))),
        (ValueError, lambda: conv(x[:, :2])),
        (ValueError, lambda: conv.load_state_dict({"weight": w2})),
    ]


@needs_proc
def test_failing_calls_do_not_leak(one_thread):
    calls = failing_calls(np.random.default_rng(8))

    def step():
        for error, call in calls:
            try:
                call()
            except error:
                pass
            else:
                raise AssertionError("expected an error")

    growth = rss_growth(step, iterations=ITERATIONS // 3)
    assert growth < LEAK_BOUND, f"resident memory grew by {growth / 2**20:.1f} MB over failing calls"


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C during an atomic write, with other threads alive


@pytest.fixture
def busy_threads(two_threads):
    """Two Python threads running NumPy and cyconv kernels (on OpenMP's pool) until the test ends: the
    threads a training run has when Ctrl-C comes, any of which the kernel may hand SIGINT to."""
    stop = threading.Event()
    rng = np.random.default_rng(9)
    x, w = random_array(rng, (4, 3, 16, 16), np.float32), random_array(rng, (8, 3, 3, 3), np.float32)
    a = random_array(rng, (64, 64), np.float64)

    def spin():
        while not stop.is_set():
            F.conv2d(x, w)
            a @ a

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    yield threads
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a busy thread hangs"


SENDERS = {
    "to the process": lambda threads: os.kill(os.getpid(), signal.SIGINT),
    "to a worker thread": lambda threads: signal.pthread_kill(threads[0].ident, signal.SIGINT),
}


@pytest.fixture
def signal_arrived():
    """A function that returns once a signal with a Python handler has reached this process, in whichever
    thread: CPython's C handler writes its number to the wakeup fd, the main thread then runs the handler."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = signal.set_wakeup_fd(write)

    def wait():
        assert select.select([read], [], [], 60)[0], "no signal arrived within 60 s"
        os.read(read, 1)

    yield wait
    signal.set_wakeup_fd(previous)
    os.close(read)
    os.close(write)


@pytest.fixture
def pause_writer(monkeypatch):
    """pause_writer(point, action): atomic_write calls action() when it reaches `point`."""
    def install(point, action):
        monkeypatch.setattr(_files, "_test_pause", lambda at, path: action() if at == point else None)
    return install


PAYLOAD = b"new complete file " * 50_000


def write_payload(f):
    f.write(PAYLOAD)


def disk_full(f):
    f.write(b"half")
    raise OSError(28, "No space left on device")


def assert_written_in_place(target):
    assert target.read_bytes() == PAYLOAD
    assert os.listdir(target.parent) == [target.name], "a temp file was left"


@pytest.mark.parametrize("point", ["temp-created", "written", "renamed"])
@pytest.mark.parametrize("send", SENDERS, ids=list(SENDERS))
def test_ctrl_c_during_a_write_is_raised_after_the_rename(tmp_path, busy_threads, signal_arrived,
                                                          pause_writer, point, send):
    target = tmp_path / CHECKPOINT_NAME
    target.write_bytes(b"old")

    def ctrl_c():
        SENDERS[send](busy_threads)
        signal_arrived()

    pause_writer(point, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_payload)
    assert_written_in_place(target)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_write_goes_to_the_previous_handler_afterwards(tmp_path, busy_threads, signal_arrived,
                                                                       pause_writer):
    """A handler of the caller's own is called once, when the file is in place; atomic_write then returns."""
    target = tmp_path / CHECKPOINT_NAME
    calls = []

    def handler(signum, frame):
        calls.append((signum, target.exists() and target.read_bytes() == PAYLOAD))

    previous = signal.signal(signal.SIGINT, handler)
    try:
        pause_writer("written", lambda: (SENDERS["to a worker thread"](busy_threads), signal_arrived()))
        atomic_write(target, write_payload)
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert calls == [(signal.SIGINT, True)]
    assert_written_in_place(target)


def test_ctrl_c_during_a_failing_write_removes_the_temp_file_then_interrupts(tmp_path, signal_arrived,
                                                                             pause_writer):
    target = tmp_path / CHECKPOINT_NAME
    target.write_bytes(b"old")
    pause_writer("temp-created", lambda: (os.kill(os.getpid(), signal.SIGINT), signal_arrived()))

    with pytest.raises(KeyboardInterrupt) as interrupt:
        atomic_write(target, disk_full)
    assert isinstance(interrupt.value.__context__, OSError)  # the error is not lost: the traceback shows it
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == [target.name]


@pytest.mark.parametrize("handler", [signal.default_int_handler, signal.SIG_IGN, lambda signum, frame: None],
                         ids=["default", "ignore", "own"])
def test_atomic_write_puts_back_the_sigint_handler(tmp_path, handler):
    previous = signal.signal(signal.SIGINT, handler)
    try:
        atomic_write(tmp_path / "a", lambda f: f.write(b"a"))
        with pytest.raises(OSError):
            atomic_write(tmp_path / "b", disk_full)
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert os.listdir(tmp_path) == ["a"]


def test_atomic_write_works_outside_the_main_thread(tmp_path):
    """Only the main thread may set signal handlers; elsewhere nothing is deferred (nothing needs to be:
    Python raises KeyboardInterrupt in the main thread only)."""
    targets = [tmp_path / f"file{i}" for i in range(2)]
    run_threads([lambda t=t: atomic_write(t, write_payload) for t in targets])
    for target in targets:
        assert target.read_bytes() == PAYLOAD
    assert sorted(os.listdir(tmp_path)) == ["file0", "file1"]


# ---------------------------------------------------------------------------------------------------------
# Faults during training: SIGKILL, then --resume; Ctrl-C


EPOCHS = 5
TEMP_FILE = re.compile(rf"^\.({re.escape(CHECKPOINT_NAME)}|{re.escape(METRICS_NAME)})\..+\.tmp$")


def train_argv(out, mnist_dir, epochs=EPOCHS):
    # 6,000 images: epochs of ~30 ms, so the random Ctrl-Cs (within 0.1 s of a line) land in different
    # epochs and in their saves.
    return ["train", "--model", "mlp", "--hidden", "16", "--limit", "6000", "--epochs", str(epochs),
            "--seed", "3", "--out", str(out), "--no-progress", "--threads", "1", "--data", str(mnist_dir)]


# `python -c PAUSED POINT FILE N ARGS`: `cyconv ARGS` with atomic_write stopped at POINT (see
# _files._test_pause) the N-th time it writes FILE. It prints "paused" there and waits until a signal
# reaches the process, in any thread (CPython's C handler writes to the wakeup fd): a SIGKILL ends it
# at that point, a SIGINT is then handled by the run as it would be anywhere. (After 300 s without
# one it exits 3, so a failed test leaves no process behind for long.)
PAUSED = """
import os, select, signal, sys
from cyconv import _files
from cyconv.cli import main

point, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = 0

def pause(at, path):
    global seen
    if at == point and path.name == name:
        seen += 1
        if seen == n:
            read, write = os.pipe()
            os.set_blocking(write, False)
            signal.set_wakeup_fd(write)
            print("paused", flush=True)
            if not select.select([read], [], [], 300)[0]:
                os._exit(3)

_files._test_pause = pause
sys.exit(main(sys.argv[4:]))
"""


def _interruptible():
    """In the child before exec: SIGINT back to its default, so Python installs its Ctrl-C handler there
    even when these tests run where SIGINT is ignored (a background job of a non-interactive shell, as
    CI harnesses start them: ignored signals are inherited through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def python_ctrl_c_handler():
    """Every test here starts with Python's own Ctrl-C handler, whatever the test run inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class Cyconv:
    """`python -m cyconv ARGS` in the background, or with pause=(point, file, n) stopped at that write
    (see PAUSED); stdout lines are collected as they come."""

    def __init__(self, argv, pause=None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CYCONV_NO_DOWNLOAD": "1"}
        env.pop("CYCONV_DEBUG", None)
        head = ["-m", "cyconv"] if pause is None else ["-c", PAUSED, *map(str, pause)]
        self.proc = subprocess.Popen([sys.executable, *head, *map(str, argv)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_interruptible)
        self.lines, self.err = [], []
        # One reader per pipe, so neither can fill up and block the process.
        self._readers = [threading.Thread(target=self._read, args=(pipe, into), daemon=True)
                         for pipe, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, into):
        for line in pipe:
            into.append(line.rstrip("\n"))

    def wait_for(self, prefix, timeout=120):
        """Wait until a stdout line starts with prefix; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return
            if self.proc.poll() is not None:
                self._readers[0].join(5)
                assert any(line.startswith(prefix) for line in self.lines), \
                    f"the process ended (status {self.proc.returncode}) before a line starting with " \
                    f"{prefix!r}: {self.lines}, {self.err}"
                return
            time.sleep(0.002)
        raise AssertionError(f"no line starting with {prefix!r} within {timeout} s: {self.lines}")

    def finish(self, timeout=120):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode, "\n".join(self.lines), "".join(line + "\n" for line in self.err)


def run_cli(argv):
    return Cyconv(argv).finish()


def temp_files_only(out):
    """The files of `out` that are not the checkpoint or the metrics are atomic_write's temp files,
    left behind when the writer was killed."""
    stray = [p.name for p in out.iterdir() if p.name not in (CHECKPOINT_NAME, METRICS_NAME)]
    assert all(TEMP_FILE.match(name) for name in stray), stray
    return stray


def saved_metrics(out):
    path = out / METRICS_NAME
    return [m["epoch"] for m in json.loads(path.read_text())] if path.exists() else []


def assert_same_run(out, reference):
    final, want = load_checkpoint(out / CHECKPOINT_NAME), load_checkpoint(reference / CHECKPOINT_NAME)
    assert final.epoch == want.epoch == EPOCHS
    assert_same_arrays(final.model_state, want.model_state, "weights")
    assert_same_arrays(final.optimizer_state, want.optimizer_state, "optimizer state")
    assert without_timing(final.metrics) == without_timing(want.metrics)
    assert without_timing(json.loads((out / METRICS_NAME).read_text())) == without_timing(want.metrics)


@pytest.fixture(scope="module")
def reference_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    status, stdout, err = run_cli(train_argv(out, mnist_dir))
    assert status == 0, err
    return out


def resume_after_kill(out, mnist_dir):
    """Finish the run a SIGKILL stopped (--resume if it left a checkpoint, else from the start); return
    the epochs the checkpoint held."""
    if (out / CHECKPOINT_NAME).exists():
        done = load_checkpoint(out / CHECKPOINT_NAME).epoch  # raises on a corrupt or half-written file
        status, stdout, err = run_cli(["train", "--resume", "--out", out, "--data", mnist_dir, "--no-progress",
                                       "--threads", "1"])
        assert status == 0, err
        assert (f"resuming after epoch {done}" in stdout) if done < EPOCHS else ("nothing to do" in stdout)
    else:
        done = 0
        status, stdout, err = run_cli(train_argv(out, mnist_dir))
        assert status == 0, err
    return done


# Where a SIGKILL lands (the point, the file, the how-manieth write of it), and the epochs the checkpoint
# and the metrics file then hold (the epoch-1 files are written before epoch 2 is trained).
KILLS = [
    (("written", CHECKPOINT_NAME, 1), 0, []),  # before any checkpoint: the next run starts afresh
    (("temp-created", CHECKPOINT_NAME, 2), 1, [1]),
    (("written", CHECKPOINT_NAME, 2), 1, [1]),
    (("renamed", CHECKPOINT_NAME, 2), 2, [1]),  # a checkpoint ahead of the metrics file
    (("written", METRICS_NAME, 2), 2, [1]),
]


@pytest.mark.parametrize("pause, epochs, metrics", KILLS, ids=["-".join(map(str, k[0])) for k in KILLS])
def test_sigkill_while_writing_then_resume_equals_uninterrupted_run(mnist_dir, reference_run, tmp_path,
                                                                    pause, epochs, metrics):
    out = tmp_path / "run"
    proc = Cyconv(train_argv(out, mnist_dir), pause=pause)
    proc.wait_for("paused")
    proc.proc.send_signal(signal.SIGKILL)
    proc.finish()
    assert len(temp_files_only(out)) == (pause[0] != "renamed"), "the killed writer's temp file"
    assert saved_metrics(out) == metrics
    assert resume_after_kill(out, mnist_dir) == epochs  # checks the checkpoint is complete
    assert_same_run(out, reference_run)
    assert not temp_files_only(out), "the next run removes a killed writer's temp file"


INTERRUPTED = re.compile(r"^cyconv: interrupted; last complete checkpoint: (.+) \(after epoch (\d+)\); "
                         r"continue with: cyconv train --resume( .*)?$")


def assert_clean_interrupt(status, err, out):
    """Exit 130, one line naming the checkpoint and the epochs it really holds, no traceback, no temp
    file; return those epochs."""
    assert status == 130, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    match = INTERRUPTED.match(lines[0])
    assert match, lines[0]
    assert Path(match[1]) == out / CHECKPOINT_NAME
    assert load_checkpoint(out / CHECKPOINT_NAME).epoch == int(match[2]) >= 1
    assert not temp_files_only(out), "Ctrl-C during a save must not leave its temp file"
    return int(match[2])


# Where a Ctrl-C lands, and the epochs of the checkpoint and the metrics file the stopped run leaves:
# the file being written is always finished first.
CTRL_CS = [
    (("temp-created", CHECKPOINT_NAME, 1), 1, []),  # the first checkpoint is written, then named
    (("written", CHECKPOINT_NAME, 2), 2, [1]),
    (("renamed", CHECKPOINT_NAME, 1), 1, []),
    (("temp-created", METRICS_NAME, 2), 2, [1, 2]),
]


@pytest.mark.parametrize("pause, epochs, metrics", CTRL_CS, ids=["-".join(map(str, k[0])) for k in CTRL_CS])
def test_ctrl_c_while_writing_finishes_the_file_then_stops_cleanly(mnist_dir, tmp_path, pause, epochs, metrics):
    out = tmp_path / "run"
    proc = Cyconv(train_argv(out, mnist_dir), pause=pause)
    proc.wait_for("paused")
    proc.proc.send_signal(signal.SIGINT)
    status, _, err = proc.finish()
    assert assert_clean_interrupt(status, err, out) == epochs
    assert saved_metrics(out) == metrics


def test_ctrl_c_at_random_moments_stops_cleanly(mnist_dir, tmp_path):
    """Anywhere else too: in the kernels, between batches, inside np.savez's zip writer. The moments are
    drawn from a seeded RNG, but any moment after epoch 2's line (the first checkpoint is in place by then)
    must pass; 1,000 epochs (~30 s) keep the run going until the Ctrl-C comes, however late."""
    rng = np.random.default_rng(130)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        proc = Cyconv(train_argv(out, mnist_dir, epochs=1000))
        proc.wait_for("epoch 2/")
        time.sleep(rng.uniform(0, 0.1))
        proc.proc.send_signal(signal.SIGINT)
        status, _, err = proc.finish()
        assert_clean_interrupt(status, err, out)


# Fails on an "Exception ignored" from an abandoned ZipFile's __del__, which a KeyboardInterrupt inside
# np.savez used to cause.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_inside_the_zip_writer_waits_for_the_checkpoint(tmp_path, monkeypatch, busy_threads):
    """A SIGINT between ZipFile.open(name, "w") setting `_writing` and np.savez entering its `with`:
    raised there, it came out as "ValueError: Can't close the ZIP file" (the CLI said "error", exit 1).
    Held, the checkpoint is finished and train() raises TrainingInterrupted naming it."""
    import zipfile

    real = zipfile._ZipWriteFile.__init__

    def ctrl_c_then_open(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        real(*args, **kwargs)

    monkeypatch.setattr(zipfile._ZipWriteFile, "__init__", ctrl_c_then_open)
    config = TrainConfig(model="mlp", hidden=8, epochs=2, batch_size=32)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, random_mnist(64, 16, 0), out_dir=tmp_path, progress=False, log=quiet)
    assert (stopped.value.checkpoint, stopped.value.epochs_done) == (tmp_path / CHECKPOINT_NAME, 1)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).epoch == 1
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]
