"""cyconv.nn: each module against cyconv.reference, gradient accumulation,
Sequential, train/eval and what forward keeps, state dicts, initialisation,
argument validation and repr."""

import math

import numpy as np
import pytest

import cyconv.reference as R
from conftest import DTYPES, assert_close, distinct_array, random_array
from cyconv import nn


def seeded(seed=0):
    return np.random.default_rng(seed)


def forward_backward(module, x, grad_y, input_grad=True):
    module.zero_grad()
    y = module(x)
    return y, module.backward(grad_y, input_grad=input_grad)


# ---------------------------------------------------------------------------
# Parameter


def test_parameter_holds_data_and_zero_grad_only():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = nn.Parameter(data)
    assert p.data is data
    assert p.grad.shape == data.shape and p.grad.dtype == data.dtype and not p.grad.any()
    with pytest.raises(AttributeError):
        p.name = "weight"


def test_assigned_grad_is_used_and_checked():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    g = np.ones((2, 3), np.float32)
    p.zero_grad()
    p.grad = g  # an assignment after zero_grad() is the gradient, not cleared
    assert p.grad is g and g.all()
    for bad in (np.ones((3, 2), np.float32), np.ones((2, 3)), np.ones((3, 2), np.float32).T, [[1.0] * 3] * 2):
        with pytest.raises(ValueError, match="Parameter.grad must be"):
            p.grad = bad
    assert p.grad is g


# ---------------------------------------------------------------------------
# Each module against the reference

CONV_CASES = [  # (x shape, out_channels, kernel_size, stride, padding, bias)
    ((2, 3, 7, 6), 4, 3, 1, 1, True),
    ((3, 2, 9, 8), 5, (3, 5), (2, 1), (1, 2), False),
    ((1, 1, 12, 12), 20, 5, 1, 2, True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, out_channels, kernel_size, stride, padding, bias", CONV_CASES)
def test_conv2d_matches_reference(shape, out_channels, kernel_size, stride, padding, bias, dtype):
    rng = seeded(1)
    conv = nn.Conv2d(shape[1], out_channels, kernel_size, stride, padding, bias=bias, dtype=dtype, rng=rng)
    x = random_array(rng, shape, dtype)
    b = conv.bias.data if bias else None
    want_y = R.conv2d(x, conv.weight.data, b, stride, padding)
    grad_y = random_array(rng, want_y.shape, dtype)
    want_gx, want_gw, want_gb = R.conv2d_backward(grad_y, x, conv.weight.data, stride, padding)

    y, gx = forward_backward(conv, x, grad_y)
    assert_close(y, want_y, dtype)
    assert_close(gx, want_gx, dtype)
    assert_close(conv.weight.grad, want_gw, dtype)
    if bias:
        assert_close(conv.bias.grad, want_gb, dtype)
    else:
        assert conv.bias is None and [n for n, _ in conv.named_parameters()] == ["weight"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_matches_reference(bias, dtype):
    rng = seeded(2)
    linear = nn.Linear(7, 4, bias, dtype=dtype, rng=rng)
    x = random_array(rng, (5, 7), dtype)
    grad_y = random_array(rng, (5, 4), dtype)
    want_gx, want_gw, want_gb = R.linear_backward(grad_y, x, linear.weight.data)

    y, gx = forward_backward(linear, x, grad_y)
    assert_close(y, R.linear(x, linear.weight.data, linear.bias.data if bias else None), dtype)
    assert_close(gx, want_gx, dtype)
    assert_close(linear.weight.grad, want_gw, dtype)
    if bias:
        assert_close(linear.bias.grad, want_gb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_reference(dtype):
    rng = seeded(3)
    x = distinct_array(rng, (2, 3, 4, 5), dtype)  # no exact zeros: the kink is tested in test_relu.py
    grad_y = random_array(rng, x.shape, dtype)
    y, gx = forward_backward(nn.ReLU(), x, grad_y)
    assert_close(y, R.relu(x), dtype)
    assert_close(gx, R.relu_backward(grad_y, x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), 0)])
def test_max_pool2d_matches_reference(kernel_size, stride, padding, dtype):
    rng = seeded(4)
    x = distinct_array(rng, (2, 3, 7, 8), dtype)  # no ties
    pool = nn.MaxPool2d(kernel_size, stride, padding)
    want_y, indices = R.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    grad_y = random_array(rng, want_y.shape, dtype)
    y, gx = forward_backward(pool, x, grad_y)
    assert_close(y, want_y, dtype)
    assert_close(gx, R.max_pool2d_backward(grad_y, indices, x.shape), dtype)


def test_flatten_round_trip():
    x = random_array(seeded(5), (3, 2, 4, 5), np.float32)
    flatten = nn.Flatten()
    y = flatten(x)
    np.testing.assert_array_equal(y, x.reshape(3, 40))
    np.testing.assert_array_equal(flatten.backward(y), x)
    assert flatten(np.zeros((0, 2, 3), np.float64)).shape == (0, 6)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(0, 6\)"):
        flatten.backward(np.zeros((0, 5)))


# ---------------------------------------------------------------------------
# Gradient accumulation and input_grad


@pytest.mark.parametrize("make", [
    lambda rng: nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng),
    lambda rng: nn.Linear(2 * 5 * 5, 3, dtype=np.float64, rng=rng),
], ids=["Conv2d", "Linear"])
def test_parameter_gradients_accumulate_until_zero_grad(make):
    rng = seeded(6)
    layer = make(rng)
    x = random_array(rng, (2, 2, 5, 5) if isinstance(layer, nn.Conv2d) else (2, 50), np.float64)
    y = layer(x)
    g1, g2 = random_array(rng, y.shape, np.float64), random_array(rng, y.shape, np.float64)

    layer.backward(g1)
    first = [p.grad.copy() for p in layer.parameters()]
    layer.backward(g2)
    layer_g2 = make(seeded(6))  # same weights, fresh gradients
    layer_g2(x)
    layer_g2.backward(g2)
    for p, a, b in zip(layer.parameters(), first, layer_g2.parameters()):
        np.testing.assert_allclose(p.grad, a + b.grad, rtol=1e-12, atol=1e-12)

    grads = [p.grad for p in layer.parameters()]
    layer.zero_grad()
    for p, g in zip(layer.parameters(), grads):
        assert p.grad is g and not g.any()  # cleared in place


@pytest.mark.parametrize("make", [
    lambda rng: nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=rng),
    lambda rng: nn.Linear(2 * 5 * 5, 3, dtype=np.float64, rng=rng),
], ids=["Conv2d", "Linear"])
def test_zero_grad_then_backward_equals_a_fresh_layer(make):
    """zero_grad() only marks the gradients cleared; the next backward overwrites them. Every way
    of mixing that with reads, partial clears and repeated backward passes gives the sums a fresh
    layer would."""
    rng = seeded(10)
    layer, fresh = make(seeded(11)), make(seeded(11))
    x = random_array(rng, (2, 2, 5, 5) if isinstance(layer, nn.Conv2d) else (2, 50), np.float64)
    g1, g2 = random_array(rng, layer(x).shape, np.float64), random_array(rng, layer(x).shape, np.float64)
    fresh(x)
    fresh.backward(g2)
    want = [p.grad.copy() for p in fresh.parameters()]

    layer.backward(g1)
    layer.zero_grad()
    layer.backward(g2)  # overwrites g1's gradients
    for p, w in zip(layer.parameters(), want):
        np.testing.assert_allclose(p.grad, w, rtol=1e-12, atol=1e-12)

    layer.zero_grad()
    assert all(not p.grad.any() for p in layer.parameters())  # reading materialises the zeros
    layer.backward(g2)
    for p, w in zip(layer.parameters(), want):
        np.testing.assert_allclose(p.grad, w, rtol=1e-12, atol=1e-12)

    # Only the weight cleared: the bias keeps adding.
    layer.weight.zero_grad()
    layer.backward(g2)
    np.testing.assert_allclose(layer.weight.grad, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, 2 * want[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [
    nn.Conv2d(2, 3, 3, rng=seeded(7)), nn.Linear(50, 3, rng=seeded(7)),
], ids=["Conv2d", "Linear"])
def test_input_grad_false_returns_none_and_same_parameter_gradients(layer):
    x = random_array(seeded(8), (2, 2, 5, 5) if isinstance(layer, nn.Conv2d) else (2, 50), np.float32)
    y = layer(x)
    grad_y = random_array(seeded(9), y.shape, np.float32)
    layer.backward(grad_y)
    want = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    assert layer.backward(grad_y, input_grad=False) is None
    for p, w in zip(layer.parameters(), want):
        np.testing.assert_array_equal(p.grad, w)


# ---------------------------------------------------------------------------
# Sequential


def small_net(dtype=np.float64, seed=10):
    rng = seeded(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, dtype=dtype, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 3 * 3, 4, dtype=dtype, rng=rng),
    )


def test_sequential_is_the_composition_of_its_children():
    net = small_net()
    rng = seeded(11)
    x = distinct_array(rng, (2, 1, 6, 6), np.float64)
    grad_y = random_array(rng, (2, 4), np.float64)
    y, gx = forward_backward(net, x, grad_y, input_grad=True)

    conv, relu, pool, flatten, linear = (net[i] for i in range(5))
    h1 = R.conv2d(x, conv.weight.data, conv.bias.data, 1, 1)
    h2 = R.relu(h1)
    h3, idx = R.max_pool2d(h2, 2, return_indices=True)
    want_y = R.linear(h3.reshape(2, -1), linear.weight.data, linear.bias.data)
    g4, gw4, gb4 = R.linear_backward(grad_y, h3.reshape(2, -1), linear.weight.data)
    g2 = R.relu_backward(R.max_pool2d_backward(g4.reshape(h3.shape), idx, h2.shape), h1)
    want_gx, gw0, gb0 = R.conv2d_backward(g2, x, conv.weight.data, 1, 1)

    assert_close(y, want_y, np.float64)
    assert_close(gx, want_gx, np.float64)
    for got, want in [(linear.weight.grad, gw4), (linear.bias.grad, gb4), (conv.weight.grad, gw0),
                      (conv.bias.grad, gb0)]:
        assert_close(got, want, np.float64)

    # The default (training) backward returns None and gives the same parameter gradients.
    want_grads = [p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    assert net.backward(grad_y) is None
    for p, w in zip(net.parameters(), want_grads):
        np.testing.assert_array_equal(p.grad, w)


def test_sequential_backward_skips_leading_parameter_free_children():
    rng = seeded(12)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3, dtype=np.float64, rng=rng))
    x = random_array(rng, (2, 3, 4), np.float64)
    net(x)
    net[0]._saved = None  # the Flatten's backward would now raise if it were called
    net.backward(np.ones((2, 3)))
    np.testing.assert_allclose(net[1].bias.grad, [2.0, 2.0, 2.0])


def test_sequential_container_and_names():
    net = small_net()
    assert len(net) == 5
    assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    assert isinstance(net[-1], nn.Linear)
    assert isinstance(net[1:3], nn.Sequential) and len(net[1:3]) == 2 and net[1:3][0] is net[1]
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert net.parameters() == [net[0].weight, net[0].bias, net[4].weight, net[4].bias]
    nested = nn.Sequential(nn.ReLU(), net)
    assert [n for n, _ in nested.named_parameters()][:2] == ["1.0.weight", "1.0.bias"]
    with pytest.raises(TypeError, match="argument 1 must be a Module"):
        nn.Sequential(nn.ReLU(), np.zeros(3))


# ---------------------------------------------------------------------------
# train / eval and what forward keeps


def test_train_and_eval_set_the_flag_recursively():
    net = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Flatten()))
    assert net.eval() is net
    assert not net.training and not net[0].training and not net[1][0].training
    assert net.train() is net and net[1][0].training


def test_eval_forward_keeps_nothing_and_backward_then_raises():
    net = small_net()
    x = distinct_array(seeded(13), (2, 1, 6, 6), np.float64)
    y_train = net(x)
    assert all(m._saved is not None for m in net)
    net.eval()
    y_eval = net(x)
    np.testing.assert_array_equal(y_eval, y_train)
    assert all(m._saved is None for m in net)  # also drops what the training forward kept
    for m in net:
        with pytest.raises(RuntimeError, match="eval mode"):
            m.backward(np.zeros(1))
    with pytest.raises(RuntimeError, match="eval mode"):
        net.backward(np.zeros_like(y_eval))


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(1, 2, 3), nn.ReLU, lambda: nn.MaxPool2d(2), nn.Flatten, lambda: nn.Linear(3, 2),
], ids=["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"])
def test_backward_before_forward_raises(make):
    with pytest.raises(RuntimeError, match="before forward"):
        make().backward(np.zeros((1, 2)))


# ---------------------------------------------------------------------------
# state_dict / load_state_dict


def test_state_dict_copies_both_ways():
    net = small_net()
    state = net.state_dict()
    assert list(state) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    state["0.bias"][:] = 7.0
    assert not np.any(net[0].bias.data == 7.0)  # a copy, not the parameter

    other = small_net(seed=99)
    weight = other[0].weight.data
    other.load_state_dict(state)
    assert other[0].weight.data is weight  # loaded in place
    np.testing.assert_array_equal(other[0].bias.data, 7.0)
    state["0.bias"][:] = 8.0
    np.testing.assert_array_equal(other[0].bias.data, 7.0)  # never aliases the caller's arrays


def test_load_state_dict_is_strict_and_atomic():
    net = small_net()
    before = net.state_dict()
    good = small_net(seed=1).state_dict()

    missing = dict(good)
    del missing["4.bias"]
    with pytest.raises(ValueError, match=r"missing keys: 4\.bias \(4,\)"):
        net.load_state_dict(missing)

    with pytest.raises(ValueError, match=r"unexpected keys: 5\.weight"):
        net.load_state_dict({**good, "5.weight": np.zeros(3)})

    shape = {**good, "4.weight": np.zeros((4, 28))}
    with pytest.raises(ValueError, match=r"shape mismatch for 4\.weight: expected \(4, 27\), got \(4, 28\)"):
        net.load_state_dict(shape)

    dtype = {**good, "0.bias": good["0.bias"].astype(np.float32)}
    with pytest.raises(ValueError, match="dtype mismatch for 0.bias: expected float64, got float32"):
        net.load_state_dict(dtype)

    both = {**missing, "extra": np.zeros(1)}
    with pytest.raises(ValueError, match="missing keys.*unexpected keys: extra"):
        net.load_state_dict(both)

    for name, value in net.state_dict().items():  # nothing was copied by the failed loads
        np.testing.assert_array_equal(value, before[name])


# ---------------------------------------------------------------------------
# Initialisation


@pytest.mark.parametrize("make, fan_in", [
    (lambda rng, dtype: nn.Conv2d(20, 50, 5, dtype=dtype, rng=rng), 20 * 5 * 5),
    (lambda rng, dtype: nn.Linear(300, 200, dtype=dtype, rng=rng), 300),
], ids=["Conv2d", "Linear"])
def test_default_init_is_pytorchs_uniform(make, fan_in):
    bound = 1 / math.sqrt(fan_in)
    layer = make(seeded(14), np.float32)
    w, b = layer.weight.data, layer.bias.data
    assert w.dtype == np.float32 and b.dtype == np.float32 and w.flags.c_contiguous
    for a in (w, b):
        assert np.abs(a).max() <= bound
        assert np.abs(a).max() > 0.9 * bound  # spread over the whole interval
    # U(-b, b) has mean 0 and std b/sqrt(3); 25,000+ samples pin both to a few percent.
    assert abs(w.mean()) < 0.02 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)

    same = make(seeded(14), np.float32)
    np.testing.assert_array_equal(same.weight.data, w)
    np.testing.assert_array_equal(same.bias.data, b)
    assert not np.array_equal(make(seeded(15), np.float32).weight.data, w)

    # float64 from the same seed holds the same values up to float32 rounding.
    wide = make(seeded(14), np.float64)
    assert wide.weight.data.dtype == np.float64
    np.testing.assert_array_equal(wide.weight.data.astype(np.float32), w)
    np.testing.assert_array_equal(wide.bias.data.astype(np.float32), b)


def test_no_rng_draws_fresh_weights():
    assert not np.array_equal(nn.Linear(10, 10).weight.data, nn.Linear(10, 10).weight.data)


# ---------------------------------------------------------------------------
# Argument validation and repr


@pytest.mark.parametrize("build, error, match", [
    (lambda: nn.Conv2d(0, 20, 5), ValueError, "Conv2d.*in_channels must be >= 1"),
    (lambda: nn.Conv2d(1, -2, 5), ValueError, "Conv2d.*out_channels"),
    (lambda: nn.Conv2d(1.0, 2, 5), TypeError, "Conv2d.*in_channels must be an int"),
    (lambda: nn.Conv2d(1, 2, 0), ValueError, "Conv2d.*kernel_size"),
    (lambda: nn.Conv2d(1, 2, 3, stride=0), ValueError, "Conv2d.*stride"),
    (lambda: nn.Conv2d(1, 2, 3, padding=-1), ValueError, "Conv2d.*padding"),
    (lambda: nn.Conv2d(1, 2, 3, bias=1), TypeError, "Conv2d.*bias"),
    (lambda: nn.Conv2d(1, 2, 3, dtype=np.float16), TypeError, "Conv2d.*dtype must be float32 or float64"),
    (lambda: nn.Conv2d(1, 2, 3, dtype=None), TypeError, "Conv2d.*dtype"),
    (lambda: nn.Conv2d(1, 2, 3, rng=0), TypeError, "Conv2d.*rng must be a numpy.random.Generator"),
    (lambda: nn.Linear(0, 3), ValueError, "Linear.*in_features"),
    (lambda: nn.Linear(3, 0), ValueError, "Linear.*out_features"),
    (lambda: nn.Linear(3, 2, dtype=np.int64), TypeError, "Linear.*dtype"),
    (lambda: nn.MaxPool2d(0), ValueError, "MaxPool2d.*kernel_size"),
    (lambda: nn.MaxPool2d(2, padding=2), ValueError, "MaxPool2d.*padding must be at most half"),
])
def test_constructor_validation(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_dtype_mismatch_between_input_and_parameters_raises():
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(3, 2, dtype=np.float32)(np.zeros((1, 3), np.float64))


def test_repr_reads_like_pytorch():
    assert repr(nn.Conv2d(1, 20, 5, padding=2)) == \
        "Conv2d(1, 20, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"
    assert repr(nn.Conv2d(3, 4, (3, 5), stride=2, bias=False)) == \
        "Conv2d(3, 4, kernel_size=(3, 5), stride=(2, 2), bias=False)"
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(nn.Linear(2450, 500)) == "Linear(in_features=2450, out_features=500, bias=True)"
    assert repr(nn.Sequential(nn.ReLU(), nn.Sequential(nn.Flatten()))) == (
        "Sequential(\n"
        "  (0): ReLU()\n"
        "  (1): Sequential(\n"
        "    (0): Flatten()\n"
        "  )\n"
        ")"
    )


# ---------------------------------------------------------------------------
# A backward that raises (bad arguments) leaves the parameter gradients as they were:
# after zero_grad() they still read as zeros, and the next good backward writes fresh
# values instead of adding into stale ones.

def _fused_net(rng):
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype=np.float64, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3, dtype=np.float64, rng=rng))


@pytest.mark.parametrize("make, x_shape, bad_grad_shape", [
    (lambda rng: nn.Conv2d(2, 3, 3, dtype=np.float64, rng=rng), (2, 2, 5, 5), (2, 3, 2, 2)),
    (lambda rng: nn.Linear(4, 3, dtype=np.float64, rng=rng), (2, 4), (2, 4)),
    (_fused_net, (2, 1, 4, 4), (2, 4)),
], ids=["Conv2d", "Linear", "fused-Sequential"])
def test_failed_backward_leaves_cleared_gradients_cleared(make, x_shape, bad_grad_shape):
    rng = np.random.default_rng(0)
    layer = make(rng)
    x = rng.standard_normal(x_shape)
    y = layer(x)
    grad = rng.standard_normal(y.shape)
    layer.backward(grad)
    fresh = [p.grad.copy() for p in layer.parameters()]  # one backward's gradients
    layer.backward(grad)  # now .grad holds twice that
    layer.zero_grad()
    with pytest.raises(ValueError):
        layer.backward(rng.standard_normal(bad_grad_shape))
    layer.backward(grad)
    for p, want in zip(layer.parameters(), fresh):
        np.testing.assert_allclose(p.grad, want, rtol=1e-12)  # not 3x: the stale values are gone
    layer.zero_grad()
    with pytest.raises(ValueError):
        layer.backward(rng.standard_normal(bad_grad_shape))
    for p in layer.parameters():
        assert not p.grad.any()  # read after the failure: zeros, as zero_grad() promised
