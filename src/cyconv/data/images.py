"""Pictures, one file at a time: decoding (PNG, JPEG, BMP ... through Pillow, each picture's size checked
in its header before it is decoded), .npy arrays of pixels, and a drawn digit made to look like MNIST's.
The one place that turns a file or an upload into pixels: ImageFolder, `cyconv predict` and `cyconv serve`
all read pictures here.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# How MNIST's digits were made from NIST's (LeCun et al.): each digit's bounding box scaled to fit DIGIT_BOX x
# DIGIT_BOX keeping its aspect ratio, then placed in the 28x28 field so that its centre of mass falls on
# pixel (DIGIT_CENTRE, DIGIT_CENTRE), row and column indices from 0 (measured on the training set:
# 14.00 +- 0.29 on both axes, a whole-pixel shift).
ROWS = COLS = 28  # an MNIST digit's size, which prepare_digit makes
DIGIT_BOX = 20
DIGIT_CENTRE = 14
# prepare_digit: ink must differ from the background by more than _MIN_CONTRAST (of 255), or the picture is
# blank; pixels fainter than _INK_FRACTION of the strongest ink are background (paper texture, JPEG ringing).
_MIN_CONTRAST = 32
_INK_FRACTION = 0.1


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


def _describe(a: object) -> str:
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------------------
# A drawn digit, made to look like MNIST's


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
# A digit to classify: a picture or an array of pixels, for `cyconv predict` and `cyconv serve`


# What Pillow may open: the common raster formats. Not all it knows: its EPS reader runs Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM")
# A 40-megapixel photo is more than a picture of one digit needs. The size is checked in the header, before
# any pixel is decoded (3-4 bytes a pixel for colour), so a small file that claims more costs nothing.
MAX_IMAGE_PIXELS = 40_000_000
_NPY_MAGIC = b"\x93NUMPY"


def load_digit(path, raw: bool = False) -> tuple[np.ndarray, str | None]:
    """An image file as the network's input: float32 (1, 28, 28), normalised by cyconv.data.to_float32,
    and a warning (or None).

    path: a picture (PNG, JPEG, BMP, GIF, TIFF or PPM; any size and colour mode, read by Pillow) or a 2-D
    .npy array (uint8 0..255, or float 0..1, rounded to 8 bits as MNIST's pixels are). By default the
    digit is made to look like MNIST's by prepare_digit: either polarity, any size, cropped, scaled and
    centred. raw=True uses the pixels as they are, so the image must already be an MNIST digit: 28x28,
    white on black; the warning says when it is mostly bright.

    Raises ImageError (a ValueError) naming the file for anything it cannot use; OSError if it cannot be
    opened.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_npy = f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    if is_npy:
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ImageError(f"{path}: cannot read as .npy: {e}") from e
    else:
        with refusing_decompression_bombs():  # decode_picture's messages name the file
            picture = decode_grey(path, kind="a .npy file or an image")
    try:
        x, _, warning = digit_input(grey_pixels(a) if is_npy else picture, raw, "--raw")
    except ValueError as e:
        raise ImageError(f"{path}: {e}") from None
    return x, warning


def decode_grey(source, *, kind: str = "an image") -> np.ndarray:
    """A picture (a path or a file-like object) in one of IMAGE_FORMATS as uint8 (H, W) grey (see grey),
    its size checked in its header, up to MAX_IMAGE_PIXELS, before its pixels are decoded."""
    return decode_picture(source, grey, formats=IMAGE_FORMATS, max_pixels=MAX_IMAGE_PIXELS, kind=kind)


def grey_pixels(a: np.ndarray) -> np.ndarray:
    """A 2-D array of integers in 0..255, or floats in [0, 1] (rounded to 8 bits as MNIST's pixels are),
    as uint8 (H, W): the rule of a .npy file for `cyconv predict` and of JSON pixels for `cyconv serve`.
    Raises ImageError (without a file name: the caller adds where the array came from)."""
    if a.ndim != 2 or a.size == 0:
        raise ImageError(f"array has shape {a.shape}, expected a 2-D (height, width) image")
    if a.dtype.kind in "iu":
        if a.min() < 0 or a.max() > 255:
            raise ImageError(f"integer pixels must be in 0..255, got {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ImageError("float pixels must be finite and in [0, 1]")
        return np.rint(a * 255).astype(np.uint8)
    raise ImageError(f"dtype {a.dtype} is not an image; expected numbers: integers 0..255 or floats 0..1")


def digit_input(grey: np.ndarray, raw: bool, option: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A uint8 (H, W) grey picture of a digit as (the network's float32 (1, 28, 28) input, the uint8
    (28, 28) digit it sees, a warning or None): made MNIST-like by prepare_digit, or with raw, taken as it
    is, which must be 28x28; `option` names raw in the messages (--raw, raw=1). Raises ValueError: the
    picture is blank (from prepare_digit), or raw and not 28x28."""
    warning = None
    if raw:
        if grey.shape != (ROWS, COLS):
            raise ImageError(f"image is {grey.shape[1]}x{grey.shape[0]}, {option} needs {COLS}x{ROWS} "
                             f"(width x height); without {option} it would be scaled and centred")
        if grey.mean() > 127.5:
            warning = ("mostly bright: MNIST digits are white on black, so invert a dark-on-light image "
                       f"(255 - pixels), or leave out {option}, for a meaningful prediction")
        digit = grey
    else:
        digit = prepare_digit(grey)
    from .mnist import to_float32  # here: mnist.py imports this module

    return to_float32(digit[None])[0], digit, warning


def grey(picture: Image.Image) -> np.ndarray:
    """Any Pillow mode as uint8 grey: luma 0.299 R + 0.587 G + 0.114 B (Pillow's "L"), 16-bit scaled to
    8, transparency flattened onto black or white (_flatten)."""
    if picture.mode.startswith("I"):  # 16-bit grey ("I;16" and, from older Pillows, "I"): 0..65535
        return wide_grey_to_uint8(picture)
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
