"""Thread control and thread safety: the get/set API, results that do not depend
on the OpenMP thread count, and concurrent calls from Python threads.

Also run against the serial (no-OpenMP) build: the setting is still kept, and the
determinism checks hold trivially."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from cyconv import _kernels, functional
from cyconv.kernels import threads as _threads
from conftest import KERNEL_TESTS, DTYPES, assert_close, distinct_array, random_array

pytestmark = KERNEL_TESTS


def test_openmp_enabled_says_whether_parallel_regions_run_on_several_threads():
    # The team a kernel's parallel region really gets: 3 threads in an OpenMP build, 1 in a serial one; asked
    # in a child without OMP_THREAD_LIMIT and OMP_DYNAMIC, with which the runtime may give fewer (the kernels
    # cope: the rest of this file passes under them).
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_THREAD_LIMIT", "OMP_DYNAMIC")}
    out = subprocess.run([sys.executable, "-c", "import cyconv._kernels as k; print(k.team_size(3))"], env=env,
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) == (3 if cyconv.openmp_enabled() else 1)
    assert cyconv.build_info()["openmp"] is cyconv.openmp_enabled()


@pytest.mark.parametrize("value, expected", [
    ("3", 3), ("3,2", 3), (" 2 ", 2), ("0", None), ("-1", None), ("abc", None), ("", None), (None, None),
], ids=repr)
def test_default_thread_count_reads_omp_num_threads(value, expected):
    # The first value of OMP_NUM_THREADS (its nested-levels syntax) when it is a positive int,
    # else the CPUs this process may run on.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if value is not None:
        env["OMP_NUM_THREADS"] = value
    code = "import os, cyconv; print(cyconv.get_num_threads(), len(os.sched_getaffinity(0)))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    got, cpus = map(int, out.stdout.split())
    assert got == (expected if expected is not None else cpus)


def test_set_num_threads_applies_at_once_and_restores_on_exit():
    before = cyconv.get_num_threads()
    restore = cyconv.set_num_threads(1)
    assert cyconv.get_num_threads() == 1
    with restore:
        pass
    assert cyconv.get_num_threads() == before

    with cyconv.set_num_threads(1):
        assert cyconv.get_num_threads() == 1
    assert cyconv.get_num_threads() == before


def test_set_num_threads_restores_after_exception():
    before = cyconv.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with cyconv.set_num_threads(1):
            raise RuntimeError("inside")
    assert cyconv.get_num_threads() == before


def in_thread(target):
    t = threading.Thread(target=target)
    t.start()
    return t


def test_set_num_threads_blocks_in_two_threads_each_keep_their_own():
    # Blocks opened in two Python threads and closed out of order (A opens, B opens, A closes, B closes):
    # inside, each thread has its own count; afterwards the process has the count from before.
    before = cyconv.get_num_threads()
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with cyconv.set_num_threads(before + 1):
            a_open.set()
            b_open.wait(10)
            seen["a"] = cyconv.get_num_threads()
        a_closed.set()

    def b():
        a_open.wait(10)
        with cyconv.set_num_threads(before + 2):
            b_open.set()
            a_closed.wait(10)
            seen["b"] = cyconv.get_num_threads()
        seen["b after"] = cyconv.get_num_threads()

    for t in [in_thread(a), in_thread(b)]:
        t.join()
    assert seen == {"a": before + 1, "b": before + 2, "b after": before}
    assert cyconv.get_num_threads() == before


def test_a_plain_set_num_threads_is_for_the_whole_process():
    before = cyconv.get_num_threads()
    seen = []
    try:
        cyconv.set_num_threads(before + 1)
        in_thread(lambda: seen.append(cyconv.get_num_threads())).join()
    finally:
        cyconv.set_num_threads(before)
    assert seen == [before + 1]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_num_threads_sizes_the_kernels_teams(n):
    # Enough work for every thread: the kernels take exactly the setting.
    with cyconv.set_num_threads(n):
        assert _threads.threads_for(1000) == n
        assert _threads.threads_for(1) == 1  # one item of work never wakes a second thread


@pytest.mark.parametrize(
    "n, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)], ids=repr
)
def test_set_num_threads_rejects(n, error):
    before = cyconv.get_num_threads()
    with pytest.raises(error, match=r"set_num_threads\(\)"):
        cyconv.set_num_threads(n)
    assert cyconv.get_num_threads() == before


# ---------------------------------------------------------------------------
# Results do not depend on the thread count, bit for bit: the kernels parallelise
# over the axis that owns the writes (images for forward and grad_x, planes for
# pooling, fixed column blocks for the linear layers), and the convolutions sum
# grad_weight and grad_bias over chunks of images fixed by the batch size alone.
# (So cyconv may change its thread count at run time without changing a result.)

BATCH = 8  # enough images that two threads both get work
# Pooling, ReLU, im2col and linear start a second thread only for enough work
# (cyconv.kernels.threads.threads_for): inputs of this size give each thread plenty.
BIG = (BATCH, 4, 48, 40)


def with_threads(n, compute):
    with cyconv.set_num_threads(n):
        return compute()


def one_and_two_threads(compute):
    return with_threads(1, compute), with_threads(2, compute)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_independent_of_thread_count(dtype):
    rng = np.random.default_rng(0)
    x = random_array(rng, (BATCH, 3, 11, 10), dtype)
    weight = random_array(rng, (4, 3, 3, 3), dtype)
    bias = random_array(rng, (4,), dtype)
    grad_y = random_array(rng, (BATCH, 4, 6, 5), dtype)  # stride 2, padding 1

    y1, y2 = one_and_two_threads(lambda: F.conv2d(x, weight, bias, 2, 1))
    np.testing.assert_array_equal(y1, y2)

    (gx1, gw1, gb1), (gx2, gw2, gb2) = one_and_two_threads(lambda: F.conv2d_backward(grad_y, x, weight, 2, 1))
    np.testing.assert_array_equal(gx1, gx2)
    np.testing.assert_array_equal(gw1, gw2)
    np.testing.assert_array_equal(gb1, gb2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [3, 17, 64], ids=lambda n: f"{n}-images")
def test_fused_conv_gradients_independent_of_thread_count(dtype, batch):
    # LeNet's conv2 -> ReLU -> pool, and its backward: batches smaller than, equal
    # to and larger than the number of gradient chunks.
    rng = np.random.default_rng(6)
    x = random_array(rng, (batch, 6, 14, 14), dtype)
    weight = random_array(rng, (8, 6, 5, 5), dtype)
    bias = random_array(rng, (8,), dtype)
    (y1, i1), (y2, i2) = one_and_two_threads(
        lambda: F.conv2d_relu_max_pool2d(x, weight, bias, 1, 2, return_indices=True))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(i1, i2)
    grad_y = random_array(rng, y1.shape, dtype)
    g1, g2 = one_and_two_threads(lambda: F.conv2d_relu_max_pool2d_backward(grad_y, y1, i1, x, weight, 1, 2))
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,padding", [(5, 2), (1, 0)], ids=["5x5", "direct-1x1"])
@pytest.mark.parametrize("batch", [1, 2], ids=["1-image", "2-images"])
def test_conv2d_fewer_images_than_threads(dtype, kernel, padding, batch):
    # With fewer images than threads, conv2d splits each image's GEMM into column
    # blocks across the threads (inference latency); check that path against the
    # reference and against one thread. batch + 1 threads: always more threads than images.
    rng = np.random.default_rng(5)
    x = random_array(rng, (batch, 20, 14, 13), dtype)
    weight = random_array(rng, (50, 20, kernel, kernel), dtype)
    bias = random_array(rng, (50,), dtype)
    y1 = with_threads(1, lambda: F.conv2d(x, weight, bias, 1, padding))
    with cyconv.set_num_threads(batch + 1):
        assert batch < functional._conv_threads(functional._conv_geometry("t", x, weight, 1, padding))
        y_many = F.conv2d(x, weight, bias, 1, padding)
    assert_close(y_many, R.conv2d(x, weight, bias, 1, padding), dtype)
    np.testing.assert_array_equal(y_many, y1)  # column blocks compute each element the same way


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_independent_of_thread_count(dtype):
    rng = np.random.default_rng(1)
    x = random_array(rng, BIG, dtype)
    cols1, cols2 = one_and_two_threads(lambda: F.im2col(x, 3, 1, 1))
    np.testing.assert_array_equal(cols1, cols2)

    x1, x2 = one_and_two_threads(lambda: F.col2im(cols1, x.shape, 3, 1, 1))
    np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_independent_of_thread_count(dtype):
    rng = np.random.default_rng(2)
    x = distinct_array(rng, BIG, dtype)
    (y1, i1), (y2, i2) = one_and_two_threads(lambda: F.max_pool2d(x, 3, 2, 1, return_indices=True))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(i1, i2)

    grad_y = random_array(rng, y1.shape, dtype)
    g1, g2 = one_and_two_threads(lambda: F.max_pool2d_backward(grad_y, i1, x.shape))
    np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [2, 9], ids=["gemv", "gemm"])
def test_linear_independent_of_thread_count(dtype, batch):
    rng = np.random.default_rng(4)
    x = random_array(rng, (batch, 600), dtype)  # grad_x: 3 column blocks
    weight = random_array(rng, (300, 600), dtype)  # 300 outputs: column blocks of 256 and 44
    bias = random_array(rng, (300,), dtype)
    y1, y2 = one_and_two_threads(lambda: F.linear(x, weight, bias))
    np.testing.assert_array_equal(y1, y2)
    grad_y = random_array(rng, y1.shape, dtype)
    (gx1, gw1, gb1), (gx2, gw2, gb2) = one_and_two_threads(lambda: F.linear_backward(grad_y, x, weight))
    for a, b in ((gx1, gx2), (gw1, gw2), (gb1, gb2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_independent_of_thread_count(dtype):
    rng = np.random.default_rng(3)
    x = distinct_array(rng, BIG, dtype)
    grad_y = random_array(rng, x.shape, dtype)
    y1, y2 = one_and_two_threads(lambda: F.relu(x))
    np.testing.assert_array_equal(y1, y2)
    g1, g2 = one_and_two_threads(lambda: F.relu_backward(grad_y, x))
    np.testing.assert_array_equal(g1, g2)


def test_concurrent_calls_from_python_threads():
    """The kernels release the GIL; two Python threads calling conv2d at once on
    different data must each get the serial answer, every time."""
    rng = np.random.default_rng(4)
    weight = random_array(rng, (4, 3, 3, 3), np.float32)
    inputs = [random_array(rng, (BATCH, 3, 24, 23), np.float32) for _ in range(2)]
    expected = [F.conv2d(x, weight, None, 1, 1) for x in inputs]

    start = threading.Barrier(len(inputs))
    failures = []  # exceptions in a thread do not fail the test by themselves

    def worker(x, want):
        try:
            start.wait()
            for i in range(200):
                got = F.conv2d(x, weight, None, 1, 1)
                if not np.array_equal(got, want):
                    failures.append(f"iteration {i}: result differs from the serial answer")
                    return
        except Exception as error:
            failures.append(repr(error))

    threads = [threading.Thread(target=worker, args=pair) for pair in zip(inputs, expected)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


# ---------------------------------------------------------------------------
# Busy cores: the convolutions hand images to threads as they come free and report
# the split; cyconv.kernels.threads leaves out, for a while, as many threads as keep getting
# far less than their share (their cores are busy with other processes).

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def busy(monkeypatch):
    """A fresh governor on a fake clock, installed as cyconv's."""
    clock = FakeClock()
    monkeypatch.setattr(_threads.time, "monotonic", clock)
    governor = _threads._BusyCores()
    monkeypatch.setattr(_threads, "_busy", governor)
    governor.clock = clock
    return governor


def test_even_splits_keep_every_thread(busy):
    for _ in range(100):
        busy.record([32, 32])
        busy.record([30, 34])
    assert busy.threads(2) == 2


def test_one_uneven_call_is_not_enough(busy):
    busy.record([54, 10])  # the OS took the core away once
    assert busy.threads(2) == 2


def test_a_thread_that_keeps_falling_behind_means_one_thread_for_a_while(busy):
    for _ in range(10):
        busy.record([43, 21])  # a worker at half speed: its core is shared with another process
    assert busy.threads(2) == 1
    assert busy.threads(1) == 1
    busy.clock.now += busy.BACKOFF + 0.01
    assert busy.threads(2) == 2  # then all threads again: maybe the other process has ended


def test_backoff_doubles_while_the_cores_stay_busy_and_resets_after(busy):
    def slow_calls():
        for _ in range(10):
            busy.record([43, 21])

    slow_calls()
    first = busy.until - busy.clock.now
    busy.clock.now = busy.until + 0.01
    slow_calls()
    assert busy.until - busy.clock.now == pytest.approx(2 * first)
    busy.clock.now = busy.until + 0.01
    for _ in range(busy.RECOVERED):
        busy.record([32, 32])
    slow_calls()
    assert busy.until - busy.clock.now == pytest.approx(first)


def test_a_slow_main_thread_counts_too(busy):
    for _ in range(10):
        busy.record([5, 11])
    assert busy.threads(2) == 1


def test_small_splits_say_nothing(busy):
    for _ in range(20):
        busy.record([3, 0])  # 3 images: too few to tell a slow thread from a coarse split
        busy.record([1])
    assert busy.threads(2) == 2


def test_a_slow_thread_among_many_leaves_only_itself_out(busy):
    # 16 cores, one busy: the other 15 keep up, and keep working (one thread would be ~15x slower).
    for _ in range(10):
        busy.record([8] * 15 + [2])
    assert busy.threads(16) == 15
    assert busy.threads(4) == 3  # a block of fewer threads (set_num_threads) may meet the busy core too
    busy.clock.now += busy.BACKOFF + 0.01
    assert busy.threads(16) == 16


def test_as_many_threads_left_out_as_fall_behind(busy):
    for _ in range(10):
        busy.record([8] * 5 + [2, 3, 1])  # 8 threads, 3 of them on busy cores
    assert busy.threads(8) == 5


def test_the_backward_at_eight_threads_is_observed(busy):
    # The convolutions' backward hands out 16 chunks of images, whatever the batch: 2 per thread at 8.
    for _ in range(10):
        busy.record([2, 2, 2, 2, 2, 2, 3, 1])
    assert busy.threads(8) == 7


def test_kernels_use_the_threads_that_keep_up_while_backing_off(busy):
    n = cyconv.get_num_threads()
    assert _threads.threads_for(1000) == min(1000, n)
    busy.dropped, busy.until = 1, busy.clock.now + 1
    assert _threads.threads_for(1000) == max(1, min(1000, n) - 1)


@pytest.mark.skipif(not cyconv.openmp_enabled(), reason="the serial build runs one thread")
def test_concurrent_callers_feed_the_governor_only_their_own_splits(monkeypatch):
    """Two Python threads running convolutions at once count into the kernels' one array: a split that
    mixes their counts (or was reset halfway by the other) must not reach the governor, where it looked
    like a slow thread and set off a backoff."""
    seen = []

    class Spy(_threads._BusyCores):
        def record(self, split):
            seen.append(list(split))

    monkeypatch.setattr(_threads, "_busy", Spy())
    rng = np.random.default_rng(5)
    weight = random_array(rng, (4, 3, 3, 3), np.float32)
    inputs = [random_array(rng, (BATCH, 3, 12, 12), np.float32) for _ in range(2)]
    start = threading.Barrier(len(inputs))

    def worker(x):
        with cyconv.set_num_threads(2):
            start.wait()
            for _ in range(300):
                F.conv2d(x, weight, None, 1, 1)

    threads = [threading.Thread(target=worker, args=(x,)) for x in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen, "no split reached the governor"
    assert all(sum(split) == BATCH for split in seen), [split for split in seen if sum(split) != BATCH][:5]


@pytest.mark.skipif(not cyconv.openmp_enabled(), reason="the serial build runs one thread")
def test_convolutions_report_how_they_split_the_images():
    rng = np.random.default_rng(7)
    x = random_array(rng, (BATCH, 3, 12, 12), np.float32)
    weight = random_array(rng, (4, 3, 3, 3), np.float32)
    with cyconv.set_num_threads(2):
        y = F.conv2d(x, weight, None, 1, 1)
        split = _kernels.last_work_split(2)
        assert len(split) == 2 and sum(split) == BATCH  # every image, once
        F.conv2d_backward(random_array(rng, y.shape, np.float32), x, weight, 1, 1)
        assert sum(_kernels.last_work_split(2)) == _kernels.weight_grad_chunks(BATCH)


# ---------------------------------------------------------------------------
# BLAS threads: every GEMM is a single-threaded call from inside one of cyconv's own threads,
# so the OpenBLAS behind scipy.linalg.cython_blas must stay at one thread even if someone
# (threadpoolctl, a user, another library) sets it higher.

def _scipy_openblas():
    return _threads._scipy_openblas_libs()


@pytest.mark.skipif(not _scipy_openblas(), reason="SciPy is not built on OpenBLAS here (MKL needs no pinning)")
def test_kernels_put_scipys_openblas_back_to_one_thread():
    lib = _scipy_openblas()[0]
    lib.set_num_threads(2)
    assert lib.num_threads == 2
    x = np.ones((8, 300), np.float32)
    F.linear(x, np.ones((70, 300), np.float32))  # a BLAS GEMM from inside cyconv's threads
    assert lib.num_threads == 1


def test_blas_hooks_found_scipys_openblas():
    # The C pointers the kernels call: found for every OpenBLAS SciPy may be calling.
    hooks = [_threads._openblas_thread_functions(lib) for lib in _threads._scipy_openblas_libs()]
    assert all(h is not None for h in hooks)
    assert "openblas" in _threads.blas_description() or not hooks
