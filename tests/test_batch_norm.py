"""batch_norm and its backward: against the reference (training and eval, running statistics, with
and without weight and bias, 2-D to 4-D inputs), finite-difference gradients, PyTorch's values and
running averages (when torch is installed), a mean that dwarfs the spread, thread-count independence,
the BatchNorm1d/2d modules (momentum None, track_running_stats=False, state dict) and argument
validation."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from cyconv import nn
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, assert_close, ident, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

SHAPES = [(5, 3), (64, 500), (4, 3, 7), (2, 5, 6, 7), (16, 20, 14, 14), (3, 2, 1, 1)]


def stats(rng, C, dtype):
    return (random_array(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype),
            random_array(rng, C, dtype), random_array(rng, C, dtype))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_matches_reference(shape, dtype, training, affine):
    rng = np.random.default_rng(0)
    x = (random_array(rng, shape, dtype) * 2 + 3).astype(dtype)
    mean, var, weight, bias = stats(rng, shape[1], dtype)
    if not affine:
        weight = bias = None
    running = (mean.copy(), var.copy())
    expected_running = (mean.copy(), var.copy())
    y, m, s = F.batch_norm(x, *running, weight, bias, training, 0.1, 1e-5, return_stats=True)
    ry, rm, rs = R.batch_norm(x, *expected_running, weight, bias, training, 0.1, 1e-5, return_stats=True)
    assert_close(y, ry, dtype)
    assert_close(m, rm, dtype)
    assert_close(s, rs, dtype)
    for got, want in zip(running, expected_running):
        assert_close(got, want, dtype)
    if not training:
        np.testing.assert_array_equal(running[0], mean)  # eval leaves the running statistics alone
    g = random_array(rng, shape, dtype)
    got = F.batch_norm_backward(g, x, weight, m, s, training)
    want = R.batch_norm_backward(g, x, weight, m, s, training)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            assert_close(a, b, dtype)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 3, 4)], ids=ident)
def test_backward_gradcheck(module, training, shape):
    rng = np.random.default_rng(1)
    x = random_array(rng, shape, np.float64)
    mean, var, weight, bias = stats(rng, shape[1], np.float64)
    g = random_array(rng, shape, np.float64)

    def forward(v, w=weight, b=bias):
        return module.batch_norm(v, mean.copy(), var.copy(), w, b, training)

    _, m, s = module.batch_norm(x, mean.copy(), var.copy(), weight, bias, training, return_stats=True)
    grad_x, grad_w, grad_b = module.batch_norm_backward(g, x, weight, m, s, training)
    assert_grad(grad_x, projection(forward, g), x)
    assert_grad(grad_w, projection(lambda w: forward(x, w=w), g), weight)
    assert_grad(grad_b, projection(lambda b: forward(x, b=b), g), bias)


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 5), (8, 6, 7, 9)], ids=ident)
def test_matches_pytorch(shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (random_array(rng, shape, np.float32) * 3 + 1).astype(np.float32)
    g = random_array(rng, shape, np.float32)
    C = shape[1]
    tbn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(C)
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(C)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(random_array(rng, C, np.float32)))
        tbn.bias.copy_(torch.from_numpy(random_array(rng, C, np.float32)))
    bn.weight.data[...] = tbn.weight.detach().numpy()
    bn.bias.data[...] = tbn.bias.detach().numpy()
    for step in range(3):  # the running averages over a few batches
        tx = torch.from_numpy(x + step).requires_grad_()
        ty = tbn(tx)
        ty.backward(torch.from_numpy(g))
        bn.zero_grad()
        y = bn(x + step)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.backward(g), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.bias.grad, tbn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
        tbn.weight.grad = tbn.bias.grad = None
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == int(tbn.num_batches_tracked) == 3
    tbn.eval()
    bn.eval()
    np.testing.assert_allclose(bn(x), tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_variance_of_a_large_mean_is_accurate():
    # E[x^2] - E[x]^2 would lose every digit here in float32: mean 1e4, spread 1.
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((16, 4, 32, 32))).astype(np.float32)
    y = F.batch_norm(x, None, None, training=True)
    exact = x.astype(np.float64).var(axis=(0, 2, 3))
    _, _, invstd = F.batch_norm(x, None, None, training=True, return_stats=True)
    np.testing.assert_allclose(1 / invstd.astype(np.float64) ** 2 - 1e-5, exact, rtol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, rtol=1e-3)


@pytest.mark.parametrize("shape", [(64, 500), (32, 16, 32, 32)], ids=ident)
def test_results_do_not_depend_on_thread_count(shape):
    rng = np.random.default_rng(4)
    x, g = random_array(rng, shape, np.float32), random_array(rng, shape, np.float32)
    weight = random_array(rng, shape[1], np.float32)
    results = []
    for threads in (1, 2):
        with cyconv.set_num_threads(threads):
            y, m, s = F.batch_norm(x, None, None, weight, None, True, return_stats=True)
            results.append((y, m, s) + F.batch_norm_backward(g, x, weight, m, s))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(layout):
    rng = np.random.default_rng(5)
    x = random_array(rng, (4, 3, 5, 6), np.float32)
    expected = F.batch_norm(x, None, None, training=True)
    np.testing.assert_array_equal(F.batch_norm(relayout(x, layout), None, None, training=True), expected)


def test_empty_batch_in_eval():
    x = np.zeros((0, 3, 4, 4), np.float32)
    y = F.batch_norm(x, np.zeros(3, np.float32), np.ones(3, np.float32))
    assert y.shape == x.shape


def test_rejects_bad_input():
    x = np.zeros((4, 3, 2, 2), np.float32)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"batch_norm\(\): x must be \(N, C\)"):
        F.batch_norm(x[0, 0, 0], mean, var)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\)"):
        F.batch_norm(x, mean[:2], var)
    with pytest.raises(TypeError, match=r"batch_norm\(\): weight has dtype float64"):
        F.batch_norm(x, mean, var, weight=np.ones(3))
    with pytest.raises(ValueError, match=r"running_mean and running_var must both be given"):
        F.batch_norm(x, mean, None)
    with pytest.raises(ValueError, match=r"training=False normalises with running_mean"):
        F.batch_norm(x, None, None)
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        F.batch_norm(x[:1, :, :1, :1], mean, var, training=True)
    with pytest.raises(ValueError, match=r"running_mean is updated in place"):
        F.batch_norm(x, mean[::-1], var, training=True)
    for name, kwargs in (("momentum", dict(momentum=1.5)), ("eps", dict(eps=-1.0)), ("momentum", dict(momentum=None))):
        with pytest.raises(ValueError, match=rf"batch_norm\(\): {name} must be"):
            F.batch_norm(x, mean, var, **kwargs)
    with pytest.raises(ValueError, match=r"batch_norm_backward\(\): grad_y must have x's shape"):
        F.batch_norm_backward(x[:2], x, None, mean, var)
    with pytest.raises(ValueError, match=r"mean and invstd are required"):
        F.batch_norm_backward(x, x, None, None, var)


class TestModules:
    def test_momentum_none_is_the_cumulative_average(self):
        rng = np.random.default_rng(6)
        bn = nn.BatchNorm1d(4, momentum=None, dtype=np.float64)
        batches = [random_array(rng, (10, 4), np.float64) + i for i in range(3)]
        for b in batches:
            bn(b)
        np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(axis=0) for b in batches], axis=0))
        np.testing.assert_allclose(bn.running_var, np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0))

    def test_without_running_stats_eval_uses_the_batch(self):
        bn = nn.BatchNorm2d(3, track_running_stats=False).eval()
        x = random_array(np.random.default_rng(7), (4, 3, 5, 5), np.float32) * 4 + 2
        np.testing.assert_array_equal(bn(x), F.batch_norm(x, None, None, bn.weight.data, bn.bias.data, True))
        assert bn.state_dict().keys() == {"weight", "bias"}

    def test_eval_uses_running_stats_and_backward_treats_them_as_constants(self):
        bn = nn.BatchNorm2d(2, dtype=np.float64)
        bn.running_mean[...] = [1.0, -1.0]
        bn.running_var[...] = [4.0, 0.25]
        bn.eval()
        x = np.ones((1, 2, 1, 1))  # one value per channel: fine in eval
        y = bn(x)
        np.testing.assert_allclose(y.ravel(), [0, 2 * 2 / np.sqrt(1 + 4e-5)], rtol=1e-9)
        with pytest.raises(RuntimeError, match="eval mode"):
            bn.backward(y)

    def test_state_dict_round_trip(self):
        a = nn.BatchNorm2d(3)
        a(random_array(np.random.default_rng(8), (4, 3, 2, 2), np.float32))
        state = a.state_dict()
        assert list(state) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
        b = nn.BatchNorm2d(3)
        b.load_state_dict(state)
        for k, v in b.state_dict().items():
            np.testing.assert_array_equal(v, state[k], strict=True)
        with pytest.raises(ValueError, match="missing keys: running_mean"):
            b.load_state_dict({k: v for k, v in state.items() if k != "running_mean"})

    def test_affine_false_has_no_parameters(self):
        bn = nn.BatchNorm1d(5, affine=False)
        assert bn.parameters() == []
        x = random_array(np.random.default_rng(9), (6, 5), np.float32)
        bn(x)
        assert bn.backward(np.ones_like(x)).shape == x.shape

    def test_rejects_bad_input(self):
        with pytest.raises(ValueError, match=r"BatchNorm2d.forward\(\): x must be 4-D with 3 channels"):
            nn.BatchNorm2d(3)(np.zeros((2, 4, 5, 5), np.float32))
        with pytest.raises(ValueError, match=r"BatchNorm1d.forward\(\): x must be 2-D or 3-D"):
            nn.BatchNorm1d(3)(np.zeros((2, 3, 5, 5), np.float32))
        with pytest.raises(ValueError, match=r"BatchNorm1d\(\): momentum must be a number in \[0, 1\]"):
            nn.BatchNorm1d(3, momentum=2)
        with pytest.raises(ValueError, match=r"BatchNorm2d\(\): eps"):
            nn.BatchNorm2d(3, eps=-1)
        assert "BatchNorm2d(3, eps=1e-05, momentum=0.1" in repr(nn.BatchNorm2d(3))
