"""cyconv.plots and the commands that draw: every picture is drawn (into tmp_path) and checked to be a PNG of
a sensible size, and every error path gives a clear exception, or one line from the command.

The commands run on tiny checkpoints trained here: LeNet-5 and an mlp on random MNIST-shaped arrays, and
small_cnn on a make_shapes folder of 16x16 pictures (`cyconv train --data-dir`); `evaluate` reads the
verified MNIST copy for the MNIST checkpoint."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")  # an optional extra; the test extra installs it

from cyconv import models, plots  # noqa: E402
from cyconv.compare import Row  # noqa: E402
from cyconv.data import make_shapes  # noqa: E402
from cyconv.nn import Conv2d, Flatten, Linear, ReLU, Sequential  # noqa: E402
from cyconv.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, train  # noqa: E402
from cli_helpers import assert_error, run, run_captured  # noqa: E402
from cli_helpers import no_download  # noqa: E402,F401 (autouse)

METRICS = [
    {"epoch": 1, "train_loss": 0.42, "train_acc": 0.88, "test_acc": 0.95, "lr": 0.03},
    {"epoch": 2, "train_loss": 0.11, "train_acc": 0.97, "test_acc": 0.98, "lr": 0.01},
    {"epoch": 3, "train_loss": 0.05, "train_acc": 0.99, "test_acc": 0.99, "lr": 0.0},
]


def assert_png(path, min_side=300, max_side=4000):
    """path is a complete PNG whose sides are in [min_side, max_side] pixels; returns its RGB pixels."""
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        picture.load()  # decodes every row: a truncated file fails here
        width, height = picture.size
        assert min_side <= width <= max_side and min_side <= height <= max_side, picture.size
        return np.asarray(picture.convert("RGB"))


def no_temp_files(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")] == []


def colour_model(rng=0):
    return Sequential(Conv2d(3, 8, 3, padding=1, rng=np.random.default_rng(rng)), ReLU(),
                      Conv2d(8, 4, 3, rng=np.random.default_rng(rng + 1)), ReLU(), Flatten(),
                      Linear(4 * 14 * 14, 3, rng=np.random.default_rng(rng + 2)))


# ---------------------------------------------------------------------------------------------------------
# Curves


def test_curves_from_a_run_directory(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    metrics = plots.read_metrics(tmp_path)
    assert metrics == METRICS
    assert plots.read_metrics(tmp_path / "metrics.json") == METRICS
    out = plots.curves(metrics, tmp_path / "curves.png", title="lenet5")
    assert out == tmp_path / "curves.png"
    assert_png(out)
    assert no_temp_files(tmp_path)


def test_one_epoch_is_a_curve_too(tmp_path):
    assert_png(plots.curves(METRICS[:1], tmp_path / "one.png"))


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('{"epoch": 1}', "non-empty JSON list"),
    ("[1, 2]", "entry 0 is not a JSON object"),
    (json.dumps([METRICS[0], {"epoch": 2, "train_loss": 0.1, "train_acc": 0.9}]), "entry 1 has no finite number 'test_acc'"),
    (json.dumps([{**METRICS[0], "train_loss": None}]), "'train_loss'"),
    (json.dumps([{**METRICS[0], "test_acc": True}]), "'test_acc'"),
    ('[{"epoch": 1, "train_loss": NaN, "train_acc": 0.5, "test_acc": 0.5}]', "'train_loss'"),
    ("[" * 100000, "not valid JSON"),
])
def test_bad_metrics_name_the_file_and_the_problem(tmp_path, content, match):
    path = tmp_path / "metrics.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match) as info:
        plots.read_metrics(tmp_path)
    assert str(path) in str(info.value)


def test_missing_metrics_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"metrics.json: no such file \(a run directory"):
        plots.read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plots.read_metrics(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------
# Filters and feature maps


def test_grey_filters_are_grey(tmp_path):
    pixels = assert_png(plots.filters(models.lenet5(rng=np.random.default_rng(0)), tmp_path / "f.png"))
    # One input channel: every filter is drawn in grey, and so is all else (text, background).
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    assert len(np.unique(pixels[..., 0])) > 20  # the filters themselves, not a blank picture


def test_colour_filters_are_drawn_in_colour(tmp_path):
    pixels = assert_png(plots.filters(colour_model(), tmp_path / "f.png"))
    assert np.count_nonzero(np.ptp(pixels.astype(int), axis=2) > 30) > 100


def test_filters_of_other_channel_counts(tmp_path):
    two = Sequential(Conv2d(2, 5, 3, rng=np.random.default_rng(0)), Flatten())
    assert_png(plots.filters(two, tmp_path / "two.png"), min_side=150)


def test_feature_maps_of_every_convolution(tmp_path):
    model = models.lenet5(rng=np.random.default_rng(0))
    image = np.random.default_rng(1).standard_normal((1, 28, 28)).astype(np.float32)
    assert_png(plots.feature_maps(model, image, tmp_path / "maps.png"))
    assert_png(plots.feature_maps(colour_model(), np.random.default_rng(2).random((3, 16, 16)), tmp_path / "c.png"))
    assert no_temp_files(tmp_path)


def test_filters_and_feature_maps_of_a_model_that_branches(tmp_path):
    model = models.resnet20(rng=np.random.default_rng(0))
    assert len(plots._convolutions(model)) == 21  # the stem, 18 in the blocks' bodies, 2 shortcuts
    assert_png(plots.filters(model, tmp_path / "f.png"))
    image = np.random.default_rng(3).standard_normal((3, 32, 32)).astype(np.float32)
    assert_png(plots.feature_maps(model, image, tmp_path / "m.png"))


def test_no_convolution_no_filters_or_maps(tmp_path):
    mlp = models.mlp(8, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="has no convolution layer .*Flatten, Linear, ReLU, Linear"):
        plots.filters(mlp, tmp_path / "f.png")
    with pytest.raises(ValueError, match="has no convolution layer"):
        plots.feature_maps(mlp, np.zeros((1, 28, 28), np.float32), tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


def test_feature_maps_refuse_an_image_the_model_cannot_take(tmp_path):
    model = models.lenet5(rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"one \(C, H, W\) input, got shape \(2, 1, 28, 28\)"):
        plots.feature_maps(model, np.zeros((2, 1, 28, 28), np.float32), tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"cannot take a \(3, 28, 28\) image"):
        plots.feature_maps(model, np.zeros((3, 28, 28), np.float32), tmp_path / "m.png")


def test_mosaic_places_each_tile_with_gaps():
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    grid = plots._mosaic(tiles, 3, gap=-1.0)
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1)
    np.testing.assert_array_equal(grid[0:2, 0:3], tiles[0])
    np.testing.assert_array_equal(grid[0:2, 4:7], tiles[1])
    np.testing.assert_array_equal(grid[3:5, 4:7], tiles[4])
    assert np.all(grid[2] == -1) and np.all(grid[:, 3] == -1) and np.all(grid[3:5, 8:11] == -1)


def test_each_map_is_scaled_to_its_own_range():
    maps = np.stack([np.linspace(-3, 5, 12).reshape(3, 4), np.full((3, 4), 7.0)])
    scaled = plots._scaled_each(maps)
    assert scaled[0].min() == 0 and scaled[0].max() == 1
    assert np.all(scaled[1] == 0.5)


# ---------------------------------------------------------------------------------------------------------
# Confusion matrix and comparison


def test_confusion_matrix_picture(tmp_path):
    counts = np.random.default_rng(3).integers(0, 50, (4, 4)) + np.diag([400, 300, 500, 200])
    assert_png(plots.confusion(counts, ["circle", "cross", "square", "triangle"], tmp_path / "cm.png",
                               title="small_cnn"))
    assert_png(plots.confusion(np.eye(10, dtype=np.int64) * 1000, [str(d) for d in range(10)], tmp_path / "d.png"))
    many = np.random.default_rng(4).integers(0, 9, (40, 40))  # too many to write the counts in
    assert_png(plots.confusion(many, [f"class {i}" for i in range(40)], tmp_path / "many.png"))


@pytest.mark.parametrize("counts, classes, match", [
    (np.zeros((3, 3), np.int64), ["a", "b"], r"\(2, 2\) matrix"),
    (np.zeros((2, 3), np.int64), ["a", "b"], r"got int64 \(2, 3\)"),
    (np.zeros((2, 2)), ["a", "b"], "got float64"),
    (-np.eye(2, dtype=np.int64), ["a", "b"], "counts >= 0"),
])
def test_confusion_matrix_refuses_what_is_not_one(tmp_path, counts, classes, match):
    with pytest.raises(ValueError, match=match):
        plots.confusion(counts, classes, tmp_path / "cm.png")


def test_comparison_picture(tmp_path):
    rows = [Row("pixels", "softmax regression", 784, 3, 0.9240, 0.37, 2.9),
            Row("learned (conv layers)", "LeNet-5", 2450, 1, 0.9851, 41.5, None)]
    assert_png(plots.comparison(rows, tmp_path / "p.png", "MNIST: hand-crafted features vs learned features"))


# ---------------------------------------------------------------------------------------------------------
# Files and formats


def test_other_formats_by_the_name(tmp_path):
    plots.curves(METRICS, tmp_path / "c.svg")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    plots.curves(METRICS, tmp_path / "c.PDF")
    assert (tmp_path / "c.PDF").read_bytes()[:5] == b"%PDF-"


def test_a_picture_replaces_the_old_file_whole(tmp_path):
    path = tmp_path / "c.png"
    path.write_bytes(b"old")
    plots.curves(METRICS, path)
    assert_png(path)
    assert no_temp_files(tmp_path)


def test_bad_names_fail_before_drawing(tmp_path):
    with pytest.raises(ValueError, match=r"c.txt: the name must end in one of .*\.png"):
        plots.curves(METRICS, tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError, match="No such directory"):
        plots.check_path(tmp_path / "missing" / "c.png")
    assert plots.check_path(tmp_path / "C.PNG") == "png"
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backend_bases"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ImportError, match=r"needs matplotlib; install it with pip install 'cyconv\[plot\]'"):
        plots.curves(METRICS, tmp_path / "c.png")
    with pytest.raises(ImportError, match="cyconv"):
        plots.formats()


# ---------------------------------------------------------------------------------------------------------
# The command line


def mnist_like(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), rng.integers(0, 10, n)


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """A LeNet-5 run of 2 epochs on 64 random 28x28 images: its output directory."""
    images, labels = mnist_like(64, 0)
    out = tmp_path_factory.mktemp("lenet5")
    train(TrainConfig(model="lenet5", epochs=2), (images, labels, images[:16], labels[:16]), out_dir=out,
          progress=False, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    images, labels = mnist_like(32, 1)
    out = tmp_path_factory.mktemp("mlp")
    train(TrainConfig(model="mlp", hidden=8, epochs=1), (images, labels, images[:8], labels[:8]), out_dir=out,
          progress=False, log=lambda line: None)
    return out / CHECKPOINT_NAME


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """`cyconv train --data-dir` (small_cnn) on 32 make_shapes pictures of 16x16: (the folder, the run)."""
    root = make_shapes(32, size=16, seed=2).save(tmp_path_factory.mktemp("data") / "shapes")
    out = tmp_path_factory.mktemp("small_cnn")
    status, _, stderr = run_captured("train", "--data-dir", root, "--image-size", 16, "--epochs", 1,
                                     "--batch-size", 8, "--out", out, "--no-progress", "--threads", 1)
    assert status == 0, stderr
    return root, out


def test_plot_curves_command(capsys, lenet_run, tmp_path):
    status, out, err = run(capsys, "plot", "curves", lenet_run, "-o", tmp_path / "curves.png")
    assert status == 0, err
    assert out == f"{tmp_path / 'curves.png'}: loss and accuracy over 2 epochs\n"
    assert_png(tmp_path / "curves.png")
    status, _, err = run(capsys, "plot", "curves", lenet_run / METRICS_NAME, "--output", tmp_path / "c.svg")
    assert status == 0 and (tmp_path / "c.svg").stat().st_size > 1000, err


def test_plot_filters_command(capsys, lenet_run, shapes_run, tmp_path):
    status, out, err = run(capsys, "plot", "filters", "--checkpoint", lenet_run / CHECKPOINT_NAME, "-o",
                           tmp_path / "grey.png")
    assert status == 0 and out.startswith(f"{tmp_path / 'grey.png'}: the first-layer filters of lenet5"), err
    grey = assert_png(tmp_path / "grey.png")
    assert np.array_equal(grey[..., 0], grey[..., 2])
    status, _, err = run(capsys, "plot", "filters", "--checkpoint", shapes_run[1] / CHECKPOINT_NAME, "-o",
                         tmp_path / "rgb.png")
    assert status == 0, err
    assert np.count_nonzero(np.ptp(assert_png(tmp_path / "rgb.png").astype(int), axis=2) > 30) > 100


def test_plot_maps_command_prepares_the_image_as_predict_does(capsys, lenet_run, shapes_run, tmp_path):
    digit = np.full((60, 40), 255, np.uint8)
    digit[10:50, 18:23] = 0  # a dark "1" on white paper: predict inverts, crops and centres it
    Image.fromarray(digit).save(tmp_path / "one.png")
    status, out, err = run(capsys, "plot", "maps", "--checkpoint", lenet_run / CHECKPOINT_NAME, tmp_path / "one.png",
                           "-o", tmp_path / "maps.png", "--threads", 1)
    assert status == 0 and out.startswith(f"{tmp_path / 'maps.png'}: the feature maps of lenet5"), err
    assert_png(tmp_path / "maps.png")
    # A model trained on a folder reads the picture as the folder's were (any size, RGB, normalised).
    picture = next((shapes_run[0] / "circle").iterdir())
    status, _, err = run(capsys, "plot", "maps", "--checkpoint", shapes_run[1] / CHECKPOINT_NAME, picture,
                         "-o", tmp_path / "shape.png")
    assert status == 0, err
    assert_png(tmp_path / "shape.png")


def test_evaluate_confusion_plot(capsys, lenet_run, shapes_run, mnist_dir, tmp_path):
    status, out, err = run(capsys, "evaluate", "--checkpoint", lenet_run / CHECKPOINT_NAME, "--data", mnist_dir,
                           "--confusion-plot", tmp_path / "cm.png")
    assert status == 0, err
    assert out.splitlines()[-1] == f"confusion plot: {tmp_path / 'cm.png'}"
    assert_png(tmp_path / "cm.png")
    status, out, err = run(capsys, "evaluate", "--checkpoint", shapes_run[1] / CHECKPOINT_NAME,
                           "--confusion-plot", tmp_path / "shapes.png")
    assert status == 0, err
    assert "circle" in out
    assert_png(tmp_path / "shapes.png")


def test_plot_commands_fail_in_one_line(capsys, lenet_run, mlp_checkpoint, tmp_path):
    png = tmp_path / "p.png"
    broken = tmp_path / "broken.npz"
    broken.write_bytes((lenet_run / CHECKPOINT_NAME).read_bytes()[:5000])
    cases = [
        (["plot"], 2, "plot: the following arguments are required: PICTURE"),
        (["plot", "curves", lenet_run], 2, "the following arguments are required: -o/--output"),
        (["plot", "curves", lenet_run, "-o", tmp_path / "p.txt"], 2, "plot curves: --output "),
        (["plot", "curves", tmp_path, "-o", png], 1, "metrics.json: no such file"),
        (["plot", "curves", lenet_run, "-o", tmp_path / "no" / "p.png"], 1, "No such directory"),
        (["plot", "filters", "--checkpoint", tmp_path / "none.npz", "-o", png], 1, "none.npz: no such checkpoint"),
        (["plot", "filters", "--checkpoint", broken, "-o", png], 1, "broken.npz: "),
        (["plot", "filters", "--checkpoint", mlp_checkpoint, "-o", png], 1, "mlp: the model has no convolution layer"),
        (["plot", "maps", "--checkpoint", mlp_checkpoint, tmp_path / "x.png", "-o", png], 1, "x.png"),
        (["plot", "maps", "--checkpoint", lenet_run / CHECKPOINT_NAME, tmp_path / "x.png", "-o", png], 1, "x.png"),
        (["evaluate", "--checkpoint", tmp_path / "none.npz", "--confusion-plot", tmp_path / "cm.txt"], 2,
         "evaluate: --confusion-plot "),
    ]
    for argv, status, match in cases:
        assert_error(run(capsys, *argv), status, match)
    assert not png.exists()


def test_maps_of_a_model_without_convolutions(capsys, mlp_checkpoint, tmp_path):
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "line.png")
    result = run(capsys, "plot", "maps", "--checkpoint", mlp_checkpoint, tmp_path / "line.png", "-o",
                 tmp_path / "m.png")
    assert_error(result, 1, "mlp: the model has no convolution layer")


def test_plot_commands_without_matplotlib(capsys, monkeypatch, lenet_run, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backend_bases"):
        monkeypatch.setitem(sys.modules, name, None)
    for argv in (["plot", "curves", lenet_run, "-o", tmp_path / "c.png"],
                 ["evaluate", "--checkpoint", lenet_run / CHECKPOINT_NAME, "--confusion-plot", tmp_path / "c.png"]):
        assert_error(run(capsys, *argv), 1, "needs matplotlib; install it with pip install 'cyconv[plot]'")
