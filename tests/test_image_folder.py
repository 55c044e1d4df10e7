"""cyconv.data's image folders: ImageFolder (layout, what is read and what is ignored, every way a folder
can be unusable), read_image, split, channel_stats / normalize, and make_shapes with its save/load round trip.

Folders are built in tmp_path with Pillow; the damaged files (a truncated PNG, a text file named .jpg, a
decompression bomb small on disk) are made by hand.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import cyconv
from cyconv import data
from cyconv.data import (
    SHAPES,
    FolderSpec,
    ImageError,
    ImageFolder,
    ImageFolderError,
    channel_stats,
    make_shapes,
    normalize,
    read_image,
    to_float32,
)


# ---------------------------------------------------------------------------------------------------------
# Builders


def rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def write(path: Path, pixels: np.ndarray, **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_options)
    return path


def folder_of(root: Path, classes: dict[str, int], size=(8, 8)) -> dict[Path, np.ndarray]:
    """classes {name: number of pictures}, each a random size-sized RGB PNG; returns {path: HWC pixels}."""
    pictures = {}
    for k, (name, n) in enumerate(classes.items()):
        for i in range(n):
            pixels = rgb(*size, seed=100 * k + i)
            pictures[write(root / name / f"{i:03d}.png", pixels)] = pixels
    return pictures


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of width x height black pixels: zlib packs its rows of zeros ~1000:1,
    so a picture of hundreds of megapixels takes tens of KB on disk."""
    row = b"\0" * (1 + (width + 7) // 8)  # the filter byte, then the bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def never_decode(monkeypatch):
    """Fail the test if the pixels of a picture larger than 64x64 are decoded."""
    load = ImageFile.ImageFile.load

    def decode(self, *args, **kwargs):
        if self.size[0] * self.size[1] > 64 * 64:
            raise AssertionError(f"the pixels of a {self.size[0]}x{self.size[1]} picture were decoded")
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


# ---------------------------------------------------------------------------------------------------------
# Layout: classes, order, pixels


def test_classes_sorted_images_in_path_order_pixels_exact(tmp_path):
    pictures = folder_of(tmp_path, {"zebra": 2, "ant": 3, "Bee": 1})
    folder = ImageFolder(tmp_path, size=(8, 8))
    assert folder.classes == ["Bee", "ant", "zebra"]  # sorted by name, as torchvision (upper case first)
    assert folder.labels.dtype == np.int64 and folder.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert folder.images.dtype == np.uint8 and folder.images.shape == (6, 3, 8, 8)
    assert folder.paths == sorted(pictures, key=lambda p: (p.parent.name != "Bee", p.parent.name, p.name))
    for path, image in zip(folder.paths, folder.images):  # same size: PNG is lossless and nothing is resized
        np.testing.assert_array_equal(image, pictures[path].transpose(2, 0, 1))
    assert len(folder) == 6 and folder.root == tmp_path and folder.size == (8, 8) and folder.channels == 3


def test_grey_is_pillows_luma_and_size_is_height_by_width(tmp_path):
    pictures = folder_of(tmp_path, {"a": 1, "b": 1}, size=(8, 8))
    folder = ImageFolder(tmp_path, size=(4, 6), channels=1)
    assert folder.images.shape == (2, 1, 4, 6)
    first = pictures[folder.paths[0]].astype(np.float64)
    luma = first @ [0.299, 0.587, 0.114]  # ITU-R 601, Pillow's "L"
    expected = np.asarray(Image.fromarray(np.rint(luma).astype(np.uint8)).resize((6, 4), Image.Resampling.BILINEAR))
    assert np.abs(folder.images[0, 0].astype(int) - expected).max() <= 1


def test_nested_files_count_hidden_and_other_files_do_not(tmp_path):
    folder_of(tmp_path, {"cat": 1, "dog": 1})
    write(tmp_path / "cat" / "more" / "deeper" / "x.JPG", rgb(8, 8, 5))    # any depth, any case
    write(tmp_path / "dog" / "y.bmp", rgb(8, 8, 6))
    write(tmp_path / "dog" / "z.jpeg", rgb(8, 8, 7))
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 100)
    (tmp_path / "cat" / "._001.png").write_bytes(b"\0\5\26\7" + b"\0" * 80)  # macOS AppleDouble: not a PNG
    write(tmp_path / "cat" / ".ipynb_checkpoints" / "001-checkpoint.png", rgb(8, 8, 8))
    write(tmp_path / ".hidden-class" / "a.png", rgb(8, 8, 9))
    write(tmp_path / "top-level.png", rgb(8, 8, 10))  # not in a class folder
    (tmp_path / "dog" / "notes.txt").write_text("good dogs")
    write(tmp_path / "dog" / "w.gif", rgb(8, 8, 11))
    folder = ImageFolder(tmp_path, size=8)
    assert folder.classes == ["cat", "dog"]
    assert [p.relative_to(tmp_path).as_posix() for p in folder.paths] == [
        "cat/000.png", "cat/more/deeper/x.JPG", "dog/000.png", "dog/y.bmp", "dog/z.jpeg"]
    assert [p.name for p in folder.ignored] == ["notes.txt", "w.gif"]


def test_content_decides_the_format_not_the_name(tmp_path):
    folder_of(tmp_path, {"a": 1, "b": 1})
    pixels = rgb(8, 8, 3)
    write(tmp_path / "a" / "really-a-png.jpg", pixels, format="PNG")
    folder = ImageFolder(tmp_path, size=8)
    np.testing.assert_array_equal(folder.images[1], pixels.transpose(2, 0, 1))


def test_symlinked_class_folder_is_followed(tmp_path):
    folder_of(tmp_path / "elsewhere", {"b": 2})
    folder_of(tmp_path / "root", {"a": 1})
    (tmp_path / "root" / "b").symlink_to(tmp_path / "elsewhere" / "b", target_is_directory=True)
    assert ImageFolder(tmp_path / "root", size=8).labels.tolist() == [0, 1, 1]


# ---------------------------------------------------------------------------------------------------------
# One picture: orientation, transparency, 16 bits, JPEG's reduced decoding


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = write(tmp_path / "phone.png", pixels, exif=exif)
    image = read_image(path, size=(40, 20))
    assert (image[:, :18].mean(axis=(1, 2)) > [250, -1, -1]).all() and image[2, :18].max() < 5  # top red
    assert image[0, 22:].max() < 5 and image[2, 22:].min() > 250                                  # bottom blue


def test_transparent_pixels_are_white_and_16_bit_grey_is_scaled(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (10, 20, 30, 255)  # top: opaque; bottom: transparent black
    image = read_image(write(tmp_path / "t.png", rgba), size=4)
    assert image[:, :2].reshape(3, -1).T.tolist() == [[10, 20, 30]] * 8
    assert (image[:, 2:] == 255).all()
    wide = Image.fromarray(np.array([[0, 32768], [65535, 257]], np.uint16))
    wide.save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    assert read_image(tmp_path / "w.png", size=2, channels=1)[0].tolist() == [[0, 128], [255, 1]]


def test_a_large_jpeg_decoded_at_reduced_scale_matches_the_full_decode(tmp_path):
    yy, xx = np.mgrid[0:1200, 0:1600]
    pixels = np.stack([xx * 255 // 1599, yy * 255 // 1199, (xx + yy) % 256 // 4 + 100], -1).astype(np.uint8)
    path = write(tmp_path / "big.jpg", pixels, quality=95)
    full = np.asarray(Image.open(path).convert("RGB").resize((64, 48), Image.Resampling.BILINEAR))
    image = read_image(path, size=(48, 64))
    assert np.abs(image.transpose(1, 2, 0).astype(int) - full).mean() < 2


# ---------------------------------------------------------------------------------------------------------
# Refusals: every problem in one error, nothing kept


def test_every_bad_file_is_reported_in_one_error(tmp_path):
    folder_of(tmp_path, {"good": 2, "bad": 1, "empty": 0})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    png = (tmp_path / "bad" / "000.png").read_bytes()
    (tmp_path / "bad" / "truncated.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "bad" / "text.jpg").write_text("this is not a JPEG\n" * 10)
    (tmp_path / "bad" / "empty.bmp").write_bytes(b"")
    (tmp_path / "bad" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "bad" / "pipe.png")  # open() would wait for a writer forever
    with pytest.raises(ImageFolderError) as raised:
        ImageFolder(tmp_path, size=8)
    problems = raised.value.problems
    bad = tmp_path / "bad"
    expected = {
        tmp_path / "empty": "class folder 'empty' holds no pictures (.png, .jpg, .jpeg, .bmp)",
        bad / "truncated.png": "cannot decode the image: ",
        bad / "text.jpg": "not a PNG, JPEG or BMP image cyconv reads (PNG, JPEG, BMP), or damaged",
        bad / "empty.bmp": "not a PNG, JPEG or BMP image cyconv reads",
        bad / "dangling.png": "cannot open: No such file or directory",
        bad / "pipe.png": "is not a regular file, not an image",
    }
    assert len(problems) == len(expected), problems
    for path, reason in expected.items():
        assert any(p.startswith(f"{path}: {reason}") for p in problems), (path, problems)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path}: 6 problems:") and all(str(p) in message for p in expected)


def test_an_error_shows_the_first_problems_and_counts_the_rest(tmp_path):
    folder_of(tmp_path, {"a": 1, "b": 1})
    for i in range(25):
        (tmp_path / "b" / f"bad{i:02d}.png").write_text("no")
    with pytest.raises(ImageFolderError) as raised:
        ImageFolder(tmp_path, size=8)
    assert len(raised.value.problems) == 25
    assert str(raised.value).splitlines()[-1] == "  ... and 5 more"


@pytest.mark.parametrize("classes, found", [({}, "none"), ({"only": 2}, "only 'only'")])
def test_fewer_than_two_classes(tmp_path, classes, found):
    folder_of(tmp_path, classes)
    with pytest.raises(ImageFolderError, match=f"needs a sub-folder per class, at least two \\(found {found}\\)"):
        ImageFolder(tmp_path, size=8)


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        ImageFolder(tmp_path / "file")


@pytest.mark.parametrize("size, channels, error, match", [
    (100_000, 3, ValueError, "size must be between 1 and 1024 pixels a side, got 100000"),
    ((64, 0), 3, ValueError, "size must be between 1 and 1024"),
    ((64,), 3, TypeError, "size must be an int or a \\(height, width\\) pair of ints"),
    ("64", 3, TypeError, "size must be an int or a"),
    (True, 3, TypeError, "size must be an int or a"),
    (64, 2, ValueError, "channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 2"),
])
def test_bad_size_or_channels_is_refused_before_anything_is_read(tmp_path, monkeypatch, size, channels, error,
                                                                 match):
    folder_of(tmp_path, {"a": 1, "b": 1})
    monkeypatch.setattr(data.folders, "_scan", lambda root: pytest.fail("the folder was read"))
    with pytest.raises(error, match=f"ImageFolder: {match}"):
        ImageFolder(tmp_path, size=size, channels=channels)


def test_more_than_the_memory_is_refused_before_allocating(tmp_path, monkeypatch, never_decode):
    folder_of(tmp_path, {"a": 3, "b": 3})
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 100}  # a machine of 400 KiB
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    monkeypatch.setattr(np, "empty", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(ValueError, match=r"6 images of 3x512x512 need 4\.5 MiB, more than this machine's 0\.4 MiB of memory"):
        ImageFolder(tmp_path, size=512)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, never_decode):
    folder_of(tmp_path, {"a": 1, "b": 1})
    bomb = tmp_path / "b" / "bomb.png"
    bomb.write_bytes(png_bomb(20_000, 20_000))  # 400 megapixels, 50 MB of rows
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageFolderError) as raised:
        ImageFolder(tmp_path, size=8)
    (problem,) = raised.value.problems
    assert problem.startswith(f"{bomb}: image too large to read (Image size (400000000 pixels) exceeds limit")


def test_pillows_warning_range_is_refused_too(tmp_path, monkeypatch, never_decode):
    # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; an image folder refuses.
    folder_of(tmp_path, {"a": 1, "b": 1}, size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 100 x 100 = 10000: in the warning range
    with pytest.raises(ImageFolderError) as raised:
        ImageFolder(tmp_path, size=8)
    assert len(raised.value.problems) == 2
    assert all("image too large to read (Image size (10000 pixels) exceeds limit of 6000" in p
               for p in raised.value.problems)


@pytest.mark.parametrize("threads", [1, 2, 16])
def test_ctrl_c_while_reading_does_not_wait_for_the_rest(tmp_path, monkeypatch, threads):
    # The reader pool has get_num_threads() workers, so up to that many pictures are under way at the
    # Ctrl-C (16 on a 16-core machine): those finish, the rest of the 60 are dropped.
    folder_of(tmp_path, {"a": 30, "b": 30})
    first = min(ImageFolder(tmp_path, size=8).paths)
    read = []

    def slow_read(path, height, width, channels):
        read.append(path)
        if path == first:
            raise KeyboardInterrupt
        time.sleep(0.1)
        return np.zeros((channels, height, width), np.uint8)

    monkeypatch.setattr(data.folders, "_read_image", slow_read)
    with pytest.raises(KeyboardInterrupt), cyconv.set_num_threads(threads):
        ImageFolder(tmp_path, size=8)
    assert len(read) <= 2 * threads  # the pictures not yet started are dropped: 60 take 3 s on 2 threads


def test_read_image_names_the_file(tmp_path):
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(ImageError, match=f"^{tmp_path / 'x.png'}: not a PNG, JPEG or BMP image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(ImageError, match="is a directory, not an image"):
        read_image(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")


# ---------------------------------------------------------------------------------------------------------
# from_arrays


@pytest.mark.parametrize("images, labels, classes, error, match", [
    (np.zeros((2, 3, 4, 4), np.float32), [0, 1], ["a", "b"], TypeError, "images must be a uint8 ndarray"),
    (np.zeros((2, 2, 4, 4), np.uint8), [0, 1], ["a", "b"], ValueError, "with C 1 or 3"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0, 2], ["a", "b"], ValueError, r"labels must be in \[0, 2\)"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0.0, 1.0], ["a", "b"], ValueError, "labels must be"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0, 0], ["a", "b"], ValueError, "classes 'b' have no images"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0, 1], ["a", "a"], ValueError, "at least two distinct names"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0, 1], ["a", "../b"], ValueError, "must be folder names"),
    (np.zeros((2, 3, 4, 4), np.uint8), [0, 1], "ab", TypeError, "classes must be a sequence of str"),
])
def test_from_arrays_refuses_what_it_cannot_hold(images, labels, classes, error, match):
    with pytest.raises(error, match=match):
        ImageFolder.from_arrays(images, labels, classes)


# ---------------------------------------------------------------------------------------------------------
# split


def numbered(counts: list[int]) -> ImageFolder:
    """An in-memory folder whose image i holds the value i in its first two pixels (i < 65536), so every
    image can be told apart."""
    n = sum(counts)
    images = np.zeros((n, 1, 4, 4), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    labels = np.repeat(np.arange(len(counts)), counts)
    return ImageFolder.from_arrays(images, labels, [f"c{k}" for k in range(len(counts))])


def ids(images):
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def test_split_is_a_stratified_partition(tmp_path):
    counts = [10, 7, 2, 1, 101]
    folder = numbered(counts)
    split = folder.split(0.3, seed=4)
    train_images, train_labels, test_images, test_labels = split  # unpacks as cyconv.train.train takes it
    train_ids, test_ids = ids(train_images), ids(test_images)
    assert sorted([*train_ids, *test_ids]) == list(range(sum(counts)))  # each image once
    assert (np.diff(train_ids) > 0).all() and (np.diff(test_ids) > 0).all()  # in the folder's order
    np.testing.assert_array_equal(train_labels, folder.labels[train_ids])
    np.testing.assert_array_equal(test_labels, folder.labels[test_ids])
    # round(0.3 n) per class, at least one when there are two, never all: 3, 2, 1, 0, 30.
    assert np.bincount(test_labels, minlength=5).tolist() == [3, 2, 1, 0, 30]
    assert split.classes == ("c0", "c1", "c2", "c3", "c4") and split.spec.test_fraction == 0.3


def test_split_depends_on_the_seed_and_nothing_else():
    a, b = numbered([20, 20, 20]).split(0.25, seed=1), numbered([20, 20, 20]).split(0.25, seed=1)
    c = numbered([20, 20, 20]).split(0.25, seed=2)
    np.testing.assert_array_equal(ids(a.test_images), ids(b.test_images))
    assert not np.array_equal(ids(a.test_images), ids(c.test_images))


def test_split_spec_records_the_normalisation_of_the_training_part(tmp_path):
    folder_of(tmp_path, {"a": 4, "b": 4})
    split = ImageFolder(tmp_path, size=8).split(0.25, seed=3)
    spec = split.spec
    assert spec.root == str(tmp_path.resolve()) and spec.size == (8, 8) and spec.channels == 3 and spec.seed == 3
    pixels = split.train_images.astype(np.float64) / 255
    np.testing.assert_allclose(spec.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(spec.std, pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    assert FolderSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("fraction, seed, match", [
    (0, 0, "test_fraction must be a number in \\(0, 1\\)"), (1.0, 0, "test_fraction"),
    (float("nan"), 0, "test_fraction"), (True, 0, "test_fraction"), (0.2, -1, "seed must be an int >= 0"),
    (0.2, 1.5, "seed must be"),
])
def test_split_refuses_bad_arguments(fraction, seed, match):
    with pytest.raises(ValueError, match=match):
        numbered([3, 3]).split(fraction, seed)


def test_split_needs_something_to_test_on():
    with pytest.raises(ValueError, match="no class has two images"):
        numbered([1, 1]).split(0.5)


@pytest.mark.parametrize("field, value, match", [
    ("size", [0, 8], "size must be"), ("channels", 2, "channels must be 1 or 3"),
    ("classes", ["a"], "at least two distinct"), ("classes", 7, "sequence of str"),
    ("mean", [0.5], "mean must be 3 finite numbers"), ("std", [1, 1, 0], "std must be 3 numbers > 0"),
    ("test_fraction", 1.5, "test_fraction"), ("seed", "0", "seed"), ("root", 5, "root"),
])
def test_folder_spec_from_dict_names_the_bad_field(field, value, match):
    good = FolderSpec("/x", (8, 8), 3, ("a", "b"), 0.2, 0, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)).to_dict()
    assert FolderSpec.from_dict(good).to_dict() == good
    with pytest.raises(ValueError, match=match):
        FolderSpec.from_dict({**good, field: value})
    with pytest.raises(ValueError, match="expected the fields"):
        FolderSpec.from_dict({k: v for k, v in good.items() if k != field})


# ---------------------------------------------------------------------------------------------------------
# channel_stats, normalize


def test_channel_stats_exact_and_constant_channel_gets_std_one():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 7, 9)).astype(np.uint8)
    images[:, 1] = 40
    mean, std = channel_stats(images)
    x = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose([std[0], std[2]], x.std(axis=(0, 2, 3))[[0, 2]], rtol=1e-12)
    assert std[1] == 1.0
    with pytest.raises(ValueError, match="non-empty uint8"):
        channel_stats(images[:0])


def test_normalize_per_channel_and_mnist_is_its_one_channel_case():
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 5)).astype(np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = (images / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    digits = images[:, 0]
    np.testing.assert_array_equal(to_float32(digits),
                                  normalize(digits[:, None], [data.MNIST_MEAN], [data.MNIST_STD]))
    with pytest.raises(ValueError, match="one per channel"):
        normalize(images, mean[:2], std)
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.astype(np.float32), mean, std)


# ---------------------------------------------------------------------------------------------------------
# make_shapes


def test_make_shapes_is_balanced_and_deterministic():
    shapes = make_shapes(42, size=32, seed=7)
    assert shapes.classes == list(SHAPES) == sorted(SHAPES) and shapes.root is None
    assert shapes.images.shape == (42, 3, 32, 32) and shapes.images.dtype == np.uint8
    assert np.bincount(shapes.labels).tolist() == [11, 11, 10, 10]
    assert (np.diff(shapes.labels) >= 0).all()
    np.testing.assert_array_equal(shapes.images, make_shapes(42, size=32, seed=7).images)
    assert not np.array_equal(shapes.images, make_shapes(42, size=32, seed=8).images)


@pytest.mark.parametrize("shape, inside, outside", [
    ("circle", [(0, 0), (0.7, 0.7), (0, -0.98)], [(0.72, 0.72), (1.02, 0)]),
    ("square", [(0, 0), (0.78, 0.78), (-0.78, 0.5)], [(0.82, 0), (0, -0.82)]),
    ("cross", [(0, 0), (0.98, 0), (0, -0.98), (0.28, 0.28)], [(0.4, 0.4), (1.02, 0), (0.98, 0.32)]),
    # Equilateral, circumradius 1.2, pointing up the image (v < 0): vertex (0, -1.2), base at v = 0.6.
    ("triangle", [(0, 0), (0, -1.15), (0, 0.58), (0.95, 0.55)], [(0, -1.25), (0, 0.62), (0.7, -0.4)]),
])
def test_each_shape_is_the_shape_it_says(shape, inside, outside):
    u, v = np.array([p[0] for p in inside + outside]), np.array([p[1] for p in inside + outside])
    distance = data.shapes._SIGNED_DISTANCE[shape](u.astype(np.float32), v.astype(np.float32))
    assert (distance[:len(inside)] < 0).all() and (distance[len(inside):] > 0).all(), distance


def test_rendered_shape_has_its_colour_inside_and_the_background_outside():
    # One circle of radius 8 at the centre of a 32x32 image, no gradient, no noise.
    size = 32
    image = data.shapes._render(np.array([0]), np.array([8.0]), np.array([[16.0, 16.0]]), np.array([0.3]),
                         np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]), np.zeros((1, 2, 3)),
                         np.zeros((1, 3, size, size), np.float32), size)[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot(xx - 16, yy - 16)
    assert (image[:, r < 7.4].T == [255, 0, 0]).all() and (image[:, r > 8.6].T == [0, 0, 255]).all()
    edge = image[0, (r > 7.6) & (r < 8.4)]
    assert 0 < edge.min() < 255 and 0 < edge.max()  # antialiased


@pytest.mark.parametrize("args, match", [
    ((3,), "n must be an int >= 4"), ((10, 8), "size must be an int in 16..1024"),
    ((10, 64, -1), "seed must be an int >= 0"), ((10.0,), "n must be"),
])
def test_make_shapes_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(*args)


def test_save_then_read_back_is_the_same_folder(tmp_path):
    shapes = make_shapes(10, size=16)
    assert shapes.save(tmp_path / "shapes") == tmp_path / "shapes"
    files = sorted(p.relative_to(tmp_path / "shapes").as_posix() for p in (tmp_path / "shapes").rglob("*")
                   if p.is_file())
    assert files == ["circle/circle_0.png", "circle/circle_1.png", "circle/circle_2.png", "cross/cross_0.png",
                     "cross/cross_1.png", "cross/cross_2.png", "square/square_0.png", "square/square_1.png",
                     "triangle/triangle_0.png", "triangle/triangle_1.png"]  # and no temp files left
    again = ImageFolder(tmp_path / "shapes", size=16)
    assert again.classes == shapes.classes
    np.testing.assert_array_equal(again.labels, shapes.labels)
    np.testing.assert_array_equal(again.images, shapes.images)
    grey = ImageFolder.from_arrays(again.images[:, :1].copy(), again.labels, again.classes)
    grey.save(tmp_path / "grey")
    np.testing.assert_array_equal(ImageFolder(tmp_path / "grey", size=16, channels=1).images, grey.images)


def test_save_refuses_a_non_empty_folder_unless_told(tmp_path):
    make_shapes(12, size=16, seed=1).save(tmp_path / "s")
    with pytest.raises(FileExistsError, match="is not empty; pass overwrite=True"):
        make_shapes(8, size=16, seed=2).save(tmp_path / "s")
    smaller = make_shapes(8, size=16, seed=2)
    smaller.save(tmp_path / "s", overwrite=True)
    # The 12 pictures of before are gone, not mixed in with the 8 new ones.
    np.testing.assert_array_equal(ImageFolder(tmp_path / "s", size=16).images, smaller.images)


def test_overwrite_refuses_a_folder_that_holds_anything_else(tmp_path):
    make_shapes(8, size=16).save(tmp_path / "s")
    (tmp_path / "s" / "circle" / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="refusing to overwrite .*thesis.tex"):
        make_shapes(8, size=16).save(tmp_path / "s", overwrite=True)
    assert (tmp_path / "s" / "circle" / "thesis.tex").exists()
    assert (tmp_path / "s" / "circle" / "circle_0.png").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_shapes(8, size=16).save(tmp_path / "file")
