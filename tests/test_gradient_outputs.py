"""The parameter-gradient outputs of conv2d_backward and linear_backward: out=(grad_weight,
grad_bias) written in place, accumulate=True adding into them, and every bad `out`."""

import numpy as np
import pytest

import cyconv.functional as F
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array

pytestmark = KERNEL_TESTS


def conv_case(rng, dtype, n=3):
    x = random_array(rng, (n, 3, 7, 6), dtype)
    weight = random_array(rng, (4, 3, 3, 2), dtype)
    grad_y = random_array(rng, F.conv2d(x, weight, None, 1, 1).shape, dtype)
    return lambda **kw: F.conv2d_backward(grad_y, x, weight, 1, 1, **kw), weight.shape, x, weight, grad_y


def linear_case(rng, dtype, n=3):
    x = random_array(rng, (n, 5), dtype)
    weight = random_array(rng, (4, 5), dtype)
    grad_y = random_array(rng, (n, 4), dtype)
    return lambda **kw: F.linear_backward(grad_y, x, weight, **kw), weight.shape, x, weight, grad_y


CASES = [pytest.param(conv_case, id="conv2d_backward"), pytest.param(linear_case, id="linear_backward")]


@pytest.mark.parametrize("batch", [3, 0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_out_is_written_and_accumulate_adds(case, dtype, batch):
    call, weight_shape, *_ = case(np.random.default_rng(0), dtype, batch)
    _, want_w, want_b = call()

    # Stale values in `out` are overwritten, not added to.
    out = (np.full(weight_shape, 7, dtype), np.full(weight_shape[0], 7, dtype))
    _, got_w, got_b = call(out=out)
    assert got_w is out[0] and got_b is out[1]
    assert_close(got_w, want_w, dtype)
    assert_close(got_b, want_b, dtype)

    start = (random_array(np.random.default_rng(1), weight_shape, dtype),
             random_array(np.random.default_rng(2), (weight_shape[0],), dtype))
    out = (start[0].copy(), start[1].copy())
    _, got_w, got_b = call(out=out, accumulate=True)
    assert got_w is out[0] and got_b is out[1]
    assert_close(got_w, start[0] + want_w, dtype)
    assert_close(got_b, start[1] + want_b, dtype)


@pytest.mark.parametrize("case", CASES)
def test_a_none_in_out_gets_a_fresh_array(case):
    call, weight_shape, *_ = case(np.random.default_rng(3), np.float32)
    _, want_w, want_b = call()
    gw = np.zeros(weight_shape, np.float32)
    _, got_w, got_b = call(out=(gw, None), accumulate=True)
    assert got_w is gw
    assert_close(got_w, want_w, np.float32)
    assert_close(got_b, want_b, np.float32)


@pytest.mark.parametrize("case", CASES)
def test_bad_out_is_rejected(case):
    call, weight_shape, x, weight, grad_y = case(np.random.default_rng(4), np.float32)
    o = weight_shape[0]
    good_b = np.zeros(o, np.float32)
    bad = [
        (dict(accumulate=True), ValueError, "accumulate=True needs out"),
        (dict(out=(np.zeros(weight_shape, np.float32), good_b), accumulate=1), TypeError, "accumulate"),
        (dict(out=[np.zeros(weight_shape, np.float32), good_b]), TypeError, "out must be a"),
        (dict(out=(np.zeros(weight_shape, np.float32),)), TypeError, "out must be a"),
        (dict(out=(np.zeros(weight_shape, np.float64), good_b)), ValueError, "out grad_weight"),
        (dict(out=(np.zeros(weight_shape, np.float32), np.zeros(o + 1, np.float32))), ValueError, "out grad_bias"),
        (dict(out=(np.zeros(weight_shape, np.float32).T.copy().T, good_b)), ValueError, "C-contiguous"),
        (dict(out=(np.zeros(weight_shape, np.float32), [0.0] * o)), TypeError, "out grad_bias"),
        (dict(out=(weight, good_b)), ValueError, "overlaps"),
        (dict(out=(np.zeros(weight_shape, np.float32), grad_y.reshape(-1)[:o])), ValueError, "overlaps"),
    ]
    readonly = np.zeros(weight_shape, np.float32)
    readonly.flags.writeable = False
    bad.append((dict(out=(readonly, good_b)), ValueError, "writeable"))
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            call(**kwargs)
