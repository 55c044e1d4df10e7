"""The measured algorithm choice (algorithm="measure", CYCONV_CONV_ALGO=measure, set_conv_algorithm("measure")):
the choice is one of the candidates the shape admits, it is timed once per key and kept, the results
equal the twin within the chosen algorithm's tolerance (and the chosen algorithm's own bits), training
and cyconv.compile use it, and bad values raise ValueError naming the argument. No timing assertions:
which candidate wins depends on the machine and its load."""

import os
import subprocess
import sys

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.nn as nn
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array
from test_winograd import assert_winograd_close

pytestmark = KERNEL_TESTS

# (C, O, H, W, kernel, stride, padding, groups, the candidates float32's forward admits)
LAYERS = [
    pytest.param(8, 8, 9, 10, 3, 1, 1, 1, ["im2col", "winograd2", "winograd4"], id="3x3-s1"),
    pytest.param(3, 5, 12, 12, 5, 1, 2, 1, ["im2col", "winograd2", "winograd4"], id="5x5-s1"),
    pytest.param(6, 4, 11, 9, 3, 2, 1, 1, ["im2col", "direct"], id="3x3-s2"),
    pytest.param(6, 8, 9, 9, 1, 2, 0, 1, ["im2col", "direct"], id="1x1-s2"),
    pytest.param(6, 8, 9, 9, 1, 1, 0, 1, ["im2col"], id="1x1-s1"),
    pytest.param(6, 6, 10, 10, 3, 2, 1, 6, ["im2col", "direct"], id="depthwise-s2"),
    pytest.param(4, 6, 8, 8, 3, 1, 1, 2, ["im2col"], id="grouped"),
]


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty cache of measured choices, and a count of the candidates timed (by algorithm)."""
    monkeypatch.setattr(F, "_measured", {})
    timed = []
    run = F._candidate_run

    def counting(direction, algorithm, *args):
        timed.append((direction, algorithm))
        return run(direction, algorithm, *args)

    monkeypatch.setattr(F, "_candidate_run", counting)
    return timed


def assert_algorithm_close(actual, expected, dtype, algorithm, err_msg=""):
    """Within the tolerance of the algorithm that produced actual (Winograd's is looser)."""
    if algorithm.startswith("winograd"):
        assert_winograd_close(actual, expected, dtype, err_msg)
    else:
        assert_close(actual, expected, dtype, err_msg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, O, H, W, kernel, stride, padding, groups, admitted", LAYERS)
def test_measured_choice_is_admitted_cached_and_close(fresh_cache, C, O, H, W, kernel, stride, padding, groups,
                                                      admitted, dtype):
    rng = np.random.default_rng(0)
    x = random_array(rng, (3, C, H, W), dtype)
    w = random_array(rng, (O, C // groups, kernel, kernel), dtype)
    w = (w / np.sqrt(C // groups * kernel * kernel)).astype(dtype)
    b = random_array(rng, (O,), dtype)
    if dtype == np.float64 and groups == 1:
        admitted = [a for a in admitted if a != "direct"]  # float64's direct is im2col's code
    assert F.measure_candidates(C, kernel, stride, padding, 1, groups, dtype) == admitted

    y = F.conv2d(x, w, b, stride, padding, groups=groups, algorithm="measure")
    g = random_array(rng, y.shape, dtype)
    grads = F.conv2d_backward(g, x, w, stride, padding, groups=groups, algorithm="measure")
    chosen = {k[0]: a for k, (a, _) in F.measured_conv_algorithms().items()}
    assert set(chosen) == {"forward", "backward"}
    assert chosen["forward"] in admitted
    assert chosen["backward"] in F.measure_candidates(C, kernel, stride, padding, 1, groups, dtype, "backward")
    assert len(fresh_cache) == (len(admitted) if len(admitted) > 1 else 0) + (
        len(F.measure_candidates(C, kernel, stride, padding, 1, groups, dtype, "backward")) if
        len(F.measure_candidates(C, kernel, stride, padding, 1, groups, dtype, "backward")) > 1 else 0)

    # the chosen algorithm's own bits, and the twin within its tolerance
    np.testing.assert_array_equal(y, F.conv2d(x, w, b, stride, padding, groups=groups, algorithm=chosen["forward"]))
    assert_algorithm_close(y, R.conv2d(x, w, b, stride, padding, groups=groups), dtype, chosen["forward"])
    for got, want in zip(grads, F.conv2d_backward(g, x, w, stride, padding, groups=groups,
                                                  algorithm=chosen["backward"])):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(grads, R.conv2d_backward(g, x, w, stride, padding, groups=groups)):
        assert_algorithm_close(got, want, dtype, chosen["backward"])

    # timed once: the same key again times nothing and gives the same bits
    before = len(fresh_cache)
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding, groups=groups, algorithm="measure"), y)
    F.conv2d_backward(g, x, w, stride, padding, groups=groups, algorithm="measure")
    assert len(fresh_cache) == before


def test_key_holds_batch_threads_and_tier(fresh_cache):
    rng = np.random.default_rng(1)
    w = random_array(rng, (8, 8, 3, 3), np.float32)
    for n in (1, 2):
        F.conv2d(random_array(rng, (n, 8, 9, 9), np.float32), w, None, 1, 1, algorithm="measure")
    other = 2 if cyconv.get_num_threads() == 1 else 1  # whatever OMP_NUM_THREADS the suite runs with
    with cyconv.set_num_threads(other):
        F.conv2d(random_array(rng, (2, 8, 9, 9), np.float32), w, None, 1, 1, algorithm="measure")
    keys = list(F.measured_conv_algorithms())
    assert len(keys) == 3 and len({k[10] for k in keys}) == 2 and len({k[13] for k in keys}) == 2
    assert all(k[12] == cyconv.get_isa() for k in keys)


def test_results_do_not_depend_on_threads_given_the_choice(fresh_cache):
    rng = np.random.default_rng(2)
    x = random_array(rng, (4, 16, 14, 14), np.float32)
    w = random_array(rng, (16, 16, 3, 3), np.float32) / np.float32(12)
    F.conv2d(x, w, None, 1, 1, algorithm="measure")
    (chosen, _), = F.measured_conv_algorithms().values()
    ys = []
    for threads in (1, 2, 3):
        with cyconv.set_num_threads(threads):
            ys.append(F.conv2d(x, w, None, 1, 1, algorithm=chosen))
    for y in ys[1:]:
        np.testing.assert_array_equal(y, ys[0])


def test_set_conv_algorithm_measure_and_nn_training(fresh_cache):
    rng = np.random.default_rng(3)
    conv = nn.Conv2d(8, 8, 3, padding=1, rng=rng)
    twin = nn.Conv2d(8, 8, 3, padding=1, rng=np.random.default_rng(3), algorithm="measure")
    assert twin.algorithm == "measure" and "algorithm='measure'" in repr(twin)
    x = random_array(rng, (2, 8, 9, 9), np.float32)
    with F.set_conv_algorithm("measure"):
        assert F.get_conv_algorithm() == "measure"
        y = conv(x)
        conv.backward(np.ones_like(y))
    np.testing.assert_array_equal(twin(x), y)  # the same key: the same choice, the same bits
    twin.backward(np.ones_like(y))
    np.testing.assert_array_equal(twin.weight.grad, conv.weight.grad)
    assert {k[0] for k in F.measured_conv_algorithms()} == {"forward", "backward"}
    assert len(fresh_cache) == 2 * 3  # each direction's three candidates, once


def test_compile_measures_per_layer(fresh_cache):
    rng = np.random.default_rng(4)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1, rng=rng, algorithm="measure"), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, rng=rng, algorithm="measure"),
                          nn.Conv2d(16, 8, 1, stride=2, rng=rng, algorithm="measure"), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3, rng=rng))
    predictor = cyconv.compile(model, batch_size=2, input_shape=(4, 14, 14))
    names = [name for name, _ in predictor.algorithms]
    assert len(names) == 3
    shapes = [(4, (3, 3), 1, 1, 1), (16, (3, 3), 2, 1, 16), (16, (1, 1), 2, 0, 1)]
    for (_, chosen), (C, k, s, p, g) in zip(predictor.algorithms, shapes):
        assert chosen in F.measure_candidates(C, k, s, p, 1, g, np.float32, "predict")
    measured = F.measured_conv_algorithms()
    assert {k[0] for k in measured} == {"predict"} and {k[10] for k in measured} == {2}
    x = random_array(rng, (2, 4, 14, 14), np.float32)
    model.eval()
    assert_winograd_close(predictor(x), model(x), np.float32)  # the forward may have measured otherwise
    count = len(fresh_cache)
    cyconv.compile(model, batch_size=2, input_shape=(4, 14, 14))
    assert len(fresh_cache) == count  # timed once per process


@pytest.mark.parametrize("call", [
    lambda: F.conv2d(np.ones((1, 1, 5, 5), np.float32), np.ones((1, 1, 3, 3), np.float32), algorithm="measured"),
    lambda: F.conv2d_backward(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 5, 5), np.float32),
                              np.ones((1, 1, 3, 3), np.float32), algorithm="fastest"),
    lambda: nn.Conv2d(1, 1, 3, algorithm="benchmark"),
    lambda: F.set_conv_algorithm("timed"),
    lambda: F.conv2d(np.ones((1, 1, 5, 5), np.float32), np.ones((1, 1, 3, 3), np.float32), algorithm=None),
], ids=["conv2d", "conv2d_backward", "Conv2d", "set_conv_algorithm", "None"])
def test_bad_algorithm_names_the_argument(call):
    with pytest.raises(ValueError, match=r"algorithm must be one of .*'measure'"):
        call()


def test_bad_measure_candidates_direction():
    with pytest.raises(ValueError, match=r"measure_candidates\(\): direction"):
        F.measure_candidates(4, 3, direction="sideways")


@pytest.mark.parametrize("value, expected", [("measure", "measure"), ("bench", "CYCONV_CONV_ALGO")])
def test_env_measure(value, expected):
    code = "import cyconv.functional as F; print(F.get_conv_algorithm())"
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, CYCONV_CONV_ALGO=value),
                         capture_output=True, text=True)
    assert expected in (out.stdout if value == "measure" else out.stderr)
    assert (out.returncode == 0) == (value == "measure")


def test_training_runs_a_named_algorithm_unfused(fresh_cache):
    """Conv2d -> ReLU -> MaxPool2d trains fused on im2col's kernel; a convolution whose algorithm is
    "measure" (or any other by name) runs on its own, so the measured choice is what trains."""
    rng = np.random.default_rng(5)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, rng=rng, algorithm="measure"), nn.ReLU(), nn.MaxPool2d(2))
    twin = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, rng=np.random.default_rng(5)), nn.ReLU(), nn.MaxPool2d(2))
    x = random_array(rng, (2, 8, 10, 10), np.float32)
    y = model(x)
    model.backward(np.ones_like(y))
    assert {k[0] for k in F.measured_conv_algorithms()} == {"forward", "backward"}
    y_twin = twin(x)  # fused, im2col
    twin.backward(np.ones_like(y_twin))
    chosen = {k[0]: a for k, (a, _) in F.measured_conv_algorithms().items()}
    assert_algorithm_close(y, y_twin, np.float32, chosen["forward"])
    assert_algorithm_close(model[0].weight.grad, twin[0].weight.grad, np.float32, chosen["backward"])
