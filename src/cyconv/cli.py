"""The `cyconv` command: train, evaluate, predict, summary, compare, download.

    cyconv train                          LeNet-5 on MNIST, 3 epochs; checkpoint in ./runs/lenet5
    cyconv train --resume                 continue that run where it stopped
    mpiexec -n 4 cyconv train --distributed   the same on 4 processes (cyconv[mpi]); --batch-size is global
    cyconv evaluate --checkpoint runs/lenet5/checkpoint.npz
    cyconv predict --checkpoint runs/lenet5/checkpoint.npz digit.png more.npy
    cyconv summary --model lenet5
    cyconv compare --plot compare.png     hand-crafted features + simple classifiers vs LeNet-5
    cyconv download --data DIR

Errors a user can cause (a missing file, a bad option, a corrupt checkpoint or image, MNIST not found)
print one line, "cyconv: error: ...", to stderr and exit with 2 for a bad command line, 1 otherwise.
Ctrl-C exits with 130. Set CYCONV_DEBUG=1 to get the traceback instead of the one line.

Images for `predict` may be pictures of any size and colour mode (PNG, JPEG, BMP, GIF, TIFF, PPM, read
by Pillow) or 2-D .npy arrays, a dark digit on a light background or a light one on dark: `load_image`
turns each into an MNIST digit with cyconv.data.prepare_digit (inverted if need be, cropped to the ink,
scaled to fit 20x20, centred by its centre of mass in 28x28). `--raw` skips that, for images that already
are MNIST digits (28x28, white on black).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import __version__, compare, data, distributed, set_num_threads
from . import predictor as predictor_module
from ._files import atomic_write
from .checkpoint import load_checkpoint, load_model
from .models import MODELS, build_model
from .models import summary
from .train import (CHECKPOINT_NAME, SCHEDULES, TrainConfig, TrainingInterrupted, confusion_matrix,
                    predict_logits, train)

__all__ = ["main", "ImageError", "load_image"]

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
    """An image file that cannot be read, or holds no digit cyconv can use."""


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
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of an MPI launch (mpiexec -n N cyconv train "
                        "--distributed; needs cyconv[mpi]): --batch-size is the global batch, rank 0 prints and "
                        "writes OUT; --threads defaults to the node's cores divided by its ranks")
    data_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_train)

    def model_options(p):
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--checkpoint", metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
        which.add_argument("--model", metavar="FILE", dest="onnx_model",
                           help="an ONNX model (.onnx) with a (N, 1, 28, 28) input, e.g. from 'cyconv export' "
                                "or PyTorch (needs the onnx package: pip install 'cyconv[onnx]')")

    p = commands.add_parser("evaluate", help="test-set accuracy and confusion matrix of a model",
                            description="Evaluate a checkpoint or an ONNX model on the 10,000 MNIST test images.")
    model_options(p)
    p.add_argument("--batch-size", type=_int_at_least(1), default=1000, metavar="N", help="default: 1000")
    data_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_evaluate)

    p = commands.add_parser(
        "predict", help="classify images",
        description="Classify pictures of single digits: PNG, JPEG, BMP, GIF, TIFF or PPM of any size and "
                    "colour mode, or 2-D .npy arrays (uint8 0..255 or float 0..1). A dark digit on a light "
                    "background is inverted; the digit is cropped, scaled to fit 20x20 and centred by its "
                    "centre of mass in 28x28, as MNIST's digits were.")
    model_options(p)
    p.add_argument("--raw", action="store_true",
                   help="use the pixels as they are: each image must already be an MNIST digit, 28x28, "
                        "white on black")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="a picture or .npy file")
    threads_option(p)
    p.set_defaults(run=_cmd_predict)

    p = commands.add_parser("export", help="write a checkpoint's model as ONNX",
                            description="Write the model of a checkpoint as an ONNX model (opset 17, dynamic "
                                        "batch, input 'input', output 'logits'), for ONNX Runtime or any other "
                                        "framework (needs the onnx package: pip install 'cyconv[onnx]').")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
    p.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.set_defaults(run=_cmd_export)

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
        if _quiet_rank():
            return EXIT_INTERRUPTED
        if e.checkpoint is None:
            message = "interrupted before the first epoch ended; no checkpoint was written"
        else:
            # The whole command: a run outside the default directory needs its --out (and --data).
            message = (f"interrupted; last complete checkpoint: {e.checkpoint} (after epoch {e.epochs_done}); "
                       f"continue with: {_resume_command(e.out_dir, getattr(args, 'data', None))}")
        print(f"{PROG}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if not _quiet_rank():
            print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except (OSError, ValueError, FloatingPointError, MemoryError, _MissingDependency) as e:
        if debug:
            raise
        return _fail(e, EXIT_ERROR)


def _fail(error: BaseException, status: int) -> int:
    if _distributed_run():
        # A SetupError comes from every rank alike: rank 0 reports it and they all exit. Any other error is
        # this rank's alone, and the others would wait for it forever: end them all (MPI_Abort).
        if isinstance(error, distributed.SetupError):
            if not _quiet_rank():
                print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
            return status
        distributed.abort(_one_line(error), status)
    print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
    return status


def _distributed_run() -> bool:
    """This process is one of several ranks of a `train --distributed` run."""
    return distributed.is_initialized() and distributed.world_size() > 1


def _quiet_rank() -> bool:
    """A rank other than 0 of a distributed run: it prints nothing of its own."""
    return _distributed_run() and distributed.rank() != 0


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
    `cyconv train --resume` looks, with --data if the run was given one, and under mpiexec if it was
    --distributed."""
    words = [PROG, "train", "--resume"]
    if out_dir is not None and Path(out_dir) != _default_out():
        words += ["--out", str(out_dir)]
    if data_dir is not None:
        words += ["--data", str(data_dir)]
    if _distributed_run():  # the same launch again (any number of ranks would do)
        words = ["mpiexec", "-n", str(distributed.world_size()), *words, "--distributed"]
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
    threads = contextlib.nullcontext()
    if args.distributed:
        try:
            distributed.init(required=True)
        except ImportError as e:
            raise _MissingDependency(f"train: --distributed: {e}") from None
        if args.threads is None and not os.environ.get("OMP_NUM_THREADS", "").strip():
            threads = set_num_threads(distributed.threads_per_rank())
    if args.resume:
        # What the command line does not say comes from the run being resumed, so a plain
        # `cyconv train --resume` continues it; what it does say must agree (train() checks).
        # In a distributed run rank 0 reads it: the other ranks' machines need not see OUT.
        if args.distributed:
            saved = distributed.broadcast_json(_saved_config(out) if distributed.rank() == 0 else None)
        else:
            saved = _saved_config(out)
        config = TrainConfig.from_dict({**saved, **given})
    else:
        config = TrainConfig(**given)
    # One rank per node first: a missing MNIST is downloaded once per node, not once per rank.
    mnist = distributed.first_on_each_node(lambda: _load_mnist(args)) if args.distributed else _load_mnist(args)
    with threads:
        result = train(config, mnist, out_dir=out, resume=args.resume,
                       progress=False if args.no_progress else None, distributed=args.distributed)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _saved_config(out: Path) -> dict:
    if not (out / CHECKPOINT_NAME).is_file():
        raise FileNotFoundError(f"nothing to resume: {out / CHECKPOINT_NAME} does not exist")
    return load_checkpoint(out / CHECKPOINT_NAME).config


def _cmd_evaluate(args) -> int:
    predictor, description = _load_predictor(args)
    mnist = _load_mnist(args)
    labels = mnist.test_labels.astype(np.int64)
    predictions = predict_logits(predictor, data.to_float32(mnist.test_images), args.batch_size).argmax(axis=1)
    counts = confusion_matrix(labels, predictions, num_classes=10)
    correct = int(np.trace(counts))
    print(description)
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
    images = [load_image(path, raw=args.raw) for path in args.images]  # all read (and checked) before any output
    predictor, _ = _load_predictor(args)
    x = np.stack([image for image, _ in images])
    logits = predict_logits(predictor, x).astype(np.float64)
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


def _load_predictor(args):
    """The model to run (a checkpoint's or an ONNX file's), compiled (cyconv.compile), and one line
    that says which it is."""
    if args.onnx_model is not None:
        model = _onnx().load(args.onnx_model, final_softmax="drop")
        description = f"{args.onnx_model}: ONNX model, {len(model)} layers"
    else:
        model, ckpt = load_model(args.checkpoint)
        description = f"{ckpt.path}: {ckpt.model_name}, {ckpt.epoch} epochs"
    try:
        return predictor_module.compile(model.eval(), input_shape=(1, IMAGE_SIZE, IMAGE_SIZE)), description
    except (TypeError, ValueError) as e:
        raise ValueError(f"{args.onnx_model or args.checkpoint}: {e}") from None


def _onnx():
    from . import onnx as cyconv_onnx

    try:
        cyconv_onnx._onnx()
    except ImportError as e:
        raise _MissingDependency(str(e)) from None
    return cyconv_onnx


def _cmd_export(args) -> int:
    model, ckpt = load_model(args.checkpoint)
    _onnx().export(model, args.output, input_shape=(1, IMAGE_SIZE, IMAGE_SIZE))
    print(f"{args.output}: {ckpt.model_name} from {ckpt.path} as ONNX (opset {_onnx().OPSET})")
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


_NPY_MAGIC = b"\x93NUMPY"
# What Pillow may open: the common raster formats. Not all it knows: its EPS reader runs Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM")
# A 40-megapixel photo is more than a picture of one digit needs. The size is checked in the header, before
# any pixel is decoded (3-4 bytes a pixel for colour), so a small file that claims more costs nothing.
MAX_IMAGE_PIXELS = 40_000_000


def load_image(path, raw: bool = False) -> tuple[np.ndarray, str | None]:
    """An image file as the network's input: float32 (1, 28, 28), normalised by cyconv.data.to_float32,
    and a warning (or None).

    path: a picture (PNG, JPEG, BMP, GIF, TIFF or PPM; any size and colour mode, read by Pillow) or a 2-D
    .npy array (uint8 0..255, or float 0..1, rounded to 8 bits as MNIST's pixels are). By default the
    digit is made to look like MNIST's by cyconv.data.prepare_digit: either polarity, any size, cropped,
    scaled and centred. raw=True uses the pixels as they are, so the image must already be an MNIST digit:
    28x28, white on black; the warning says when it is mostly bright.

    Raises ImageError (a ValueError) naming the file for anything it cannot use; OSError if it cannot be
    opened.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    grey = _read_npy(path) if is_npy else _read_picture(path)
    warning = None
    if raw:
        if grey.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise ImageError(f"{path}: image is {grey.shape[1]}x{grey.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE} "
                             "(width x height); without --raw it would be scaled and centred")
        if grey.mean() > 127.5:
            warning = ("mostly bright: MNIST digits are white on black, so invert a dark-on-light image "
                       "(255 - pixels), or leave out --raw, for a meaningful prediction")
        digit = grey
    else:
        try:
            digit = data.prepare_digit(grey)
        except ValueError as e:
            raise ImageError(f"{path}: {e}") from None
    return data.to_float32(digit[None])[0], warning


def _read_npy(path: Path) -> np.ndarray:
    """A 2-D .npy of integers in 0..255, or floats in [0, 1], as uint8 (H, W)."""
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ImageError(f"{path}: cannot read as .npy: {e}") from e
    if a.ndim != 2 or a.size == 0:
        raise ImageError(f"{path}: array has shape {a.shape}, expected a 2-D (height, width) image")
    if a.dtype.kind in "iu":
        if a.min() < 0 or a.max() > 255:
            raise ImageError(f"{path}: integer pixels must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ImageError(f"{path}: float pixels must be finite and in [0, 1]")
        return np.rint(a * 255).astype(np.uint8)
    raise ImageError(f"{path}: dtype {a.dtype} is not an image; expected uint8 (0..255) or float (0..1)")


def _read_picture(path: Path) -> np.ndarray:
    """A picture file as uint8 (H, W) grey, its size checked before its pixels are decoded."""
    try:
        with warnings.catch_warnings():
            # Pillow refuses more than 2 * Image.MAX_IMAGE_PIXELS and only warns above it: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as picture:  # reads the header only
                width, height = picture.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageError(f"{path}: image is {width}x{height}, too large to read (at most "
                                     f"{MAX_IMAGE_PIXELS:,} pixels)")
                # A phone's photo is stored as the sensor saw it, with the rotation to show it in EXIF.
                ImageOps.exif_transpose(picture, in_place=True)
                return _grey(picture)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a .npy file or an image cyconv reads ({', '.join(IMAGE_FORMATS)}), "
                         "or damaged") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: image too large to read ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        # Pillow reports damaged files as any of these; the reason is in the message.
        raise ImageError(f"{path}: cannot decode the image: {_one_line(e)}") from None


def _grey(picture: Image.Image) -> np.ndarray:
    """Any Pillow mode as uint8 grey: luma 0.299 R + 0.587 G + 0.114 B (Pillow's "L"), 16-bit scaled to
    8, transparency flattened onto black or white (_flatten)."""
    if picture.mode.startswith("I"):  # 16-bit grey ("I;16" and, from older Pillows, "I"): 0..65535
        wide = np.clip(np.asarray(picture), 0, 65535).astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if picture.has_transparency_data:
        rgba = picture.convert("RGBA")
        return _flatten(np.asarray(rgba.convert("L")), np.asarray(rgba.getchannel("A")))
    return np.asarray(picture.convert("L"))


def _flatten(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite grey over white if its opaque part is mostly dark, else over black.

    A transparent canvas has no colour of its own: a paint program shows it as white (or a checkerboard)
    and its pixels often hold black. Put behind the drawing the colour the ink stands out from.
    """
    opacity = int(alpha.sum(dtype=np.int64))
    mean = int((grey.astype(np.int64) * alpha).sum()) / opacity if opacity else 0.0
    background = 255 if mean < 128 else 0
    a = alpha.astype(np.uint32)
    return ((grey * a + background * (255 - a) + 127) // 255).astype(np.uint8)
