"""Checkpoints: a model, its optimizer and the training run's bookkeeping in one .npz file.

A checkpoint holds numbers and strings only, never a pickle: it is written with `np.savez` and read with
`np.load(..., allow_pickle=False)`, so opening one cannot run code. Its keys:

    format             int, CHECKPOINT_FORMAT (the layout version)
    model_name         str, a name in cyconv.models.MODELS
    epoch              int, the number of completed epochs
    config             str, JSON: the training configuration (at least "model", "hidden" for mlp and
                       "width_mult" for mobilenet_v2: with "data" the arguments the model is built with)
    metrics            str, JSON: the list of per-epoch metrics so far
    info               str, JSON: what the run does not depend on (cyconv version, threads, n_train)
    data               str, JSON: null for MNIST; for an image folder its cyconv.data.FolderSpec (root,
                       image size, channels, class names, split, normalisation), which evaluation and
                       prediction need. Optional: a checkpoint without it is an MNIST one.
    model/<name>       each array of model.state_dict()
    optimizer/<name>   each value of optimizer.state_dict(), as an array (0-d for scalars)

Files are written atomically (a temp file in the same directory, fsync, os.replace), so a crash during a
save leaves the previous checkpoint as it was, and a Ctrl-C during a save comes out once the new one is in
place. `load_checkpoint` checks everything it reads and reports any problem as one CheckpointError that
names the file.

Left out on purpose: keeping several checkpoints, compression (LeNet-5 with its momentum buffers
is ~10 MB, mostly incompressible float noise). An archive with compressed members is refused, so that
reading a file never costs much more memory than the file's size.
"""

from __future__ import annotations

import json
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_write
from ..data import FolderSpec
from ..layers.models import MODELS, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "build_model_for",
]

CHECKPOINT_FORMAT = 1

_MODEL_PREFIX = "model/"
_OPTIMIZER_PREFIX = "optimizer/"
_JSON_KEYS = ("config", "metrics", "info")
_REQUIRED = ("format", "model_name", "epoch") + _JSON_KEYS


class CheckpointError(ValueError):
    """A checkpoint file that is not one, is damaged, or does not fit the model it names."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` read: plain data; `load_model` turns it into a model."""

    path: Path
    model_name: str
    epoch: int
    config: dict
    metrics: list
    info: dict
    model_state: dict[str, np.ndarray] = field(repr=False)
    optimizer_state: dict[str, np.ndarray] = field(repr=False)
    data: FolderSpec | None = None  # None: trained on MNIST


# ---------------------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(path, *, model, optimizer, model_name: str, epoch: int, config: dict,
                    metrics: list, info: dict | None = None, data: dict | None = None) -> Path:
    """Write model and optimizer state and the run's bookkeeping to `path` (.npz), atomically.
    data: the FolderSpec.to_dict() of an image folder's split, None for MNIST."""
    if model_name not in MODELS:
        raise ValueError(f"save_checkpoint(): model_name must be one of {', '.join(MODELS)}, got {model_name!r}")
    arrays = {
        "format": np.array(CHECKPOINT_FORMAT, np.int64),
        "model_name": np.array(model_name),
        "epoch": np.array(epoch, np.int64),
        "config": np.array(json.dumps(config, sort_keys=True)),
        "metrics": np.array(json.dumps(metrics)),
        "info": np.array(json.dumps(info or {}, sort_keys=True)),
        "data": np.array(json.dumps(data, sort_keys=True)),
    }
    for name, value in model.state_dict().items():
        arrays[_MODEL_PREFIX + name] = np.asarray(value)
    for name, value in optimizer.state_dict().items():
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":  # an object array would need a pickle to be written
            raise TypeError(f"save_checkpoint(): optimizer state {name!r} is not numeric ({value.dtype})")
        arrays[_OPTIMIZER_PREFIX + name] = value
    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


# ---------------------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint written by `save_checkpoint`.

    Raises FileNotFoundError if there is no such file, and CheckpointError (naming the file) if it is a
    directory, is not an uncompressed .npz archive, is truncated or damaged, holds a pickled object array,
    announces arrays larger than the file, misses a key, or holds values of the wrong kind.
    """
    path = Path(path)
    if path.is_dir():  # "no such checkpoint file" would send the user looking for a file that is there
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    arrays = _read_npz(path)
    missing = [key for key in _REQUIRED if key not in arrays]
    if missing:
        raise CheckpointError(f"{path}: not a cyconv checkpoint: missing {', '.join(missing)}")

    fmt = _integer(arrays, "format", path)
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt}, this cyconv reads format {CHECKPOINT_FORMAT}")
    model_name = _string(arrays, "model_name", path)
    if model_name not in MODELS:
        raise CheckpointError(f"{path}: unknown model {model_name!r}, expected one of {', '.join(MODELS)}")
    epoch = _integer(arrays, "epoch", path)
    if epoch < 0:
        raise CheckpointError(f"{path}: epoch must be >= 0, got {epoch}")
    config, metrics, info = (_json(arrays, key, path) for key in _JSON_KEYS)
    if not isinstance(config, dict) or config.get("model") != model_name:
        raise CheckpointError(f"{path}: config does not describe the {model_name} the checkpoint holds")
    if not isinstance(metrics, list) or not isinstance(info, dict):
        raise CheckpointError(f"{path}: metrics must be a JSON list and info a JSON object")

    data = _json(arrays, "data", path) if "data" in arrays else None
    if data is not None:
        try:
            data = FolderSpec.from_dict(data)
        except ValueError as e:
            raise CheckpointError(f"{path}: 'data' does not describe an image folder: {e}") from e

    model_state = _section(arrays, _MODEL_PREFIX, "fi", path)  # weights; buffers such as counters
    optimizer_state = _section(arrays, _OPTIMIZER_PREFIX, "biuf", path)
    if not model_state:
        raise CheckpointError(f"{path}: not a cyconv checkpoint: it holds no model weights")
    return Checkpoint(path, model_name, epoch, config, metrics, info, model_state, optimizer_state, data)


def load_model(checkpoint):
    """The model a checkpoint (a path or a Checkpoint) holds, in eval mode, and the Checkpoint.

    Raises CheckpointError if the weights do not fit the model the checkpoint names (missing or extra
    parameters, wrong shapes or dtypes).
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    spec = checkpoint.data
    saved = sum(a.size for a in checkpoint.model_state.values())
    if spec is not None and len(spec.classes) > saved:
        # As for 'hidden' below: every class has weights of its own, so the file bounds what is built.
        raise CheckpointError(f"{checkpoint.path}: 'data' names {len(spec.classes)} classes, but the saved weights "
                              f"hold only {saved} values, too few for that many outputs")
    try:
        model = build_model_for(checkpoint.model_name, hidden=_hidden(checkpoint), width_mult=_width_mult(checkpoint),
                                spec=spec)
    except ValueError as e:
        raise CheckpointError(f"{checkpoint.path}: {e}") from e
    restore(model, checkpoint.model_state, checkpoint.path, f"saved weights do not fit a {checkpoint.model_name}")
    model.eval()
    return model, checkpoint


def build_model_for(model_name: str, *, hidden: int, spec: FolderSpec | None, width_mult: float = 1.0, rng=None):
    """A fresh build_model(model_name) for the data that `spec` describes: its channels, (square)
    image size and number of classes; spec None: MNIST's 1 x 28 x 28 digits, 10 classes."""
    if spec is None:
        return build_model(model_name, hidden=hidden, in_channels=1, num_classes=10, image_size=28,
                           width_mult=width_mult, rng=rng)
    height, width = spec.size
    if height != width:
        raise ValueError(f"the models take square images, not {height}x{width}")
    return build_model(model_name, hidden=hidden, in_channels=spec.channels, num_classes=len(spec.classes),
                       image_size=height, width_mult=width_mult, rng=rng)


def restore(target, state: dict, path, problem: str) -> None:
    """target.load_state_dict(state); a mismatch is a CheckpointError "<path>: <problem>: <details>"."""
    try:
        target.load_state_dict(state)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: {problem}: {e}") from e


def _hidden(checkpoint: Checkpoint) -> int:
    hidden = checkpoint.config.get("hidden", 500)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise CheckpointError(f"{checkpoint.path}: config 'hidden' must be a positive int, got {hidden!r}")
    # An mlp has over 785 weights per hidden unit (784 in, a bias, 10 out). Checking that the saved weights
    # are that many before building the model keeps a config that lies about 'hidden' (10**9) from
    # allocating gigabytes: the model built is never much bigger than the file.
    saved = sum(a.size for a in checkpoint.model_state.values())
    if checkpoint.model_name == "mlp" and hidden * 785 > saved:
        raise CheckpointError(f"{checkpoint.path}: config 'hidden' is {hidden}, but the saved weights hold only "
                              f"{saved} values, too few for an mlp of that size")
    return hidden


def _width_mult(checkpoint: Checkpoint) -> float:
    width_mult = checkpoint.config.get("width_mult", 1.0)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not math.isfinite(width_mult) \
            or width_mult <= 0:
        raise CheckpointError(f"{checkpoint.path}: config 'width_mult' must be a number > 0, got {width_mult!r}")
    # As for 'hidden': mobilenet_v2's last 1x1 convolution alone has about (320 w) x (1280 max(1, w)) weights
    # (each rounded to a multiple of 8, at most 10% down), the whole network about 9 times that, so saved weights that hold fewer bound what a lying config builds.
    saved = sum(a.size for a in checkpoint.model_state.values())
    if checkpoint.model_name == "mobilenet_v2" and 0.8 * 320 * width_mult * 1280 * max(1.0, width_mult) > saved:
        raise CheckpointError(f"{checkpoint.path}: config 'width_mult' is {width_mult}, but the saved weights hold "
                              f"only {saved} values, too few for a mobilenet_v2 of that width")
    return float(width_mult)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array in the archive, read eagerly so that damage anywhere shows up here."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            truncated = f.read(4) == b"PK\x03\x04"  # starts like a zip but has no directory at its end
        raise CheckpointError(f"{path}: " + ("truncated or damaged .npz archive" if truncated
                                             else "not a checkpoint (.npz): the file is not a zip archive"))
    arrays = {}
    key = None
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                arrays[key] = npz[key]
    except CheckpointError:
        raise
    except ValueError as e:
        # numpy refuses object arrays without allow_pickle; say what that means here.
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise CheckpointError(
                f"{path}: {key!r} is a pickled object array; checkpoints hold numbers and strings only"
            ) from e
        raise CheckpointError(f"{path}: damaged array {key!r}: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError, NotImplementedError) as e:
        # NotImplementedError: zipfile's answer to a "version needed to extract" it does not know.
        where = f" in {key!r}" if key is not None else ""
        raise CheckpointError(f"{path}: damaged or truncated archive{where}: {e}") from e
    return arrays


# What numpy's .npy header parser raises besides ValueError: it falls back to tokenizing the header as
# Python 2 source (tokenize.TokenError on an unclosed bracket), and a dtype description can be a nested
# structure of any size (TypeError, OverflowError, RecursionError).
_NPY_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, OverflowError, RecursionError, tokenize.TokenError)


def _check_members(path: Path) -> None:
    """Refuse an archive whose members could cost more memory than the file's size, before numpy reads it.

    np.load allocates each array at the size its .npy header announces, then reads the data: a 4 KB file
    announcing 2**32 float64 would cost 32 GB before the short read is noticed. A compressed member can
    inflate ~1000x, and members whose entries overlap can read the same bytes many times. save_checkpoint
    writes uncompressed members one after the other, so here every member must be stored (not compressed,
    not encrypted), the members together must fit in the file, and each .npy header must announce no more
    bytes than its member holds. Every member must also be an .npy array: np.load returns the raw bytes of
    any other member, which would not be an array.
    """
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        if sum(info.compress_size for info in infos) > size:
            raise CheckpointError(f"{path}: damaged archive: its members claim more bytes than the file holds")
        for info in infos:
            name = info.filename
            if info.flag_bits & 0x1:
                raise CheckpointError(f"{path}: member {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: member {name!r} is compressed; checkpoints are written "
                                      "uncompressed (np.savez)")
            if info.file_size != info.compress_size:
                raise CheckpointError(f"{path}: damaged archive: member {name!r} is stored uncompressed but "
                                      f"lists {info.file_size} bytes, {info.compress_size} of them in the file")
            with z.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                except ValueError:
                    raise CheckpointError(f"{path}: member {name!r} is not an .npy array") from None
                if version not in ((1, 0), (2, 0)):
                    raise CheckpointError(f"{path}: member {name!r} is .npy version {version}, expected 1.0 or 2.0")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                try:
                    shape, _, dtype = read_header(f)
                except _NPY_HEADER_ERRORS as e:
                    raise CheckpointError(f"{path}: member {name!r} has a damaged .npy header: {e!r}") from e
                header_size = f.tell()
            if dtype.hasobject:
                raise CheckpointError(f"{path}: {name.removesuffix('.npy')!r} is a pickled object array; "
                                      "checkpoints hold numbers and strings only")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size - header_size:
                raise CheckpointError(f"{path}: member {name!r} announces a {dtype} array of shape {shape} "
                                      f"({nbytes} bytes), but holds {info.file_size - header_size} bytes")


def _integer(arrays: dict, key: str, path: Path) -> int:
    a = arrays[key]
    if a.shape != () or a.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: {key!r} must be an integer scalar, got {a.dtype} {a.shape}")
    return int(a)


def _string(arrays: dict, key: str, path: Path) -> str:
    a = arrays[key]
    if a.shape != () or a.dtype.kind != "U":
        raise CheckpointError(f"{path}: {key!r} must be a string, got {a.dtype} {a.shape}")
    return str(a)


def _json(arrays: dict, key: str, path: Path):
    # Besides JSONDecodeError, json.loads raises a plain ValueError on an integer of over 4300 digits and
    # RecursionError on deeply nested brackets ("[[[[..."); both mean the field is not usable JSON.
    try:
        return json.loads(_string(arrays, key, path))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: {key!r} is not valid JSON: {e}") from e


def _section(arrays: dict, prefix: str, kinds: str, path: Path) -> dict[str, np.ndarray]:
    section = {}
    for key, a in arrays.items():
        if key.startswith(prefix):
            if a.dtype.kind not in kinds:
                raise CheckpointError(f"{path}: {key!r} has dtype {a.dtype}, expected a numeric array")
            section[key[len(prefix):]] = a
    return section
