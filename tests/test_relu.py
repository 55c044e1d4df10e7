"""relu and relu_backward: against the reference (data away from the kink),
the kink at 0 and NaN on purpose, gradient checks, empty batches, memory layouts
and argument validation."""

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, distinct_array, ident, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

# ReLU is elementwise on any shape; the network uses it after conv2d and linear.
SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_relu_matches_reference(shape, dtype):
    rng = np.random.default_rng(0)
    x = distinct_array(rng, shape, dtype)
    grad_y = random_array(rng, shape, dtype)
    # Selecting or zeroing elements is exact.
    np.testing.assert_array_equal(F.relu(x), R.relu(x), strict=True)
    np.testing.assert_array_equal(F.relu_backward(grad_y, x), R.relu_backward(grad_y, x), strict=True)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kink_at_zero(module, dtype):
    """relu(0) = 0, and the derivative at 0 is taken as 0 (for -0.0 too)."""
    x = np.array([-1.0, -0.0, 0.0, 1.0], dtype)
    np.testing.assert_array_equal(module.relu(x), np.array([0, 0, 0, 1], dtype), strict=True)
    np.testing.assert_array_equal(
        module.relu_backward(np.full(4, 5.0, dtype), x), np.array([0, 0, 0, 5], dtype), strict=True
    )


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan(module, dtype):
    """NaN is not <= 0: relu keeps it, and its gradient passes through."""
    x = np.array([np.nan, -2.0, 3.0], dtype)
    np.testing.assert_array_equal(module.relu(x), np.array([np.nan, 0, 3], dtype), strict=True)
    np.testing.assert_array_equal(
        module.relu_backward(np.full(3, 7.0, dtype), x), np.array([7, 0, 7], dtype), strict=True
    )


@pytest.mark.parametrize("module", MODULES)
def test_relu_backward_gradcheck(module):
    rng = np.random.default_rng(1)
    x = distinct_array(rng, (2, 3, 4, 5), np.float64)
    g = random_array(rng, x.shape, np.float64)
    assert_grad(module.relu_backward(g, x), projection(module.relu, g), x)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(module, dtype):
    x = np.zeros((0, 3, 4, 4), dtype)
    for result in (module.relu(x), module.relu_backward(x, x)):
        assert result.shape == x.shape and result.dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype):
    rng = np.random.default_rng(2)
    x = distinct_array(rng, (3, 2, 4, 5), dtype)
    grad_y = random_array(rng, x.shape, dtype)
    np.testing.assert_array_equal(F.relu(relayout(x, layout)), F.relu(x))
    np.testing.assert_array_equal(
        F.relu_backward(relayout(grad_y, layout), relayout(x, layout)), F.relu_backward(grad_y, x)
    )


X = np.zeros((2, 3), np.float32)

BAD_INPUT = [
    pytest.param(lambda: F.relu(X.astype(np.int32)), TypeError, r"relu\(\): x", id="x-int"),
    pytest.param(lambda: F.relu(X.astype(np.float16)), TypeError, r"relu\(\): x", id="x-float16"),
    pytest.param(lambda: F.relu_backward(X[:, :2], X), ValueError, r"relu_backward\(\): grad_y", id="shape-mismatch"),
    pytest.param(lambda: F.relu_backward(X.T, X), ValueError, r"relu_backward\(\): grad_y", id="transposed-shape"),
    pytest.param(
        lambda: F.relu_backward(X.astype(np.float64), X), TypeError, r"relu_backward\(\): grad_y", id="grad_y-float64"
    ),
    pytest.param(lambda: F.relu_backward(X, X.astype(np.int64)), TypeError, r"relu_backward\(\): x", id="x-int"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUT)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
