"""How many threads cyconv uses, and keeping BLAS from fighting OpenMP for the cores.

One number, `get_num_threads()`, is the OpenMP team size of every compiled
kernel. Default: `OMP_NUM_THREADS` when set, else the number of cores this
process may run on. Each kernel call then takes as many of them as its work
justifies (`threads_for`), and fewer while the cores are busy with other
processes (`record_work_split`, below). Results do not depend on the thread
count: every kernel splits its work so that each output is computed the same
way whatever the number of threads.

Every GEMM of cyconv (convolution and linear layers) is a single-threaded call
to SciPy's BLAS from inside one of our OpenMP threads, so there is only one
thread pool, ours. To keep it that way cyconv sets the OpenBLAS that SciPy's
`cython_blas` uses to one thread (see `_kernels.blas_single_threaded`); NumPy's
own BLAS, when it is a separate library as in the PyPI wheels, is not touched.
"""

import ctypes
import os
import threading
import time
from pathlib import Path

from threadpoolctl import ThreadpoolController

_num_threads = None          # the process-wide setting; None until first read (then the default)
_generation = 0              # bumped by every process-wide setting, so a block knows whether its own is current
_setting_lock = threading.Lock()
_blocks = threading.local()  # .counts: this thread's open `with set_num_threads(n)` blocks, innermost last


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _openblas_thread_functions(lib):
    """(get, set) num_threads of one OpenBLAS, whatever its symbol prefix/suffix."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


def _scipy_openblas_libs():
    """The OpenBLAS libraries that scipy.linalg.cython_blas may be calling.

    SciPy's wheels bundle their own (under scipy.libs/); a SciPy built against a
    system OpenBLAS shares it with NumPy, and then that one must be pinned too.
    MKL needs nothing: it runs single-threaded inside an OpenMP region.
    """
    openblas = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers
                if lib.internal_api == "openblas"]
    scipy_own = [lib for lib in openblas
                 if "scipy" in str(Path(lib.filepath).parent).lower()
                 and "numpy" not in str(Path(lib.filepath).parent).lower()]
    return scipy_own or openblas


def blas_description():
    """The BLAS that scipy.linalg.cython_blas calls, e.g. 'openblas 0.3.30 (Haswell)'."""
    libs = _scipy_openblas_libs() or ThreadpoolController().select(user_api="blas").lib_controllers
    if not libs:
        return "unknown"
    info = libs[0].info()
    arch = f" ({info['architecture']})" if info.get("architecture") else ""
    return f"{info['internal_api']} {info.get('version') or ''}".strip() + arch


def _install_blas_hooks():
    """Give the kernels C pointers to get/set_num_threads of SciPy's OpenBLAS."""
    from . import _kernels

    hooks = []
    for lib in _scipy_openblas_libs():
        functions = _openblas_thread_functions(lib)
        if functions is not None:
            hooks.append(tuple(ctypes.cast(f, ctypes.c_void_p).value for f in functions))
    _kernels.set_blas_thread_hooks(hooks)


# Waking a thread costs a few microseconds, and far more when the core is busy
# with another process (the whole parallel region waits for it), so a thread
# is only started for at least this many element operations (~10-20 us of work).
MIN_WORK_PER_THREAD = 1 << 15


def threads_for(work_items, work_per_item=MIN_WORK_PER_THREAD, *, split=None):
    """Threads for work_items independent items of work_per_item element operations
    each: at most one per item, only as many as the work justifies, and fewer while
    some of the cores are found busy (record_work_split).

    split: (items, work_per_item), the finer way a kernel shares the same work out
    when it has fewer work_items than threads (a convolution: its images, else each
    image's output columns); the count is then what either way justifies.

    The one place that decides how many threads a kernel runs on: every kernel call
    of cyconv.layers.functional, and the compiled predictor's, takes its count here."""
    available = _busy.threads(get_num_threads())

    def justified(items, per_item):
        return max(1, min(available, items, (items * per_item) // MIN_WORK_PER_THREAD))

    nt = justified(work_items, work_per_item)
    return nt if split is None else max(nt, justified(*split))


class _BusyCores:
    """Leaves out, for a while, as many threads as do not get their cores.

    When another process keeps a core busy (a laptop with a browser open), the OS
    shares that core between it and one of cyconv's threads, and every parallel
    region waits for the descheduled thread: 2 threads ran slower than 1. The
    convolutions hand out images to whichever thread is free, so the split of the
    images between threads says how much CPU each one really got: on a quiet
    machine every thread takes its share; a thread on a busy core takes far less.
    When, over a few calls, some threads took under SLOW of their share, cyconv runs
    on that many threads fewer for a while (BACKOFF seconds, doubling while the
    cores stay busy, up to MAX_BACKOFF), then tries all of them again: on 16 cores
    with one busy, 15 threads, not one. Which core is the busy one does not matter,
    only how many are: the OS moves threads between cores. Results are the same bits
    either way (see the module docstring).
    """

    SLOW = 0.75        # a thread's share of the items, relative to an even split, that counts as slow
    SMOOTHING = 0.25   # weight of the newest call in the running estimate
    # Items per thread, on average, below which a split says nothing: with fewer, every thread takes one
    # whatever its speed. 2 lets the backward's 16 chunks of images speak up to 8 threads (the forward's
    # images, 64 in a training batch, speak up to 32).
    MIN_ITEMS = 2
    BACKOFF = 2.0      # seconds on fewer threads before trying them all again ...
    MAX_BACKOFF = 32.0  # ... doubling up to this while the cores stay busy
    RECOVERED = 16     # calls in a row with every thread at its share: back to BACKOFF

    def __init__(self):
        self.reset()

    def reset(self):
        self.estimate = 1.0  # running estimate of the slowest thread's share
        self.slow = self.weight = 0.0  # running mean of how many threads fall behind (and its weight so far)
        self.dropped = 0     # threads left out until `until`
        self.until, self.backoff, self.good_calls = 0.0, self.BACKOFF, 0

    def threads(self, n):
        if self.dropped and time.monotonic() < self.until:
            return max(1, n - self.dropped)
        return n

    def record(self, split):
        nt, total = len(split), sum(split)
        if nt < 2 or total < self.MIN_ITEMS * nt or time.monotonic() < self.until:
            return
        share = min(split) * nt / total
        slow = sum(1 for items in split if items * nt < self.SLOW * total)
        self.estimate = (1 - self.SMOOTHING) * self.estimate + self.SMOOTHING * share
        # Weighted by how many calls it has seen, so that the first few calls count at their value, not near 0.
        self.slow = (1 - self.SMOOTHING) * self.slow + self.SMOOTHING * slow
        self.weight = (1 - self.SMOOTHING) * self.weight + self.SMOOTHING
        self.good_calls = self.good_calls + 1 if share >= self.SLOW else 0
        if self.good_calls >= self.RECOVERED:
            self.backoff = self.BACKOFF
        if self.estimate < self.SLOW:
            self.dropped = min(max(1, round(self.slow / self.weight)), nt - 1)
            self.until = time.monotonic() + self.backoff
            self.backoff = min(2 * self.backoff, self.MAX_BACKOFF)
            self.estimate, self.slow, self.weight = 1.0, 0.0, 0.0


_busy = _BusyCores()


def record_work_split(split, items):
    """After a parallel kernel that handed out its `items` dynamically: how many each thread took.

    The kernels count into one process-wide array, so a call that overlapped another one's (two Python
    threads running convolutions at once) reads counts of both, or counts the other reset halfway: such
    a split does not add up to its own items, and says nothing about the cores. It is left out."""
    if sum(split) == items:
        _busy.record(split)


def get_num_threads():
    """The number of OpenMP threads cyconv's kernels use (in this thread: see set_num_threads)."""
    counts = getattr(_blocks, "counts", None)
    if counts:
        return counts[-1]
    return _process_num_threads()


def _process_num_threads():
    global _num_threads
    if _num_threads is None:
        with _setting_lock:
            if _num_threads is None:
                _num_threads = _default_num_threads()
    return _num_threads


class set_num_threads:
    """Set the number of threads cyconv's kernels use.

    Called plainly it sets the count for the whole process, at once and for
    good. Used as a context manager it sets the count of the calling thread
    only, for the block, so that Python threads can each run a block with their
    own count (a server's request handlers, say) and every exit restores what
    that thread had::

        cyconv.set_num_threads(2)
        with cyconv.set_num_threads(1):
            y = F.conv2d(x, w)      # single-threaded here, in this thread

    Kernels use fewer threads when their work is small, and fewer for a while
    when some cores are found busy (see _BusyCores); a new setting starts again
    with all of them. In a build without OpenMP the kernels run on one thread
    whatever this says.
    """

    def __init__(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads(): n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"set_num_threads(): n must be >= 1, got {n}")
        global _num_threads, _generation
        # The call cannot know yet whether a `with` follows, so it sets the process-wide count, and
        # __enter__ moves it to the thread. Another thread may run a kernel with n threads in between:
        # that changes no result (the kernels give the same bits on any thread count), only its speed.
        self._n, self._entered = n, False
        with _setting_lock:
            self._previous = _num_threads if _num_threads is not None else _default_num_threads()
            _num_threads = n
            _generation += 1
            self._generation = _generation
        _busy.reset()  # a new setting starts with every thread

    def _undo_process_setting(self):
        """Put the process-wide count back, unless another setting has been made since ours (it stands)."""
        global _num_threads
        with _setting_lock:
            if _generation == self._generation:
                _num_threads = self._previous

    def __enter__(self):
        self._undo_process_setting()
        if not hasattr(_blocks, "counts"):
            _blocks.counts = []
        _blocks.counts.append(self._n)
        self._entered = True
        return self

    def __exit__(self, *exc):
        if self._entered:
            _blocks.counts.pop()  # blocks of one thread close innermost first
            self._entered = False
        else:  # __exit__ called by hand after a plain call
            self._undo_process_setting()
        return False

    def __repr__(self):
        return f"set_num_threads({get_num_threads()})"
