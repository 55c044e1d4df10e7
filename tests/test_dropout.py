"""dropout and its backward: the compiled mask against the reference's (bit for bit, every tier and
thread count), the keep rate, the scale, the backward through the same mask, eval mode, PyTorch's
edge cases (p = 0, p = 1, NaN), the module's seeding and saved state, and argument validation."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from cyconv import nn
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, ident, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (70000,)]  # the last: several threads' blocks
SEEDS = [0, 1, 2**32 + 7, 2**64 - 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_matches_reference_exactly(p, shape, dtype):
    rng = np.random.default_rng(0)
    x = random_array(rng, shape, dtype)
    for seed in SEEDS:
        y = F.dropout(x, p, seed=seed)
        np.testing.assert_array_equal(y, R.dropout(x, p, seed=seed), strict=True)
        g = random_array(rng, shape, dtype)
        np.testing.assert_array_equal(F.dropout_backward(g, p, seed=seed), R.dropout_backward(g, p, seed=seed),
                                      strict=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_mask_does_not_depend_on_thread_count(threads):
    x = np.ones(200_000, np.float32)
    with cyconv.set_num_threads(threads):
        y = F.dropout(x, 0.5, seed=42)
    np.testing.assert_array_equal(y, R.dropout(x, 0.5, seed=42))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scale(p):
    x = np.ones(1_000_000, np.float64)
    y = F.dropout(x, p, seed=3)
    kept = y != 0
    # 1e6 Bernoulli(1 - p) draws: the kept fraction is within 5 standard deviations of 1 - p.
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    # The mean is preserved (inverted dropout), to the same statistical precision.
    assert abs(y.mean() - 1) < 5 * np.sqrt(p / (1 - p) / x.size)


def test_masks_of_different_seeds_are_independent():
    x = np.ones(100_000, np.float32)
    a, b = F.dropout(x, 0.5, seed=1) != 0, F.dropout(x, 0.5, seed=2) != 0
    # Independent halves agree on about half of the elements (5 standard deviations: 0.008).
    assert abs((a == b).mean() - 0.5) < 0.008
    # Neighbouring elements are not correlated either.
    assert abs((a[1:] == a[:-1]).mean() - 0.5) < 0.008


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_uses_the_forward_mask(dtype):
    x = random_array(np.random.default_rng(1), (4, 6, 5), dtype)
    y = F.dropout(x, 0.3, seed=9)
    g = np.ones_like(x)
    gx = F.dropout_backward(g, 0.3, seed=9)
    np.testing.assert_array_equal(gx != 0, y != 0)
    np.testing.assert_allclose(gx[gx != 0], dtype(1 / 0.7), rtol=0)


def test_backward_gradcheck():
    rng = np.random.default_rng(2)
    x = random_array(rng, (3, 4, 5), np.float64)
    g = random_array(rng, x.shape, np.float64)
    assert_grad(F.dropout_backward(g, 0.4, seed=5), projection(lambda v: F.dropout(v, 0.4, seed=5), g), x)


def test_pytorch_edge_cases():
    x = np.array([1.0, -2.0, np.nan, np.inf, 3.0], np.float32)
    np.testing.assert_array_equal(F.dropout(x, 0.0, seed=1), x)  # p = 0: every element, times 1
    y = F.dropout(x, 1.0, seed=1)  # p = 1: zeros, and x * 0 keeps NaN (as x * mask does in PyTorch)
    np.testing.assert_array_equal(y[[0, 1, 4]], 0)
    assert np.isnan(y[2]) and np.isnan(y[3])
    assert F.dropout(x, 0.5, seed=1, training=False) is x


def test_matches_pytorch_semantics():
    torch = pytest.importorskip("torch")
    x = random_array(np.random.default_rng(3), (64, 500), np.float32)
    # The masks differ (different generators); what is kept must be scaled as PyTorch scales it.
    ty = torch.nn.functional.dropout(torch.from_numpy(x), 0.3, training=True).numpy()
    y = F.dropout(x, 0.3, seed=4)
    np.testing.assert_array_equal(y[y != 0], (x * np.float32(1 / 0.7))[y != 0])
    np.testing.assert_allclose(ty[ty != 0], (x * np.float32(1 / 0.7))[ty != 0], rtol=1e-6)
    eval_out = torch.nn.functional.dropout(torch.from_numpy(x), 0.3, training=False).numpy()
    np.testing.assert_array_equal(F.dropout(x, 0.3, seed=0, training=False), eval_out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(layout):
    x = random_array(np.random.default_rng(5), (3, 4, 5), np.float32)
    np.testing.assert_array_equal(F.dropout(relayout(x, layout), 0.5, seed=7), F.dropout(x, 0.5, seed=7))


def test_empty():
    assert F.dropout(np.zeros((0, 3), np.float32), 0.5, seed=0).shape == (0, 3)


def test_rejects_bad_input():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"dropout\(\): x"):
        F.dropout(x.astype(np.int32), 0.5, seed=0)
    for p in (-0.1, 1.5, "0.5", True, np.nan):
        with pytest.raises(ValueError, match=r"dropout\(\): p must be a number in \[0, 1\]"):
            F.dropout(x, p, seed=0)
    for seed, error in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError), (None, TypeError)):
        with pytest.raises(error, match=r"dropout_backward\(\): seed"):
            F.dropout_backward(x, 0.5, seed=seed)
    with pytest.raises(TypeError, match=r"dropout\(\): training must be True or False"):
        F.dropout(x, 0.5, seed=0, training=1)
    # Refused before anything is copied or allocated (a 16 GB view of one float).
    huge = np.broadcast_to(np.float32(1), (2**32,))
    with pytest.raises(ValueError, match=r"dropout\(\): x has 4294967296 elements; dropout takes fewer than 2\*\*32"):
        F.dropout(huge, 0.5, seed=0)


class TestModule:
    def test_seeded_masks_repeat_and_differ_per_call(self):
        x = np.ones((8, 100), np.float32)
        a, b = nn.Dropout(0.5, rng=np.random.default_rng(0)), nn.Dropout(0.5, rng=np.random.default_rng(0))
        first, second = a(x), a(x)
        assert not np.array_equal(first, second)  # a fresh mask per call
        np.testing.assert_array_equal(b(x), first)  # the same seed: the same sequence of masks
        np.testing.assert_array_equal(b(x), second)

    def test_backward_and_eval(self):
        layer = nn.Dropout(0.25, rng=np.random.default_rng(1))
        x = random_array(np.random.default_rng(2), (4, 50), np.float64)
        y = layer(x)
        np.testing.assert_array_equal(layer.backward(np.ones_like(x)) != 0, y != 0)
        assert layer.backward(np.ones_like(x), input_grad=False) is None
        layer.eval()
        assert layer(x) is x
        with pytest.raises(RuntimeError, match="eval mode"):
            layer.backward(x)

    def test_state_dict_continues_the_mask_sequence(self):
        x = np.ones((4, 64), np.float32)
        a = nn.Dropout(0.5, rng=np.random.default_rng(3))
        a(x)
        state = a.state_dict()
        assert list(state) == ["rng_state"] and state["rng_state"].dtype == np.int64
        expected = a(x)
        b = nn.Dropout(0.5, rng=np.random.default_rng(99))
        b.load_state_dict(state)
        np.testing.assert_array_equal(b(x), expected)

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match=r"Dropout\(\): p must be a number in \[0, 1\]"):
            nn.Dropout(1.5)
        with pytest.raises(TypeError, match=r"Dropout\(\): rng"):
            nn.Dropout(0.5, rng=3)
        assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1)"
