"""softmax_cross_entropy: against the reference, gradient checks, large-logit
stability against an analytic value, empty batches, memory layouts and argument
validation."""

import math

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, TOL, assert_close, ident, random_array, relayout
from gradcheck import assert_grad

pytestmark = KERNEL_TESTS

# (N, K): a single class, a single sample, and ordinary batches.
SHAPES = [(1, 1), (1, 3), (4, 7), (16, 10)]


def make_problem(rng, n, k, dtype, scale=3.0):
    logits = (scale * random_array(rng, (n, k), np.float64)).astype(dtype)
    target = rng.integers(0, k, size=n)
    return logits, target


def analytic_loss(logits, target):
    """The mean cross-entropy in float64, from the shifted log-sum-exp, one sample at a time."""
    losses = []
    for row, t in zip(np.asarray(logits, np.float64).tolist(), target.tolist()):
        m = max(row)
        log_sum_exp = m + math.log(math.fsum(math.exp(v - m) for v in row))
        losses.append(log_sum_exp - row[t])
    return math.fsum(losses) / len(losses)


def assert_loss_close(loss, expected, dtype):
    """The loss is a Python float or a 0-d array of the logits' dtype, within TOL[dtype]."""
    assert isinstance(loss, float) or (np.ndim(loss) == 0 and loss.dtype == dtype), type(loss)
    tol = TOL[np.dtype(dtype).type]
    assert math.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), expected, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, abs(expected)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_matches_reference(shape, dtype):
    logits, target = make_problem(np.random.default_rng(0), *shape, dtype)
    loss, grad = F.softmax_cross_entropy(logits, target)
    want_loss, want_grad = R.softmax_cross_entropy(logits, target)
    assert_loss_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype)


def test_reference_returns_python_float():
    logits, target = make_problem(np.random.default_rng(1), 4, 7, np.float32)
    loss, grad = R.softmax_cross_entropy(logits, target)
    assert type(loss) is float and grad.dtype == np.float32


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_matches_analytic(module, dtype):
    logits, target = make_problem(np.random.default_rng(2), 5, 6, dtype)
    loss, grad = module.softmax_cross_entropy(logits, target)
    assert_loss_close(loss, analytic_loss(logits, target), dtype)
    # softmax rows sum to 1 and the one-hot row to 1, so each gradient row sums to 0.
    assert_close(grad.sum(axis=1), np.zeros(5, dtype), dtype)


@pytest.mark.parametrize("module", MODULES)
def test_gradcheck(module):
    rng = np.random.default_rng(3)
    logits, target = make_problem(rng, 4, 5, np.float64)
    _, grad = module.softmax_cross_entropy(logits, target)
    assert_grad(grad, lambda z: float(module.softmax_cross_entropy(z, target)[0]), logits)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1000.0, -1000.0, 5000.0])
def test_large_logits_are_stable(module, dtype, offset):
    """exp(1000) overflows even float64: only the max-shifted form stays finite."""
    rng = np.random.default_rng(4)
    logits, target = make_problem(rng, 4, 6, dtype, scale=100.0)
    logits += dtype(offset)
    loss, grad = module.softmax_cross_entropy(logits, target)
    assert_loss_close(loss, analytic_loss(logits, target), dtype)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("target_dtype", [np.int32, np.int64])
def test_integer_targets(module, target_dtype):
    logits, target = make_problem(np.random.default_rng(5), 4, 6, np.float64)
    loss, grad = module.softmax_cross_entropy(logits, target.astype(target_dtype))
    want_loss, want_grad = module.softmax_cross_entropy(logits, target)
    assert float(loss) == float(want_loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("module", MODULES)
def test_empty_batch_raises(module):
    """The mean over an empty batch is undefined: a documented ValueError, not NaN."""
    with pytest.raises(ValueError, match=r"softmax_cross_entropy\(\)"):
        module.softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(layout):
    logits, target = make_problem(np.random.default_rng(6), 6, 5, np.float32)
    loss, grad = F.softmax_cross_entropy(relayout(logits, layout), relayout(target, "sliced"))
    want_loss, want_grad = F.softmax_cross_entropy(logits, target)
    assert float(loss) == float(want_loss)
    np.testing.assert_array_equal(grad, want_grad)


LOGITS = np.zeros((3, 4), np.float32)
TARGET = np.array([0, 3, 1])

BAD_INPUT = [
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS, np.array([0, 4, 1])), ValueError, r"target", id="target-k"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS, np.array([0, -1, 1])), ValueError, r"target", id="target-neg"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS, TARGET[:2]), ValueError, r"target", id="target-length"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS, TARGET[None]), ValueError, r"target", id="target-2d"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS, TARGET.astype(np.float32)), TypeError, r"target", id="float"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS[0], TARGET[:1]), ValueError, r"logits", id="logits-1d"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS[None], TARGET), ValueError, r"logits", id="logits-3d"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS.astype(np.int32), TARGET), TypeError, r"logits", id="int"),
    pytest.param(lambda: F.softmax_cross_entropy(LOGITS.astype(np.float16), TARGET), TypeError, r"logits", id="f16"),
]


@pytest.mark.parametrize("call, error, match", BAD_INPUT)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=r"softmax_cross_entropy\(\): " + match):
        call()
