"""Shared pieces of the kernel tests: the `kernels` marker and the ISA tiers they
run on, one tolerance table, random data, memory layouts and the geometry grids.

Test modules import the helpers with ``from conftest import ...`` (pytest's default
"prepend" import mode puts this directory on sys.path).
"""

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest

import cyconv
import cyconv._kernels as _kernels
import cyconv.functional as F
import cyconv.reference as R

DTYPES = [np.float32, np.float64]

# Every kernel is checked in both implementations where the check does not need
# an independent answer (gradient checks, adjoint identity, special values).
MODULES = [pytest.param(F, id="functional"), pytest.param(R, id="reference")]

# Compiled kernels and NumPy sum products in different orders; float32 keeps
# ~7 digits, so a few hundred terms leave ~1e-5 relative noise. float64 leaves ~1e-13.
TOL = {
    np.float32: dict(rtol=2e-4, atol=2e-5),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}


# The verified MNIST copy beside the checkout (CI clones the repo with ../shared beside it).
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def mnist_candidates():
    """Where the tests look for MNIST, in order, as (directory or None, how it was chosen): where
    cyconv itself looks ($CYCONV_DATA, then its default data directory), with the verified copy
    beside the checkout second."""
    from cyconv import data

    env = os.environ.get(data.ENV_VAR)
    return [(Path(env).expanduser() if env else None, f"${data.ENV_VAR}"),
            (SHARED_MNIST, "../shared/data/mnist beside the checkout"),
            (data.default_data_dir(), "cyconv's default data directory")]


def locate_mnist(candidates):
    """The first candidate directory holding the four MNIST files with their official MD5s.
    Raises LookupError with one line: every place tried, why it did not do, and the fix."""
    from cyconv import data

    tried = []
    for path, why in candidates:
        if path is None:
            tried.append(f"{why} (unset)")
            continue
        try:
            data.load_mnist(path)
        except data.MNISTNotFoundError:
            tried.append(f"{path} ({why}: files missing)")
        except (data.MNISTFormatError, OSError) as e:
            tried.append(f"{path} ({why}: {type(e).__name__})")
        else:
            return path
    raise LookupError(
        f"MNIST for the tests not found; tried {'; '.join(tried)}. Fix: run `cyconv download` (it puts the "
        f"verified files in {data.default_data_dir()}), or set {data.ENV_VAR} to a directory with the four files")


@pytest.fixture(scope="session")
def mnist_dir():
    """The directory holding the four MNIST files, looked for where cyconv looks (mnist_candidates).
    A missing copy fails the tests that need it, loudly: they are real tests, not optional ones."""
    try:
        return locate_mnist(mnist_candidates())
    except LookupError as e:
        pytest.fail(str(e), pytrace=False)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernels: tests of the compiled kernels against cyconv.reference, run once per ISA tier "
        "(CI also runs them against the serial, no-OpenMP build)",
    )
    config.addinivalue_line("markers", "mnist: tests that read MNIST (given to every test using mnist_dir)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mnist)


# Every kernel test runs once per ISA tier the CPU supports (the `isa` fixture, which
# the kernel test modules use through KERNEL_TESTS), or only on CYCONV_ISA's tier when
# that is set. The pytest header says which tiers ran.
ISAS = [os.environ["CYCONV_ISA"].strip()] if os.environ.get("CYCONV_ISA", "").strip() else cyconv.supported_isas()
KERNEL_TESTS = [pytest.mark.kernels, pytest.mark.usefixtures("isa")]


def pytest_report_header(config):
    unsupported = [t for t in ("avx512", "avx2", "generic") if t not in cyconv.supported_isas()]
    chosen = " (CYCONV_ISA)" if os.environ.get("CYCONV_ISA", "").strip() else ""
    return (f"cyconv {cyconv.__version__}: kernel tests on ISA tiers {', '.join(ISAS)}{chosen}; "
            f"tiers this CPU cannot run: {', '.join(unsupported) or 'none'}; "
            f"OpenMP {cyconv.openmp_enabled()}, compiler {_kernels.compiler()}")


@pytest.fixture(autouse=True)
def fresh_thread_governor():
    """Every test starts with all of cyconv's threads: a test that oversubscribes the cores
    (two Python threads calling kernels at once) must not leave the next on one thread."""
    from cyconv.kernels import threads as _threads

    _threads._busy.reset()
    yield


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test with the kernels on one ISA tier, then restore the default."""
    with cyconv.set_isa(request.param):
        yield request.param


def assert_close(actual, expected, dtype, err_msg=""):
    """``actual`` has ``dtype`` and the shape of ``expected``, and matches it within TOL[dtype].

    atol is scaled by the largest magnitude in ``expected``: an entry of a sum
    that cancels to ~0 still carries the rounding error of its terms, and those
    are about as large as the array's largest entries.
    """
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype, f"{err_msg} dtype {actual.dtype}, expected {dtype}"
    tol = TOL[dtype.type]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(
        actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=err_msg, strict=True
    )


# ---------------------------------------------------------------------------
# Data


def random_array(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def distinct_array(rng, shape, dtype):
    """Distinct values in (-1/2, 1/2), none closer than 1/(4*size) to zero.

    For comparisons where ReLU's kink or a max-pooling tie would make two correct
    implementations disagree; the gaps also dwarf a finite-difference step.
    """
    size = math.prod(shape)
    values = (rng.permutation(size) - size / 2 + 0.25) / size
    return values.reshape(shape).astype(dtype)


LAYOUTS = ["sliced", "transposed", "fortran"]


def relayout(a, layout):
    """The values of ``a`` in a memory layout other than C-contiguous.

    sliced: every other element of a twice-as-wide buffer; transposed: a view
    of a contiguous copy of the last two axes swapped; fortran: column-major.
    A 1-D array is only ever made non-contiguous by slicing.
    """
    if layout == "sliced":
        buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        out = buffer[..., ::2]
        out[...] = a
    elif layout == "transposed":
        out = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2) if a.ndim >= 2 else a
    elif layout == "fortran":
        out = np.asfortranarray(a)
    else:
        raise ValueError(layout)
    # Guard the test itself: a layout that happens to be contiguous tests nothing
    # (use shapes whose last two axes are longer than 1).
    if a.ndim >= 2 or layout == "sliced":
        assert not out.flags.c_contiguous, (layout, a.shape)
    np.testing.assert_array_equal(out, a)
    return out


# ---------------------------------------------------------------------------
# Geometry


def ident(value):
    """A short test id: (3, 5) -> "3x5", 2 -> "2"."""
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def pair(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def fits(hw, kernel, padding):
    """The kernel fits in the padded input along both axes."""
    return all(k <= n + 2 * p for n, k, p in zip(hw, pair(kernel), pair(padding)))


# Convolution / im2col grid: odd sizes, H != W, non-square kernel, stride and padding.
CONV_KERNELS = [1, 3, 5, (3, 5)]
CONV_STRIDES = [1, 2, 3, (1, 2)]
CONV_PADDINGS = [0, 1, 2, (2, 0)]


def geometry_param(image_shape, kernel, stride, padding):
    """pytest.param(image_shape, kernel, stride, padding) with an id like 3x2x6x5-k3x5-s1-p2x0."""
    name = f"{ident(image_shape)}-k{ident(kernel)}-s{ident(stride)}-p{ident(padding)}"
    return pytest.param(image_shape, kernel, stride, padding, id=name)


# Wider than one 16-lane vector, and kernels wider than 16: the AVX-512 paths
# of im2col / col2im / im2row, the own GEMM's column tails and row panels, and
# the direct weight gradient of large planes (the grid above is all narrower
# than 8 pixels).
WIDE_GEOMETRIES = [
    geometry_param((2, 3, 9, 37), (3, 5), 1, (1, 2)),
    geometry_param((1, 2, 6, 33), (2, 17), 1, (0, 8)),
    geometry_param((3, 20, 14, 14), 5, 1, 2),  # LeNet-5's conv2
    geometry_param((2, 1, 28, 28), 5, 1, 2),  # LeNet-5's conv1: the direct weight gradient
    geometry_param((2, 3, 34, 24), (4, 3), 1, 1),
    geometry_param((1, 2, 40, 31), (2, 6), 1, (0, 3)),
    geometry_param((2, 4, 11, 40), 3, (2, 1), 1),
    geometry_param((2, 4, 11, 40), 3, (1, 2), 1),
]


# The float convolutions' two GEMM paths: BLAS, and cyconv's own (one micro-kernel per tier).
GEMM_PATHS = [pytest.param(False, id="blas-gemm"), pytest.param(True, id="own-gemm")]


@pytest.fixture(params=GEMM_PATHS)
def gemm_path(request):
    """Run the test with float convolutions on one GEMM path, then restore the default."""
    previous = _kernels.set_own_gemm(request.param)
    yield request.param
    _kernels.set_own_gemm(previous)


@pytest.fixture
def own_gemm():
    """Run the test with float convolutions and linear layers on cyconv's own GEMM, whatever CYCONV_GEMM says."""
    previous = _kernels.set_own_gemm(True)
    yield True
    _kernels.set_own_gemm(previous)


def conv_grid(image_shapes):
    """Geometry params for every combination in which the kernel fits;
    ``image_shape`` is (N, C, H, W)."""
    return [
        geometry_param(*combination)
        for combination in itertools.product(image_shapes, CONV_KERNELS, CONV_STRIDES, CONV_PADDINGS)
        if fits(combination[0][2:], combination[1], combination[3])
    ]
