"""Image folders: pictures in one sub-folder per class, torchvision's layout, read with Pillow (images.py)
into uint8 (N, C, H, W) at one size (ImageFolder); `split` draws a stratified, seeded test split and records
(in a FolderSpec) the training part's mean and std per channel, with which `normalize` makes the network's
float32 input. Every picture's size is checked in its header before it is decoded; a folder with any bad
picture is refused whole, with every problem listed.

Left out on purpose: other datasets (CIFAR ...), caching of float arrays, reading pictures lazily (a folder
is read into memory once).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._files import atomic_write
from ..kernels.threads import get_num_threads
from .images import (DEFAULT_IMAGE_SIZE, FOLDER_EXTENSIONS, MAX_IMAGE_SIDE, ImageError, _channels, _describe,
                     _image_size, _is_int, _read_image, refusing_decompression_bombs)


# ---------------------------------------------------------------------------------------------------------
# Image folders


DEFAULT_TEST_FRACTION = 0.2


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
