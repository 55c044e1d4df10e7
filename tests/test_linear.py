"""linear and linear_backward: against the reference, gradient checks, empty
batches, memory layouts and argument validation."""

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, assert_close, ident, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

# (N, in_features, out_features): degenerate, wider-than-tall, taller-than-wide.
# (N, in, out): one-row and few-row batches take the matrix-vector path, and the
# larger ones are split into column blocks across threads.
SHAPES = [(1, 1, 1), (3, 5, 4), (8, 7, 2), (2, 3, 9), (2, 300, 70), (9, 300, 70)]


def make_linear(rng, n, in_features, out_features, dtype, bias=True):
    x = random_array(rng, (n, in_features), dtype)
    weight = random_array(rng, (out_features, in_features), dtype)
    b = random_array(rng, (out_features,), dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_linear_matches_reference(shape, bias, dtype):
    x, weight, b = make_linear(np.random.default_rng(0), *shape, dtype, bias)
    assert_close(F.linear(x, weight, b), R.linear(x, weight, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_linear_backward_matches_reference(shape, dtype):
    rng = np.random.default_rng(1)
    x, weight, _ = make_linear(rng, *shape, dtype, bias=False)
    grad_y = random_array(rng, (shape[0], shape[2]), dtype)
    got = F.linear_backward(grad_y, x, weight)
    want = R.linear_backward(grad_y, x, weight)
    for name, g, w in zip(["grad_x", "grad_weight", "grad_bias"], got, want):
        assert_close(g, w, dtype, err_msg=name)


@pytest.mark.parametrize("module", MODULES)
def test_linear_backward_without_input_grad(module):
    rng = np.random.default_rng(5)
    x, weight, _ = make_linear(rng, 4, 6, 3, np.float64, bias=False)
    grad_y = random_array(rng, (4, 3), np.float64)
    grad_x, grad_weight, grad_bias = module.linear_backward(grad_y, x, weight, grad_input=False)
    _, want_weight, want_bias = module.linear_backward(grad_y, x, weight)
    assert grad_x is None
    np.testing.assert_array_equal(grad_weight, want_weight)
    np.testing.assert_array_equal(grad_bias, want_bias)


@pytest.mark.parametrize("module", MODULES)
def test_linear_backward_gradcheck(module):
    rng = np.random.default_rng(2)
    x, weight, bias = make_linear(rng, 3, 5, 4, np.float64)
    g = random_array(rng, (3, 4), np.float64)
    grad_x, grad_weight, grad_bias = module.linear_backward(g, x, weight)
    assert_grad(grad_x, projection(lambda x_: module.linear(x_, weight, bias), g), x)
    assert_grad(grad_weight, projection(lambda w_: module.linear(x, w_, bias), g), weight)
    assert_grad(grad_bias, projection(lambda b_: module.linear(x, weight, b_), g), bias)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(module, dtype):
    x, weight, bias = make_linear(np.random.default_rng(3), 0, 5, 4, dtype)
    y = module.linear(x, weight, bias)
    assert y.shape == (0, 4) and y.dtype == dtype

    grad_x, grad_weight, grad_bias = module.linear_backward(y, x, weight)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_weight, np.zeros(weight.shape, dtype), dtype)
    assert_close(grad_bias, np.zeros(bias.shape, dtype), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype):
    rng = np.random.default_rng(4)
    x, weight, bias = make_linear(rng, 6, 5, 4, dtype)
    grad_y = random_array(rng, (6, 4), dtype)
    x_, weight_, bias_, grad_y_ = (relayout(a, layout) for a in (x, weight, bias, grad_y))

    np.testing.assert_array_equal(F.linear(x_, weight_, bias_), F.linear(x, weight, bias))
    for got, want in zip(F.linear_backward(grad_y_, x_, weight_), F.linear_backward(grad_y, x, weight)):
        np.testing.assert_array_equal(got, want)


X = np.zeros((3, 5), np.float32)
W = np.zeros((4, 5), np.float32)
B = np.zeros(4, np.float32)
GRAD_Y = np.zeros((3, 4), np.float32)

BAD_INPUT = [
    pytest.param(lambda: F.linear(X[0], W), ValueError, r"linear\(\): x", id="x-1d"),
    pytest.param(lambda: F.linear(X[None], W), ValueError, r"linear\(\): x", id="x-3d"),
    pytest.param(lambda: F.linear(X, W[0]), ValueError, r"linear\(\): weight", id="weight-1d"),
    pytest.param(
        lambda: F.linear(X, W[:, :4]), ValueError, r"linear\(\)(.*in_features|: weight)", id="in_features-mismatch"
    ),
    pytest.param(lambda: F.linear(X, W, B[:3]), ValueError, r"linear\(\): bias", id="bias-length"),
    pytest.param(lambda: F.linear(X.astype(np.int32), W), TypeError, r"linear\(\): x", id="x-int"),
    pytest.param(
        lambda: F.linear(X.astype(np.float16), W.astype(np.float16)), TypeError, r"linear\(\): x", id="float16"
    ),
    pytest.param(lambda: F.linear(X, W.astype(np.float64)), TypeError, r"linear\(\): weight", id="weight-float64"),
    pytest.param(lambda: F.linear(X, W, B.astype(np.float64)), TypeError, r"linear\(\): bias", id="bias-float64"),
    pytest.param(
        lambda: F.linear_backward(GRAD_Y[:, :3], X, W),
        ValueError,
        r"linear_backward\(\): grad_y",
        id="backward-grad_y-features",
    ),
    pytest.param(
        lambda: F.linear_backward(GRAD_Y[:2], X, W),
        ValueError,
        r"linear_backward\(\): grad_y",
        id="backward-grad_y-batch",
    ),
    pytest.param(
        lambda: F.linear_backward(GRAD_Y, X, W[:, :4]),
        ValueError,
        r"linear_backward\(\)(.*in_features|: weight)",
        id="backward-in_features-mismatch",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUT)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
