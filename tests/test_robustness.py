"""Robustness: Python threads calling the kernels and training at once, memory that stays flat over
thousands of calls (and failed calls), and training that survives SIGKILL and stops cleanly on Ctrl-C.

Concurrent results are compared bit for bit with serial ones at the same thread count (the kernels'
results depend on nothing else). Leaks are measured, not timed: resident memory after a warm-up and
after the loop, with a bound far above noise but below what leaking one output per call would cost.
The fault tests run `python -m cyconv train` on the verified MNIST copy (conftest's mnist_dir) and
kill it at moments drawn from a seeded RNG.
"""

import gc
import json
import os
import re
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
from cyconv.checkpoint import load_checkpoint
from cyconv.data import MNIST
from cyconv.models import lenet5, mlp
from cyconv.optim import SGD
from cyconv.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, predict_logits, train

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
# Faults during training: SIGKILL, then --resume; Ctrl-C


EPOCHS = 5
TEMP_FILE = re.compile(rf"^\.({re.escape(CHECKPOINT_NAME)}|{re.escape(METRICS_NAME)})\..+\.tmp$")


def train_argv(out, mnist_dir, epochs=EPOCHS):
    # 6,000 images: epochs of ~30 ms, long enough for the kill and Ctrl-C windows below to land inside
    # a run (with 2,000 the faster kernels finished the last epochs within a window now and then).
    return ["train", "--model", "mlp", "--hidden", "16", "--limit", "6000", "--epochs", str(epochs),
            "--seed", "3", "--out", str(out), "--no-progress", "--threads", "1", "--data", str(mnist_dir)]


# Every os.fsync sleeps first, so the window between writing a checkpoint's temp file and renaming it
# is wide enough to land a signal in.
SLOW_FSYNC = ("import os, sys, time; fsync = os.fsync; "
              "os.fsync = lambda fd: (time.sleep(0.2), fsync(fd))[1]; "
              "from cyconv.cli import main; sys.exit(main())")


class Cyconv:
    """`python -m cyconv ARGS` in the background; stdout lines are collected as they come."""

    def __init__(self, argv, slow_fsync=False):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CYCONV_NO_DOWNLOAD": "1"}
        env.pop("CYCONV_DEBUG", None)
        head = ["-c", SLOW_FSYNC] if slow_fsync else ["-m", "cyconv"]
        self.proc = subprocess.Popen([sys.executable, *head, *map(str, argv)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
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

    def wait_for(self, prefix, timeout=60):
        """Wait until a stdout line starts with prefix; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            if self.proc.poll() is not None:
                self._readers[0].join(5)
                return any(line.startswith(prefix) for line in self.lines)
            time.sleep(0.002)
        raise AssertionError(f"no line starting with {prefix!r} within {timeout} s: {self.lines}")

    def finish(self, timeout=120):
        self.proc.wait(timeout=timeout)
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
    """Check what a killed run left in `out`, then finish the run; return the epochs the checkpoint held."""
    temp_files_only(out)
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


# (stdout line to wait for, then a random delay of up to this many seconds): a kill anywhere in the
# first epochs (all five take ~0.2 s), and two after the first checkpoint (epoch 2's line is printed
# after epoch 1 was saved).
KILL_TRIALS = [("training ", 0.1), ("epoch 2/", 0.03), ("epoch 4/", 0.03)]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(mnist_dir, reference_run, tmp_path):
    rng = np.random.default_rng(20261126)
    held = []
    for trial, (line, longest) in enumerate(KILL_TRIALS):
        out = tmp_path / f"trial{trial}"
        proc = Cyconv(train_argv(out, mnist_dir))
        if proc.wait_for(line):
            time.sleep(rng.uniform(0, longest))
        proc.proc.send_signal(signal.SIGKILL)
        proc.finish()
        held.append(resume_after_kill(out, mnist_dir))
        assert_same_run(out, reference_run)
    assert any(1 <= done < EPOCHS for done in held), f"no kill landed between checkpoints: {held}"


def wait_for_temp_file(out, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and any(TEMP_FILE.match(p.name) and p.name.startswith(f".{CHECKPOINT_NAME}")
                                for p in out.iterdir()):
            return
        assert proc.proc.poll() is None, "the run ended before it wrote a second checkpoint"
        time.sleep(0.002)
    raise AssertionError("no checkpoint temp file appeared")


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(mnist_dir, reference_run, tmp_path):
    out = tmp_path / "run"
    proc = Cyconv(train_argv(out, mnist_dir), slow_fsync=True)
    proc.wait_for("epoch 2/")
    wait_for_temp_file(out, proc)  # the epoch-2 checkpoint is being written (fsync sleeps before rename)
    proc.proc.send_signal(signal.SIGKILL)
    proc.finish()
    assert temp_files_only(out), "the killed writer's temp file should still be there"
    assert load_checkpoint(out / CHECKPOINT_NAME).epoch == 1
    assert resume_after_kill(out, mnist_dir) == 1
    assert_same_run(out, reference_run)


INTERRUPTED = re.compile(r"^cyconv: interrupted; last complete checkpoint: (.+) \(after epoch (\d+)\); "
                         r"continue with --resume$")


def assert_clean_interrupt(status, err, out):
    """Exit 130, one line naming the checkpoint and the epochs it really holds, no traceback."""
    assert status == 130, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    match = INTERRUPTED.match(lines[0])
    assert match, lines[0]
    assert Path(match[1]) == out / CHECKPOINT_NAME
    assert load_checkpoint(out / CHECKPOINT_NAME).epoch == int(match[2]) >= 1
    temp_files_only(out)
    assert not temp_files_only(out), "Ctrl-C during a save must remove its temp file"


def test_ctrl_c_at_random_moments_stops_cleanly(mnist_dir, tmp_path):
    rng = np.random.default_rng(130)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        proc = Cyconv(train_argv(out, mnist_dir, epochs=40))
        assert proc.wait_for("epoch 2/")
        time.sleep(rng.uniform(0, 0.1))
        proc.proc.send_signal(signal.SIGINT)
        status, _, err = proc.finish()
        assert_clean_interrupt(status, err, out)


def test_ctrl_c_while_a_checkpoint_is_written_names_the_previous_one(mnist_dir, tmp_path):
    out = tmp_path / "run"
    proc = Cyconv(train_argv(out, mnist_dir), slow_fsync=True)
    proc.wait_for("epoch 2/")
    wait_for_temp_file(out, proc)
    # Written in a few ms, then fsync sleeps: the Ctrl-C lands between the write and the rename. (Not at
    # the moment the temp file appears: see test_ctrl_c_inside_the_zip_writer_is_still_an_interrupt.)
    time.sleep(0.05)
    proc.proc.send_signal(signal.SIGINT)
    status, _, err = proc.finish()
    assert_clean_interrupt(status, err, out)
    assert load_checkpoint(out / CHECKPOINT_NAME).epoch == 1


def test_ctrl_c_right_after_the_first_checkpoint_is_renamed_names_it(mnist_dir, tmp_path):
    """A Ctrl-C while atomic_write fsyncs the directory, after the rename: the new file is complete and
    in place, so it is the one to name (it used to say that no checkpoint was written)."""
    out = tmp_path / "run"
    proc = Cyconv(train_argv(out, mnist_dir), slow_fsync=True)
    deadline = time.monotonic() + 60
    while not (out / CHECKPOINT_NAME).exists():
        assert proc.proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.001)
    proc.proc.send_signal(signal.SIGINT)
    status, _, err = proc.finish()
    assert_clean_interrupt(status, err, out)
    assert load_checkpoint(out / CHECKPOINT_NAME).epoch == 1


# The abandoned ZipFile inside np.savez still complains from its __del__ in this microsecond window
# (cosmetic: one "Exception ignored" message); what matters is that the interrupt comes out.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_inside_the_zip_writer_is_still_an_interrupt(tmp_path, monkeypatch):
    """Deterministic stand-in for a SIGINT that lands between ZipFile.open(name, "w") setting
    `_writing` and np.savez entering its `with`: train() must still raise TrainingInterrupted (the CLI
    then exits 130), not let a ValueError out (the CLI says "error: Can't close the ZIP file", exit 1,
    and the abandoned ZipFile prints a traceback from its __del__)."""
    import zipfile

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    data = random_mnist(64, 16, 0)
    config = TrainConfig(model="mlp", hidden=8, epochs=1, batch_size=32)
    monkeypatch.setattr(zipfile._ZipWriteFile, "__init__", ctrl_c)
    try:
        train(config, data, out_dir=tmp_path, progress=False, log=quiet)
    except KeyboardInterrupt:
        return
    except ValueError as error:
        pytest.fail(f"Ctrl-C came out as {error!r}")
    pytest.fail("train() finished although the checkpoint write was interrupted")
