"""The `cyconv` command: train, evaluate, predict, summary, compare, download.

    cyconv train                          LeNet-5 on MNIST, 3 epochs; checkpoint in ./runs/lenet5
    cyconv train --resume                 continue that run where it stopped
    mpiexec -n 4 cyconv train --distributed   the same on 4 processes (cyconv[mpi]); --batch-size is global
    cyconv evaluate --checkpoint runs/lenet5/checkpoint.npz
    cyconv predict --checkpoint runs/lenet5/checkpoint.npz digit.png more.npy
    cyconv train --data-dir photos        small_cnn on an image folder (one sub-folder per class)
    cyconv evaluate --checkpoint runs/small_cnn/checkpoint.npz     on the same folder's test split
    cyconv predict --checkpoint runs/small_cnn/checkpoint.npz cat.jpg
    cyconv summary --model lenet5
    cyconv compare --plot compare.png     hand-crafted features + simple classifiers vs LeNet-5
    cyconv compare --data-dir photos      the same on an image folder: ... bag of visual words vs small_cnn
    cyconv plot curves runs/lenet5 -o curves.png                   pictures (needs matplotlib)
    cyconv plot filters --checkpoint runs/lenet5/checkpoint.npz -o filters.png
    cyconv plot maps --checkpoint runs/lenet5/checkpoint.npz digit.png -o maps.png
    cyconv evaluate --checkpoint runs/lenet5/checkpoint.npz --confusion-plot cm.png
    cyconv serve --checkpoint runs/lenet5/checkpoint.npz            http://127.0.0.1:8000/ (cyconv[serve])
    cyconv download --data DIR

Errors a user can cause (a missing file, a bad option, a corrupt checkpoint or image, MNIST not found)
print one line, "cyconv: error: ...", to stderr and exit with 2 for a bad command line, 1 otherwise.
Ctrl-C exits with 130. Set CYCONV_DEBUG=1 to get the traceback instead of the one line.

Images for `predict` may be pictures of any size and colour mode (PNG, JPEG, BMP, GIF, TIFF, PPM, read
by Pillow) or 2-D .npy arrays, a dark digit on a light background or a light one on dark: `load_image`
(cyconv.data.images.load_digit) turns each into an MNIST digit with cyconv.data.prepare_digit (inverted if
need be, cropped to the ink, scaled to fit 20x20, centred by its centre of mass in 28x28). `--raw` skips
that, for images that already are MNIST digits (28x28, white on black). A model trained on an image folder
(`train --data-dir`) takes pictures as the folder's were read instead (cyconv.data.read_image: resized to
its image size, grey or RGB) and normalised with its training split's mean and std, which the checkpoint
keeps with the class names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from .. import __version__, data
from .._files import atomic_write
from ..data import ImageError
from ..data.images import load_digit as load_image  # its name here since before data/images.py
from ..deploy import predictor as predictor_module
from ..kernels.isa import get_isa
from ..kernels.threads import set_num_threads
from ..layers import graph
from ..layers.functional import get_conv_algorithm
from ..layers.models import MODELS, build_model, conv_algorithms, default_input, summary
from ..training import distributed
from ..training.checkpoint import load_model
from ..training.optim import OPTIMIZERS
from ..training.train import (DEFAULT_LR, FOLDER_IMAGE_SIZE, FOLDER_RECIPE, RESNET20_FOLDER_RECIPE,
                              SCHEDULES, TrainConfig, TrainingInterrupted, confusion_matrix, predict_logits,
                              run_config, saved_run, train)
from . import compare

__all__ = ["main", "ImageError", "load_image"]

PROG = "cyconv"
ENV_NO_DOWNLOAD = "CYCONV_NO_DOWNLOAD"  # "1": never download MNIST (as --no-download)
ENV_DEBUG = "CYCONV_DEBUG"
EXIT_USAGE, EXIT_ERROR, EXIT_INTERRUPTED = 2, 1, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe's reader left
IMAGE_SIZE = 28


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _MissingDependency(Exception):
    """An optional package a command needs is not installed: one line, exit status 1."""


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

    def folder_options(p, training=False, augment=True):
        p.add_argument("--data-dir", metavar="DIR",
                       help="an image folder: one sub-folder of PNG, JPEG or BMP pictures per class"
                            + (" (instead of MNIST)" if training else
                               " (default: the one the checkpoint was trained on)"))
        if not training:
            return
        p.add_argument("--image-size", type=_int_at_least(1), metavar="N",
                       help=f"--data-dir: resize the pictures to N x N (default: {data.DEFAULT_IMAGE_SIZE}"
                            + "".join(f"; {s} for {m}" for m, s in FOLDER_IMAGE_SIZE.items())
                            + f", at most {data.MAX_IMAGE_SIDE})")
        p.add_argument("--channels", type=int, choices=(1, 3),
                       help="--data-dir: 1 reads the pictures as grey, 3 as RGB (default: 3)")
        p.add_argument("--test-fraction", type=_float_in(0, 1, low_open=True, high_open=True), metavar="F",
                       help=f"--data-dir: the fraction of each class held out for testing (default: "
                            f"{data.DEFAULT_TEST_FRACTION})")
        p.add_argument("--split-seed", type=_int_at_least(0), metavar="N",
                       help="--data-dir: the seed of the test split, apart from --seed (default: 0)")
        if augment:
            p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                           help="--data-dir: flip and crop every training batch at random (default: on)")

    def threads_option(p):
        p.add_argument("--threads", type=_int_at_least(1), metavar="N",
                       help="cyconv's OpenMP threads, which run the compiled kernels (default: $OMP_NUM_THREADS, "
                            "else the cores this process may use); the BLAS they call stays single-threaded "
                            "inside them")

    p = commands.add_parser(
        "train", help="train a model on MNIST or an image folder",
        description="Train on MNIST, or on an image folder (--data-dir: one sub-folder of pictures per class), "
                    "with SGD (or --optimizer adam/adamw), evaluating on the test set and saving a checkpoint (OUT/checkpoint.npz) and "
                    "metrics (OUT/metrics.json) after every epoch. With --resume, options not given are taken "
                    "from the checkpoint.")
    p.add_argument("--model", choices=MODELS,
                   help=f"network (default: {d.model}; with --data-dir {FOLDER_RECIPE['model']})")
    p.add_argument("--hidden", type=_int_at_least(1), metavar="N", help=f"mlp hidden units (default: {d.hidden})")
    p.add_argument("--width-mult", type=_float_in(0, low_open=True), metavar="W",
                   help=f"mobilenet_v2's width multiplier (default: {d.width_mult})")
    r20 = RESNET20_FOLDER_RECIPE
    p.add_argument("--epochs", type=_int_at_least(1), metavar="N",
                   help=f"default: {d.epochs}; with --data-dir {FOLDER_RECIPE['epochs']} ({r20['epochs']} for resnet20)")
    p.add_argument("--batch-size", type=_int_at_least(1), metavar="N",
                   help=f"default: {d.batch_size}; with --data-dir {FOLDER_RECIPE['batch_size']} ({r20['batch_size']} "
                        "for resnet20)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {d.optimizer} (with momentum)")
    p.add_argument("--lr", type=_float_in(0, low_open=True), metavar="LR",
                   help=f"base learning rate (default: {DEFAULT_LR['sgd']} for sgd, {FOLDER_RECIPE['lr']} with "
                        f"--data-dir ({r20['lr']} for resnet20); {DEFAULT_LR['adam']} for adam and adamw)")
    p.add_argument("--momentum", type=_float_in(0, 1, high_open=True), metavar="M",
                   help=f"SGD's momentum (default: {d.momentum})")
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
    folder_options(p, training=True)
    threads_option(p)
    p.set_defaults(run=_cmd_train)

    plot_install = "pip install 'cyconv[plot]'"

    def model_options(p):
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--checkpoint", metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
        which.add_argument("--model", metavar="FILE", dest="onnx_model",
                           help="an ONNX model (.onnx) of MNIST digits, with a (N, 1, 28, 28) input, e.g. from "
                                "'cyconv export' or PyTorch (needs the onnx package: pip install 'cyconv[onnx]')")

    p = commands.add_parser("evaluate", help="test-set accuracy and confusion matrix of a model",
                            description="Evaluate a checkpoint or an ONNX model on the 10,000 MNIST test images, "
                                        "or a checkpoint trained on an image folder on that folder's test split.")
    model_options(p)
    p.add_argument("--batch-size", type=_int_at_least(1), default=1000, metavar="N", help="default: 1000")
    p.add_argument("--confusion-plot", metavar="FILE",
                   help="also draw the confusion matrix, class names on the axes, to FILE (e.g. a .png; "
                        f"needs matplotlib: {plot_install})")
    data_options(p)
    folder_options(p)
    threads_option(p)
    p.set_defaults(run=_cmd_evaluate)

    p = commands.add_parser(
        "predict", help="classify images",
        description="Classify pictures of single digits: PNG, JPEG, BMP, GIF, TIFF or PPM of any size and "
                    "colour mode, or 2-D .npy arrays (uint8 0..255 or float 0..1). A dark digit on a light "
                    "background is inverted; the digit is cropped, scaled to fit 20x20 and centred by its "
                    "centre of mass in 28x28, as MNIST's digits were. With a checkpoint trained on an image "
                    "folder, pictures are resized and normalised as the folder's were, and classified by its "
                    "class names.")
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
    p.add_argument("--width-mult", type=_float_in(0, low_open=True), default=d.width_mult, metavar="W",
                   help=f"mobilenet_v2's width multiplier (default: {d.width_mult})")
    p.add_argument("--num-classes", type=_int_at_least(1), default=10, metavar="N",
                   help="outputs of the last layer (default: 10; torchvision's resnet18 and mobilenet_v2 have 1000)")
    p.set_defaults(run=_cmd_summary)

    p = commands.add_parser(
        "compare", help="hand-crafted features + simple classifiers vs a CNN",
        description="On MNIST: train softmax regression on pixels, an intensity histogram and HOG, the two-layer "
                    "MLP on pixels, and LeNet-5 on the images. On an image folder (--data-dir): softmax "
                    "regression on pixels, a colour histogram (256 bins per channel), HOG and a bag of visual "
                    "words, the MLP on pixels, and small_cnn. All with the recipe of 'cyconv train'; print "
                    "each one's test accuracy, training time and feature-extraction time.")
    p.add_argument("--epochs", type=_int_at_least(1), metavar="N",
                   help=f"epochs for every model (default: {compare.DEFAULT_EPOCHS} for the feature classifiers, "
                        f"{compare.DEFAULT_CNN_EPOCHS} for LeNet-5; with --data-dir {compare.FOLDER_EPOCHS} and "
                        f"{FOLDER_RECIPE['epochs']})")
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N", help="default: 0")
    p.add_argument("--limit", type=_int_at_least(1), metavar="N", help="use the first N training images only")
    p.add_argument("--test-limit", type=_int_at_least(1), metavar="N", help="use the first N test images only")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--plot", metavar="FILE", help="draw test accuracy against training time to FILE (e.g. a .png; "
                   f"needs matplotlib: {plot_install})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)")
    data_options(p)
    folder_options(p, training=True, augment=False)
    threads_option(p)
    p.set_defaults(run=_cmd_compare)

    p = commands.add_parser("plot", help="draw training curves, filters or feature maps",
                            description=f"Draw a picture (needs matplotlib: {plot_install}); the format is the "
                                        "output name's ending (.png, .pdf, .svg, ...).")
    pictures = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    def picture(name, help, description, run, *, checkpoint):
        p = pictures.add_parser(name, help=help, description=description)
        if checkpoint:
            p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint.npz from 'cyconv train'")
        p.add_argument("-o", "--output", required=True, metavar="FILE", help="the picture to write, e.g. a .png")
        p.set_defaults(run=run)
        return p

    p = picture("curves", "loss and accuracy per epoch of a training run",
                "Draw the training loss and the training and test accuracy per epoch of a run of 'cyconv train', "
                "from its metrics.json.", _cmd_plot_curves, checkpoint=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output directory (--out of 'cyconv train'), or its "
                   "metrics.json")
    picture("filters", "a model's first-layer filters",
            "Draw the filters of a checkpoint's first convolution as a grid of small images (in colour for a model "
            "of RGB pictures).", _cmd_plot_filters, checkpoint=True)
    p = picture("maps", "a model's feature maps for one image",
                "Draw what each convolution of a checkpoint's model computes for one picture, prepared as "
                "'cyconv predict' prepares it.", _cmd_plot_maps, checkpoint=True)
    p.add_argument("image", metavar="IMAGE", help="a picture (or, for MNIST models, a .npy file)")
    p.add_argument("--raw", action="store_true", help="MNIST models: use the pixels as they are, as "
                   "'cyconv predict --raw' does")
    threads_option(p)

    p = commands.add_parser(
        "serve", help="serve a model over HTTP, with a page to try it",
        description="Serve a checkpoint's or an ONNX file's model over HTTP (needs the serve extra: pip install "
                    "'cyconv[serve]'): POST /predict takes a picture or JSON pixels and answers the class and "
                    "every class's probability; GET / is a page to draw a digit (or drop a photo, for an "
                    "image-folder model) and see the prediction; /health, /metrics (Prometheus) and /docs "
                    "(OpenAPI). Requests that arrive together run as one batch. SIGTERM or Ctrl-C stops it "
                    "after answering the requests in flight.")
    model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                   "machine only)")
    p.add_argument("--port", type=_int_at_least(0), default=8000, metavar="N", help="default: 8000")
    p.add_argument("--max-batch", type=_int_at_least(1), default=64, metavar="N",
                   help="most requests run as one model call (default: 64; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=_float_in(0, 1000), default=2.0, metavar="MS",
                   help="longest a request waits for others to share its model call (default: 2)")
    p.add_argument("--max-queue", type=_int_at_least(1), default=256, metavar="N",
                   help="requests that may wait for the model; past it, 503 with Retry-After (default: 256)")
    p.add_argument("--max-body-mb", type=_float_in(0, low_open=True), default=10.0, metavar="MB",
                   help="largest request body, in MB; a larger one gets 413 (default: 10)")
    threads_option(p)
    p.set_defaults(run=_cmd_serve)

    p = commands.add_parser("download", help="fetch MNIST",
                            description="Download the missing MNIST files (MD5-checked) and verify all four.")
    p.add_argument("--data", metavar="DIR", help="target directory (default: $CYCONV_DATA, else ~/.cache/cyconv/mnist)")
    p.set_defaults(run=_cmd_download)
    return parser


# ---------------------------------------------------------------------------------------------------------
# Entry point


def command() -> int:
    """The `cyconv` command (and `python -m cyconv`): main() on sys.argv, in a process of its own, so it
    may tune that process's malloc to keep freed arrays for reuse (cyconv._malloc; import cyconv does not)."""
    from ..kernels import malloc as _malloc

    if sys.argv[1:2] == ["serve"] and "OMP_WAIT_POLICY" not in os.environ:
        # A server shares its cores with its clients and its own event loop: OpenMP's idle threads must sleep
        # rather than spin for milliseconds after every batch (measured: benchmarks/RESULTS.md, serve). OpenMP
        # reads the policy once, when cyconv's kernels are loaded (already done here), so the command starts
        # itself again, as the same process (exec), with the policy set; a user's own setting is kept.
        os.environ["OMP_WAIT_POLICY"] = "passive"
        os.execv(sys.executable, [sys.executable, "-m", "cyconv", *sys.argv[1:]])
    _malloc.keep_freed_memory()
    return main()


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"no command given; choose one of train, evaluate, predict, export, summary, "
                             f"compare, plot, serve, download (see '{PROG} --help')")
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0

    debug = os.environ.get(ENV_DEBUG, "") not in ("", "0")
    try:
        with _threads(getattr(args, "threads", None)):
            status = args.run(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at exit
        return status
    except TrainingInterrupted as e:
        if e.checkpoint is None:
            message = "interrupted before the first epoch ended; no checkpoint was written"
        else:
            # The whole command: a run outside the default directory needs its --out (and --data).
            message = (f"interrupted; last complete checkpoint: {e.checkpoint} (after epoch {e.epochs_done}); "
                       f"continue with: {_resume_command(e.out_dir, getattr(args, 'data', None))}")
        return _interrupted(message)
    except KeyboardInterrupt:
        return _interrupted("interrupted")
    except UsageError as e:
        return _fail(e, EXIT_USAGE)
    except BrokenPipeError:
        # The reader of stdout went away (`cyconv evaluate ... | head`): stop quietly, as Unix tools do, and
        # point stdout at /dev/null so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):  # not a real file (a test's capture): nothing to flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (OSError, ValueError, FloatingPointError, MemoryError, _MissingDependency, distributed.RankFailed) as e:
        if debug:
            raise
        return _fail(e, EXIT_ERROR)


def _interrupted(message: str) -> int:
    """Ctrl-C: say so, and exit with 130. A rank of a distributed run ends every rank: the Ctrl-C may have
    reached this one alone (a terminal of its own, `kill -INT`), and the others would wait for it in their
    next collective call until its timeout."""
    if not _distributed_run():
        print(f"{PROG}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _quiet_rank():
        distributed.abort("interrupted; ending every rank", EXIT_INTERRUPTED)
    print(f"{PROG}: {message}", file=sys.stderr)  # rank 0 knows what the checkpoint holds
    distributed.abort(None, EXIT_INTERRUPTED)


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


# The options that only an image folder takes (besides --augment, a TrainConfig field).
_FOLDER_OPTIONS = ("image_size", "channels", "test_fraction", "split_seed")


def _cmd_train(args) -> int:
    given = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__
             if getattr(args, name, None) is not None}
    if args.data is not None and args.data_dir is not None:
        raise UsageError("train: --data is the MNIST directory, --data-dir an image folder: give one "
                         "(see 'cyconv train --help')")
    model = given.get("model", FOLDER_RECIPE["model"] if args.data_dir is not None else TrainConfig.model)
    if "hidden" in given and model != "mlp":
        raise UsageError("train: --hidden applies to --model mlp only (see 'cyconv train --help')")
    if "momentum" in given and given.get("optimizer", "sgd") != "sgd":
        raise UsageError("train: --momentum applies to --optimizer sgd only (Adam's moments have betas of "
                         "their own; see 'cyconv train --help')")
    out = Path(args.out) if args.out else _default_out(model)
    threads = contextlib.nullcontext()
    if args.distributed:
        try:
            distributed.init(required=True)
        except ImportError as e:
            raise _MissingDependency(f"train: --distributed: {e}") from None
        if args.threads is None and not os.environ.get("OMP_NUM_THREADS", "").strip():
            threads = set_num_threads(distributed.threads_per_rank())
    saved = spec = None
    if args.resume:  # a plain `cyconv train --resume` continues the run (run_config)
        # In a distributed run rank 0 reads it: the other ranks' machines need not see OUT.
        if args.distributed:
            saved = distributed.broadcast_json(saved_run(out) if distributed.rank() == 0 else None)
        else:
            saved = saved_run(out)
        spec = None if saved["data"] is None else data.FolderSpec.from_dict(saved["data"])
    config = run_config(given, image_folder=args.data_dir is not None, saved=saved)
    if "width_mult" in given and config.model != "mobilenet_v2":
        raise UsageError("train: --width-mult applies to --model mobilenet_v2 only (see 'cyconv train --help')")
    if args.data_dir is None and spec is None:
        stray = [name for name in _FOLDER_OPTIONS + ("augment",) if getattr(args, name) is not None]
        if stray:
            raise UsageError(f"train: --{stray[0].replace('_', '-')} applies to image folders (--data-dir) "
                             "only (see 'cyconv train --help')")
        # One rank per node first: a missing MNIST is downloaded once per node, not once per rank.
        dataset = (distributed.first_on_each_node(lambda: _load_mnist(args)) if args.distributed
                   else _load_mnist(args))
    else:
        options = {name: getattr(args, name) for name in _FOLDER_OPTIONS}
        if options["image_size"] is None and spec is None:  # a new run: the model's own image size, if it has one
            options["image_size"] = FOLDER_IMAGE_SIZE.get(config.model)
        dataset = _folder_split(args.data_dir, spec, **options)
    with threads:
        result = train(config, dataset, out_dir=out, resume=args.resume,
                       progress=False if args.no_progress else None, distributed=args.distributed)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _folder_split(root, spec, image_size=None, channels=None, test_fraction=None, split_seed=None):
    """The image folder's split for a run: from the command line's values, else those of `spec` (the
    checkpoint's FolderSpec, None for a new run), else the defaults. Notes the files it ignored."""
    if root is None and (spec is None or spec.root is None):
        raise UsageError("the image folder is not recorded in the checkpoint; give --data-dir")

    def pick(value, saved, default):
        return value if value is not None else saved if spec is not None else default

    root = pick(root, spec and spec.root, None)
    folder = data.ImageFolder(root, size=pick(image_size, spec and spec.size[0], data.DEFAULT_IMAGE_SIZE),
                              channels=pick(channels, spec and spec.channels, 3))
    if folder.ignored:
        print(f"{PROG}: note: ignored {len(folder.ignored)} files that are not {', '.join(data.FOLDER_EXTENSIONS)} "
              f"pictures, e.g. {folder.ignored[0]}", file=sys.stderr)
    return folder.split(pick(test_fraction, spec and spec.test_fraction, data.DEFAULT_TEST_FRACTION),
                        pick(split_seed, spec and spec.seed, 0))


def _test_set(args, ckpt):
    """(normalised test images, labels, class names) to evaluate the checkpoint on: MNIST's test set, or
    the test split of the image folder it was trained on (ckpt None: an ONNX model, MNIST's)."""
    spec = None if ckpt is None else ckpt.data
    if spec is None:
        if args.data_dir is not None:
            model = ("this model was trained on MNIST" if ckpt is not None
                     else "an ONNX model records no classes or normalisation")
            raise UsageError(f"evaluate: --data-dir is for a checkpoint trained on an image folder; {model} "
                             "(see 'cyconv evaluate --help')")
        mnist = _load_mnist(args)
        return data.to_float32(mnist.test_images), mnist.test_labels.astype(np.int64), None
    if args.data is not None:
        raise UsageError(f"evaluate: {ckpt.path} was trained on an image folder, not MNIST: give --data-dir, "
                         "or nothing for the folder it was trained on")
    split = _folder_split(args.data_dir, spec)
    if split.classes != spec.classes:
        raise ValueError(f"{split.spec.root}: holds the classes {list(split.classes)}, the model was trained on "
                         f"{list(spec.classes)}")
    if len(split.test_labels) != ckpt.info.get("n_test"):
        print(f"{PROG}: warning: {split.spec.root} has changed since training: its test split has "
              f"{len(split.test_labels)} images, the model was tested on {ckpt.info.get('n_test')}; some "
              "of these may be images it was trained on", file=sys.stderr)
    return data.normalize(split.test_images, spec.mean, spec.std), split.test_labels, list(spec.classes)


def _cmd_evaluate(args) -> int:
    plots = None if args.confusion_plot is None else _picture_output("evaluate", "--confusion-plot",
                                                                      args.confusion_plot)
    model, description, ckpt = _load_model(args)
    x, labels, names = _test_set(args, ckpt)
    predictor = _compiled(model, x.shape[1:], args)
    predictions = predict_logits(predictor, x, args.batch_size).argmax(axis=1)
    counts = confusion_matrix(labels, predictions, num_classes=10 if names is None else len(names))
    correct = int(np.trace(counts))
    print(description)
    print(f"test accuracy {100 * correct / len(labels):.2f}% ({correct}/{len(labels)})")
    print()
    print(_confusion_table(counts, names))
    if plots is not None:
        plots.confusion(counts, [str(c) for c in range(10)] if names is None else names, args.confusion_plot,
                        title=description)
        print(f"confusion plot: {args.confusion_plot}")
    return 0


def _confusion_table(counts: np.ndarray, names: list[str] | None = None) -> str:
    """Rows are the true classes (digits, or `names`), columns the predicted ones, then each row's recall."""
    k = counts.shape[0]
    what, align = ("digit", ">") if names is None else ("class", "<")  # digits right-aligned, names left
    names = [str(c) for c in range(k)] if names is None else names
    width = max(5, len(str(int(counts.max()))) + 1, *(len(n) + 1 for n in names))
    first = max(4, *(len(n) for n in names))
    lines = [f"confusion matrix (rows: true {what}, columns: predicted {what})",
             f"{'true':<{first}}" + "".join(f"{n:>{width}}" for n in names) + "   recall"]
    for t in range(k):
        total = int(counts[t].sum())
        recall = f"{100 * counts[t, t] / total:7.2f}%" if total else "      -"
        lines.append(f"{names[t]:{align}{first}}" + "".join(f"{int(v):>{width}}" for v in counts[t]) + " " + recall)
    return "\n".join(lines)


def _cmd_predict(args) -> int:
    model, _, ckpt = _load_model(args)
    spec = None if ckpt is None else ckpt.data
    if spec is not None and args.raw:
        raise UsageError("predict: --raw is for MNIST digits; this model was trained on an image folder "
                         "(see 'cyconv predict --help')")
    # All read (and checked) before any output.
    images = [load_image(path, raw=args.raw) if spec is None else (_folder_image(path, spec), None)
              for path in args.images]
    x = np.stack([image for image, _ in images])
    logits = predict_logits(_compiled(model, x.shape[1:], args), x).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for path, (_, warning) in zip(args.images, images):
        if warning:
            print(f"{PROG}: warning: {path}: {warning}", file=sys.stderr)
    print(_prediction_table(args.images, probs, None if spec is None else list(spec.classes)))
    return 0


def _prediction_table(paths: list[str], probs: np.ndarray, names: list[str] | None) -> str:
    """One row per image: its class (a digit, or a name) and the probability of each class (of the most
    likely one only, beyond _MAX_COLUMNS classes)."""
    name_width = max(5, *(len(p) for p in paths))
    if names is None:
        lines = [f"{'image':<{name_width}}  class  " + "  ".join(f"{f'p{c}':>6}" for c in range(probs.shape[1]))]
        lines += [f"{path:<{name_width}}  {int(p.argmax()):>5}  " + "  ".join(f"{v:6.4f}" for v in p)
                  for path, p in zip(paths, probs)]
        return "\n".join(lines)
    class_width = max(5, *(len(n) for n in names))
    columns = names if len(names) <= _MAX_COLUMNS else ["probability"]
    widths = [max(6, len(c)) for c in columns]
    lines = [f"{'image':<{name_width}}  {'class':<{class_width}}  " + "  ".join(
        f"{c:>{w}}" for c, w in zip(columns, widths))]
    for path, p in zip(paths, probs):
        values = p if len(names) <= _MAX_COLUMNS else [p.max()]
        lines.append(f"{path:<{name_width}}  {names[int(p.argmax())]:<{class_width}}  " + "  ".join(
            f"{v:{w}.4f}" for v, w in zip(values, widths)))
    return "\n".join(lines)


_MAX_COLUMNS = 10


def _folder_image(path, spec) -> np.ndarray:
    """A picture as the network's input for a model trained on an image folder: read as the folder's
    pictures were (cyconv.data.read_image), normalised as they were, float32 (C, H, W)."""
    return data.normalize(data.read_image(path, spec.size, spec.channels)[None], spec.mean, spec.std)[0]


def _load_model(args):
    """The model to run (a checkpoint's or an ONNX file's) in eval mode, one line that says which it is,
    and the Checkpoint (None for an ONNX model)."""
    if args.onnx_model is not None:
        model = _onnx().load(args.onnx_model, final_softmax="drop")
        layers = len(graph.trace(model).nodes)
        return model, f"{args.onnx_model}: ONNX model, {layers} layers", None
    model, ckpt = load_model(args.checkpoint)
    return model, f"{ckpt.path}: {ckpt.model_name}, {ckpt.epoch} epochs", ckpt


def _compiled(model, input_shape, args):
    """The model's inference pass compiled (cyconv.compile) for images of input_shape (C, H, W)."""
    try:
        return predictor_module.compile(model.eval(), input_shape=tuple(input_shape))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{args.onnx_model or args.checkpoint}: {e}") from None


def _onnx():
    from ..deploy import onnx as cyconv_onnx

    try:
        cyconv_onnx._onnx()
    except ImportError as e:
        raise _MissingDependency(str(e)) from None
    return cyconv_onnx


def _cmd_export(args) -> int:
    model, ckpt = load_model(args.checkpoint)
    spec = ckpt.data
    _onnx().export(model, args.output,
                   input_shape=(1, IMAGE_SIZE, IMAGE_SIZE) if spec is None else (spec.channels, *spec.size))
    print(f"{args.output}: {ckpt.model_name} from {ckpt.path} as ONNX (opset {_onnx().OPSET})")
    return 0


def _cmd_summary(args) -> int:
    channels, size = default_input(args.model)
    model = build_model(args.model, hidden=args.hidden, width_mult=args.width_mult, num_classes=args.num_classes,
                        rng=np.random.default_rng(0))
    print(summary(model, input_shape=(channels, size, size)))
    rows = conv_algorithms(model, (channels, size, size))
    if rows:  # which convolution algorithm each layer runs here (cyconv.functional.conv_algorithm)
        measured = ", measured on this machine" if get_conv_algorithm() == "measure" else ""
        print(f"Convolution algorithms ({get_isa()}{measured}; training at batch 64 / compiled): "
              + ", ".join(f"{name} {a}" + ("" if a == b else f" / {b}") for name, a, b in rows))
    return 0


def _cmd_compare(args) -> int:
    # Everything that can fail fast does so before minutes of training.
    plots = None if args.plot is None else _picture_output("compare", "--plot", args.plot)
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(2, "No such directory", str(Path(args.json).resolve().parent))
    folder_options = {name: getattr(args, name) for name in _FOLDER_OPTIONS}
    if args.data_dir is not None:
        if args.data is not None:
            raise UsageError("compare: --data is the MNIST directory, --data-dir an image folder: give one "
                             "(see 'cyconv compare --help')")
        dataset = _folder_split(args.data_dir, None, **folder_options)
    else:
        stray = [name for name, value in folder_options.items() if value is not None]
        if stray:
            raise UsageError(f"compare: --{stray[0].replace('_', '-')} applies to image folders (--data-dir) "
                             "only (see 'cyconv compare --help')")
        dataset = _load_mnist(args)
    rows = compare.compare(dataset, epochs=args.epochs, cnn_epochs=args.epochs, limit=args.limit,
                           test_limit=args.test_limit, seed=args.seed,
                           progress=False if args.no_progress else None,
                           log=lambda line: print(line, file=sys.stderr))
    print(compare.format_table(rows))
    if args.json is not None:
        text = json.dumps(compare.as_dicts(rows), indent=2) + "\n"
        atomic_write(Path(args.json), lambda f: f.write(text.encode()))
    if plots is not None:
        plots.comparison(rows, args.plot, compare.plot_title(dataset))
        print(f"plot: {args.plot}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# Pictures


def _picture_output(command: str, option: str, path):
    """cyconv.plots, after checking what can be checked before any work: matplotlib is installed, it
    writes the format the name of `path` ends in, and the directory exists."""
    from . import plots

    try:
        plots.check_path(path)
    except ImportError:
        raise _MissingDependency(f"{command}: {option} needs matplotlib; install it with "
                                 f"{plots.INSTALL_HINT}") from None
    except ValueError as e:
        raise UsageError(f"{command}: {option} {e} (see '{PROG} {command} --help')") from None
    return plots


def _cmd_plot_curves(args) -> int:
    plots = _picture_output("plot curves", "--output", args.output)
    metrics = plots.read_metrics(args.run_dir)
    run = Path(args.run_dir).resolve()
    plots.curves(metrics, args.output, title=(run.parent if run.is_file() else run).name)
    print(f"{args.output}: loss and accuracy over {len(metrics)} epochs")
    return 0


def _cmd_plot_filters(args) -> int:
    plots = _picture_output("plot filters", "--output", args.output)
    model, ckpt = load_model(args.checkpoint)
    try:
        plots.filters(model, args.output)
    except ValueError as e:
        raise ValueError(f"{ckpt.path}: {ckpt.model_name}: {e}") from None
    print(f"{args.output}: the first-layer filters of {ckpt.model_name} from {ckpt.path}")
    return 0


def _cmd_plot_maps(args) -> int:
    plots = _picture_output("plot maps", "--output", args.output)
    model, ckpt = load_model(args.checkpoint)
    spec = ckpt.data
    if spec is not None and args.raw:
        raise UsageError("plot maps: --raw is for MNIST digits; this model was trained on an image folder "
                         "(see 'cyconv plot maps --help')")
    # The picture as `cyconv predict` prepares it for this model.
    image, warning = load_image(args.image, raw=args.raw) if spec is None else (_folder_image(args.image, spec), None)
    if warning:
        print(f"{PROG}: warning: {args.image}: {warning}", file=sys.stderr)
    try:
        plots.feature_maps(model, image, args.output, title=f"{ckpt.model_name} on {Path(args.image).name}")
    except ValueError as e:
        raise ValueError(f"{ckpt.path}: {ckpt.model_name}: {e}") from None
    print(f"{args.output}: the feature maps of {ckpt.model_name} for {args.image}")
    return 0


def _cmd_serve(args) -> int:
    from ..deploy import serve

    missing = serve.missing_dependency()
    if missing:
        raise _MissingDependency(missing)
    if args.onnx_model is not None:
        _onnx()
        model = serve.ServedModel.from_onnx(args.onnx_model, batch_size=args.max_batch)
    else:
        model = serve.ServedModel.from_checkpoint(args.checkpoint, batch_size=args.max_batch)
    app = serve.create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                           max_queue=args.max_queue, max_body_mb=args.max_body_mb)
    if args.host not in serve.LOCAL_HOSTS:
        print(f"{PROG}: warning: serving on {args.host}, not only this machine: anyone who can reach it can use "
              "the model (there is no authentication)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{model.description}; serving on http://{host}:{args.port}/ (Ctrl-C stops)", flush=True)
    return serve.run(app, host=args.host, port=args.port)


def _cmd_download(args) -> int:
    root = data.download_mnist(args.data)
    mnist = data.load_mnist(root)
    print(f"MNIST: {len(mnist.train_labels)} training and {len(mnist.test_labels)} test images in {root} "
          "(MD5-verified)")
    return 0
