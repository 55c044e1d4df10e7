"""cyconv.features: the course's hand-crafted image features, before the CNN.

    pixels(images)            the raw pixels as one flat vector per image
    color_histogram(images)   per-channel intensity histograms (any image size)
    hog(images, ...)          histograms of oriented gradients (Dalal & Triggs),
                              compiled; hog_reference is its plain NumPy twin

Layout: images are channels last, as in the course: a batch is (N, H, W) for
grayscale or (N, H, W, C) for colour (a single image is a batch of one).
There is no NCHW input; transpose with ``x.transpose(0, 2, 3, 1)``.

Dtypes: uint8 images are intensities 0..255 and are scaled to [0, 1] (x / 255,
in float32; color_histogram bins in float64); float16/float32/float64 images
are taken as given (intensities in [0, 1] where that matters). Other dtypes raise TypeError: the range of an
int16 or bool image is not known. Every extractor returns (N, D) float32, except
that hog keeps float64 for float64 input.
"""

import numbers

import numpy as np

from . import _kernels
from ._threads import threads_for

__all__ = ["pixels", "color_histogram", "hog", "hog_reference"]


# ---------------------------------------------------------------------------
# Validation. Messages read "<function>(): <argument> <problem>, got <value>".

def _image_array(images, fn, name="images", uint8_as=np.float32):
    """images as a float32/float64 ndarray (uint8 -> uint8_as / 255, or kept
    as uint8 if uint8_as is None; float16 -> float32)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype == np.uint8:
        return images if uint8_as is None else images.astype(uint8_as) / uint8_as(255)
    if images.dtype == np.float16:
        return images.astype(np.float32)
    if images.dtype in (np.float32, np.float64):
        return images
    raise TypeError(
        f"{fn}(): {name} must be uint8 (0..255) or float (0..1), got {images.dtype} "
        "(scale other integer types to float yourself)"
    )


def _batch(images, fn, uint8_as=np.float32):
    """A validated (N, H, W, C) batch (a view when possible), converted as _image_array does."""
    x = _image_array(images, fn, uint8_as=uint8_as)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{fn}(): images must be (N, H, W) grayscale or (N, H, W, C) channels last, got shape {x.shape}"
        )
    if x.ndim == 3:
        x = x[..., None]
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{fn}(): images must have no zero-size axis but the batch, got shape {images.shape}")
    return x


def _positive_int(value, name, fn):
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}(): {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{fn}(): {name} must be >= 1, got {value!r}")
    return int(value)


def _positive_pair(value, name, fn):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{fn}(): {name} must be a (rows, cols) pair of ints, got {value!r}")
    return tuple(_positive_int(v, name, fn) for v in value)


# ---------------------------------------------------------------------------
# Raw pixels

def pixels(images):
    """The raw pixels of each image as one flat vector.

    Args:
        images: (N, H, W) grayscale or (N, H, W, C) channels-last ndarray,
            uint8 (scaled by 1/255) or float (taken as is).

    Returns:
        (N, H*W*C) float32, each row the image in (row, column, channel) order.

    Shape:
        (N, H, W) -> (N, H*W); (N, H, W, C) -> (N, H*W*C).
        A 64x64x3 image gives a 12288-vector.

    Example:
        >>> pixels(np.zeros((2, 28, 28), np.uint8)).shape
        (2, 784)
    """
    x = _batch(images, "pixels")
    return np.ascontiguousarray(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))), dtype=np.float32)


# ---------------------------------------------------------------------------
# Colour histograms

_HIST_CHUNK = 1 << 22  # elements binned at once: bounds the int64 index array


def _bin_index(x, bins, edges):
    """The np.histogram(x, bins, range=(0, 1)) bin of each float64 value in [0, 1].
    Same rule as NumPy: a first guess x * bins, corrected against the edges;
    the last bin is closed on the right."""
    idx = (x * bins).astype(np.intp)
    np.clip(idx, 0, bins - 1, out=idx)
    idx -= x < edges[idx]
    idx += (x >= edges[idx + 1]) & (idx != bins - 1)
    return idx


def _histograms(x, bins, edges):
    """(N, H, W, C) uint8 or float -> (N, C*bins) float32, each channel's counts / (H*W)."""
    N, H, W, C = x.shape
    counts = np.empty((N, C, bins), np.int64)
    step = max(1, _HIST_CHUNK // (H * W * C))
    for n0 in range(0, N, step):
        chunk = x[n0:n0 + step].astype(np.float64)
        if x.dtype == np.uint8:
            chunk /= 255
        idx = _bin_index(chunk.transpose(0, 3, 1, 2).reshape(len(chunk), C, H * W), bins, edges)
        # One bincount for the whole chunk: offset each (image, channel) by its own bins.
        idx += (np.arange(len(chunk) * C) * bins).reshape(len(chunk), C, 1)
        counts[n0:n0 + step] = np.bincount(idx.ravel(), minlength=len(chunk) * C * bins).reshape(-1, C, bins)
    return (counts / (H * W)).astype(np.float32).reshape(N, C * bins)


def color_histogram(images, bins=16):
    """Per-channel histogram of intensities, normalised to sum 1 per channel.

    Each channel's values in [0, 1] (uint8 scaled by 1/255 in float64) are counted into
    `bins` equal bins over [0, 1], as ``np.histogram(channel, bins, range=(0, 1))``
    counts them in float64 (the last bin includes 1.0), then divided by the
    number of pixels. Float values outside [0, 1], or NaN, raise ValueError.

    Args:
        images: (N, H, W) grayscale or (N, H, W, C) channels-last ndarray, or
            a list of (H, W) or (H, W, C) images that may differ in size (but
            not in number of channels).
        bins: number of bins per channel, an int >= 1.

    Returns:
        (N, C*bins) float32: channel 0's histogram, then channel 1's, ...

    Shape:
        (N, H, W) -> (N, bins); (N, H, W, C) -> (N, C*bins).

    Example:
        >>> color_histogram(np.zeros((5, 32, 32, 3), np.uint8), bins=8).shape
        (5, 24)
    """
    fn = "color_histogram"
    bins = _positive_int(bins, "bins", fn)
    edges = np.linspace(0.0, 1.0, bins + 1)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{fn}(): images is an empty list; give at least one image")
        batches = []
        for i, image in enumerate(images):
            x = _image_array(image, fn, f"images[{i}]", uint8_as=None)
            if x.ndim not in (2, 3) or min(x.shape) < 1:
                raise ValueError(
                    f"{fn}(): images[{i}] must be a non-empty (H, W) or (H, W, C) image, got shape {x.shape}"
                )
            batches.append(x.reshape(1, x.shape[0], x.shape[1], -1))
        channels = {b.shape[3] for b in batches}
        if len(channels) > 1:
            raise ValueError(f"{fn}(): images must all have the same number of channels, got {sorted(channels)}")
    else:
        batches = [_batch(images, fn, uint8_as=None)]
    for b in batches:
        if b.dtype != np.uint8 and not (np.all(b >= 0) and np.all(b <= 1)):  # also false for NaN
            raise ValueError(f"{fn}(): float images must have values in [0, 1] (no NaN), "
                             f"got min {b.min()} and max {b.max()}")
    return np.concatenate([_histograms(b, bins, edges) for b in batches], axis=0)


# ---------------------------------------------------------------------------
# HOG

def _hog_args(images, orientations, pixels_per_cell, cells_per_block, fn):
    """Validated (x (N, H, W, C) C-contiguous float, orientations, cell, block)."""
    x = _batch(images, fn)
    orientations = _positive_int(orientations, "orientations", fn)
    cell = _positive_pair(pixels_per_cell, "pixels_per_cell", fn)
    block = _positive_pair(cells_per_block, "cells_per_block", fn)
    H, W = x.shape[1:3]
    if H < cell[0] * block[0] or W < cell[1] * block[1]:
        raise ValueError(
            f"{fn}(): images of {H}x{W} pixels are too small for one block of cells_per_block {block} "
            f"cells of pixels_per_cell {cell} pixels: they need at least "
            f"{cell[0] * block[0]}x{cell[1] * block[1]}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{fn}(): images contain NaN or infinity")
    return np.ascontiguousarray(x), orientations, cell, block


def _hog_size(H, W, orientations, cell, block):
    return (H // cell[0] - block[0] + 1) * (W // cell[1] - block[1] + 1) * block[0] * block[1] * orientations


def hog(images, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2)):
    """Histogram of oriented gradients (compiled, parallel over images).

    The same numbers as ``skimage.feature.hog(image, orientations,
    pixels_per_cell, cells_per_block, block_norm='L2-Hys')`` on each image
    (with ``channel_axis=-1`` for colour), to float rounding:

    1. gradients by centred differences [-1, 0, 1], 0 on the border rows and columns;
       colour images use, per pixel, the channel with the largest gradient magnitude;
    2. magnitude and unsigned orientation in [0, 180) degrees;
    3. per cell of pixels_per_cell pixels, an orientation histogram of
       `orientations` equal bins summing magnitudes, divided by the cell area
       (pixels beyond the last whole cell are ignored);
    4. per block of cells_per_block cells (stride one cell), L2-Hys normalisation:
       L2 normalise, clip at 0.2, L2 normalise again (eps 1e-5);
    5. blocks flattened in skimage's order (block row, block column, cell row,
       cell column, orientation).

    Args:
        images: (N, H, W) grayscale or (N, H, W, C) channels-last ndarray;
            uint8 is scaled by 1/255 first. No NaN or infinity.
        orientations: number of orientation bins, int >= 1.
        pixels_per_cell: (rows, cols) of a cell.
        cells_per_block: (rows, cols) of a block, in cells.

    Returns:
        (N, D) float64 for float64 images, float32 otherwise.

    Shape:
        D = (H // pr - br + 1) * (W // pc - bc + 1) * br * bc * orientations
        with (pr, pc) = pixels_per_cell, (br, bc) = cells_per_block.
        MNIST 28x28 with the defaults: 3 * 3 * 2 * 2 * 9 = 324.

    Example:
        >>> hog(np.zeros((10, 28, 28), np.uint8)).shape
        (10, 324)
    """
    x, orientations, cell, block = _hog_args(images, orientations, pixels_per_cell, cells_per_block, "hog")
    N, H, W, C = x.shape
    D = _hog_size(H, W, orientations, cell, block)
    out = np.empty((N, D), x.dtype)
    if N == 0:
        return out
    nt = threads_for(N, H * W * C * 16)
    scratch = np.empty(nt * (H // cell[0]) * (W // cell[1]) * orientations, np.float32)
    _kernels.hog(out.reshape(-1), x.reshape(-1), scratch, N, H, W, C, orientations,
                 cell[0], cell[1], block[0], block[1], nt)
    return out


def hog_reference(images, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2)):
    """hog() in plain NumPy, step by step as scikit-image does it: the
    statement of what hog() computes. Same arguments, shapes and dtypes."""
    x, orientations, (pr, pc), (br, bc) = _hog_args(
        images, orientations, pixels_per_cell, cells_per_block, "hog_reference")
    N, H, W, C = x.shape
    # 1. Gradients in the image's dtype; colour: the channel with the largest magnitude.
    g_row = np.zeros_like(x)
    g_col = np.zeros_like(x)
    g_row[:, 1:-1] = x[:, 2:] - x[:, :-2]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    pick = np.argmax(np.hypot(g_row, g_col), axis=3)[..., None]
    g_row = np.take_along_axis(g_row, pick, axis=3)[..., 0].astype(np.float64)
    g_col = np.take_along_axis(g_col, pick, axis=3)[..., 0].astype(np.float64)
    # 2. Magnitude and orientation in degrees, [0, 180) (an angle that rounds to 180 is in no bin).
    ncr, ncc = H // pr, W // pc
    magnitude = np.hypot(g_col, g_row)[:, :ncr * pr, :ncc * pc]
    angle = (np.rad2deg(np.arctan2(g_row, g_col)) % 180)[:, :ncr * pr, :ncc * pc]
    edges = 180.0 / orientations * np.arange(orientations + 1)
    bin_of = np.searchsorted(edges, angle, side="right") - 1
    # 3. Cell histograms. skimage sums each bin of a cell into a C float, pixel by
    # pixel in row-major order, rounding after every addition; we do the same
    # (adding 0.0 to the other bins leaves them unchanged).
    hist = np.zeros((N, ncr, ncc, orientations), np.float32)
    for dr in range(pr):
        for dc in range(pc):
            m = magnitude[:, dr::pr, dc::pc]
            b = bin_of[:, dr::pr, dc::pc]
            vote = np.where(b[..., None] == np.arange(orientations), m[..., None], 0.0)
            hist = (hist.astype(np.float64) + vote).astype(np.float32)
    hist = hist / np.float32(pr * pc)
    # 4. Blocks of br x bc cells, stride one cell, L2-Hys normalised in float64.
    blocks = np.lib.stride_tricks.sliding_window_view(hist.astype(np.float64), (br, bc), axis=(1, 2))
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3)  # (N, nbr, nbc, br, bc, orientations)
    eps2 = 1e-5**2
    axes = (3, 4, 5)
    out = blocks / np.sqrt(np.sum(blocks**2, axis=axes, keepdims=True) + eps2)
    out = np.minimum(out, 0.2)
    out = out / np.sqrt(np.sum(out**2, axis=axes, keepdims=True) + eps2)
    # 5. skimage's order, flattened per image.
    return out.reshape(N, -1).astype(x.dtype)
