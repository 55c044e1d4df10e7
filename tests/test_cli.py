"""The `cyconv` command line, run in-process through cli.main (plus one `python -m cyconv` subprocess).

Every error a user can cause must print exactly one line, "cyconv: error: ...", to stderr, with exit
status 2 for a bad command line and 1 otherwise, and never a traceback. PNGs are written by a small
encoder here, so the decoder is checked against an independent implementation of every row filter.

Tests that read MNIST use the verified copy (conftest's mnist_dir: $CYCONV_DATA, else ../shared/data/mnist)
and fail without it; downloading is always disabled.
"""

import contextlib
import io
import json
import shlex
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import cyconv
import cyconv.train as train_module
from cyconv import cli
from cyconv.data import load_mnist
from cyconv.train import CHECKPOINT_NAME, METRICS_NAME, TrainConfig, train
from cli_helpers import assert_error, run


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    monkeypatch.setenv(cli.ENV_NO_DOWNLOAD, "1")
    monkeypatch.delenv(cli.ENV_DEBUG, raising=False)


@pytest.fixture(scope="module")
def test_digits(mnist_dir):
    mnist = load_mnist(mnist_dir)
    return mnist.test_images[:3], mnist.test_labels[:3]


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
# A tiny PNG encoder, independent of the decoder under test


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_row(kind, row, prev, bpp):
    out = []
    for i, x in enumerate(row):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        upper_left = prev[i - bpp] if i >= bpp else 0
        predictor = [0, left, up, (left + up) // 2, _paeth(left, up, upper_left)][kind]
        out.append((x - predictor) % 256)
    return bytes([kind] + out)


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(pixels, color_type=0, filters=(0, 1, 2, 3, 4), bit_depth=8, interlace=0):
    """Encode uint8 pixels, (H, W) for gray or (H, W, channels); row y uses filters[y % len(filters)]."""
    pixels = np.asarray(pixels, np.uint8)
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).tolist()
    bpp = len(rows[0]) // w
    prev, data = [0] * len(rows[0]), b""
    for y, row in enumerate(rows):
        data += _filter_row(filters[y % len(filters)], row, prev, bpp)
        prev = row
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"tEXt", b"Comment\x00test")
            + _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b""))


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
    (["predict", "--checkpoint", "x.npz"], "the following arguments are required: IMAGE"),
    (["evaluate"], "the following arguments are required: --checkpoint"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, match):
    assert_error(run(capsys, *argv), 2, match)


# ---------------------------------------------------------------------------------------------------------
# Runtime errors


def test_missing_checkpoint(capsys, tmp_path):
    assert_error(run(capsys, "evaluate", "--checkpoint", tmp_path / "nope.npz"), 1, "no such checkpoint file")
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((28, 28), np.uint8))
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
# Images


def gray_digit():
    rng = np.random.default_rng(1)
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = rng.integers(180, 256, (16, 4))
    return image


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)],
                         ids=["none", "sub", "up", "average", "paeth", "mixed"])
@pytest.mark.parametrize("color_type", [0, 2, 4, 6], ids=["gray", "rgb", "gray-alpha", "rgba"])
def test_png_decoder_undoes_every_filter(color_type, filters):
    rng = np.random.default_rng(color_type)
    gray = rng.integers(0, 256, (28, 28)).astype(np.uint8)
    if color_type == 0:
        pixels, expected = gray, gray
    elif color_type == 4:
        pixels, expected = np.stack([gray, np.full_like(gray, 255)], -1), gray
    else:
        rgb = rng.integers(0, 256, (28, 28, 3)).astype(np.uint8)
        r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
        expected = ((299 * r + 587 * g + 114 * b + 500) // 1000).astype(np.uint8)
        pixels = rgb if color_type == 2 else np.concatenate([rgb, np.full_like(gray, 255)[..., None]], -1)
    decoded = cli.read_png(png_bytes(pixels, color_type, filters))
    np.testing.assert_array_equal(decoded, expected)


def test_png_alpha_composites_over_black():
    gray = np.full((2, 3), 200, np.uint8)
    alpha = np.array([[0, 255, 128], [64, 255, 0]], np.uint8)
    decoded = cli.read_png(png_bytes(np.stack([gray, alpha], -1), color_type=4))
    np.testing.assert_array_equal(decoded, [[0, 200, 100], [50, 200, 0]])


def flip_crc(png):
    data = bytearray(png)
    data[-20] ^= 0x01  # in the IDAT chunk's CRC or data
    return bytes(data)


@pytest.mark.parametrize("make, match", [
    (lambda d: png_bytes(d[:, :27]), "image is 27x28, expected 28x28"),
    (lambda d: png_bytes(np.zeros((20, 20), np.uint8)), "image is 20x20"),
    (lambda d: flip_crc(png_bytes(d)), "corrupt PNG (CRC mismatch"),
    (lambda d: png_bytes(d)[:-30], "truncated PNG"),
    (lambda d: png_bytes(d, interlace=1), "interlaced PNGs are not supported"),
    (lambda d: png_bytes(d, bit_depth=16), "unsupported PNG bit depth 16"),
    (lambda d: png_bytes(d, color_type=3), "colour type 3 (palette)"),
    (lambda d: b"hello, I am not an image", "not a PNG or .npy file"),
], ids=["27x28", "20x20", "crc", "truncated", "interlaced", "16-bit", "palette", "text"])
def test_bad_png(capsys, tmp_path, checkpoint, make, match):
    path = tmp_path / "digit.png"
    path.write_bytes(make(gray_digit()))
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1, match)


@pytest.mark.parametrize("array, match", [
    (np.zeros((28, 27), np.uint8), "image is 27x28"),
    (np.zeros((1, 28, 28), np.uint8), "expected (28, 28)"),
    (np.full((28, 28), 1.5), "float pixels must be finite and in [0, 1]"),
    (np.full((28, 28), 300, np.int32), "integer pixels must be in 0..255"),
    (np.zeros((28, 28), bool), "dtype bool is not an image"),
    (np.array([{"a": 1}], dtype=object), "cannot read as .npy"),
], ids=["27x28", "3d", "float-range", "int-range", "bool", "pickle"])
def test_bad_npy(capsys, tmp_path, checkpoint, array, match):
    path = tmp_path / "digit.npy"
    np.save(path, array, allow_pickle=True)
    assert_error(run(capsys, "predict", "--checkpoint", checkpoint, path), 1, match)


def parse_predictions(out):
    """{image name: (class, probabilities)} from predict's table."""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["image", "class", "p0"]
    result = {}
    for line in lines[1:]:
        name, cls, *probs = line.split()
        result[name] = (int(cls), [float(p) for p in probs])
    return result


def test_predict_reads_png_and_npy_alike(capsys, tmp_path, checkpoint):
    digit = gray_digit()
    rgba = np.concatenate([np.repeat(digit[..., None], 3, -1), np.full((28, 28, 1), 255, np.uint8)], -1)
    files = {
        "gray.png": png_bytes(digit),
        "rgba.png": png_bytes(rgba, color_type=6, filters=(4,)),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "uint8.npy", digit)
    np.save(tmp_path / "float.npy", digit / 255.0)
    names = ["gray.png", "rgba.png", "uint8.npy", "float.npy"]
    status, out, err = run(capsys, "predict", "--checkpoint", checkpoint, *(tmp_path / n for n in names))
    assert status == 0 and err == ""
    predictions = {name.rsplit("/", 1)[-1]: value for name, value in parse_predictions(out).items()}
    assert sorted(predictions) == sorted(names)
    first = predictions["gray.png"]
    assert 0 <= first[0] <= 9 and len(first[1]) == 10 and sum(first[1]) == pytest.approx(1, abs=1e-3)
    assert all(value == first for value in predictions.values())


def test_predict_warns_about_a_dark_digit_on_white(capsys, tmp_path, checkpoint):
    path = tmp_path / "inverted.png"
    path.write_bytes(png_bytes(255 - gray_digit()))
    status, out, err = run(capsys, "predict", "--checkpoint", checkpoint, path)
    assert status == 0 and len(parse_predictions(out)) == 1
    assert "warning" in err and "white on black" in err


def test_predict_classifies_real_digits(capsys, tmp_path, mnist_dir, test_digits):
    # A quickly trained mlp gets the first three MNIST test digits (7, 2, 1) right.
    out_dir = tmp_path / "run"
    status, _, _ = run(capsys, "train", "--model", "mlp", "--hidden", "64", "--epochs", "1", "--limit", "6400",
                       "--data", mnist_dir, "--out", out_dir, "--no-progress", "--threads", "1")
    assert status == 0
    images, labels = test_digits
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"digit{i}.png")
        paths[-1].write_bytes(png_bytes(image))
    status, out, _ = run(capsys, "predict", "--checkpoint", out_dir / CHECKPOINT_NAME, *paths)
    assert status == 0
    predicted = [cls for cls, _ in parse_predictions(out).values()]
    assert predicted == labels.tolist()


# ---------------------------------------------------------------------------------------------------------
# train, evaluate, summary, download


@pytest.fixture(scope="module")
def trained_run(mnist_dir, tmp_path_factory):
    """`cyconv train` of a small mlp on 2000 real images: (out dir, stdout, stderr)."""
    out = tmp_path_factory.mktemp("run")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.MonkeyPatch.context() as m:
        m.setenv(cli.ENV_NO_DOWNLOAD, "1")
        status = cli.main(["train", "--model", "mlp", "--hidden", "32", "--epochs", "2", "--limit", "2000",
                           "--data", str(mnist_dir), "--out", str(out), "--no-progress", "--threads", "1"])
    assert status == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


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


@contextlib.contextmanager
def ctrl_c_in_the_second_epoch():
    """Ctrl-C as `cyconv train` starts its second epoch, after the first one's checkpoint is written."""
    real = train_module._train_epoch

    def stop_at_second_epoch(model, optimizer, x, y, config, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(model, optimizer, x, y, config, epoch, *args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_module, "_train_epoch", stop_at_second_epoch)
        yield


def continue_command(stdout):
    """The command an interrupted `cyconv train` printed last, as argv for cli.main."""
    prefix = "to continue: cyconv "
    last = stdout.splitlines()[-1]
    assert last.startswith(prefix), stdout
    return shlex.split(last.removeprefix(prefix))


def test_resume_continues_with_the_saved_options(capsys, tmp_path, mnist_dir):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--hidden", "8", "--epochs", "2", "--limit", "1000", "--seed", "5",
            "--data", mnist_dir, "--out", out, "--no-progress", "--threads", "1"]
    with ctrl_c_in_the_second_epoch():
        status, stdout, err = run(capsys, *argv)
    assert status == 130
    assert err.splitlines() == [f"cyconv: interrupted; last complete checkpoint: {out / CHECKPOINT_NAME} "
                                "(after epoch 1); continue with --resume"]
    command = continue_command(stdout)
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
    assert status == 130 and len(err.splitlines()) == 1 and err.endswith("continue with --resume\n"), err
    assert stdout.splitlines()[-1] == f"to continue: {expected}"
    # ... and that command does continue the run.
    status, stdout, err = run(capsys, *continue_command(stdout), "--threads", "1")
    assert status == 0, err
    assert "resuming after epoch 1" in stdout and "epoch 2/2" in stdout


def test_interrupt_before_any_checkpoint(capsys, tmp_path, mnist_dir, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_train_epoch", interrupted)
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


def test_download_reports_a_complete_directory(capsys, mnist_dir):
    # All four files are present, so nothing is fetched; the files are MD5-verified.
    status, out, err = run(capsys, "download", "--data", mnist_dir)
    assert status == 0, err
    assert out.strip() == f"MNIST: 60000 training and 10000 test images in {mnist_dir} (MD5-verified)"
