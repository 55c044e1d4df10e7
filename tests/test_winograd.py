"""Winograd convolution (algorithm="winograd", csrc/winograd.c) and the algorithm choice: every
tile against the float64 reference and against im2col on every ISA tier and both dtypes, float64
gradient checks, results independent of the thread count, the measured error table, and the
errors an algorithm raises for a layer it cannot run (functional and nn.Conv2d).

Tolerance. Winograd's transforms multiply by coefficients up to 5.25 (F(6x6): 21/4 and 32/45) and
the GEMM sums transformed values that are larger than the inputs, so float32 rounding grows with
the tile. Measured here (2026, Sapphire Rapids), max |y - reference| / max |reference| over
random layers of ResNet-like shapes (C = O in 16..512, planes 7..56, batch 1, weights scaled by
1/sqrt(fan_in)), forward and input gradient, the worst tier (generic; avx512 in brackets):

    algorithm           float32 forward        float32 input gradient
    im2col              5.7e-07 (2.6e-07)      4.5e-07 (2.7e-07)
    F(2x2, 3x3)         1.0e-06 (4.2e-07)      6.7e-07 (4.8e-07)
    F(4x4, 3x3)         1.2e-05 (7.7e-06)      1.5e-05 (1.0e-05)
    F(6x6, 3x3)         2.1e-05 (1.5e-05)      2.3e-05 (1.3e-05)
    F(2x2, 5x5)         1.1e-05 (6.2e-06)      1.2e-05 (7.0e-06)
    F(4x4, 5x5)         1.5e-05 (9.5e-06)      1.6e-05 (9.7e-06)

(float64: ~1e-14 for every tile.) The tests hold Winograd to WINOGRAD_TOL, an atol 5x the worst
error measured above, scaled by the output's largest magnitude as conftest's TOL is: looser than
im2col's rtol 2e-4 / atol 2e-5 in that the elementwise rtol is dropped (an output that cancels
to ~0 carries the error of the transformed terms, which are ~max |y|, not ~|y|).
"""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.nn as nn
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

WINOGRAD_TOL = {np.float32: 1e-4, np.float64: 1e-11}  # atol, times max(1, max |expected|)
TILES = [pytest.param(3, m, id=f"F{m}x3") for m in (2, 4, 6)] + [pytest.param(5, m, id=f"F{m}x5") for m in (2, 4)]


def assert_winograd_close(actual, expected, dtype, err_msg=""):
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype, f"{err_msg} dtype {actual.dtype}, expected {dtype}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=WINOGRAD_TOL[dtype.type] * scale, err_msg=err_msg,
                               strict=True)


# (N, C, O, H, W, padding): partial tiles on both axes, O < C and O > C, padding 0 .. r (past r - 1:
# the input gradient crops dy), one output pixel, planes wider than one vector of tiles.
SHAPES = [
    pytest.param((2, 3, 5, 9, 11, 1), id="n2-c3-o5-9x11-p1"),
    pytest.param((1, 4, 2, 7, 6, 0), id="n1-c4-o2-7x6-p0"),
    pytest.param((3, 2, 3, 6, 5, 2), id="n3-c2-o3-6x5-p2"),
    pytest.param((1, 2, 2, 5, 5, 3), id="n1-c2-o2-5x5-p3"),
    pytest.param((2, 5, 7, 17, 40, 1), id="n2-c5-o7-17x40-p1"),
    pytest.param((5, 3, 4, 12, 12, (1, 0)), id="n5-c3-o4-12x12-p1x0"),
]


def make(rng, shape, r, dtype):
    N, C, O, H, W, padding = shape
    x = random_array(rng, (N, C, H, W), dtype)
    weight = random_array(rng, (O, C, r, r), dtype)
    bias = random_array(rng, (O,), dtype)
    return x, weight, bias, padding


def fits(shape, r):
    _, _, _, H, W, padding = shape
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    return H + 2 * ph >= r and W + 2 * pw >= r


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r, m", TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_matches_reference_and_im2col(shape, r, m, dtype):
    if not fits(shape, r):
        pytest.skip("the kernel is larger than the padded input")
    x, weight, bias, padding = make(np.random.default_rng(0), shape, r, dtype)
    algorithm = f"winograd{m}"
    y = F.conv2d(x, weight, bias, 1, padding, algorithm=algorithm)
    assert_winograd_close(y, R.conv2d(x, weight, bias, 1, padding), dtype, "vs reference")
    assert_winograd_close(y, F.conv2d(x, weight, bias, 1, padding, algorithm="im2col"), dtype, "vs im2col")

    grad_y = random_array(np.random.default_rng(1), y.shape, dtype)
    got = F.conv2d_backward(grad_y, x, weight, 1, padding, algorithm=algorithm)
    want = R.conv2d_backward(grad_y, x, weight, 1, padding)
    assert_winograd_close(got[0], want[0], dtype, "grad_x")
    for name, g, w in zip(["grad_weight", "grad_bias"], got[1:], want[1:]):  # im2col's kernel
        assert_close(g, w, dtype, err_msg=name)


@pytest.mark.parametrize("r, m", TILES)
def test_winograd_gradcheck(r, m):
    rng = np.random.default_rng(2)
    x, weight, bias, padding = make(rng, (2, 2, 3, 6, 7, 1), r, np.float64)
    algorithm = f"winograd{m}"
    f = lambda x_, w_, b_: F.conv2d(x_, w_, b_, 1, padding, algorithm=algorithm)  # noqa: E731
    g = random_array(rng, f(x, weight, bias).shape, np.float64)
    grad_x, grad_weight, grad_bias = F.conv2d_backward(g, x, weight, 1, padding, algorithm=algorithm)
    assert_grad(grad_x, projection(lambda x_: f(x_, weight, bias), g), x)
    assert_grad(grad_weight, projection(lambda w_: f(x, w_, bias), g), weight)
    assert_grad(grad_bias, projection(lambda b_: f(x, weight, b_), g), bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 40])
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_same_bits_for_any_thread_count(m, n, dtype):
    """1 and 2 threads, one image (the stages split across threads), a few (images grouped into
    one GEMM), many (groups handed to threads): the same bits."""
    rng = np.random.default_rng(3)
    x = random_array(rng, (n, 6, 10, 9), dtype)
    weight = random_array(rng, (7, 6, 3, 3), dtype)
    bias = random_array(rng, (7,), dtype)
    grad_y = random_array(rng, (n, 7, 10, 9), dtype)
    results = []
    for threads in (1, 2):
        with cyconv.set_num_threads(threads):
            results.append((F.conv2d(x, weight, bias, 1, 1, algorithm=f"winograd{m}"),
                            F.conv2d_backward(grad_y, x, weight, 1, 1, algorithm=f"winograd{m}")[0]))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    # an image's result does not depend on the batch it came in
    one = F.conv2d(x[-1:], weight, bias, 1, 1, algorithm=f"winograd{m}")
    np.testing.assert_array_equal(one, results[0][0][-1:])


def test_winograd_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    assert F.conv2d(x, w, None, 1, 1, algorithm="winograd").shape == (0, 4, 8, 8)
    grad_x, grad_w, grad_b = F.conv2d_backward(np.zeros((0, 4, 8, 8), np.float32), x, w, 1, 1, algorithm="winograd")
    assert grad_x.shape == x.shape and not grad_w.any() and not grad_b.any()


def test_error_table_within_tolerance():
    """The table in this module's docstring, re-measured at small scale on the running tier."""
    rng = np.random.default_rng(4)
    for r, tiles in ((3, (2, 4, 6)), (5, (2, 4))):
        for C, H in ((64, 14), (16, 32)):
            x = rng.standard_normal((1, C, H, H))
            w = rng.standard_normal((C, C, r, r)) / np.sqrt(C * r * r)
            ref = R.conv2d(x, w, None, 1, r // 2)
            for m in tiles:
                y = F.conv2d(x.astype(np.float32), w.astype(np.float32), None, 1, r // 2, algorithm=f"winograd{m}")
                err = np.abs(y - ref).max() / np.abs(ref).max()
                assert err < WINOGRAD_TOL[np.float32] / 4, (r, m, C, H, err)


# ---------------------------------------------------------------------------
# Choosing the algorithm


def test_conv_algorithm_heuristic():
    ca = F.conv_algorithm
    assert ca(64, 64, 56, 56, 3, 3, 1, 1) == "winograd4"          # ResNet-18 layer1
    assert ca(256, 256, 14, 14, 3, 3, 1, 1) == "winograd2"
    assert ca(512, 512, 7, 7, 3, 3, 1, 1, batch=32) == "winograd2"
    assert ca(512, 512, 7, 7, 3, 3, 1, 1, batch=1) == "im2col"    # the filter transform is not repaid
    assert ca(16, 16, 32, 32, 3, 3, 1, 1) == "im2col"             # ResNet-20: too few channels
    assert ca(20, 50, 14, 14, 5, 5, 1, 2) == "im2col"             # LeNet-5 conv2
    assert ca(64, 64, 56, 56, 3, 3, 2, 1) == "direct"             # stride 2, 28x28 outputs: csrc/direct.c
    assert ca(256, 512, 14, 14, 3, 3, 2, 1) == "im2col"           # stride 2, 7x7 outputs
    assert ca(64, 64, 56, 56, 3, 3, 2, 1, dtype=np.float64) == "im2col"
    assert ca(64, 128, 56, 56, 1, 1, 2, 0) == "direct"            # ResNet's downsample shortcut
    assert ca(3, 64, 224, 224, 7, 7, 2, 3) == "direct"            # the stem
    assert ca(64, 64, 56, 56, 3, 3, 1, 1, dtype=np.float64) == "im2col"
    assert ca(64, 128, 28, 28, 1, 1) == "direct"
    assert ca(32, 32, 56, 56, 3, 3, 1, 1, groups=32) == "direct"  # depthwise
    assert ca(32, 64, 56, 56, 3, 3, 1, 1, groups=2) == "im2col"


BAD = [
    pytest.param("winograd", dict(stride=2), id="winograd-stride2"),
    pytest.param("winograd", dict(dilation=2, padding=2), id="winograd-dilated"),
    pytest.param("winograd", dict(groups=2), id="winograd-grouped"),
    pytest.param("winograd6", dict(kernel=5, padding=2), id="winograd6-5x5"),
    pytest.param("winograd", dict(kernel=1, padding=0), id="winograd-1x1"),
    pytest.param("direct", dict(), id="direct-3x3"),
    pytest.param("direct", dict(kernel=3, dilation=2, padding=2), id="direct-dilated"),
    pytest.param("direct", dict(kernel=5, padding=2), id="direct-5x5-stride1"),
    pytest.param("fft", dict(), id="unknown"),
]


@pytest.mark.parametrize("algorithm, geometry", BAD)
def test_algorithm_that_cannot_run_the_shape_raises(algorithm, geometry):
    g = dict(kernel=3, stride=1, padding=1, dilation=1, groups=1) | geometry
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4 // g["groups"], g["kernel"], g["kernel"]), np.float32)
    args = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
    match = r"algorithm" if algorithm == "fft" else r"this layer has kernel_size"
    with pytest.raises(ValueError, match=r"conv2d\(\).*" + match):
        F.conv2d(x, w, algorithm=algorithm, **args)
    with pytest.raises(ValueError, match=r"conv2d_backward\(\).*" + match):
        F.conv2d_backward(F.conv2d(x, w, **args), x, w, algorithm=algorithm, **args)
    with pytest.raises(ValueError, match=r"Conv2d.*" + match):  # when the layer is built
        nn.Conv2d(4, 4, g["kernel"], algorithm=algorithm, **args)


def test_direct_takes_1x1_and_depthwise():
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 4, 6, 5), np.float32)
    for w, groups in ((random_array(rng, (3, 4, 1, 1), np.float32), 1), (random_array(rng, (4, 1, 3, 3), np.float32), 4)):
        pad = w.shape[-1] // 2
        y = F.conv2d(x, w, None, 1, pad, groups=groups, algorithm="direct")
        assert_close(y, R.conv2d(x, w, None, 1, pad, groups=groups), np.float32)
        # forcing im2col runs a depthwise layer through im2col + GEMM per group: the same values
        assert_close(F.conv2d(x, w, None, 1, pad, groups=groups, algorithm="im2col"), y, np.float32)
        g = random_array(rng, y.shape, np.float32)
        for a, b in zip(F.conv2d_backward(g, x, w, 1, pad, groups=groups, algorithm="direct"),
                        F.conv2d_backward(g, x, w, 1, pad, groups=groups, algorithm="im2col")):
            assert_close(a, b, np.float32)


def test_set_conv_algorithm_overrides_auto_only():
    rng = np.random.default_rng(6)
    x = random_array(rng, (1, 3, 9, 9), np.float32)
    w = random_array(rng, (3, 3, 3, 3), np.float32)
    plain = F.conv2d(x, w, None, 1, 1)                       # auto: im2col at 3 channels
    wino = F.conv2d(x, w, None, 1, 1, algorithm="winograd6")
    assert not np.array_equal(plain, wino)
    with F.set_conv_algorithm("winograd6"):
        assert F.get_conv_algorithm() == "winograd6"
        np.testing.assert_array_equal(F.conv2d(x, w, None, 1, 1), wino)
        np.testing.assert_array_equal(F.conv2d(x, w, None, 1, 1, algorithm="im2col"), plain)  # explicit wins
        with pytest.raises(ValueError, match=r"CYCONV_CONV_ALGO.*stride"):
            F.conv2d(x, w, None, 2, 1)                       # the override cannot run stride 2
    assert F.get_conv_algorithm() == "auto"
    with pytest.raises(ValueError, match=r"set_conv_algorithm\(\)"):
        F.set_conv_algorithm("fast")


def test_env_override_read_at_import():
    import subprocess
    import sys

    code = "import cyconv.functional as F; print(F.get_conv_algorithm())"
    env = dict(__import__("os").environ, CYCONV_CONV_ALGO="im2col")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "im2col"


def test_nn_conv2d_runs_its_algorithm():
    rng = np.random.default_rng(7)
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng, algorithm="winograd4")
    assert conv.algorithm == "winograd4" and "algorithm='winograd4'" in repr(conv)
    x = random_array(rng, (2, 3, 8, 8), np.float32)
    y = conv(x)
    np.testing.assert_array_equal(y, F.conv2d(x, conv.weight.data, conv.bias.data, 1, 1, algorithm="winograd4"))
    gx = conv.backward(np.ones_like(y))
    want = F.conv2d_backward(np.ones_like(y), x, conv.weight.data, 1, 1, algorithm="winograd4")
    np.testing.assert_array_equal(gx, want[0])
    np.testing.assert_array_equal(conv.weight.grad, want[1])
    assert nn.Conv2d(3, 4, 3).algorithm == "auto"
