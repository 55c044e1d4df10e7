"""cyconv.models' modern networks (resnet20, resnet18, mobilenet_v2) against plain-PyTorch twins with
torchvision's structure (tests/torch_models.py): parameter counts, the exact parameter and buffer names,
torchvision weights loaded and run in train and eval mode, every parameter's gradient and one SGD step;
then state_dict and checkpoint round trips, `cyconv summary` and `cyconv train` on a tiny image folder,
and the arguments they refuse.

Everything runs at 32 x 32 on a few images, MobileNetV2 at width 0.25, so the file takes seconds.
Comparisons: float64 to a tight tolerance; float32 by the relative L2 error of each tensor, against torch
computing in float64 from the same float32 weights and inputs (so the error is cyconv's alone). A tensor's
error is measured against its own norm plus a thousandth of the largest gradient's: some gradients are
zero in exact arithmetic (the bias of a BatchNorm whose output goes through a 1x1 convolution into a
training-mode BatchNorm) and hold only rounding noise in both libraries.
"""

import json

import numpy as np
import pytest

import cyconv

from cyconv import functional as F
from cyconv import models, nn
from cyconv.checkpoint import CheckpointError, build_model_for, load_checkpoint, load_model, save_checkpoint
from cyconv.data import make_shapes
from cyconv.optim import SGD
from cyconv.train import CHECKPOINT_NAME, RESNET20_FOLDER_RECIPE, TrainConfig
from cli_helpers import assert_error, run
from cli_helpers import no_download  # noqa: F401 (autouse)

PARAMETERS = {"resnet18": 11_689_512, "mobilenet_v2": 3_504_872, "resnet20": 272_474}
# Relative L2 error allowed per tensor (see the module docstring for the floor it is measured against).
RTOL = {np.float32: 2e-3, np.float64: 1e-9}


def seeded(seed=0):
    return np.random.default_rng(seed)


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch is not installed: the comparisons with it are skipped")


def cyconv_model(name, dtype=np.float64, num_classes=10):
    """The cyconv network and the arguments its torch twin is built with (small: MobileNetV2 at width 0.25,
    no dropout, whose masks the two libraries draw differently)."""
    if name == "resnet20":
        return models.resnet20(num_classes, dtype=dtype, rng=seeded(1)), dict(num_classes=num_classes)
    if name == "mobilenet_v2":
        return (models.mobilenet_v2(num_classes, 0.25, dropout=0.0, dtype=dtype, rng=seeded(1)),
                dict(num_classes=num_classes, width_mult=0.25, dropout=0.0))
    return models.resnet18(num_classes, dtype=dtype, rng=seeded(1)), dict(num_classes=num_classes)


def torch_twin(name, dtype, **kwargs):
    """The torch model and its state as numpy arrays of `dtype`. The torch model always computes in float64,
    from those very values (float32 ones widened), so a float32 comparison measures cyconv's rounding alone.
    Its BatchNorm running statistics are random, so that eval mode differs from train mode."""
    torch = torch_or_skip()
    import torch_models

    torch.manual_seed(0)
    model = getattr(torch_models, name)(**kwargs).double()
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=g, dtype=torch.float64))
            module.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
            module.num_batches_tracked.fill_(3)
    state = {k: v.numpy().astype(dtype) if v.is_floating_point() else v.numpy().copy()
             for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float64) if v.dtype.kind == "f" else v)
                           for k, v in state.items()})
    return model, state


def as_torch(x):
    import torch

    return torch.from_numpy(np.asarray(x, np.float64))


def close(actual, expected, dtype, scale=0.0):
    """Relative L2 error of actual against expected (floored by scale), and whether it is within RTOL."""
    error = np.linalg.norm(np.asarray(actual, np.float64) - expected) / (np.linalg.norm(expected) + scale + 1e-300)
    return error, error <= RTOL[dtype]


# ---------------------------------------------------------------------------------------------------------
# Structure


def test_parameter_counts_are_torchvisions():
    for name, build in (("resnet20", lambda: models.resnet20()), ("resnet18", lambda: models.resnet18()),
                        ("mobilenet_v2", lambda: models.mobilenet_v2())):
        assert sum(p.data.size for p in build().parameters()) == PARAMETERS[name], name


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenet_v2"])
def test_names_and_shapes_are_the_torch_models(name):
    torch_or_skip()
    import torch_models

    kwargs = {"resnet20": {}, "resnet18": {"num_classes": 1000}, "mobilenet_v2": {"num_classes": 1000}}[name]
    torch_model = getattr(torch_models, name)(**kwargs)
    model = getattr(models, name)(**kwargs, rng=seeded())
    assert torch_models.count_parameters(torch_model) == PARAMETERS[name]
    assert [(k, p.data.shape) for k, p in model.named_parameters()] == [
        (k, tuple(p.shape)) for k, p in torch_model.named_parameters()]
    assert [(k, b.shape, b.dtype) for k, b in model.named_buffers()] == [
        (k, tuple(b.shape), b.numpy().dtype) for k, b in torch_model.named_buffers()]
    assert sorted(model.state_dict()) == sorted(torch_model.state_dict())
    model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})  # strict: no key over


def test_resnet20_is_he_et_als_cifar_network():
    model = models.resnet20(rng=seeded())
    assert [model.conv1.kernel_size, model.conv1.stride, model.maxpool] == [(3, 3), (1, 1), None]
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [3, 3, 3]
    assert [s[0].conv1.out_channels for s in stages] == [16, 32, 64]
    assert [s[0].downsample is None for s in stages] == [True, False, False]
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].kernel_size == (1, 1) and shortcut[0].stride == (2, 2)
    assert isinstance(shortcut[1], nn.BatchNorm2d)
    assert model.fc.in_features == 64 and model(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    grey = models.resnet20(4, in_channels=1, rng=seeded())
    assert grey(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 4)


def test_initialisation_is_torchvisions_scheme_and_seeded():
    model = models.resnet20(rng=seeded(5))
    again = models.resnet20(rng=seeded(5))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    w = models.resnet18(rng=seeded(0)).layer4[0].conv2.weight.data  # 512 x 512 x 3 x 3: N(0, 2 / (512 * 9))
    assert abs(w.std() - np.sqrt(2 / (512 * 9))) < 0.01 * w.std() and abs(w.mean()) < 0.01 * w.std()
    assert models.resnet20(rng=seeded()).conv1.bias is None
    net = models.mobilenet_v2(width_mult=0.25, rng=seeded(0))
    assert abs(net.classifier[1].weight.data.std() - 0.01) < 1e-3 and not net.classifier[1].bias.data.any()
    assert all(bn.weight.data.min() == bn.weight.data.max() == 1 for bn in
               (m for _, m in _named_modules(net) if isinstance(m, nn.BatchNorm2d)))
    f64 = models.mobilenet_v2(width_mult=0.25, dtype=np.float64, rng=seeded(0))
    assert f64.features[0][0].weight.data.dtype == np.float64
    np.testing.assert_array_equal(f64.features[0][0].weight.data.astype(np.float32), net.features[0][0].weight.data)


def _named_modules(module, prefix=""):
    yield prefix, module
    for name, child in module.named_children():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


# ---------------------------------------------------------------------------------------------------------
# Against PyTorch: forward in train and eval mode, gradients, one SGD step


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "resnet18"])
def test_forward_with_torch_weights_equals_torch(name, dtype):
    torch = torch_or_skip()
    model, kwargs = cyconv_model(name, dtype)
    torch_model, state = torch_twin(name, dtype, **kwargs)
    model.load_state_dict(state)
    x = seeded(2).standard_normal((8, 3, 32, 32)).astype(dtype)
    for mode in ("eval", "train"):
        getattr(model, mode)(), getattr(torch_model, mode)()
        with torch.no_grad():
            expected = torch_model(as_torch(x)).numpy()
        error, ok = close(model(x), expected, dtype)
        assert ok, f"{name} {mode}: relative error {error:.2e}"
    # The training-mode forward updated the running statistics as torch's did.
    theirs = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert v == theirs[k] == 4, k
        elif k.endswith(("running_mean", "running_var")):
            error, ok = close(v, theirs[k], dtype)
            assert ok, f"{name} {k}: relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_gradients_and_one_sgd_step_equal_torch(name, dtype):
    torch = torch_or_skip()
    model, kwargs = cyconv_model(name, dtype)
    torch_model, state = torch_twin(name, dtype, **kwargs)
    model.load_state_dict(state)
    rng = seeded(3)
    x = rng.standard_normal((8, 3, 32, 32)).astype(dtype)
    target = rng.integers(0, 10, 8)

    hyper = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    optimizer = SGD(model.parameters(), **hyper)
    torch_optimizer = torch.optim.SGD(torch_model.parameters(), **hyper)
    model.train(), torch_model.train()
    # The second step uses the momentum buffers. float32 checks the first only: after one step MobileNetV2 at
    # 32 x 32 (BatchNorm over 1x1 maps of 8 images) is so ill-conditioned that torch's own float32 gradients
    # differ from its float64 ones by over 100% (cyconv's by under 40%): float64 checks the second.
    for step in range(2 if dtype == np.float64 else 1):
        _, grad_logits = F.softmax_cross_entropy(model(x), target)
        optimizer.zero_grad()
        model.backward(grad_logits)
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(torch_model(as_torch(x)), torch.from_numpy(target)).backward()
        theirs = dict(torch_model.named_parameters())
        largest = max(float(np.linalg.norm(p.grad.numpy())) for p in theirs.values())
        for k, p in model.named_parameters():
            error, ok = close(p.grad, theirs[k].grad.numpy(), dtype, 1e-3 * largest)
            assert ok, f"{name} step {step}: gradient of {k}: relative error {error:.2e}"
        optimizer.step()
        torch_optimizer.step()
        for k, p in model.named_parameters():
            # A parameter that starts at zero with a zero gradient holds the step's noise: floored as the gradients.
            error, ok = close(p.data, theirs[k].detach().numpy(), dtype, 1e-3 * hyper["lr"] * largest)
            assert ok, f"{name} step {step}: {k} after the step: relative error {error:.2e}"


# ---------------------------------------------------------------------------------------------------------
# Saving and loading


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_state_dict_round_trip(name):
    model, _ = cyconv_model(name, np.float32)
    x = seeded(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model.train()
    model(x)  # running statistics and counters that differ from a fresh model's
    state = model.state_dict()
    other = (models.resnet20(rng=seeded(9)) if name == "resnet20"
             else models.mobilenet_v2(10, 0.25, dropout=0.0, rng=seeded(9)))
    other.load_state_dict(state)
    assert list(other.state_dict()) == list(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    np.testing.assert_array_equal(other.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="unexpected keys: extra"):
        other.load_state_dict({**state, "extra": np.zeros(1, np.float32)})


@pytest.mark.parametrize("name, width_mult", [("resnet20", 1.0), ("mobilenet_v2", 0.25), ("resnet18", 1.0)])
def test_checkpoint_round_trip(tmp_path, name, width_mult):
    """A checkpoint of an image folder's run (3 x 32 x 32 pictures of 4 classes) builds the same network
    with the same weights, buffers included."""
    spec = make_shapes(8, size=32, seed=0).split(0.25, 0).spec
    config = TrainConfig(model=name, width_mult=width_mult).to_dict()
    model = build_model_for(name, hidden=500, spec=spec, width_mult=width_mult, rng=seeded(6))
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = seeded(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _, grad = F.softmax_cross_entropy(model(x), np.array([1, 2]))
    model.backward(grad)
    optimizer.step()
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, model=model, optimizer=optimizer, model_name=name, epoch=1,
                           config=config, metrics=[], data=spec.to_dict())
    loaded, ckpt = load_model(path)
    assert ckpt.model_name == name and ckpt.config["width_mult"] == width_mult and type(loaded) is type(model)
    state = model.state_dict()
    assert list(loaded.state_dict()) == list(state)
    for k, v in loaded.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    np.testing.assert_array_equal(loaded(x), model.eval()(x))


def test_checkpoint_of_an_mnist_run(tmp_path):
    """MNIST's checkpoints record no folder: resnet20 is built for 1 x 28 x 28 digits; the networks that
    cannot take them say so."""
    for name in ("resnet20", "resnet18"):
        model = models.build_model(name, in_channels=1, image_size=28 if name == "resnet20" else 32, rng=seeded())
        optimizer = SGD(model.parameters(), lr=0.1)
        path = save_checkpoint(tmp_path / f"{name}.npz", model=model, optimizer=optimizer, model_name=name,
                               epoch=1, config=TrainConfig(model=name).to_dict(), metrics=[])
        if name == "resnet20":
            loaded, _ = load_model(path)
            assert loaded.conv1.in_channels == 1 and loaded.fc.out_features == 10
        else:
            with pytest.raises(CheckpointError, match="resnet18 takes images of at least 32 x 32"):
                load_model(path)


def test_checkpoint_of_an_image_folder_builds_the_recorded_width(tmp_path, capsys):
    folder = make_shapes(8, size=32, seed=0).save(tmp_path / "shapes")
    status, _, err = run(capsys, "train", "--model", "mobilenet_v2", "--width-mult", "0.25", "--data-dir", folder,
                         "--image-size", 32, "--epochs", 1, "--batch-size", 4, "--out", tmp_path / "run",
                         "--no-progress", "--threads", 1)
    assert status == 0, err
    model, ckpt = load_model(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt.config["width_mult"] == 0.25 and ckpt.data.size == (32, 32)
    assert model.features[0][0].out_channels == 8 and model.classifier[1].out_features == 4
    assert "classifier.0.rng_state" not in ckpt.model_state
    # A config that claims a width the saved weights are far too few for is refused before building.
    arrays = dict(np.load(tmp_path / "run" / CHECKPOINT_NAME))
    arrays["config"] = np.array(json.dumps({**ckpt.config, "width_mult": 1000.0}))
    np.savez(tmp_path / "lie.npz", **arrays)
    with pytest.raises(CheckpointError, match="too few for a mobilenet_v2 of that width"):
        load_model(tmp_path / "lie.npz")


# ---------------------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("name, classes, total", [("resnet20", 10, PARAMETERS["resnet20"]),
                                                  ("resnet18", 1000, PARAMETERS["resnet18"]),
                                                  ("mobilenet_v2", 1000, PARAMETERS["mobilenet_v2"])])
def test_summary_of_each_model(capsys, name, classes, total):
    status, out, err = run(capsys, "summary", "--model", name, "--num-classes", classes)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")] == ["Name", "Layer", "Output Size", "Weight Size", "Input"]
    algorithms = lines.pop()  # the last line says which algorithm each convolution runs
    assert algorithms.startswith("Convolution algorithms (")
    convs = [node.name for node in cyconv.graph.trace(models.build_model(name, num_classes=classes)).nodes
             if isinstance(node.module, nn.Conv2d)]
    assert all(f" {conv} " in algorithms for conv in convs)
    if name == "mobilenet_v2":
        assert "features.2.conv.1.0 direct" in algorithms  # depthwise
    else:
        assert "conv1 im2col" in algorithms                 # the stem: 7x7 stride 2 (resnet18), 3 channels
    if name == "resnet18":
        assert "layer1.0.conv1 winograd4" in algorithms     # 64 channels on 56 x 56: Winograd F(4x4, 3x3)
    assert lines[-1] == f"Total parameters: {total:,}"
    size = models.default_input(name)[1]
    assert f"| Input " in lines[2] and f"3 x {size} x {size}" in lines[2]
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in lines[2:-1]}
    assert rows["fc" if name != "mobilenet_v2" else "classifier.1"][2] == str(classes)
    if name == "resnet20":
        assert rows["layer2.0.downsample.0"] == ["layer2.0.downsample.0", "Conv (C_out=32, K=1, P=0, S=2)",
                                                 "32 x 16 x 16", "32 x 16 x 1 x 1", "layer1.2.relu#1"]
        assert rows["add.3"][1:] == ["Add", "32 x 16 x 16", "", "layer2.0.bn2, layer2.0.downsample.1"]
        assert rows["avgpool"][1:3] == ["AdaptiveAvgPool (1 x 1)", "64 x 1 x 1"]
    if name == "mobilenet_v2":
        assert rows["features.2.conv.1.0"][1:4] == ["Conv (C_out=96, K=3, P=1, S=2, G=96)", "96 x 56 x 56",
                                                    "96 x 1 x 3 x 3"]
        assert rows["features.18.2"][1:3] == ["ReLU6", "1280 x 7 x 7"]


def test_summary_keeps_the_course_table_for_chains():
    lines = models.summary(models.lenet5(rng=seeded())).splitlines()
    assert lines[0] == "Layer                          | Output Size  | Weight Size"
    assert lines[3] == "Conv (C_out=20, K=5, P=2, S=1) | 20 x 28 x 28 | 20 x 1 x 5 x 5"


def test_train_resnet20_on_a_tiny_image_folder(tmp_path, capsys):
    folder = make_shapes(24, size=32, seed=2).save(tmp_path / "shapes")
    out = tmp_path / "run"
    status, stdout, err = run(capsys, "train", "--model", "resnet20", "--data-dir", folder, "--epochs", 1,
                              "--out", out, "--no-progress", "--threads", 1)
    assert status == 0, err
    # resnet20's own recipe and image size where the command line is silent.
    assert stdout.startswith(f"training resnet20 on 20 images of 3x32x32 in 4 classes (1 steps/epoch, batch "
                             f"{RESNET20_FOLDER_RECIPE['batch_size']}), testing on 4")
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt.model_name == "resnet20" and ckpt.epoch == 1
    assert {k: ckpt.config[k] for k in RESNET20_FOLDER_RECIPE} == {**RESNET20_FOLDER_RECIPE, "epochs": 1}
    model, _ = load_model(ckpt)
    assert isinstance(model, models.ResNet) and model.fc.out_features == 4 and model.conv1.in_channels == 3


def test_models_that_cannot_take_mnist_say_why(capsys, mnist_dir, tmp_path):
    for name in ("resnet18", "mobilenet_v2"):
        assert_error(run(capsys, "train", "--model", name, "--data", mnist_dir, "--out", tmp_path, "--no-progress"),
                     1, f"build_model(): {name} takes images of at least 32 x 32 (it downsamples them 32 times "
                        "before its global pooling), got 28 x 28")
    # resnet20 takes MNIST's digits.
    assert models.build_model("resnet20", in_channels=1, image_size=28)(
        np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


def test_width_mult_is_for_mobilenet_v2_only(capsys, tmp_path):
    assert_error(run(capsys, "train", "--model", "resnet20", "--width-mult", "0.5", "--out", tmp_path), 2,
                 "--width-mult applies to --model mobilenet_v2 only")
    assert_error(run(capsys, "train", "--model", "mobilenet_v2", "--width-mult", "0"), 2,
                 "--width-mult: must be in (0, inf], got 0")


# ---------------------------------------------------------------------------------------------------------
# Bad arguments


def test_bad_arguments_are_refused_clearly():
    for width in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"MobileNetV2\(\): width_mult must be a finite number > 0"):
            models.mobilenet_v2(width_mult=width)
    for build in (models.resnet20, models.resnet18, models.mobilenet_v2):
        with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
            build(0)
    with pytest.raises(ValueError, match=r"build_model\(\): resnet18 takes images of at least 32 x 32"):
        models.build_model("resnet18", image_size=31)
    with pytest.raises(ValueError, match=r"build_model\(\): mobilenet_v2 takes images of at least 32 x 32"):
        models.build_model("mobilenet_v2", image_size=16)
    with pytest.raises(ValueError, match=r"build_model\(\): resnet20 takes images of at least 4 x 4"):
        models.build_model("resnet20", image_size=3)
    with pytest.raises(ValueError, match=r"TrainConfig: width_mult must be a number > 0"):
        TrainConfig(model="mobilenet_v2", width_mult=0)
    with pytest.raises(ValueError, match=r"InvertedResidual\(\): stride must be 1 or 2"):
        models.InvertedResidual(8, 8, 3, 6)
    with pytest.raises(ValueError, match=r"ResNet\(\): stem must be"):
        models.ResNet((1,), widths=(8,), stem="tiny")
    with pytest.raises(ValueError, match=r"ResNet\(\): layers and widths must give one number per stage"):
        models.ResNet((2, 2), widths=(8,))
    with pytest.raises(TypeError, match=r"resnet20|ResNet\(\): dtype must be float32 or float64"):
        models.resnet20(dtype=np.int32)


# ---------------------------------------------------------------------------------------------------------
# cyconv.compile (the predictor): kept apart, as it is being rewritten for graphs


@pytest.mark.parametrize("name, size", [("resnet20", 32), ("mobilenet_v2", 32), ("resnet18", 64)])
@pytest.mark.parametrize("batch, threads", [(1, 2), (4, 2), (3, 1)])
def test_compiled_equals_eval_model(name, size, batch, threads):
    import cyconv

    model, _ = cyconv_model(name, np.float32)
    model.train()
    model(seeded(7).standard_normal((4, 3, size, size)).astype(np.float32))  # running statistics not the initial
    model.eval()
    x = seeded(8).standard_normal((batch, 3, size, size)).astype(np.float32)
    expected = model(x)
    with cyconv.set_num_threads(threads):
        predictor = cyconv.compile(model, input_shape=(3, size, size))
        error, ok = close(predictor(x), expected, np.float32)
    assert ok, f"{name}: compiled output differs from the eval model's by {error:.2e}"
