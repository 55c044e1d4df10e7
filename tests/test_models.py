"""cyconv.models: LeNet-5 and the MLP as the course gives them, a finite-difference
check of the whole LeNet-5 gradient, overfitting a small batch, state dicts and
the summary table."""

import numpy as np
import pytest

import cyconv.functional as F
from cyconv import models, nn, set_num_threads
from cyconv.optim import SGD

# Weights and biases of the course's LeNet-5: conv1 20*1*5*5 + 20, conv2 50*20*5*5 + 50,
# fc1 2450*500 + 500, fc2 500*10 + 10. (Caffe's unpadded LeNet, Flatten 800, has 431,080.)
LENET5_PARAMETERS = 520 + 25_050 + 1_225_500 + 5_010


def seeded(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# Structure


def test_lenet5_is_the_course_table():
    model = models.lenet5(rng=seeded())
    kinds = [type(m) for m in model]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
                     nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert (model[0].in_channels, model[0].out_channels, model[0].kernel_size, model[0].padding,
            model[0].stride) == (1, 20, (5, 5), (2, 2), (1, 1))
    assert (model[3].in_channels, model[3].out_channels, model[3].kernel_size, model[3].padding,
            model[3].stride) == (20, 50, (5, 5), (2, 2), (1, 1))
    assert model[2].kernel_size == model[2].stride == (2, 2)
    assert (model[7].in_features, model[7].out_features) == (2450, 500)
    assert (model[9].in_features, model[9].out_features) == (500, 10)
    assert sum(p.data.size for p in model.parameters()) == LENET5_PARAMETERS

    x = np.zeros((3, 1, 28, 28), np.float32)
    shapes = []
    for layer in model:
        x = layer(x)
        shapes.append(x.shape[1:])
    assert shapes == [(20, 28, 28), (20, 28, 28), (20, 14, 14), (50, 14, 14), (50, 14, 14),
                      (50, 7, 7), (2450,), (500,), (500,), (10,)]
    assert x.dtype == np.float32


def test_mlp_is_the_two_layer_network():
    model = models.mlp(hidden=64, dtype=np.float64, rng=seeded())
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert (model[1].in_features, model[1].out_features, model[3].out_features) == (784, 64, 10)
    x = np.random.default_rng(1).random((4, 1, 28, 28))
    w1, b1, w2, b2 = (p.data for p in model.parameters())
    want = np.maximum(x.reshape(4, 784) @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(model(x), want, rtol=1e-12, atol=1e-12)


def test_builders_validate_and_use_one_generator():
    with pytest.raises(ValueError, match="lenet5.*num_classes"):
        models.lenet5(0)
    with pytest.raises(TypeError, match="lenet5.*dtype"):
        models.lenet5(dtype=np.float16)
    with pytest.raises(ValueError, match="mlp.*hidden"):
        models.mlp(hidden=0)
    a, b = models.lenet5(rng=seeded(3)).state_dict(), models.lenet5(rng=seeded(3)).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = models.lenet5(rng=seeded(4)).state_dict()
    assert not any(np.array_equal(a[k], c[k]) for k in a)
    wide = models.lenet5(dtype=np.float64, rng=seeded(3)).state_dict()
    assert all(np.array_equal(wide[k].astype(np.float32), a[k]) for k in a)


# ---------------------------------------------------------------------------
# The whole network's gradient, by central differences in float64


GRADIENT_MODELS = {
    "lenet5": (lambda rng: models.lenet5(dtype=np.float64, rng=rng), (2, 1, 28, 28)),
    "lenet5_classic": (lambda rng: models.lenet5_classic(dtype=np.float64, rng=rng), (2, 1, 28, 28)),
    # BatchNorm in training mode (the batch statistics depend on x); no Dropout, whose mask
    # changes with every forward pass.
    "small_cnn": (lambda rng: models.small_cnn(3, 10, 16, dropout=0, dtype=np.float64, rng=rng), (3, 3, 16, 16)),
}


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_gradient_matches_finite_differences(name):
    rng = seeded(5)
    build, shape = GRADIENT_MODELS[name]
    model = build(rng)
    x = rng.standard_normal(shape)
    target = np.array([3, 7, 1])[:shape[0]]

    def loss(x_):
        return F.softmax_cross_entropy(model(x_), target)[0]

    model.zero_grad()
    _, grad_logits = F.softmax_cross_entropy(model(x), target)
    grad_x = model.backward(grad_logits, input_grad=True)

    # (analytic, array perturbed in place, index) for a sample of entries of the input and of
    # every parameter; the parameters are perturbed in place, so the model sees the change.
    checks = [(grad_x, x, tuple(i)) for i in zip(*(rng.integers(0, n, 20) for n in x.shape))]
    for p in model.parameters():
        for flat in rng.choice(p.data.size, min(10, p.data.size), replace=False):
            checks.append((p.grad, p.data, np.unravel_index(flat, p.data.shape)))

    step = 1e-6
    analytic, numeric = [], []
    # Hundreds of forward passes over 2 or 3 images: threads buy nothing there, and on
    # busy shared cores their barriers cost 10x (results do not depend on the count).
    with set_num_threads(1):
        for grad, array, index in checks:
            saved = array[index]
            array[index] = saved + step
            plus = loss(x)
            array[index] = saved - step
            minus = loss(x)
            array[index] = saved
            analytic.append(grad[index])
            numeric.append((plus - minus) / (2 * step))
    analytic, numeric = np.array(analytic), np.array(numeric)

    # Rounding leaves ~1e-16 * loss / step ~ 1e-10 of absolute noise in each difference quotient.
    # A ReLU kink or max-pool switch inside +-step would show up as one large relative error.
    assert np.abs(analytic).max() > 1e-3  # the sample is not all zeros
    error = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-4)
    assert error.max() < 1e-5, (error.max(), checks[int(error.argmax())][2])


# ---------------------------------------------------------------------------
# The other networks


def test_lenet5_classic_is_lecuns_network():
    model = models.lenet5_classic(rng=seeded(1))
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "Tanh", "AvgPool2d", "Conv2d", "Tanh", "AvgPool2d", "Flatten", "Linear", "Tanh",
                     "Linear", "Tanh", "Linear"]
    assert (model[0].out_channels, model[0].padding, model[3].out_channels, model[3].padding) == (6, (2, 2), 16, (0, 0))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [120, 84, 10]
    assert sum(p.data.size for p in model.parameters()) == 61_706
    assert model(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)


def test_small_cnn_blocks_and_sizes():
    model = models.small_cnn(3, 5, 64, rng=seeded(2))
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(models.SMALL_CNN_WIDTHS)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model) == 3
    assert model[-1].in_features == 64 * 8 * 8 and model[-1].out_features == 5
    assert model(np.zeros((2, 3, 64, 64), np.float32)).shape == (2, 5)
    small = models.small_cnn(1, 2, 24, dropout=0, rng=seeded(2))
    assert not any(isinstance(m, nn.Dropout) for m in small) and small[-1].in_features == 64 * 3 * 3
    with pytest.raises(ValueError, match=r"small_cnn\(\): image_size must be a multiple of 8"):
        models.small_cnn(image_size=28)


def test_build_model_sizes_each_network_for_its_images():
    for name in models.MODELS:
        channels, size = models.default_input(name)
        model = models.build_model(name, num_classes=4, rng=seeded(0))
        assert model(np.zeros((2, channels, size, size), np.float32)).shape == (2, 4)
    assert models.build_model("mlp", in_channels=3, image_size=8, hidden=7)[1].in_features == 192
    with pytest.raises(ValueError, match=r"build_model\(\): lenet5 takes 1 x 28 x 28 images, got 3 x 64 x 64"):
        models.build_model("lenet5", in_channels=3, image_size=64)
    with pytest.raises(ValueError, match=r"build_model\(\): name must be one of"):
        models.build_model("resnet")
    with pytest.raises(ValueError, match=r"default_input\(\): name"):
        models.default_input("resnet")


def test_small_cnn_learns_a_small_batch_with_adam():
    from cyconv.optim import Adam

    rng = seeded(7)
    model = models.small_cnn(3, 4, 16, rng=rng)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    target = rng.integers(0, 4, 16)
    optimizer = Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        _, grad_logits = F.softmax_cross_entropy(model(x), target)
        optimizer.zero_grad()
        model.backward(grad_logits)
        optimizer.step()
    model.eval()  # running statistics and no dropout
    assert np.array_equal(model(x).argmax(axis=1), target)


# ---------------------------------------------------------------------------
# Training


def test_lenet5_overfits_a_small_batch():
    rng = seeded(6)
    model = models.lenet5(rng=rng)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    target = rng.integers(0, 10, 16)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(60):
        loss, grad_logits = F.softmax_cross_entropy(model(x), target)
        losses.append(loss)
        optimizer.zero_grad()
        model.backward(grad_logits)
        optimizer.step()
    final = F.softmax_cross_entropy(model.eval()(x), target)[0]
    assert losses[0] > 1.5 and final < 0.05, (losses[0], final)
    assert np.array_equal(model(x).argmax(axis=1), target)


# ---------------------------------------------------------------------------
# Saving and loading


def test_state_dict_round_trip_through_npz(tmp_path):
    source = models.lenet5(rng=seeded(7))
    np.savez(tmp_path / "model.npz", **source.state_dict())
    target = models.lenet5(rng=seeded(8))
    x = np.random.default_rng(9).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert not np.array_equal(target(x), source(x))
    with np.load(tmp_path / "model.npz", allow_pickle=False) as saved:
        target.load_state_dict(saved)
    np.testing.assert_array_equal(target(x), source(x))


def test_load_state_dict_of_another_network_names_every_problem():
    lenet = models.lenet5(rng=seeded())
    with pytest.raises(ValueError, match=r"shape mismatch for 0\.weight: expected \(20, 1, 5, 5\), got \(500, 784\)"):
        lenet.load_state_dict({**lenet.state_dict(), "0.weight": np.zeros((500, 784), np.float32)})
    mlp_state = models.mlp(rng=seeded()).state_dict()  # names 1.weight ... 3.bias
    with pytest.raises(ValueError, match=r"missing keys: 0\.weight \(20, 1, 5, 5\).*unexpected keys: 1\.weight"):
        lenet.load_state_dict(mlp_state)
    wide = models.lenet5(dtype=np.float64, rng=seeded()).state_dict()
    with pytest.raises(ValueError, match="dtype mismatch for 0.weight: expected float32, got float64"):
        lenet.load_state_dict(wide)


# ---------------------------------------------------------------------------
# summary


def cells(line):
    """'Conv (C_out=20, ...)   | 20 x 28 x 28 | 20 x 1 x 5 x 5' -> the course's text, spaces collapsed."""
    return " ".join(line.split())


def test_summary_reproduces_the_course_table():
    model = models.lenet5(rng=seeded())
    lines = models.summary(model).splitlines()
    assert [cells(line) for line in lines if "|" in line] == [
        "Layer | Output Size | Weight Size",
        "Input | 1 x 28 x 28 |",
        "Conv (C_out=20, K=5, P=2, S=1) | 20 x 28 x 28 | 20 x 1 x 5 x 5",
        "ReLU | 20 x 28 x 28 |",
        "MaxPool (K=2, S=2) | 20 x 14 x 14 |",
        "Conv (C_out=50, K=5, P=2, S=1) | 50 x 14 x 14 | 50 x 20 x 5 x 5",
        "ReLU | 50 x 14 x 14 |",
        "MaxPool (K=2, S=2) | 50 x 7 x 7 |",
        "Flatten | 2450 |",
        "Linear (2450 -> 500) | 500 | 2450 x 500",
        "ReLU | 500 |",
        "Linear (500 -> 10) | 10 | 500 x 10",
    ]
    assert lines[-1] == f"Total parameters: {LENET5_PARAMETERS:,}" == "Total parameters: 1,256,080"
    # Aligned columns: every bar at the same position.
    table = [line for line in lines if "|" in line]
    assert len({tuple(i for i, ch in enumerate(line) if ch == "|") for line in table}) == 1


def test_summary_of_the_mlp_and_without_side_effects():
    model = models.mlp(rng=seeded())
    x = np.zeros((2, 1, 28, 28), np.float32)
    model(x)
    saved = [m._saved for m in model]
    rows = [cells(line) for line in models.summary(model).splitlines()]
    assert rows[2:] == [
        "Input | 1 x 28 x 28 |",
        "Flatten | 784 |",
        "Linear (784 -> 500) | 500 | 784 x 500",
        "ReLU | 500 |",
        "Linear (500 -> 10) | 10 | 500 x 10",
        "Total parameters: 397,510",
    ]
    assert all(m._saved is s for m, s in zip(model, saved)) and model.training


def test_summary_rejects_an_input_the_model_cannot_take():
    with pytest.raises(ValueError, match="gets 3 channels"):
        models.summary(models.lenet5(rng=seeded()), (3, 28, 28))
    with pytest.raises(ValueError, match="Linear"):
        models.summary(models.mlp(rng=seeded()), (1, 32, 32))


def test_summary_of_the_newer_layers():
    text = models.summary(models.small_cnn(rng=seeded(0)), input_shape=(3, 64, 64))
    assert "BatchNorm (C=16)               | 16 x 64 x 64 | 2 x 16" in text
    assert "Dropout (p=0.25)               | 4096" in text
    assert text.endswith(f"Total parameters: {sum(p.data.size for p in models.small_cnn().parameters()):,}")
    classic = models.summary(models.lenet5_classic(rng=seeded(0)))
    assert "AvgPool (K=2, S=2)             | 16 x 5 x 5" in classic and "Tanh" in classic
