"""relu_max_pool2d and its backward: against the reference, and against the unfused pair
(ReLU, then max pooling) that they replace, bit for bit, including zeros, ties, NaN and
overlapping windows; the Sequential that fuses ReLU -> MaxPool2d, and argument checks."""

import numpy as np
import pytest

import cyconv.functional as F
from cyconv import graph
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, MODULES, assert_close, random_array
from cyconv import nn

pytestmark = KERNEL_TESTS

GEOMETRIES = [  # (shape, kernel, stride, padding): LeNet's 2x2/2 (the AVX-512 path), overlaps, padding
    ((2, 3, 8, 34), 2, 2, 0),
    ((2, 3, 7, 9), 2, 2, 0),
    ((1, 2, 6, 7), 3, 1, 1),
    ((2, 2, 5, 6), (2, 3), (1, 2), (1, 0)),
]


def mixed_signs(rng, shape, dtype):
    """Random values with many exact zeros, ties and all-negative windows."""
    x = np.round(random_array(rng, shape, dtype) * 2) / 2 - 0.5
    return x.astype(dtype)


def unfused(module, x, grad_y, geometry):
    _, kernel, stride, padding = geometry
    r = module.relu(x)
    y, indices = module.max_pool2d(r, kernel, stride, padding, return_indices=True)
    grad_x = module.relu_backward(module.max_pool2d_backward(grad_y, indices, x.shape), r)
    return y, grad_x


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_equals_relu_then_max_pool2d_bit_for_bit(geometry, dtype, module):
    rng = np.random.default_rng(0)
    shape, kernel, stride, padding = geometry
    x = mixed_signs(rng, shape, dtype)
    x.flat[::7] = np.nan
    y, indices = module.relu_max_pool2d(x, kernel, stride, padding, return_indices=True)
    grad_y = random_array(rng, y.shape, dtype)
    want_y, want_grad = unfused(module, x, grad_y, geometry)
    np.testing.assert_array_equal(y, want_y, strict=True)
    np.testing.assert_array_equal(module.relu_max_pool2d(x, kernel, stride, padding), want_y, strict=True)
    np.testing.assert_array_equal(module.relu_max_pool2d_backward(grad_y, y, indices, shape), want_grad,
                                  strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_matches_reference(geometry, dtype):
    rng = np.random.default_rng(1)
    shape, kernel, stride, padding = geometry
    x = random_array(rng, shape, dtype)
    y, indices = F.relu_max_pool2d(x, kernel, stride, padding, return_indices=True)
    want_y, want_indices = R.relu_max_pool2d(x, kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y, want_y, strict=True)
    np.testing.assert_array_equal(indices, want_indices, strict=True)
    grad_y = random_array(rng, y.shape, dtype)
    assert_close(F.relu_max_pool2d_backward(grad_y, y, indices, shape),
                 R.relu_max_pool2d_backward(grad_y, want_y, want_indices, shape), dtype)


def lenet_like():
    rng = np.random.default_rng(2)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, dtype=np.float64, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
                         nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(3 * 3 * 3, 4, dtype=np.float64,
                                                                                  rng=rng))


def test_sequential_fuses_conv_relu_pool_and_relu_pool_with_the_same_results():
    rng = np.random.default_rng(3)
    x = random_array(rng, (2, 1, 8, 8), np.float64)
    fused, layers = lenet_like(), lenet_like()
    y = fused(x)
    # conv -> ReLU -> pool, then ReLU -> pool, fused
    steps = graph.runner(fused).steps
    assert [(step.out, len(step.layers)) for step in steps][:3] == [(3, 3), (5, 2), (6, 1)]
    h = x
    for m in layers:  # one module at a time: nothing fused
        h = m(h)
    np.testing.assert_array_equal(y, h)
    g = random_array(rng, y.shape, np.float64)
    grad_x = fused.backward(g, input_grad=True)
    want = g
    for m in reversed(list(layers)):
        want = m.backward(want)
    np.testing.assert_array_equal(grad_x, want)
    for p, q in zip(fused.parameters(), layers.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)
    fused.eval()
    np.testing.assert_array_equal(fused(x), y)


def test_fused_layers_refuse_their_own_backward():
    net = lenet_like()
    y = net(random_array(np.random.default_rng(4), (2, 1, 8, 8), np.float64))
    with pytest.raises(RuntimeError, match=r"ReLU.backward\(\).*fused.*model's backward"):
        net[1].backward(np.ones((2, 3, 8, 8)))
    with pytest.raises(RuntimeError, match=r"MaxPool2d.backward\(\).*fused.*model's backward"):
        net[2].backward(np.ones((2, 3, 4, 4)))
    with pytest.raises(RuntimeError, match=r"Conv2d.backward\(\).*fused.*model's backward"):
        net[0].backward(np.ones((2, 3, 8, 8)))
    net.backward(np.ones_like(y))  # the model's own backward works


def test_fused_backward_before_forward_and_after_eval_says_so():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, rng=np.random.default_rng(0)), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(RuntimeError, match=r"Sequential.backward\(\): called before forward"):
        net.backward(np.ones((2, 3, 4, 4), np.float32))
    net.eval()
    net(random_array(np.random.default_rng(5), (2, 1, 8, 8), np.float32))
    with pytest.raises(RuntimeError, match=r"eval mode"):
        net.backward(np.ones((2, 3, 4, 4), np.float32))


def test_a_subclass_is_not_fused():
    class MyReLU(nn.ReLU):  # may compute something else: must run as itself
        pass

    net = nn.Sequential(nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)), MyReLU(), nn.MaxPool2d(2))
    assert [len(step.layers) for step in graph.runner(net).steps] == [1, 1, 1]


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.relu_max_pool2d(np.zeros((1, 1, 4), np.float32), 2), ValueError, r"relu_max_pool2d\(\): x"),
    (lambda: F.relu_max_pool2d(np.zeros((1, 1, 4, 4), np.int32), 2), TypeError, r"relu_max_pool2d\(\): x"),
    (lambda: F.relu_max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2, padding=2), ValueError, "padding"),
    (lambda: F.relu_max_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 3), np.float32),
                                        np.zeros((1, 1, 2, 2), np.int64), (1, 1, 4, 4)), ValueError, r"\): y must"),
    (lambda: F.relu_max_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2)),
                                        np.zeros((1, 1, 2, 2), np.int64), (1, 1, 4, 4)), TypeError, r"\): y has"),
    (lambda: F.relu_max_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), np.ones((1, 1, 2, 2), np.float32),
                                        np.full((1, 1, 2, 2), 16, np.int64), (1, 1, 4, 4)), ValueError, "indices"),
], ids=["x-3d", "x-int", "padding", "y-shape", "y-dtype", "indices-range"])
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
