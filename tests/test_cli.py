"""The `cyconv` command line, run in-process through cli.main (plus one `python -m cyconv` subprocess).

Every error a user can cause must print exactly one line, "cyconv: error: ...", to stderr, with exit
status 2 for a bad command line and 1 otherwise, and never a traceback. Pictures for `predict` are written
with Pillow, as a paint program would write them; the PNGs that lie about their size are built by hand.

Tests that read MNIST use the verified copy (conftest's mnist_dir: $CYCONV_DATA, else ../shared/data/mnist)
and fail without it; downloading is always disabled.
"""

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

import cyconv
import cyconv.train as train_module
from cyconv import cli, models
from cyconv.models import MODELS, build_model
from cyconv.models import summary
from cyconv.data import load_mnist, prepare_digit, to_float32
from cyconv.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, train
from cyconv.checkpoint import load_checkpoint
from cli_helpers import assert_error, continue_command, ctrl_c_in_the_second_epoch, run, run_captured
from cli_helpers import no_download  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    """The first ten MNIST test digits and their labels."""
    mnist = load_mnist(mnist_dir)
    return mnist.test_images[:10], mnist.test_labels[:10]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small mlp checkpoint trained on random images (no MNIST needed)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (128, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 128).astype(np.uint8)
    out = tmp_path_factory.mktemp("ckpt")
    config = TrainConfig(model="mlp", hidden=8, epochs=1, batch_size=32)
    train(config, (images, labels, images[:16], labels[:16]), out_dir=out, progress=False, log=lambda *a: None)
    return out / CHECKPOINT_NAME


# ---------------------------------------------------------------------------------------------------------
# Help and usage


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["summary"], ["download"]],
                         ids=lambda c: " ".join(c) or "cyconv")
def test_help_exits_zero(capsys, command):
    status, out, err = run(capsys, *command, "--help")
    assert status == 0 and err == ""
    assert out.startswith(f"usage: cyconv {' '.join(command)}".rstrip())


def test_version(capsys):
    status, out, err = run(capsys, "--version")
    assert (status, out, err) == (0, f"cyconv {cyconv.__version__}\n", "")


def test_threads_help_says_what_it_sets(capsys):
    # It sets cyconv's OpenMP threads; BLAS is kept at one thread inside them, whatever --threads says.
    for command in ("train", "evaluate", "predict", "compare"):
        _, out, _ = run(capsys, command, "--help")
        text = " ".join(out.split())
        assert "--threads N cyconv's OpenMP threads, which run the compiled kernels" in text
        assert "the BLAS they call stays single-threaded inside them" in text


def test_python_m_cyconv_help():
    result = subprocess.run([sys.executable, "-m", "cyconv", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "predict" in result.stdout


@pytest.mark.parametrize("argv, match", [
    ([], "no command given"),
    (["fit"], "invalid choice: 'fit'"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["train", "--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    (["train", "--lr", "-0.1"], "argument --lr: must be in (0, inf]"),
    (["train", "--momentum", "1"], "argument --momentum: must be in [0, 1)"),
    (["train", "--model", "vgg"], "argument --model: invalid choice"),
    (["train", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["train", "--threads", "0"], "argument --threads: must be >= 1"),
    (["train", "--hidden", "32"], "--hidden applies to --model mlp only"),
    (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["predict", "--checkpoint", "x.npz"], "the following arguments are required: IMAGE"),
    (["evaluate"], "one of the arguments --checkpoint --model is required"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, match):
    assert_error(run(capsys, *argv), 2, match)


# ---------------------------------------------------------------------------------------------------------
# Runtime errors


def test_a_reader_that_went_away_ends_the_command_quietly():
    """`cyconv summary | head -1`, deterministically: stdout is a pipe whose reading end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "cyconv", "summary"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (cli.EXIT_BROKEN_PIPE, "")


def test_missing_checkpoint(capsys, tmp_path):
    assert_error(run(capsys, "evaluate", "--checkpoint", tmp_path / "nope.npz"), 1, "no such checkpoint file")
    image = tmp_path / "digit.npy"
    np.save(image, gray_digit())
    assert_error(run(capsys, "predict", "--checkpoint", tmp_path / "nope.npz", image), 1, "no such checkpoint")


@pytest.mark.parametrize("content, match", [
    (b"garbage" * 100, "not a zip archive"),
    (b"PK\x03\x04" + b"\0" * 100, "truncated or damaged"),
])
def test_corrupt_checkpoint(capsys, tmp_path, content, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    assert_error(run(capsys, "evaluate", "--checkpoint", path), 1, match)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_missing_mnist_without_download(capsys, tmp_path, monkeypatch, how):
    argv = ["train", "--data", tmp_path / "empty", "--out", tmp_path / "out"]
    if how == "flag":
        monkeypatch.delenv(cli.ENV_NO_DOWNLOAD)
        argv.append("--no-download")
    assert_error(run(capsys, *argv), 1, "MNIST files missing from")


def test_resume_with_nothing_to_resume(capsys, tmp_path):
    assert_error(run(capsys, "train", "--resume", "--out", tmp_path), 1, "nothing to resume")


def test_limit_beyond_the_data(capsys, tmp_path, mnist_dir):
    argv = ["train", "--limit", "70000", "--data", mnist_dir, "--out", tmp_path]
    assert_error(run(capsys, *argv), 1, "limit 70000 is more than the 60000 training images")


def test_debug_env_shows_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.ENV_DEBUG, "1")
    path = tmp_path / "bad.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a zip archive"):
        cli.main(["evaluate", "--checkpoint", str(path)])


# ---------------------------------------------------------------------------------------------------------
# Images: reading them


def gray_digit():
    rng = np.random.default_rng(1)
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = rng.integers(180, 256, (16, 4))
    return image


def save(path, pixels, mode=None, **options):
    """Write uint8 pixels as a picture file with Pillow (format from the name), in `mode` if given."""
    picture = Image.fromarray(np.asarray(pixels, np.uint8))
    (picture.convert(mode) if mode else picture).save(path, **options)
    return path


def parse_predictions(out):
    """{image name: (class, probabilities)} from predict's table."""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["image", "class", "p0"]
    result = {}
    for line in lines[1:]:
        name, cls, *probs = line.split()
        result[name] = (int(cls), [float(p) for p in probs])
    return result


def predicted_classes(capsys, checkpoint, paths, *options):
    """`cyconv predict` on the paths: {str(path): class}; it must succeed without a word on stderr."""
    status, out, err = run(capsys, "predict", "--checkpoint", checkpoint, *options, *paths)
    assert status == 0 and err == "", err
    return {name: cls for name, (cls, _) in parse_predictions(out).items()}


def test_load_image_is_prepare_digit_then_to_float32(tmp_path):
    # load_image's two paths, against the public functions they are made of.
    digit = gray_digit()
    canvas = np.full((90, 70), 255, np.uint8)
    canvas[20:48, 30:58] = 255 - digit
    x, warning = cli.load_image(save(tmp_path / "drawn.png", canvas))
    assert x.dtype == np.float32 and x.shape == (1, 28, 28) and warning is None
    np.testing.assert_array_equal(x, to_float32(prepare_digit(canvas)[None])[0])
    x, warning = cli.load_image(save(tmp_path / "raw.png", digit), raw=True)
    np.testing.assert_array_equal(x, to_float32(digit[None])[0])
    assert warning is None


def exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation; 6: the stored pixels are turned 90 degrees anticlockwise
    return exif


def transparent_ink(digit):
    """The digit as black ink on a transparent canvas, as a drawing app exports it: opacity = ink."""
    rgba = np.zeros(digit.shape + (4,), np.uint8)
    rgba[..., 3] = digit
    return rgba


@pytest.mark.parametrize("name, write", [
    ("rgb.png", lambda path, d: save(path, d, "RGB")),
    ("dark-on-light-rgb.png", lambda path, d: save(path, np.stack([255 - d] * 3, -1))),
    ("opaque-rgba.png", lambda path, d: save(path, d, "RGBA")),
    ("gray-alpha.png", lambda path, d: save(path, np.stack([d, np.full_like(d, 255)], -1), "LA")),
    ("transparent-canvas.png", lambda path, d: save(path, transparent_ink(d), "RGBA")),
    ("palette.png", lambda path, d: save(path, d, "P")),
    ("16-bit.png", lambda path, d: Image.fromarray(d.astype(np.uint16) * 257).save(path)),
    ("exif-rotated.png", lambda path, d: Image.fromarray(np.ascontiguousarray(np.rot90(d))).save(
        path, exif=exif_orientation(6))),
    ("digit.bmp", lambda path, d: save(path, d, "RGB")),
    ("digit.gif", lambda path, d: save(path, d)),
    ("digit.tiff", lambda path, d: save(path, d)),
    ("digit.ppm", lambda path, d: save(path, d, "RGB")),
    ("digit.npy", lambda path, d: np.save(path, d)),
    ("float.npy", lambda path, d: np.save(path, d / 255.0)),
])
def test_every_format_and_colour_mode_reads_as_the_same_digit(tmp_path, test_digits, name, write):
    # All of these hold exactly the pixels of the 8-bit gray PNG, so the digit must come out the same.
    digit = test_digits[0][0]
    expected, _ = cli.load_image(save(tmp_path / "gray.png", digit))
    write(tmp_path / name, digit)
    x, warning = cli.load_image(tmp_path / name)
    np.testing.assert_array_equal(x, expected)
    assert warning is None


def test_transparency_goes_over_the_colour_the_ink_stands_out_from(tmp_path):
    # White ink on a transparent canvas lands on black, black ink on white: both stay visible.
    digit = gray_digit()
    white_ink = np.concatenate([np.full(digit.shape + (3,), 255, np.uint8), digit[..., None]], -1)
    for name, pixels in [("white.png", white_ink), ("black.png", transparent_ink(digit))]:
        x, warning = cli.load_image(save(tmp_path / name, pixels), raw=True)
        flat = digit if name == "white.png" else 255 - digit
        np.testing.assert_array_equal(x, to_float32(flat[None])[0])
        assert (warning is None) == (name == "white.png")


@pytest.mark.parametrize("array, match", [
    (np.zeros((1, 28, 28), np.uint8), "array has shape (1, 28, 28), expected a 2-D (height, width) image"),
    (np.zeros((0, 28), np.uint8), "array has shape (0, 28)"),
    (np.full((28, 28), 1.5), "float pixels must be finite and in [0, 1]"),
    (np.full((28, 28), np.nan), "float pixels must be finite and in [0, 1]"),
    (np.full((28, 28), 300, np.int32), "integer pixels must be in 0..255"),
    (np.zeros((28, 28), bool), "dtype bool is not an image"),
    (np.array([{"a": 1}], dtype=object), "cannot read as .npy"),
    (np.zeros((28, 28), np.uint8), "prepare_digit(): image is blank"),
], ids=["3d", "empty", "float-range", "nan", "int-range", "bool", "pickle", "blank"])
def test_bad_npy(capsys, tmp_path, checkpoint, array, match):
    path = tmp_path / "digit.npy"
    np.save(path, array, allow_pickle=True)
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1, f"{path}: {match}")


def truncated(path):
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])


def corrupt_the_image_data(path):
    content = bytearray(path.read_bytes())
    start = content.index(b"IDAT") + 4 + 2  # after the chunk type and the zlib header: the first deflate block
    content[start:start + 16] = b"\xff" * 16  # block type 3, which deflate reserves: an error in any zlib
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damage, match", [
    (truncated, "cannot decode the image: image file is truncated"),
    (corrupt_the_image_data, "cannot decode the image: broken data stream"),
    (lambda path: path.write_bytes(path.read_bytes()[:33]), "not a .npy file or an image cyconv reads"),
    (lambda path: path.write_bytes(b"hello, I am not an image"),
     "not a .npy file or an image cyconv reads (PNG, JPEG, BMP, GIF, TIFF, PPM), or damaged"),
    (lambda path: path.write_bytes(b""), "not a .npy file or an image cyconv reads"),
    # Pillow would hand an EPS file to Ghostscript; cyconv does not let it try.
    (lambda path: path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"),
     "not a .npy file or an image cyconv reads"),
], ids=["truncated", "corrupt", "header-only", "text", "empty", "eps"])
def test_damaged_picture_is_one_line_naming_the_file(capsys, tmp_path, checkpoint, damage, match):
    path = save(tmp_path / "digit.png", np.kron(gray_digit(), np.ones((10, 10), np.uint8)))
    damage(path)
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1, f"{path}: {match}")


def test_missing_and_directory_images(capsys, tmp_path, checkpoint):
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, tmp_path / "nope.png"), 1,
                 f"{tmp_path / 'nope.png'}: No such file or directory")
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, tmp_path), 1,
                 f"{tmp_path}: is a directory, not an image")


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width, height):
    """A valid, tiny 8-bit gray PNG whose header claims width x height: its pixel data is one short row."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height, match", [
    (8000, 8000, "image is 8000x8000, too large to read (at most 40,000,000 pixels)"),  # cyconv's limit
    (10000, 9000, "image too large to read (Image size (90000000 pixels) exceeds limit"),  # Pillow warns
    (100000, 100000, "image too large to read (Image size (10000000000 pixels) exceeds limit"),  # Pillow refuses
])
def test_huge_image_is_refused_from_its_header(capsys, tmp_path, checkpoint, monkeypatch, width, height, match):
    def decode(self, *args, **kwargs):
        raise AssertionError("the pixels of a huge image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(width, height))
    assert path.stat().st_size < 200
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1, f"{path}: {match}")


@pytest.mark.parametrize("pixels", [np.full((100, 80), 255, np.uint8), np.zeros((50, 50), np.uint8),
                                    np.random.default_rng(0).integers(100, 130, (60, 60)).astype(np.uint8)],
                         ids=["white", "black", "faint-noise"])
def test_blank_image_is_refused(capsys, tmp_path, checkpoint, pixels):
    path = save(tmp_path / "blank.png", pixels, "RGB")
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1,
                 f"{path}: prepare_digit(): image is blank: no pixel differs from the background")


def test_raw_refuses_any_size_but_28x28(capsys, tmp_path, checkpoint):
    path = save(tmp_path / "paint.png", np.kron(255 - gray_digit(), np.ones((10, 10), np.uint8)), "RGB")
    assert_error(run(capsys, "predict", "--raw", "--checkpoint", checkpoint, path), 1,
                 f"{path}: image is 280x280, --raw needs 28x28 (width x height)")
    np.save(tmp_path / "narrow.npy", gray_digit()[:, :27])
    assert_error(run(capsys, "predict", "--raw", "--checkpoint", checkpoint, tmp_path / "narrow.npy"), 1,
                 "image is 27x28, --raw needs 28x28")
    # Without --raw, the same picture is read.
    assert list(predicted_classes(capsys, checkpoint, [path])) == [str(path)]


def test_predict_reads_png_and_npy_alike(capsys, tmp_path, checkpoint):
    digit = gray_digit()
    rgba = np.concatenate([np.repeat(digit[..., None], 3, -1), np.full((28, 28, 1), 255, np.uint8)], -1)
    save(tmp_path / "gray.png", digit)
    save(tmp_path / "rgba.png", rgba)
    np.save(tmp_path / "uint8.npy", digit)
    np.save(tmp_path / "float.npy", digit / 255.0)
    names = ["gray.png", "rgba.png", "uint8.npy", "float.npy"]
    for options in ([], ["--raw"]):
        status, out, err = run(capsys, "predict", "--checkpoint", checkpoint, *options,
                               *(tmp_path / n for n in names))
        assert status == 0 and err == ""
        predictions = {name.rsplit("/", 1)[-1]: value for name, value in parse_predictions(out).items()}
        assert sorted(predictions) == sorted(names)
        first = predictions["gray.png"]
        assert 0 <= first[0] <= 9 and len(first[1]) == 10 and sum(first[1]) == pytest.approx(1, abs=1e-3)
        assert all(value == first for value in predictions.values())


def test_raw_warns_about_a_dark_digit_on_white(capsys, tmp_path, checkpoint):
    path = save(tmp_path / "inverted.png", 255 - gray_digit())
    status, out, err = run(capsys, "predict", "--raw", "--checkpoint", checkpoint, path)
    assert status == 0 and len(parse_predictions(out)) == 1
    assert err.startswith(f"cyconv: warning: {path}: mostly bright") and "white on black" in err
    # Without --raw it is inverted instead.
    status, _, err = run(capsys, "predict", "--checkpoint", checkpoint, path)
    assert status == 0 and err == ""


# ---------------------------------------------------------------------------------------------------------
# Images: digits as people draw them, classified by a LeNet-5 trained on real MNIST


@pytest.fixture(scope="module")
def lenet_checkpoint(mnist_dir, tmp_path_factory):
    """`cyconv train` of LeNet-5 on 8,000 MNIST images for one epoch: ~96% test accuracy, in ~10 s."""
    out = tmp_path_factory.mktemp("lenet")
    status, _, stderr = run_captured("train", "--model", "lenet5", "--epochs", "1", "--limit", "8000", "--data",
                                     mnist_dir, "--out", out, "--no-progress", "--threads", "1")
    assert status == 0, stderr
    assert json.loads((out / METRICS_NAME).read_text())[-1]["test_acc"] > 0.94
    return out / CHECKPOINT_NAME


def drawn(digit, size, canvas, at, dark_on_light):
    """An MNIST digit as someone might draw it: `size` pixels tall (smoothly upscaled), at (x, y) on a
    larger `canvas` (width, height), white on black or black on white; uint8 gray."""
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))
    picture = np.zeros(canvas[::-1], np.uint8)
    picture[at[1]:at[1] + size, at[0]:at[0] + size] = big
    return 255 - picture if dark_on_light else picture


# (file name, digit height, canvas (width, height), position (x, y), black on white, Pillow mode):
# each off-centre on a non-square canvas.
DRAWINGS = [
    ("56px-white-on-black-gray.png", 56, (90, 70), (30, 4), False, "L"),
    ("140px-black-on-white-rgb.png", 140, (200, 160), (10, 15), True, "RGB"),
    ("280px-black-on-white-gray.png", 280, (400, 300), (100, 5), True, "L"),
    ("84px-white-on-black-rgb.png", 84, (120, 100), (30, 12), False, "RGB"),
]


def test_predict_reads_digits_as_people_draw_them(capsys, tmp_path, lenet_checkpoint, test_digits):
    images, labels = test_digits
    originals, drawings, truth = [], [], {}
    for i, (digit, label) in enumerate(zip(images, labels)):
        originals.append(save(tmp_path / f"{i}-mnist.png", digit))
        for name, size, canvas, at, dark, mode in DRAWINGS[:3]:
            drawings.append(save(tmp_path / f"{i}-{name}", drawn(digit, size, canvas, at, dark), mode))
            truth[str(drawings[-1])] = (int(label), str(originals[-1]))
    name, size, canvas, at, dark, mode = DRAWINGS[3]
    drawings.append(save(tmp_path / "0-84px.jpg", drawn(images[0], size, canvas, at, dark), mode, quality=90))
    truth[str(drawings[-1])] = (int(labels[0]), str(originals[0]))

    original_class = predicted_classes(capsys, lenet_checkpoint, originals, "--raw")
    drawn_class = predicted_classes(capsys, lenet_checkpoint, drawings)
    assert len(drawn_class) == len(drawings) == 31
    # The model gets ~96% of MNIST's test digits right. Each drawing, once prepared, is its MNIST original
    # again up to resampling, so nearly all must be right: 90% leaves room for one digit the model finds
    # ambiguous (its three drawings), where preprocessing that breaks the digits (wrong polarity, scale
    # or position) gets little more than chance.
    correct = sum(drawn_class[path] == label for path, (label, _) in truth.items())
    assert correct >= 0.9 * len(drawings), (correct, drawn_class)
    # And every drawing of a digit is classified as its 28x28 original is.
    assert {path: original_class[original] for path, (_, original) in truth.items()} == drawn_class


def test_light_background_is_inverted(capsys, tmp_path, lenet_checkpoint, test_digits):
    digit = test_digits[0][1]
    light = save(tmp_path / "light.png", drawn(digit, 100, (150, 130), (40, 10), True), "RGB")
    dark = save(tmp_path / "dark.png", drawn(digit, 100, (150, 130), (40, 10), False), "RGB")
    np.testing.assert_array_equal(cli.load_image(light)[0], cli.load_image(dark)[0])
    classes = predicted_classes(capsys, lenet_checkpoint, [light, dark])
    assert classes[str(light)] == classes[str(dark)] == test_digits[1][1]


# ---------------------------------------------------------------------------------------------------------
# train, evaluate, summary, download


@pytest.fixture(scope="module")
def trained_run(mnist_dir, tmp_path_factory):
    """`cyconv train` of a small mlp on 2000 real images: (out dir, stdout, stderr)."""
    out = tmp_path_factory.mktemp("run")
    status, stdout, stderr = run_captured("train", "--model", "mlp", "--hidden", "32", "--epochs", "2", "--limit",
                                          "2000", "--data", mnist_dir, "--out", out, "--no-progress", "--threads", "1")
    assert status == 0, stderr
    return out, stdout, stderr


def test_train_writes_checkpoint_metrics_and_epoch_lines(trained_run):
    out, stdout, stderr = trained_run
    assert stderr == ""
    lines = stdout.splitlines()
    assert lines[0].startswith("training mlp on 2000 images (32 steps/epoch, batch 64), testing on 10000")
    assert lines[1].startswith("epoch 1/2  train loss ") and lines[2].startswith("epoch 2/2  ")
    assert lines[-1] == f"checkpoint: {out / CHECKPOINT_NAME}"
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["test_acc"] > 0.8


def test_evaluate_prints_accuracy_and_confusion_matrix(capsys, trained_run, mnist_dir):
    out, _, _ = trained_run
    status, stdout, err = run(capsys, "evaluate", "--checkpoint", out / CHECKPOINT_NAME, "--data", mnist_dir,
                              "--threads", "1")
    assert status == 0 and err == ""
    lines = stdout.splitlines()
    assert lines[0] == f"{out / CHECKPOINT_NAME}: mlp, 2 epochs"
    metrics = json.loads((out / METRICS_NAME).read_text())
    correct = round(metrics[-1]["test_acc"] * 10000)
    assert lines[1] == f"test accuracy {correct / 100:.2f}% ({correct}/10000)"
    header = lines.index("confusion matrix (rows: true digit, columns: predicted digit)")
    assert lines[header + 1].split() == ["true", *map(str, range(10)), "recall"]
    rows = [line.split() for line in lines[header + 2:header + 12]]
    counts = np.array([[int(v) for v in row[1:11]] for row in rows])
    assert [int(row[0]) for row in rows] == list(range(10))
    assert counts.sum() == 10000 and np.trace(counts) == correct


def test_train_with_adam_records_it_and_its_lr(capsys, tmp_path, mnist_dir):
    out = tmp_path / "run"
    status, stdout, err = run(capsys, "train", "--model", "mlp", "--hidden", "16", "--epochs", "2", "--limit", "2000", "--batch-size", "16",
                              "--optimizer", "adam", "--data", mnist_dir, "--out", out, "--no-progress",
                              "--threads", "1")
    assert status == 0, err
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert (ckpt.config["optimizer"], ckpt.config["lr"]) == ("adam", train_module.DEFAULT_LR["adam"])
    assert {"exp_avg.0", "exp_avg_sq.0", "beta1"} <= set(ckpt.optimizer_state)  # Adam's state, not SGD's
    assert json.loads((out / METRICS_NAME).read_text())[-1]["test_acc"] > 0.8


def test_resume_continues_with_the_saved_options(capsys, tmp_path, mnist_dir):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--hidden", "8", "--epochs", "2", "--limit", "1000", "--seed", "5",
            "--data", mnist_dir, "--out", out, "--no-progress", "--threads", "1"]
    with ctrl_c_in_the_second_epoch():
        status, stdout, err = run(capsys, *argv)
    assert status == 130
    assert err.startswith(f"cyconv: interrupted; last complete checkpoint: {out / CHECKPOINT_NAME} "
                          "(after epoch 1); continue with: "), err
    command = continue_command(err)
    assert command == ["train", "--resume", "--out", str(out), "--data", str(mnist_dir)]

    conflicting = ["train", "--resume", "--out", out, "--lr", "0.5", "--data", mnist_dir, "--no-progress"]
    assert_error(run(capsys, *conflicting), 1, f"lr {train_module.TrainConfig().lr} -> 0.5")

    status, stdout, err = run(capsys, *command, "--no-progress", "--threads", "1")
    assert status == 0, err
    assert "resuming after epoch 1" in stdout and "epoch 2/2" in stdout
    metrics = json.loads((out / METRICS_NAME).read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]


@pytest.mark.parametrize("options, expected", [
    ([], "cyconv train --resume --out runs/mlp"),  # a plain --resume would look in runs/lenet5
    (["--out", "runs/lenet5"], "cyconv train --resume"),
    (["--out", "my runs/first try"], "cyconv train --resume --out 'my runs/first try'"),
], ids=["default-for-mlp", "default-for-resume", "own-dir"])
def test_interrupt_prints_the_whole_command_to_continue(capsys, tmp_path, mnist_dir, monkeypatch, options,
                                                        expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CYCONV_DATA", str(mnist_dir))  # so no --data is needed
    argv = ["train", "--model", "mlp", "--hidden", "8", "--epochs", "2", "--limit", "500", "--no-progress",
            "--threads", "1", *options]
    with ctrl_c_in_the_second_epoch():
        status, stdout, err = run(capsys, *argv)
    assert status == 130 and len(err.splitlines()) == 1 and err.endswith(f"continue with: {expected}\n"), err
    # ... and that command does continue the run.
    status, stdout, err = run(capsys, *continue_command(err), "--threads", "1")
    assert status == 0, err
    assert "resuming after epoch 1" in stdout and "epoch 2/2" in stdout


def test_interrupt_before_any_checkpoint(capsys, tmp_path, mnist_dir, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    status, _, err = run(capsys, "train", "--limit", "100", "--data", mnist_dir, "--out", tmp_path)
    assert status == 130
    assert err.splitlines() == ["cyconv: interrupted before the first epoch ended; no checkpoint was written"]


@pytest.mark.parametrize("argv, expected", [
    ([], ["Conv (C_out=20, K=5, P=2, S=1) | 20 x 28 x 28 | 20 x 1 x 5 x 5", "Total parameters: 1,256,080"]),
    (["--model", "mlp", "--hidden", "32"], ["Linear (784 -> 32)", "Total parameters: 25,450"]),
])
def test_summary_prints_the_course_table(capsys, argv, expected):
    status, out, err = run(capsys, "summary", *argv)
    assert status == 0 and err == ""
    assert out.startswith("Layer ")
    for text in expected:
        assert text in out


# What each registered name must build, as models.py defines it (a new name fails here until it is added).
ARCHITECTURES = {"lenet5": lambda rng: models.lenet5(rng=rng), "mlp": lambda rng: models.mlp(hidden=32, rng=rng),
                 "lenet5_classic": lambda rng: models.lenet5_classic(rng=rng),
                 "small_cnn": lambda rng: models.small_cnn(rng=rng), "resnet20": lambda rng: models.resnet20(rng=rng),
                 "resnet18": lambda rng: models.resnet18(10, rng=rng),
                 "mobilenet_v2": lambda rng: models.mobilenet_v2(10, rng=rng)}


@pytest.mark.parametrize("name", MODELS)
def test_build_model_builds_each_registered_model(capsys, name):
    built = build_model(name, hidden=32, rng=np.random.default_rng(4))
    expected = ARCHITECTURES[name](np.random.default_rng(4))
    channels, size = models.default_input(name)
    table = summary(expected, input_shape=(channels, size, size))
    assert summary(built, input_shape=(channels, size, size)) == table
    built_state, expected_state = built.state_dict(), expected.state_dict()
    assert list(built_state) == list(expected_state)
    for key in expected_state:
        np.testing.assert_array_equal(built_state[key], expected_state[key], err_msg=key)
    # Its public use: `cyconv summary` prints the table of what build_model builds.
    status, out, err = run(capsys, "summary", "--model", name, "--hidden", 32)
    assert status == 0 and err == "" and out.startswith(table + "\n")
    convs = [row[0] for row in cyconv.models.conv_algorithms(built, (channels, size, size))]
    rest = out[len(table) + 1:]  # then, for a model with convolutions, the algorithm each runs
    assert (rest.startswith("Convolution algorithms (") and all(f" {c} " in rest for c in convs)) if convs \
        else rest == ""


def test_build_model_refuses_an_unknown_name_listing_the_choices():
    with pytest.raises(ValueError) as refused:
        build_model("vgg")
    assert str(refused.value) == f"build_model(): name must be one of {', '.join(MODELS)}, got 'vgg'"


def test_download_reports_a_complete_directory(capsys, mnist_dir):
    # All four files are present, so nothing is fetched; the files are MD5-verified.
    status, out, err = run(capsys, "download", "--data", mnist_dir)
    assert status == 0, err
    assert out.strip() == f"MNIST: 60000 training and 10000 test images in {mnist_dir} (MD5-verified)"


# ---------------------------------------------------------------------------------------------------------
# export, and predict / evaluate --model FILE.onnx


def test_export_then_evaluate_and_predict_the_onnx_model(capsys, trained_run, mnist_dir, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package (in cyconv[test]) is needed to export")
    out, _, _ = trained_run
    onnx_path = tmp_path / "mlp.onnx"
    status, stdout, err = run(capsys, "export", "--checkpoint", out / CHECKPOINT_NAME, "--output", onnx_path)
    assert status == 0 and err == ""
    assert stdout == f"{onnx_path}: mlp from {out / CHECKPOINT_NAME} as ONNX (opset 17)\n"
    results = {}
    for source in (["--checkpoint", out / CHECKPOINT_NAME], ["--model", onnx_path]):
        status, stdout, err = run(capsys, "evaluate", *source, "--data", mnist_dir, "--threads", "1")
        assert status == 0, err
        results[str(source[0])] = stdout.splitlines()[1:]  # all but the line naming the model
    assert results["--model"] == results["--checkpoint"]  # the same accuracy and confusion matrix
    digit = tmp_path / "digit.npy"
    np.save(digit, load_mnist(mnist_dir).test_images[0])
    a = run(capsys, "predict", "--checkpoint", out / CHECKPOINT_NAME, digit, "--threads", "1")
    b = run(capsys, "predict", "--model", onnx_path, digit, "--threads", "1")
    assert a == b and a[0] == 0


def test_model_and_checkpoint_exclude_each_other_and_one_is_needed(capsys, tmp_path):
    status, _, err = run(capsys, "predict", "--checkpoint", tmp_path / "a.npz", "--model", tmp_path / "b.onnx",
                         tmp_path / "x.png")
    assert status == 2 and "not allowed with argument" in err
    status, _, err = run(capsys, "evaluate")
    assert status == 2 and "one of the arguments --checkpoint --model is required" in err


def test_a_bad_onnx_model_is_one_line(capsys, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package (in cyconv[test]) reads the file")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    digit = tmp_path / "digit.npy"
    np.save(digit, np.zeros((28, 28), np.uint8) + 1)
    assert_error(run(capsys, "predict", "--model", bad, digit, "--raw"), 1, f"{bad}: not an ONNX model")


def test_an_onnx_model_with_an_op_cyconv_lacks_is_one_line(capsys, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package (in cyconv[test]) writes the file")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("_init__", ["x"], ["y"], name="weird")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    bad = tmp_path / "bad-op.onnx"
    bad.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    digit = tmp_path / "digit.npy"
    np.save(digit, np.zeros((28, 28), np.uint8) + 1)
    assert_error(run(capsys, "predict", "--model", bad, digit, "--raw"), 1,
                 f"{bad}: node weird (_init__): op type not supported")


def test_onnx_commands_without_the_onnx_package_say_what_to_install(capsys, tmp_path, trained_run, monkeypatch):
    out, _, _ = trained_run
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert_error(run(capsys, "export", "--checkpoint", out / CHECKPOINT_NAME, "--output", tmp_path / "m.onnx"),
                 1, "pip install 'cyconv[onnx]'")
    assert not (tmp_path / "m.onnx").exists()
