"""The compiled kernels check the sizes they are handed.

cyconv.functional sizes every output and scratch buffer and picks the thread count; the kernels
used to trust that contract with bounds checks off, so a drift between the two would have been a
heap overwrite. Now each kernel checks its buffers once per call: a wrong size is a ValueError.
(These call cyconv._kernels directly, as only a bug in cyconv itself would.)"""

import numpy as np
import pytest

import cyconv
import cyconv._kernels as K
import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, assert_close

pytestmark = KERNEL_TESTS

N, C, H, W, O, KH = 4, 3, 8, 8, 5, 3
GEOM = (N, C, H, W, O, KH, KH, 1, 1, 1, 1, H, W)  # 3x3, stride 1, padding 1: Ho, Wo = H, W
KL = C * KH * KH * H * W


def arrays():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(N * C * H * W).astype(np.float32)
    weight = rng.standard_normal(O * C * KH * KH).astype(np.float32)
    return x, weight, np.zeros(O, np.float32)


@pytest.mark.parametrize("short", ["scratch", "y"])
def test_conv2d_forward_checks_its_buffers(short):
    x, weight, bias = arrays()
    y = np.empty(N * O * H * W - (1 if short == "y" else 0), np.float32)
    scratch = np.empty(2 * KL - (1 if short == "scratch" else 0), np.float32)
    with pytest.raises(ValueError, match=f"conv2d_forward: {short} has"):
        K.conv2d_forward(y, x, weight, bias, scratch, *GEOM, 2)


def test_fused_forward_needs_an_image_per_thread_and_its_scratch():
    x, weight, bias = arrays()
    pool = np.array([2, 2, 2, 2, 0, 0, H // 2, W // 2], np.intp)
    y = np.empty(N * O * (H // 2) * (W // 2), np.float32)
    idx = np.empty(y.size, np.int64)
    with pytest.raises(ValueError, match="N >= num_threads"):
        K.conv2d_relu_max_pool2d_forward(y, idx, x, weight, bias, np.empty(10**6, np.float32), pool, *GEOM,
                                         N + 1)
    with pytest.raises(ValueError, match="scratch has"):
        K.conv2d_relu_max_pool2d_forward(y, idx, x, weight, bias, np.empty(KL, np.float32), pool, *GEOM, 2)
    with pytest.raises(ValueError, match="pool_indices has"):
        K.conv2d_relu_max_pool2d_forward(y, idx[:-1], x, weight, bias, np.empty(10**6, np.float32), pool,
                                         *GEOM, 2)


@pytest.mark.parametrize("short", ["scratch", "acc", "grad_weight", "grad_x"])
def test_conv2d_backward_checks_its_buffers(short):
    x, weight, _ = arrays()
    grad_y = np.ones(N * O * H * W, np.float32)
    sizes = {"scratch": 2 * 2 * KL, "acc": K.weight_grad_chunks(N) * (O * C * KH * KH + O),
             "grad_weight": O * C * KH * KH, "grad_x": N * C * H * W}
    sizes[short] -= 1
    with pytest.raises(ValueError, match=f"conv2d_backward: {short} has"):
        K.conv2d_backward(np.empty(sizes["grad_x"], np.float32), np.empty(sizes["grad_weight"], np.float32),
                          np.empty(O, np.float32), grad_y, x, weight, np.empty(sizes["scratch"], np.float32),
                          np.zeros(sizes["acc"], np.float32), *GEOM, True, False, 2)


def test_hog_checks_its_scratch():
    images = np.zeros((2, 16, 16, 1), np.float32)
    out = np.empty((2, 36), np.float32)  # 8x8 cells, 2x2 blocks, 9 orientations: 1 block
    with pytest.raises(ValueError, match="hog: scratch has"):
        K.hog(out.reshape(-1), images.reshape(-1), np.empty(4 * 9 - 1, np.float32), 2, 16, 16, 1, 9, 8, 8, 2, 2, 1)


@pytest.mark.parametrize("threads", [1, 2, 3, N, N + 1, 16])
def test_the_public_ops_size_them_right(threads):
    # The same calls through cyconv.functional, on every thread count the checks care about (fewer and
    # more threads than images), give the reference's results: the buffers they sized were right.
    x = np.random.default_rng(1).standard_normal((N, C, H, W)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal((O, C, KH, KH)).astype(np.float32)
    dy = np.random.default_rng(3).standard_normal((N, O, H, W)).astype(np.float32)
    with cyconv.set_num_threads(threads):
        y = F.conv2d(x, w, None, 1, 1)
        dx, dw, db = F.conv2d_backward(dy, x, w, 1, 1)
        p, i = F.conv2d_relu_max_pool2d(x, w, None, 1, 1, return_indices=True)
        fused = F.conv2d_relu_max_pool2d_backward(dy[:, :, ::2, ::2], p, i, x, w, 1, 1)
    assert_close(y, R.conv2d(x, w, None, 1, 1), np.float32)
    for got, want in zip((dx, dw, db), R.conv2d_backward(dy, x, w, 1, 1)):
        assert_close(got, want, np.float32)
    assert_close(p, R.conv2d_relu_max_pool2d(x, w, None, 1, 1), np.float32)
    for got, want in zip(fused, R.conv2d_relu_max_pool2d_backward(dy[:, :, ::2, ::2], p, i, x, w, 1, 1)):
        assert_close(got, want, np.float32)


@pytest.mark.parametrize("short", ["mean", "var", "x"])
def test_batchnorm_stats_checks_its_buffers(short):
    sizes = {"mean": C, "var": C, "x": N * C * H * W}
    sizes[short] -= 1
    mean, var = np.empty(sizes["mean"]), np.empty(sizes["var"])
    with pytest.raises(ValueError, match=f"batchnorm_stats: {short} has"):
        K.batchnorm_stats(mean, var, np.zeros(sizes["x"], np.float32), N, C, H * W, 2)


@pytest.mark.parametrize("kernel, short", [("channel_affine", "y"), ("channel_affine", "b"),
                                           ("channel_affine_grad", "grad_y"), ("channel_affine_grad", "d"),
                                           ("batchnorm_backward_sums", "x")])
def test_batchnorm_passes_check_their_buffers(kernel, short):
    full = N * C * H * W
    sizes = {"y": full, "grad_x": full, "grad_y": full, "x": full, "a": C, "b": C, "d": C, "mean": C}
    sizes[short] -= 1
    f32 = {k: np.zeros(v, np.float32) for k, v in sizes.items()}
    args = {
        "channel_affine": (f32["y"], f32["x"], f32["a"], f32["b"], N, C, H * W, 2),
        "channel_affine_grad": (f32["grad_x"], f32["grad_y"], f32["x"], f32["a"], f32["b"], f32["d"], N, C, H * W, 2),
        "batchnorm_backward_sums": (np.empty(C), np.empty(C), f32["grad_y"], f32["x"], f32["mean"], N, C, H * W, 2),
    }[kernel]
    with pytest.raises(ValueError, match=f"{kernel}: {short} has"):
        getattr(K, kernel)(*args)


def test_grouped_and_depthwise_kernels_check_their_buffers():
    x, _, _ = arrays()
    # depthwise: weight (C, 1, 3, 3)
    weight = np.ones(C * KH * KH, np.float32)
    dgeom = (N, C, H, W, C, KH, KH, 1, 1, 1, 1, 1, 1, H, W)
    with pytest.raises(ValueError, match="depthwise_conv2d_forward: y has"):
        K.depthwise_conv2d_forward(np.empty(N * C * H * W - 1, np.float32), x, weight, np.zeros(C, np.float32),
                                   *dgeom, 2)
    with pytest.raises(ValueError, match="depthwise_conv2d_forward: bias has"):
        K.depthwise_conv2d_forward(np.empty(N * C * H * W, np.float32), x, weight, np.zeros(C - 1, np.float32),
                                   *dgeom, 2)
    with pytest.raises(ValueError, match="depthwise_conv2d_backward: acc has"):
        K.depthwise_conv2d_backward(np.empty(N * C * H * W, np.float32), np.empty(C * KH * KH, np.float32),
                                    np.empty(C, np.float32), np.empty(N * C * H * W, np.float32), x, weight,
                                    np.zeros(C * (KH * KH + 1) - 1, np.float32), *dgeom, True, False, 2)
    ggeom = (N, C, H, W, C, 1, KH, KH, 1, 1, 1, 1, 2, 2, H - 2, W - 2)  # groups 1, dilation 2
    wg = np.ones(C * C * KH * KH, np.float32)
    with pytest.raises(ValueError, match="grouped_conv2d_forward: scratch has"):
        K.grouped_conv2d_forward(np.empty(N * C * (H - 2) * (W - 2), np.float32), x, wg, np.zeros(0, np.float32),
                                 np.empty(2 * C * KH * KH * (H - 2) * (W - 2) - 1, np.float32), *ggeom, 2)
    with pytest.raises(ValueError, match="grouped_conv2d_backward: acc has"):
        K.grouped_conv2d_backward(np.empty(N * C * H * W, np.float32), np.empty(C * C * KH * KH, np.float32),
                                  np.empty(C, np.float32), np.empty(N * C * (H - 2) * (W - 2), np.float32), x, wg,
                                  np.empty(2 * 2 * C * KH * KH * (H - 2) * (W - 2), np.float32),
                                  np.zeros(1, np.float32), *ggeom, True, False, 2)
    with pytest.raises(ValueError, match="adaptive_avgpool2d_forward: y has"):
        K.adaptive_avgpool2d_forward(np.empty(N * C - 1, np.float32), x, N * C, H, W, 1, 1, 2)
    with pytest.raises(ValueError, match="hardtanh_forward: y has"):
        K.hardtanh_forward(np.empty(x.size - 1, np.float32), x, -1.0, 1.0, 2)
