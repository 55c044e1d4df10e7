"""cyconv.compile: a model's inference pass as one compiled call.

Its outputs equal model.eval()(x) over every layer it compiles, both dtypes, batches from 1 to 1000,
thread counts below and above the batch size (the split-image path), both GEMM paths; it keeps no
reference to the model's mutable state; bad input raises clear errors; concurrent calls are safe."""

import threading

import numpy as np
import pytest

import cyconv
import cyconv._kernels as _kernels
from cyconv import models, nn
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array

pytestmark = KERNEL_TESTS


def rng_(seed=0):
    return np.random.default_rng(seed)


def batch_norm(cls, channels, dtype, rng):
    """A BatchNorm with statistics and affine parameters far from the identity's."""
    layer = cls(channels, dtype=dtype)
    layer.running_mean[...] = rng.standard_normal(channels)
    layer.running_var[...] = rng.random(channels) + 0.5
    layer.weight.data[...] = rng.standard_normal(channels)
    layer.bias.data[...] = rng.standard_normal(channels)
    return layer


def every_layer(dtype, rng):
    """A network with every compilable layer, in the orders the planner fuses and in the ones it does not."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=dtype, rng=rng), batch_norm(nn.BatchNorm2d, 4, dtype, rng),  # folded
        nn.ReLU(), nn.MaxPool2d(2),                                                           # conv+relu+max
        nn.Conv2d(4, 5, (3, 2), stride=(1, 2), padding=(1, 0), dtype=dtype, rng=rng), nn.Tanh(),  # conv+tanh
        nn.Dropout(0.5, rng=rng),                                                             # nothing
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),                                       # pool alone
        batch_norm(nn.BatchNorm2d, 5, dtype, rng), nn.Tanh(),                                 # affine+tanh
        nn.Conv2d(5, 6, 1, dtype=dtype, rng=rng, bias=False), nn.Sigmoid(),                   # direct 1x1
        nn.AvgPool2d(2),                                                                      # ... + avg (sigmoid)
        nn.ReLU(), nn.MaxPool2d(1),                                                           # relu+max alone
        nn.Sigmoid(),                                                                         # activation alone
        nn.Flatten(), nn.Linear(6 * 2 * 1, 7, dtype=dtype, rng=rng),
        batch_norm(nn.BatchNorm1d, 7, dtype, rng), nn.ReLU(),                                 # linear(+bn)+relu
        batch_norm(nn.BatchNorm1d, 7, dtype, rng),                                            # affine on (N, C)
        nn.Linear(7, 5, dtype=dtype, rng=rng), nn.LogSoftmax(dim=1),
    )


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 5, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_layer_equals_the_model(dtype, batch, threads, gemm_path):
    model = every_layer(dtype, rng_(1)).eval()
    x = random_array(rng_(2), (batch, 2, 8, 8), dtype)
    with cyconv.set_num_threads(threads):
        got = cyconv.compile(model)(x)
        want = model(x)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lenet5_from_1_to_1000_images(dtype):
    model = models.lenet5(dtype=dtype, rng=rng_(3)).eval()
    predictor = cyconv.compile(model)
    for batch in (1, 2, 3, 17, 1000):
        x = random_array(rng_(batch), (batch, 1, 28, 28), dtype)
        assert_close(predictor(x), model(x), dtype, err_msg=f"batch {batch}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("make, shape", [(lambda: models.lenet5(rng=rng_(4)), (1, 28, 28)),
                                         (lambda: models.resnet20(rng=rng_(5)), (3, 16, 16)),
                                         (lambda: models.mobilenet_v2(10, 0.25, rng=rng_(6)), (3, 32, 32))],
                         ids=["lenet5", "resnet20", "mobilenet_v2"])
def test_an_image_gets_the_same_bits_in_any_batch(make, shape, threads, own_gemm):
    # what a server batching requests needs (cyconv serve): float32 on cyconv's own GEMM (the default path;
    # BLAS's, CYCONV_GEMM=blas, rounds a row by where it falls in the batch), every tier
    model = make().eval()
    predictor = cyconv.compile(model, input_shape=shape)
    x = random_array(rng_(7), (23,) + shape, np.float32)
    with cyconv.set_num_threads(threads):
        whole = predictor(x)
        for lo, hi in ((0, 1), (5, 6), (3, 13), (11, 23)):
            np.testing.assert_array_equal(predictor(x[lo:hi]), whole[lo:hi], err_msg=f"images {lo}-{hi}")


def test_softmax_and_mlp():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6, rng=rng_(4)), nn.Sigmoid(), nn.Linear(6, 3, rng=rng_(5)),
                          nn.Softmax(dim=1)).eval()
    x = random_array(rng_(6), (9, 3, 2, 2), np.float32)
    out = cyconv.compile(model)(x)
    assert_close(out, model(x), np.float32)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)


def test_a_changed_model_does_not_change_the_predictor():
    model = models.lenet5(rng=rng_(7)).eval()
    x = random_array(rng_(8), (4, 1, 28, 28), np.float32)
    predictor = cyconv.compile(model)
    before = predictor(x)
    for p in model.parameters():
        p.data *= 2
    np.testing.assert_array_equal(predictor(x), before)
    assert not np.array_equal(model(x), before)
    assert_close(cyconv.compile(model)(x), model(x), np.float32)  # compile again to follow


def test_batch_size_and_input_shape_plan_up_front():
    model = models.lenet5(rng=rng_(9)).eval()
    predictor = cyconv.compile(model, batch_size=32, input_shape=(1, 28, 28))
    assert predictor.batch_size == 32 and predictor.input_shape == (1, 28, 28)
    x = random_array(rng_(10), (40, 1, 28, 28), np.float32)
    assert_close(predictor(x), model(x), np.float32)
    assert predictor.batch_size == 40  # grew
    assert predictor(x[:0]).shape == (0, 10)


def test_packed_for_its_tier_whatever_runs_later():
    # The convolutions' weights are packed for the tier in use at compile time: switching tiers
    # afterwards must not mix packings.
    model = models.lenet5(rng=rng_(11)).eval()
    x = random_array(rng_(12), (3, 1, 28, 28), np.float32)
    want = model(x)
    for tier in cyconv.supported_isas():
        with cyconv.set_isa(tier):
            predictor = cyconv.compile(model)
        for other in cyconv.supported_isas():
            with cyconv.set_isa(other):
                assert_close(predictor(x), want, np.float32)


def test_concurrent_calls_from_python_threads():
    model = models.lenet5(rng=rng_(13)).eval()
    predictor = cyconv.compile(model)
    inputs = [random_array(rng_(14 + i), (5, 1, 28, 28), np.float32) for i in range(3)]
    expected = [predictor(x) for x in inputs]  # alone, before the threads
    failures = []

    def worker(x, want):
        try:  # an exception in a thread is only printed: record it, so that it fails the test
            for _ in range(30):
                if not np.array_equal(predictor(x), want):
                    failures.append("differs")
                    return
        except BaseException as e:
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=pair) for pair in zip(inputs, expected)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a worker hangs"
    assert not failures


@pytest.mark.parametrize("make, error, match", [
    (lambda: cyconv.compile(object()), TypeError, "must be a cyconv.nn module"),
    (lambda: cyconv.compile(nn.Sequential(nn.Linear(2, 2, rng=rng_()),
                                          nn.Linear(2, 2, dtype=np.float64, rng=rng_()))), TypeError,
     "mixes parameter dtypes"),
    (lambda: cyconv.compile(models.lenet5(rng=rng_()), input_shape=(1, 0, 28)), ValueError, "input_shape"),
    (lambda: cyconv.compile(models.lenet5(rng=rng_()), input_shape=(3, 28, 28)), ValueError,
     r"layer 0 \(Conv2d\) expects 1 channels"),
    (lambda: cyconv.compile(models.lenet5(rng=rng_()), input_shape=(1, 20, 20)), ValueError,
     r"layer 7 \(Linear\) expects 2450 features, the input is \(1250,\)"),
    (lambda: cyconv.compile(models.lenet5(rng=rng_()), batch_size=0), ValueError, "batch_size"),
], ids=["not-a-module", "mixed-dtypes", "bad-input_shape", "channels", "features", "batch_size"])
def test_compile_rejects(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(TypeError, match="BatchNorm2d without running statistics"):
        cyconv.compile(model)


def test_small_cnn_and_lenet5_classic():
    for model, shape in ((models.small_cnn(3, 4, 32, rng=rng_(8)), (3, 32, 32)),
                         (models.lenet5_classic(rng=rng_(9)), (1, 28, 28))):
        model.train()
        model(random_array(rng_(10), (8,) + shape, np.float32))  # running statistics away from 0 and 1
        model.eval()
        x = random_array(rng_(11), (5,) + shape, np.float32)
        assert_close(cyconv.compile(model)(x), model(x), np.float32)


def test_unsupported_layer_is_named():
    class Mine(nn.Module):  # a layer of its own: forward and backward
        def forward(self, x):
            return x

        def backward(self, grad_output, *, input_grad=True):
            return grad_output

    with pytest.raises(TypeError, match=r"no compiled form for Mine \(layer 1\); compilable layers: "):
        cyconv.compile(nn.Sequential(nn.Flatten(), Mine()))


def test_call_rejects_bad_input():
    predictor = cyconv.compile(models.lenet5(rng=rng_()))
    predictor(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(TypeError, match="dtype float64"):
        predictor(np.zeros((1, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 28, 28\) as planned"):
        predictor(np.zeros((1, 1, 27, 28), np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        predictor([[0.0]])
    with pytest.raises(ValueError, match="a batch"):
        predictor(np.zeros(3, np.float32))


def test_kernel_checks_its_buffers():
    model = models.lenet5(rng=rng_()).eval()
    predictor = cyconv.compile(model, input_shape=(1, 28, 28), batch_size=2)
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match="predict: out has"):
        _kernels.predict(np.empty(19, np.float32), x.reshape(-1), predictor._ops, predictor._params,
                         predictor._packed, 0, predictor._arena, 2 * predictor._largest, predictor._scratch,
                         predictor._per_thread, predictor._xpack, 2, 1)


def test_profile_times_every_op():
    """Predictor.profile: one row per op in plan order (named after its first layer, with what it fused),
    the convolution's algorithm, multiply-adds as im2col counts them, and last the whole call; the
    buffers are left as a call leaves them, so the next call gives the same output."""
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5, rng=rng))
    predictor = cyconv.compile(model.eval())
    x = random_array(rng, (3, 2, 8, 8), np.float32)
    want = predictor(x)
    rows = predictor.profile(x, repeats=2, statistic="min")
    assert [r[:3] for r in rows] == [("0", "Conv2d+ReLU+MaxPool2d", predictor.algorithms[0][1]), ("4", "Linear", None),
                                     ("(whole call)", "", None)]
    assert [r[3] for r in rows] == [3 * 4 * 64 * 2 * 9, 3 * 64 * 5, 3 * (4 * 64 * 2 * 9 + 64 * 5)]
    assert all(r[4] > 0 for r in rows)
    np.testing.assert_array_equal(predictor(x), want)
    with pytest.raises(ValueError, match=r"profile\(\): statistic"):
        predictor.profile(x, statistic="mean")
    with pytest.raises(ValueError, match=r"profile\(\): repeats"):
        predictor.profile(x, repeats=0)
