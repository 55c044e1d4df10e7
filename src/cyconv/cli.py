"""The `cyconv` command: train, evaluate, predict, summary, compare, download.

    cyconv train                          LeNet-5 on MNIST, 3 epochs; checkpoint in ./runs/lenet5
    cyconv train --resume                 continue that run where it stopped
    cyconv evaluate --checkpoint runs/lenet5/checkpoint.npz
    cyconv predict --checkpoint runs/lenet5/checkpoint.npz digit.png more.npy
    cyconv summary --model lenet5
    cyconv compare --plot compare.png     hand-crafted features + simple classifiers vs LeNet-5
    cyconv download --data DIR

Errors a user can cause (a missing file, a bad option, a corrupt checkpoint or image, MNIST not found)
print one line, "cyconv: error: ...", to stderr and exit with 2 for a bad command line, 1 otherwise.
Ctrl-C exits with 130. Set CYCONV_DEBUG=1 to get the traceback instead of the one line.

Images for `predict` follow the MNIST convention: a white (bright) digit on a black background,
28x28 pixels. PNGs are read by a small built-in decoder (8-bit grayscale, gray+alpha, RGB or RGBA,
not interlaced); colour becomes gray as 0.299 R + 0.587 G + 0.114 B and transparency is composited
over black.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from . import __version__, compare, data, set_num_threads
from ._files import atomic_write
from .checkpoint import MODELS, build_model, load_checkpoint, load_model
from .models import summary
from .train import (CHECKPOINT_NAME, SCHEDULES, TrainConfig, TrainingInterrupted, confusion_matrix,
                    predict_logits, train)

__all__ = ["main", "ImageError", "read_png", "load_image"]

PROG = "cyconv"
ENV_NO_DOWNLOAD = "CYCONV_NO_DOWNLOAD"  # "1": never download MNIST (as --no-download)
ENV_DEBUG = "CYCONV_DEBUG"
EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130
IMAGE_SIZE = 28


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _MissingDependency(Exception):
    """An optional package a command needs is not installed: one line, exit status 1."""


class ImageError(ValueError):
    """An image file that cannot be read or is not a 28x28 digit."""


# ---------------------------------------------------------------------------------------------------------
# Argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and raises instead of exiting."""

    def error(self, message):
        command = self.prog.removeprefix(PROG).strip()  # "train" in "cyconv train"
        raise UsageError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _float_in(low, high=float("inf"), *, low_open=False, high_open=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not np.isfinite(value) or too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _build_parser():
    d = TrainConfig()
    parser = _Parser(prog=PROG, description="A small CNN engine: train and use LeNet-5 on MNIST.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def data_options(p):
        p.add_argument("--data", metavar="DIR", help="MNIST directory (default: $CYCONV_DATA, else "
                       "~/.cache/cyconv/mnist); downloaded there if missing")
        p.add_argument("--no-download", action="store_true",
                       help=f"fail instead of downloading missing MNIST files (also: {ENV_NO_DOWNLOAD}=1)")

    def threads_option(p):
        p.add_argument("--threads", type=_int_at_least(1), metavar="N",
                       help="cyconv's OpenMP threads, which run the compiled kernels (default: $OMP_NUM_THREADS, "
                            "else the cores this process may use); the BLAS they call stays single-threaded "
                            "inside them")

    p = commands.add_parser(
        "train", help="train a model on MNIST",
        description="Train on MNIST with SGD, evaluating on the test set and saving a checkpoint "
                    "(OUT/checkpoint.npz) and metrics (OUT/metrics.json) after every epoch. With --resume, "
                    "options not given are taken from the checkpoint.")
    p.add_argument("--model", choices=MODELS, help=f"network (default: {d.model})")
    p.add_argument("--hidden", type=_int_at_least(1), metavar="N", help=f"mlp hidden units (default: {d.hidden})")
    p.add_argument("--epochs", type=_int_at_least(1), metavar="N", help=f"default: {d.epochs}")
    p.add_argument("--batch-size", type=_int_at_least(1), metavar="N", help=f"default: {d.batch_size}")
    p.add_argument("--lr", type=_float_in(0, low_open=True), metavar="LR",
                   help=f"base learning rate (default: {d.lr})")
    p.add_argument("--momentum", type=_float_in(0, 1, high_open=True), metavar="M", help=f"default: {d.momentum}")
    p.add_argument("--weight-decay", type=_float_in(0), metavar="WD", help=f"default: {d.weight_decay}")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning-rate schedule over the whole run (default: {d.schedule})")
    p.add_argument("--warmup-steps", type=_int_at_least(0), metavar="N",
                   help=f"linear warm-up steps, cosine schedule only (default: {d.warmup_steps})")
    p.add_argument("--step-size", type=_int_at_least(1), metavar="EPOCHS",
                   help=f"step schedule: epochs between decays (default: {d.step_size})")
    p.add_argument("--gamma", type=_float_in(0, 1, low_open=True), metavar="G",
                   help=f"step schedule: decay factor (default: {d.gamma})")
    p.add_argument("--seed", type=_int_at_least(0), metavar="N", help=f"default: {d.seed}")
    p.add_argument("--limit", type=_int_at_least(1), metavar="N",
                   help="train on the first N training images only (for quick runs)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: ./runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    data_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_train)

    p = commands.add_parser("evaluate", help="test-set accuracy and confusion matrix of a checkpoint",
                            description="Evaluate a checkpoint on the 10,000 MNIST test images.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
    p.add_argument("--batch-size", type=_int_at_least(1), default=1000, metavar="N", help="default: 1000")
    data_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_evaluate)

    p = commands.add_parser(
        "predict", help="classify images",
        description="Classify 28x28 images: PNG (8-bit gray, gray+alpha, RGB or RGBA) or .npy "
                    "(uint8 0..255 or float 0..1). As in MNIST, the digit is white on a black background.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="a .png or .npy file")
    threads_option(p)
    p.set_defaults(run=_cmd_predict)

    p = commands.add_parser("summary", help="print a model's layer table",
                            description="Print the layers, output sizes and weight sizes of a model.")
    p.add_argument("--model", choices=MODELS, default=d.model, help=f"default: {d.model}")
    p.add_argument("--hidden", type=_int_at_least(1), default=d.hidden, metavar="N",
                   help=f"mlp hidden units (default: {d.hidden})")
    p.set_defaults(run=_cmd_summary)

    p = commands.add_parser(
        "compare", help="hand-crafted features + simple classifiers vs LeNet-5",
        description="Train softmax regression on pixels, an intensity histogram and HOG, the two-layer MLP "
                    "on pixels, and LeNet-5 on the images, all with the same SGD recipe as 'cyconv train'; "
                    "print each one's test accuracy, training time and feature-extraction time.")
    p.add_argument("--epochs", type=_int_at_least(1), metavar="N",
                   help=f"epochs for every model (default: {compare.DEFAULT_EPOCHS} for the feature classifiers, "
                        f"{compare.DEFAULT_CNN_EPOCHS} for LeNet-5)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N", help="default: 0")
    p.add_argument("--limit", type=_int_at_least(1), metavar="N", help="use the first N training images only")
    p.add_argument("--test-limit", type=_int_at_least(1), metavar="N", help="use the first N test images only")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--plot", metavar="FILE", help="draw test accuracy against training time to FILE (e.g. a .png; "
                   "needs matplotlib: pip install 'cyconv[plot]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    data_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_compare)

    p = commands.add_parser("download", help="fetch MNIST",
                            description="Download the missing MNIST files (MD5-checked) and verify all four.")
    p.add_argument("--data", metavar="DIR", help="target directory (default: $CYCONV_DATA, else ~/.cache/cyconv/mnist)")
    p.set_defaults(run=_cmd_download)
    return parser


# ---------------------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"no command given; choose one of train, evaluate, predict, summary, compare, "
                             f"download (see '{PROG} --help')")
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0

    debug = os.environ.get(ENV_DEBUG, "") not in ("", "0")
    try:
        with _threads(getattr(args, "threads", None)):
            return args.run(args)
    except TrainingInterrupted as e:
        if e.checkpoint is None:
            message = "interrupted before the first epoch ended; no checkpoint was written"
        else:
            message = (f"interrupted; last complete checkpoint: {e.checkpoint} (after epoch {e.epochs_done}); "
                       "continue with --resume")
        print(f"{PROG}: {message}", file=sys.stderr)
        if e.checkpoint is not None:
            # The whole command, which a run outside the default directory needs: on stdout, as the last
            # line of the run's record (the epoch lines), leaving the one-line status alone on stderr.
            print(f"to continue: {_resume_command(e.out_dir, getattr(args, 'data', None))}")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except (OSError, ValueError, FloatingPointError, MemoryError, _MissingDependency) as e:
        if debug:
            raise
        return _fail(e, EXIT_ERROR)


def _fail(error: BaseException, status: int) -> int:
    print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
    return status


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    if isinstance(error, MemoryError):
        text = f"out of memory {text}".strip()
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _default_out(model: str = TrainConfig.model) -> Path:
    """Where `cyconv train` keeps a run when --out is not given."""
    return Path("runs") / model


def _resume_command(out_dir, data_dir) -> str:
    """The command that continues an interrupted `cyconv train`: with --out unless out_dir is where a plain
    `cyconv train --resume` looks, and with --data if the run was given one."""
    words = [PROG, "train", "--resume"]
    if out_dir is not None and Path(out_dir) != _default_out():
        words += ["--out", str(out_dir)]
    if data_dir is not None:
        words += ["--data", str(data_dir)]
    return shlex.join(words)


def _threads(n):
    return set_num_threads(n) if n is not None else contextlib.nullcontext()


def _load_mnist(args):
    root = data.resolve_data_dir(args.data)
    download = not args.no_download and os.environ.get(ENV_NO_DOWNLOAD, "") in ("", "0")
    missing = [name for name in data.FILES if not any((root / n).is_file() for n in (name, name + ".gz"))]
    if missing and download:
        print(f"MNIST not found in {root}; downloading it", file=sys.stderr)
    return data.ensure_mnist(root, download=download)


# ---------------------------------------------------------------------------------------------------------
# Commands


def _cmd_train(args) -> int:
    given = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__
             if getattr(args, name, None) is not None}
    if "hidden" in given and given.get("model", TrainConfig.model) != "mlp":
        raise UsageError("train: --hidden applies to --model mlp only (see 'cyconv train --help')")
    out = Path(args.out) if args.out else _default_out(given.get("model", TrainConfig.model))
    if args.resume:
        # What the command line does not say comes from the run being resumed, so a plain
        # `cyconv train --resume` continues it; what it does say must agree (train() checks).
        if not (out / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"nothing to resume: {out / CHECKPOINT_NAME} does not exist")
        saved = load_checkpoint(out / CHECKPOINT_NAME).config
        config = TrainConfig.from_dict({**saved, **given})
    else:
        config = TrainConfig(**given)
    mnist = _load_mnist(args)
    result = train(config, mnist, out_dir=out, resume=args.resume,
                   progress=False if args.no_progress else None)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _cmd_evaluate(args) -> int:
    model, ckpt = load_model(args.checkpoint)
    mnist = _load_mnist(args)
    labels = mnist.test_labels.astype(np.int64)
    predictions = predict_logits(model, data.to_float32(mnist.test_images), args.batch_size).argmax(axis=1)
    counts = confusion_matrix(labels, predictions, num_classes=10)
    correct = int(np.trace(counts))
    print(f"{ckpt.path}: {ckpt.model_name}, {ckpt.epoch} epochs")
    print(f"test accuracy {100 * correct / len(labels):.2f}% ({correct}/{len(labels)})")
    print()
    print(_confusion_table(counts))
    return 0


def _confusion_table(counts: np.ndarray) -> str:
    """Rows are the true digits, columns the predicted ones, then each row's recall."""
    k = counts.shape[0]
    width = max(5, len(str(int(counts.max()))) + 1)
    lines = ["confusion matrix (rows: true digit, columns: predicted digit)",
             "true" + "".join(f"{c:>{width}}" for c in range(k)) + "   recall"]
    for t in range(k):
        total = int(counts[t].sum())
        recall = f"{100 * counts[t, t] / total:7.2f}%" if total else "      -"
        lines.append(f"{t:>4}" + "".join(f"{int(v):>{width}}" for v in counts[t]) + " " + recall)
    return "\n".join(lines)


def _cmd_predict(args) -> int:
    images = [load_image(path) for path in args.images]  # all read (and checked) before any output
    model, _ = load_model(args.checkpoint)
    x = np.stack([image for image, _ in images])
    logits = predict_logits(model, x).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for path, (_, warning) in zip(args.images, images):
        if warning:
            print(f"{PROG}: warning: {path}: {warning}", file=sys.stderr)
    name_width = max(5, *(len(p) for p in args.images))
    print(f"{'image':<{name_width}}  class  " + "  ".join(f"{f'p{c}':>6}" for c in range(probs.shape[1])))
    for path, p in zip(args.images, probs):
        print(f"{path:<{name_width}}  {int(p.argmax()):>5}  " + "  ".join(f"{v:6.4f}" for v in p))
    return 0


def _cmd_summary(args) -> int:
    print(summary(build_model(args.model, hidden=args.hidden, rng=np.random.default_rng(0))))
    return 0


def _cmd_compare(args) -> int:
    # Everything that can fail fast does so before minutes of training.
    if args.plot is not None:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            raise _MissingDependency("compare: --plot needs matplotlib; install cyconv[plot] "
                                     "(pip install 'cyconv[plot]')") from None
        formats = FigureCanvasBase.get_supported_filetypes()
        if Path(args.plot).suffix.lower().lstrip(".") not in formats:
            raise UsageError(f"compare: --plot {args.plot}: the name must end in one of "
                             f"{', '.join('.' + f for f in sorted(formats))} (see 'cyconv compare --help')")
    for path in (args.json, args.plot):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise FileNotFoundError(2, "No such directory", str(Path(path).resolve().parent))
    mnist = _load_mnist(args)
    rows = compare.compare(mnist, epochs=args.epochs, cnn_epochs=args.epochs, limit=args.limit,
                           test_limit=args.test_limit, seed=args.seed,
                           progress=False if args.no_progress else None,
                           log=lambda line: print(line, file=sys.stderr))
    print(compare.format_table(rows))
    if args.json is not None:
        text = json.dumps(compare.as_dicts(rows), indent=2) + "\n"
        atomic_write(Path(args.json), lambda f: f.write(text.encode()))
    if args.plot is not None:
        compare.plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _cmd_download(args) -> int:
    root = data.download_mnist(args.data)
    mnist = data.load_mnist(root)
    print(f"MNIST: {len(mnist.train_labels)} training and {len(mnist.test_labels)} test images in {root} "
          "(MD5-verified)")
    return 0


# ---------------------------------------------------------------------------------------------------------
# Images


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NPY_MAGIC = b"\x93NUMPY"
# PNG colour type -> (samples per pixel, name); palette images (3) are left out.
_PNG_COLOR_TYPES = {0: (1, "grayscale"), 2: (3, "RGB"), 4: (2, "gray+alpha"), 6: (4, "RGBA")}


def load_image(path) -> tuple[np.ndarray, str | None]:
    """A 28x28 .png or .npy as the network's input: float32 (1, 28, 28), normalised as cyconv.data
    does, and a warning (or None) if it looks like a dark digit on a light background."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    if raw.startswith(_PNG_SIGNATURE):
        pixels = read_png(raw, path).astype(np.float32) / np.float32(255)
    elif raw.startswith(_NPY_MAGIC):
        pixels = _read_npy(path)
    else:
        raise ImageError(f"{path}: not a PNG or .npy file")
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        size = "x".join(map(str, pixels.shape[::-1])) if pixels.ndim == 2 else f"shape {pixels.shape}"
        raise ImageError(f"{path}: image is {size}, expected {IMAGE_SIZE}x{IMAGE_SIZE} (width x height)")
    warning = None
    if pixels.mean() > 0.5:
        warning = ("mostly bright: MNIST digits are white on black, so invert a dark-on-light image "
                   "(255 - pixels) for a meaningful prediction")
    x = (pixels - np.float32(data.MNIST_MEAN)) / np.float32(data.MNIST_STD)
    return x.reshape(1, IMAGE_SIZE, IMAGE_SIZE).astype(np.float32), warning


def _read_npy(path: Path) -> np.ndarray:
    """A 2-D .npy of uint8 (or other integers) in 0..255, or floats in [0, 1], as float32 in [0, 1]."""
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ImageError(f"{path}: cannot read as .npy: {e}") from e
    if a.ndim != 2:
        raise ImageError(f"{path}: array has shape {a.shape}, expected ({IMAGE_SIZE}, {IMAGE_SIZE})")
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageError(f"{path}: integer pixels must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.float32) / np.float32(255)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ImageError(f"{path}: float pixels must be finite and in [0, 1]")
        return a.astype(np.float32)
    raise ImageError(f"{path}: dtype {a.dtype} is not an image; expected uint8 (0..255) or float (0..1)")


def read_png(png: bytes, source="<png>") -> np.ndarray:
    """Decode a non-interlaced 8-bit PNG (gray, gray+alpha, RGB, RGBA) to uint8 (H, W) grayscale.

    Every chunk's CRC is checked; unknown ancillary chunks are skipped. Gray = round(0.299 R + 0.587 G +
    0.114 B) (ITU-R 601, as Pillow's "L"), then alpha composites it over black, MNIST's background.
    """
    def fail(reason):
        raise ImageError(f"{source}: {reason}")

    if not png.startswith(_PNG_SIGNATURE):
        fail("not a PNG file")
    header, idat, pos = None, [], len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(png):
            fail("truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", png[pos:pos + 8])
        end = pos + 12 + length
        if end > len(png):
            fail(f"truncated PNG (chunk {ctype!r} runs past the end of the file)")
        body = png[pos + 8:end - 4]
        if zlib.crc32(ctype + body) != struct.unpack(">I", png[end - 4:end])[0]:
            fail(f"corrupt PNG (CRC mismatch in chunk {ctype.decode('latin1')!r})")
        pos = end
        if header is None and ctype != b"IHDR":
            fail("corrupt PNG (the first chunk is not IHDR)")
        if ctype == b"IHDR":
            header = _png_header(body, fail)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        elif not ctype[0] & 0x20:  # bit 5 of the first byte clear: a critical chunk we do not know
            fail(f"unsupported PNG (critical chunk {ctype.decode('latin1')!r})")
    width, height, channels = header
    stride = width * channels
    raw = _inflate(b"".join(idat), height * (stride + 1), fail)
    pixels = _unfilter(raw, height, stride, channels, fail).reshape(height, width, channels)
    return _to_gray(pixels)


def _png_header(body: bytes, fail) -> tuple[int, int, int]:
    if len(body) != 13:
        fail("corrupt PNG (IHDR is not 13 bytes)")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if color not in _PNG_COLOR_TYPES:
        fail(f"unsupported PNG colour type {color}" + (" (palette); save it as grayscale" if color == 3 else ""))
    if depth != 8:
        fail(f"unsupported PNG bit depth {depth}; only 8 bits per sample are read")
    if interlace:
        fail("interlaced PNGs are not supported; save it without interlacing")
    if compression or filtering:
        fail("corrupt PNG (unknown compression or filter method)")
    if not 1 <= width <= 4096 or not 1 <= height <= 4096:
        fail(f"PNG size {width}x{height} is out of range")
    return width, height, _PNG_COLOR_TYPES[color][0]


def _inflate(compressed: bytes, expected: int, fail) -> bytes:
    """Decompress at most expected + 1 bytes, so a lying or hostile file cannot exhaust memory."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(compressed, expected + 1)
    except zlib.error as e:
        fail(f"corrupt PNG image data ({e})")
    if len(raw) != expected:
        fail(f"corrupt PNG: image data is {len(raw)}{'+' if len(raw) > expected else ''} bytes, "
             f"expected {expected}")
    return raw


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, fail) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth); bpp is bytes per pixel."""
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            # Sub, Average and Paeth depend on the pixel to the left as just decoded: one byte at a time.
            cur = line.copy()
            for i in range(stride):
                left = int(cur[i - bpp]) if i >= bpp else 0
                up = int(prev[i])
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) >> 1
                else:
                    upper_left = int(prev[i - bpp]) if i >= bpp else 0
                    predictor = _paeth(left, up, upper_left)
                cur[i] = (cur[i] + predictor) & 0xFF
        else:
            fail(f"corrupt PNG (unknown filter type {kind} in row {y})")
        out[y] = cur
        prev = cur
    return out


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W, channels) uint8 -> (H, W) uint8 gray, alpha composited over black."""
    channels = pixels.shape[2]
    p = pixels.astype(np.int64)
    if channels in (1, 2):
        gray = p[..., 0]
    else:  # integer arithmetic, rounded to nearest: exact and the same on every platform
        gray = (299 * p[..., 0] + 587 * p[..., 1] + 114 * p[..., 2] + 500) // 1000
    if channels in (2, 4):
        gray = (gray * p[..., -1] + 127) // 255
    return gray.astype(np.uint8)
