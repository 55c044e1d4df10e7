"""Keep freed array memory in the process for reuse, as PyTorch's caching allocator does: for the
`cyconv` command's own process only.

A layer's output and gradient are fresh NumPy arrays each step. glibc's malloc serves an array of
more than a few MB with mmap, or frees it back to the system when it ends up at the top of the heap,
and the next step's array of the same size then starts as pages the kernel must map and zero again.
Measured (batch_norm forward + backward of small_cnn's first layer, batch 64, 2 threads, 16.8 MB
arrays): 7.5 ms a step, of which 4.5 ms were that; 3.0 ms with the memory kept.

keep_freed_memory() raises glibc malloc's mmap threshold to its largest (32 MB on 64-bit: larger
arrays are still mapped and unmapped each time) and its trim threshold to KEEP_BYTES, with mallopt():
the process then keeps up to KEEP_BYTES of freed memory at the top of its heap, which later arrays
reuse, and its resident size stays near its peak. That is a setting of the whole process, which
cannot be undone, so `import cyconv` never makes it: a web server or notebook importing cyconv keeps
its malloc. The `cyconv` command makes it for its own process (cyconv.cli.command), and a program of
one's own that trains with cyconv may call keep_freed_memory() itself. CYCONV_MALLOC=system makes it
do nothing; another value is a warning, and malloc is left alone. Elsewhere than glibc (macOS, musl,
Windows) nothing changes.
"""

import ctypes
import os
import sys
import warnings

ENV = "CYCONV_MALLOC"
KEEP_BYTES = 1 << 30
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

tuned = False  # whether this process's malloc was tuned (for build_info and the tests)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says, unless CYCONV_MALLOC=system; True if done."""
    global tuned
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "keep", "system"):
        warnings.warn(f"{ENV} must be 'keep' or 'system', got {os.environ[ENV]!r}; malloc is left as it is",
                      RuntimeWarning, stacklevel=2)
        return False
    if choice == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: musl has mallopt too, with other semantics
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
    return tuned
