"""cyconv.features: the course's hand-crafted image features, before the CNN.

    pixels(images)            the raw pixels as one flat vector per image
    color_histogram(images)   per-channel intensity histograms (any image size)
    hog(images, ...)          histograms of oriented gradients (Dalal & Triggs),
                              compiled; hog_reference is its plain NumPy twin
    BagOfWords(...)           a bag of visual words: local descriptors on a dense
                              grid, a k-means codebook fitted on training images
                              (.fit), each image a histogram of its words (.transform)

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

from ..kernels import _kernels
from ..kernels.threads import threads_for

__all__ = ["pixels", "color_histogram", "hog", "hog_reference", "BagOfWords", "DESCRIPTORS"]


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


# ---------------------------------------------------------------------------
# Bag of visual words

DESCRIPTORS = ("hog", "patch")
# A patch is divided by sqrt(its variance + _PATCH_EPS), intensities in [0, 1]: a patch whose standard
# deviation is well under 0.1 (25 of 255), flat but for noise, stays near the zero vector instead of
# having its noise stretched to full contrast.
_PATCH_EPS = 0.01
# float32 values (16 MB) of images, of descriptors, or of descriptor-to-word scores, held at once: bounds
# the memory of fit and transform whatever the number of images.
_CHUNK_FLOATS = 1 << 22


class BagOfWords:
    """A bag of visual words: each image as the histogram of the "visual words" of its local descriptors,
    the words being a k-means codebook of descriptors from training images.

        bow = BagOfWords(seed=0).fit(train_images)
        x_train, x_test = bow.transform(train_images), bow.transform(test_images)   # (N, 400) each

    1. Local descriptors, on a dense grid: one for every window of `patch` x `patch` pixels whose corner
       is a multiple of `stride` pixels from the top left (windows past the image edge are left out).
       descriptor="patch": the window's pixels, all channels (C * patch * patch values), minus their mean
       and divided by sqrt(their variance + 0.01), so a word is a local pattern of light and colour
       whatever the brightness and contrast there (as Coates, Lee and Ng 2011 normalise patches).
       descriptor="hog": the window's HOG block (cyconv.features.hog, compiled): cells of stride x stride
       pixels, patch // stride cells a side, `orientations` bins per cell, L2-Hys normalised; the local
       edge orientations, without colour. patch must then be a multiple of stride.
    2. fit: k-means clusters a random sample of at most `max_descriptors` of the training images'
       descriptors into `n_words` centres, the codebook: k-means++ seeding, then Lloyd iterations until
       no descriptor changes word (or `max_iter` of them). Implemented here rather than taken from SciPy
       (scipy.cluster.vq.kmeans2): its k-means++ seeding is 10x slower at 100 words and grows with the
       square of the words, and its iterations compute distances without BLAS (measured in the README).
    3. transform: each descriptor goes to its nearest word (squared Euclidean distance, from one BLAS
       matrix product per chunk of descriptors; a tie goes to the lower word), and an image becomes the
       count of each word divided by its number of descriptors: a histogram that sums to 1. Images may
       be larger or smaller than the training images, as long as one window fits.

    The sample and the seeding come from np.random.default_rng(seed): the same seed and images give the
    same codebook (to the last bit on one machine; BLAS may round differently elsewhere).

    Args:
        n_words: size of the codebook (k), int >= 1.
        descriptor: "hog" or "patch" (DESCRIPTORS).
        patch: window side in pixels, int >= 1.
        stride: grid step in pixels, int >= 1 (for "hog", also the cell side).
        orientations: HOG bins per cell ("hog" only), int >= 1.
        max_descriptors: at most this many training descriptors are clustered, int >= 1.
        max_iter: at most this many Lloyd iterations, int >= 1.
        seed: int >= 0.

    The defaults (HOG blocks of 3x3 cells of 8x8 pixels every 8 pixels, 400 words) were the best measured
    on make_shapes(600) pictures, 64x64 (cyconv.data; README, "Hand-crafted features against learned
    ones"): normalised patches did far worse there, as the shapes' colours and polarity are random.

    Images: (N, H, W) grayscale or (N, H, W, C) channels last, uint8 (scaled by 1/255) or float (taken
    as they are; no NaN or infinity), as everywhere in cyconv.features. Descriptors are float32.

    After fit: codebook_ (n_words, D) float32, inertia_ (the sample's summed squared distance to its
    words), n_iter_ (Lloyd iterations run), channels_ (C of the training images; transform wants the same).

    Shape:
        transform: (N, H, W[, C]) -> (N, n_words) float32, rows summing to 1.
        descriptors: -> (N, P, D) float32 and words: -> (N, P) int64, P = gy * gx grid positions,
        gy = (H - patch) // stride + 1 (gx likewise with W); D = C * patch**2 ("patch") or
        (patch // stride)**2 * orientations ("hog").
        64x64x3 images with the defaults: P = 6 * 6 = 36 descriptors of D = 3 * 3 * 9 = 81 values each.

    Example:
        >>> bow = BagOfWords(n_words=8, patch=4, stride=4).fit(np.random.default_rng(0).random((20, 16, 16, 3)))
        >>> bow.transform(np.zeros((2, 16, 16, 3), np.uint8)).shape
        (2, 8)
    """

    def __init__(self, n_words=400, *, descriptor="hog", patch=24, stride=8, orientations=9,
                 max_descriptors=20_000, max_iter=50, seed=0):
        fn = "BagOfWords"
        self.n_words = _positive_int(n_words, "n_words", fn)
        if not isinstance(descriptor, str) or descriptor not in DESCRIPTORS:
            raise ValueError(f"{fn}(): descriptor must be one of {', '.join(map(repr, DESCRIPTORS))}, "
                             f"got {descriptor!r}")
        self.descriptor = descriptor
        self.patch = _positive_int(patch, "patch", fn)
        self.stride = _positive_int(stride, "stride", fn)
        if descriptor == "hog" and self.patch % self.stride:
            raise ValueError(f"{fn}(): descriptor 'hog' needs patch to be a multiple of stride (a block of "
                             f"patch // stride cells of stride pixels), got patch {patch} and stride {stride}")
        self.orientations = _positive_int(orientations, "orientations", fn)
        self.max_descriptors = _positive_int(max_descriptors, "max_descriptors", fn)
        self.max_iter = _positive_int(max_iter, "max_iter", fn)
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"{fn}(): seed must be an int, got {seed!r}")
        if seed < 0:
            raise ValueError(f"{fn}(): seed must be >= 0, got {seed!r}")
        self.seed = int(seed)
        self.codebook_ = self.inertia_ = self.n_iter_ = self.channels_ = None

    def __repr__(self):
        return (f"BagOfWords(n_words={self.n_words}, descriptor={self.descriptor!r}, patch={self.patch}, "
                f"stride={self.stride}" + (f", orientations={self.orientations}" if self.descriptor == "hog"
                                           else "") + f", seed={self.seed})")

    def fit(self, images):
        """Fit the codebook on training images (see the class docstring); returns self."""
        x = self._images(images, "fit")
        n = len(x)
        if n == 0:
            raise ValueError("BagOfWords.fit(): images is an empty batch; the codebook needs training images")
        rng = np.random.default_rng(self.seed)
        per_image = int(np.prod(self._grid(x.shape[1:3], "fit")))
        total = n * per_image
        # The sample's positions, in order, so each chunk of images gives its share as it is computed.
        sample = None if total <= self.max_descriptors else np.sort(
            rng.choice(total, self.max_descriptors, replace=False))
        points = []
        for start, desc in self._chunks(x):
            flat = desc.reshape(-1, desc.shape[2])
            if sample is None:
                points.append(flat)
            else:
                lo, hi = np.searchsorted(sample, [start * per_image, (start + len(desc)) * per_image])
                points.append(flat[sample[lo:hi] - start * per_image])
        points = np.concatenate(points)
        if len(points) < self.n_words:
            raise ValueError(f"BagOfWords.fit(): n_words {self.n_words} is more than the {len(points)} "
                             f"descriptors the images give ({n} images x {per_image} grid positions); "
                             "use fewer words or more images")
        self.codebook_, self.inertia_, self.n_iter_ = _kmeans(points, self.n_words, rng, self.max_iter)
        self.channels_ = x.shape[3]
        return self

    def transform(self, images):
        """(N, n_words) float32: each image's histogram of words, summing to 1."""
        words = self.words(images, _fn="transform")
        n, per_image = words.shape
        k = self.n_words
        # One bincount for the whole batch: offset each image's words by its own k bins.
        counts = np.bincount((words + np.arange(n)[:, None] * k).ravel(), minlength=n * k)
        return (counts.reshape(n, k) / per_image).astype(np.float32)

    def fit_transform(self, images):
        """fit(images), then transform(images)."""
        return self.fit(images).transform(images)

    def words(self, images, *, _fn="words"):
        """(N, P) int64: the word of each descriptor, in grid order (row by row)."""
        x = self._fitted_images(images, _fn)
        gy, gx = self._grid(x.shape[1:3], _fn)
        out = np.empty((len(x), gy * gx), np.int64)
        for start, desc in self._chunks(x):
            out[start:start + len(desc)] = _nearest(desc.reshape(-1, desc.shape[2]), self.codebook_)[0].reshape(
                len(desc), -1)
        return out

    def descriptors(self, images):
        """(N, P, D) float32: every descriptor of every image (step 1); needs no fit. Memory grows with
        N * P * D (2,916 values per 64x64 image with the defaults, 43,200 with 8x8 colour patches every 4
        pixels): for many images, prefer transform, which holds a chunk of them at a time."""
        x = self._images(images, "descriptors")
        gy, gx = self._grid(x.shape[1:3], "descriptors")
        return np.concatenate([d for _, d in self._chunks(x)]) if len(x) else \
            np.empty((0, gy * gx, self._dimension(x.shape[3])), np.float32)

    # -- helpers --

    def _images(self, images, method):
        fn = f"BagOfWords.{method}"
        x = _batch(images, fn, uint8_as=None)  # uint8 is scaled chunk by chunk (_describe), not copied whole
        if x.dtype != np.uint8 and not np.isfinite(x).all():
            raise ValueError(f"{fn}(): images contain NaN or infinity")
        self._grid(x.shape[1:3], method)
        return x

    def _fitted_images(self, images, method):
        if self.codebook_ is None:
            raise ValueError(f"BagOfWords.{method}(): the codebook is not fitted yet; call fit(training images) "
                             "first")
        x = self._images(images, method)
        if x.shape[3] != self.channels_:
            raise ValueError(f"BagOfWords.{method}(): images have {x.shape[3]} channel(s), but the codebook "
                             f"was fitted on images with {self.channels_}")
        return x

    def _grid(self, size, method):
        """(rows, columns) of the grid of windows on an image of `size` (H, W) pixels."""
        H, W = size
        if H < self.patch or W < self.patch:
            raise ValueError(f"BagOfWords.{method}(): images of {H}x{W} pixels are smaller than one patch of "
                             f"{self.patch}x{self.patch}")
        return (H - self.patch) // self.stride + 1, (W - self.patch) // self.stride + 1

    def _dimension(self, channels):
        if self.descriptor == "hog":
            return (self.patch // self.stride) ** 2 * self.orientations
        return channels * self.patch ** 2

    def _chunks(self, x):
        """(first image, its chunk's descriptors (n, P, D) float32) for consecutive chunks of images."""
        gy, gx = self._grid(x.shape[1:3], "descriptors")
        # Bounded by the descriptors, and by the images themselves as floats (HOG's 2,916 descriptor values
        # of a 64x64x3 image are fewer than its 12,288 pixels).
        per_image = max(gy * gx * self._dimension(x.shape[3]), int(np.prod(x.shape[1:])))
        step = max(1, _CHUNK_FLOATS // per_image)
        for start in range(0, len(x), step):
            yield start, self._describe(x[start:start + step], gy * gx)

    def _describe(self, x, positions):
        """Descriptors (n, P, D) float32 of a chunk of images x (n, H, W, C), uint8 (scaled here) or float."""
        n, p, s = len(x), self.patch, self.stride
        if self.descriptor == "hog":
            cells = p // s
            blocks = hog(x, self.orientations, (s, s), (cells, cells))
            return blocks.astype(np.float32, copy=False).reshape(n, positions, -1)
        windows = np.lib.stride_tricks.sliding_window_view(x, (p, p), axis=(1, 2))[:, ::s, ::s]
        d = windows.reshape(n, positions, -1).astype(np.float32)  # (channel, row, column) per window
        if x.dtype == np.uint8:
            d /= np.float32(255)
        d -= d.mean(axis=2, keepdims=True)
        d /= np.sqrt(np.einsum("npd,npd->np", d, d)[..., None] / np.float32(d.shape[2]) + np.float32(_PATCH_EPS))
        return d


def _nearest(points, centres):
    """For each row of points (M, D), the index of its nearest row of centres (K, D) and the squared
    distance to it: (M,) int64, (M,) float32.

    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, and ||x||^2 is the same for every c: so the nearest centre has
    the largest x.c - ||c||^2 / 2, which is a matrix product (BLAS) and a subtraction, computed for chunks
    of rows so the (rows, K) scores stay small. argmax keeps the first of equal scores."""
    half = 0.5 * np.einsum("ij,ij->i", centres, centres)
    labels = np.empty(len(points), np.int64)
    d2 = np.empty(len(points), np.float32)
    rows = max(1, _CHUNK_FLOATS // len(centres))
    for start in range(0, len(points), rows):
        block = points[start:start + rows]
        scores = block @ centres.T
        scores -= half
        best = scores.argmax(axis=1)
        labels[start:start + rows] = best
        d2[start:start + rows] = np.einsum("ij,ij->i", block, block) - 2 * np.take_along_axis(
            scores, best[:, None], axis=1)[:, 0]
    np.maximum(d2, 0, out=d2)  # rounding can take a zero distance below 0
    return labels, d2


def _kmeans(points, k, rng, max_iter):
    """Lloyd's k-means on points (M, D) float32 with k-means++ seeding: (centres (k, D) float32, inertia,
    iterations). A cluster left empty restarts at the point farthest from its centre."""
    centres = _kmeans_plus_plus(points, k, rng)
    labels, d2 = _nearest(points, centres)
    for n_iter in range(1, max_iter + 1):
        counts = np.bincount(labels, minlength=k)
        # Sum each cluster's points: sort them by cluster, then add up each run (in float64).
        order = np.argsort(labels, kind="stable")
        filled = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(points[order].astype(np.float64), starts, axis=0)
        centres[filled] = sums / counts[filled, None]
        if not filled.all():
            centres[~filled] = points[np.argsort(-d2, kind="stable")[:np.count_nonzero(~filled)]]
        new_labels, d2 = _nearest(points, centres)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return centres, float(d2.sum(dtype=np.float64)), n_iter


def _kmeans_plus_plus(points, k, rng):
    """k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre a random point, each next one a
    point drawn with probability proportional to its squared distance to the nearest centre so far."""
    m = len(points)
    norms = np.einsum("ij,ij->i", points, points)

    def squared_distances(i):
        # einsum, not a BLAS matrix-vector product (points @ points[i]): k of those, each too small to share
        # among threads, leave a multi-threaded BLAS waking and spinning its threads, 15x slower on a busy
        # 2-core machine. einsum without `optimize` is one plain pass.
        return np.maximum(norms - 2 * np.einsum("ij,j->i", points, points[i]) + norms[i], 0)

    chosen = [int(rng.integers(m))]
    d2 = squared_distances(chosen[0])
    for _ in range(1, k):
        cumulative = np.cumsum(d2, dtype=np.float64)
        # All distances 0 (fewer distinct points than k): any point will do; duplicates stay empty words.
        i = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), m - 1)
        chosen.append(i)
        np.minimum(d2, squared_distances(i), out=d2)
    return points[chosen].astype(np.float32)
