"""cyconv.features: raw pixels, colour histograms and HOG.

HOG is held to three answers at once: the compiled kernel, its NumPy twin
hog_reference, and scikit-image's hog (the independent implementation both
claim to reproduce). Colour histograms are held to np.histogram per channel.
"""

import numpy as np
import pytest
from skimage.feature import hog as skimage_hog

import cyconv
from cyconv import features
from conftest import KERNEL_TESTS

# HOG is a compiled kernel: CI runs these on the serial and sanitizer builds too.
pytestmark = KERNEL_TESTS

# hog reproduces skimage's arithmetic step by step (including its float cell
# accumulator), so the agreement is far tighter than the general kernel table.
HOG_TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}

SIZES = [(28, 28), (29, 31), (64, 48)]
# (orientations, pixels_per_cell, cells_per_block): defaults, non-square cells
# and blocks, odd cell sizes, one-pixel cells, a single bin.
HOG_PARAMS = [
    (9, (7, 7), (2, 2)),
    (9, (8, 8), (3, 3)),
    (4, (5, 3), (1, 2)),
    (12, (6, 9), (2, 1)),
    (2, (1, 1), (1, 1)),
    (1, (4, 4), (2, 2)),
]


def random_images(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape).astype(dtype)


def skimage_batch(images, orientations, pixels_per_cell, cells_per_block):
    colour = images.ndim == 4
    return np.stack([
        skimage_hog(image, orientations, pixels_per_cell, cells_per_block, block_norm="L2-Hys",
                    channel_axis=-1 if colour else None)
        for image in images
    ])


# ---------------------------------------------------------------------------
# pixels

@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 5, 7, 3), (4, 28, 28)], ids=str)
def test_pixels_uint8(shape):
    x = random_images(shape, np.uint8)
    out = features.pixels(x)
    assert out.dtype == np.float32 and out.shape == (shape[0], int(np.prod(shape[1:])))
    np.testing.assert_array_equal(out, x.reshape(shape[0], -1).astype(np.float32) / np.float32(255))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_pixels_float_passes_through(dtype):
    x = random_images((2, 5, 7, 3), dtype)
    out = features.pixels(x)
    assert out.dtype == np.float32 and out.shape == (2, 105)
    np.testing.assert_array_equal(out, x.reshape(2, -1).astype(np.float32))
    # Row-major (row, column, channel) order.
    assert out[1, 3 * 7 * 3 + 4 * 3 + 2] == np.float32(x[1, 3, 4, 2])


def test_pixels_course_example_and_empty_batch():
    assert features.pixels(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 12288)
    assert features.pixels(np.zeros((0, 4, 4), np.float32)).shape == (0, 16)


# ---------------------------------------------------------------------------
# color_histogram

def histogram_by_numpy(image, bins):
    """Each channel's np.histogram over [0, 1] in float64, / pixel count, concatenated."""
    x = image.astype(np.float64) / 255 if image.dtype == np.uint8 else image.astype(np.float64)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return np.concatenate([
        np.histogram(x[:, :, c], bins=bins, range=(0, 1))[0] / (x.shape[0] * x.shape[1])
        for c in range(x.shape[2])
    ])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 17, 13), (2, 9, 11, 3), (1, 1, 1, 4)], ids=str)
@pytest.mark.parametrize("bins", [1, 7, 16, 256])
def test_color_histogram_matches_numpy(shape, dtype, bins):
    x = random_images(shape, dtype)
    out = features.color_histogram(x, bins=bins)
    channels = shape[3] if len(shape) == 4 else 1
    assert out.dtype == np.float32 and out.shape == (shape[0], channels * bins)
    expected = np.stack([histogram_by_numpy(image, bins) for image in x])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)
    np.testing.assert_allclose(out.reshape(shape[0], channels, bins).sum(axis=2), 1, rtol=1e-5)


def test_color_histogram_edges():
    # 0, 1 and the values exactly on bin edges, where a careless floor() differs from np.histogram.
    bins = 10
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.7, 0.9, 1.0, np.nextafter(0.3, 0)], np.float64).reshape(1, 2, 4)
    np.testing.assert_allclose(features.color_histogram(x, bins)[0], histogram_by_numpy(x[0], bins), rtol=1e-6)
    # uint8: every value 0..255.
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    for bins in (3, 10, 16, 255):
        np.testing.assert_allclose(features.color_histogram(x, bins)[0], histogram_by_numpy(x[0], bins),
                                   rtol=1e-6)


def test_color_histogram_list_of_different_sizes():
    images = [random_images((17, 13, 3), np.uint8, 1), random_images((5, 40, 3), np.float32, 2),
              random_images((1, 1, 3), np.float64, 3)]
    out = features.color_histogram(images, bins=8)
    assert out.shape == (3, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.stack([histogram_by_numpy(im, 8) for im in images]), rtol=1e-6)
    gray = [random_images((7, 9), np.uint8), random_images((30, 2), np.uint8)]
    np.testing.assert_allclose(features.color_histogram(gray, bins=4),
                               np.stack([histogram_by_numpy(im, 4) for im in gray]), rtol=1e-6)


def test_color_histogram_large_batch_is_chunked(monkeypatch):
    monkeypatch.setattr(features, "_HIST_CHUNK", 100)
    x = random_images((7, 5, 6, 3), np.uint8)
    np.testing.assert_allclose(features.color_histogram(x, 5), np.stack([histogram_by_numpy(im, 5) for im in x]),
                               rtol=1e-6)


# ---------------------------------------------------------------------------
# hog

def hog_cases():
    for size in SIZES:
        for orientations, cell, block in HOG_PARAMS:
            if size[0] >= cell[0] * block[0] and size[1] >= cell[1] * block[1]:
                name = f"{size[0]}x{size[1]}-o{orientations}-c{cell[0]}x{cell[1]}-b{block[0]}x{block[1]}"
                yield pytest.param(size, orientations, cell, block, id=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, orientations, cell, block", list(hog_cases()))
def test_hog_matches_reference_and_skimage(size, orientations, cell, block, dtype):
    x = random_images((3,) + size, dtype)
    out = features.hog(x, orientations, cell, block)
    ref = features.hog_reference(x, orientations, cell, block)
    expected = skimage_batch(x, orientations, cell, block)
    assert out.dtype == dtype and ref.dtype == dtype
    assert out.shape == ref.shape == expected.shape
    np.testing.assert_allclose(out, ref, **HOG_TOL[dtype])
    np.testing.assert_allclose(out, expected, **HOG_TOL[dtype])
    np.testing.assert_allclose(ref, expected, **HOG_TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hog_colour_picks_the_strongest_channel_like_skimage(dtype):
    x = random_images((3, 29, 31, 3), dtype)
    expected = skimage_batch(x, 9, (7, 7), (2, 2))
    np.testing.assert_allclose(features.hog(x), expected, **HOG_TOL[dtype])
    np.testing.assert_allclose(features.hog_reference(x), expected, **HOG_TOL[dtype])
    # One channel given as (N, H, W, 1) is the grayscale image.
    np.testing.assert_array_equal(features.hog(x[..., :1]), features.hog(x[..., 0]))


def test_hog_uint8_is_scaled_and_integer_gradients_match():
    # uint8 images: many gradients exactly horizontal, vertical or diagonal, so
    # orientations land exactly on bin edges (0, 45, 90, 135 degrees).
    x = random_images((4, 28, 28), np.uint8)
    x[:, 10:20, 5:25] = 255
    x[0, ::2] = 0
    scaled = x.astype(np.float32) / np.float32(255)
    for orientations in (9, 4, 8, 2):
        out = features.hog(x, orientations)
        assert out.dtype == np.float32 and out.shape == (4, 3 * 3 * 2 * 2 * orientations)
        np.testing.assert_allclose(out, skimage_batch(scaled, orientations, (7, 7), (2, 2)), **HOG_TOL[np.float32])
        np.testing.assert_allclose(out, features.hog_reference(x, orientations), **HOG_TOL[np.float32])


def test_hog_flat_image_is_zero_and_empty_batch():
    assert not features.hog(np.full((2, 28, 28), 0.5)).any()
    assert features.hog(np.zeros((0, 28, 28), np.float32)).shape == (0, 324)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hog_thread_count_does_not_change_results(dtype):
    x = random_images((37, 29, 31), dtype)
    with cyconv.set_num_threads(1):
        one = features.hog(x, 8, (6, 5), (2, 3))
    with cyconv.set_num_threads(2):
        two = features.hog(x, 8, (6, 5), (2, 3))
    np.testing.assert_array_equal(one, two)


def test_hog_non_contiguous_input():
    x = random_images((3, 40, 60), np.float64)[:, ::-1, ::2]
    np.testing.assert_allclose(features.hog(x), skimage_batch(np.ascontiguousarray(x), 9, (7, 7), (2, 2)),
                               **HOG_TOL[np.float64])


# ---------------------------------------------------------------------------
# Bad inputs: clear errors that name the function and the argument.

EXTRACTORS = [features.pixels, features.color_histogram, features.hog, features.hog_reference]


@pytest.mark.parametrize("fn", EXTRACTORS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((28, 28), np.float32), ValueError, r"images must be \(N, H, W\)"),
    (np.zeros((1, 2, 28, 28, 1), np.float32), ValueError, r"images must be \(N, H, W\)"),
    (np.zeros((2, 0, 28), np.float32), ValueError, "zero-size"),
    (np.zeros((2, 28, 28), np.int32), TypeError, "uint8 .* or float"),
    (np.zeros((2, 28, 28), bool), TypeError, "uint8 .* or float"),
    (np.zeros((2, 28, 28), np.complex64), TypeError, "uint8 .* or float"),
    (np.zeros((2, 28, 28), object), TypeError, "uint8 .* or float"),
    ([[0.0, 1.0]], TypeError, "numpy.ndarray"),
], ids=["2d", "5d", "zero-size", "int32", "bool", "complex", "object", "nested-list"])
def test_bad_images(fn, bad, error, match):
    with pytest.raises(error, match=f"{fn.__name__}\\(\\): .*{match}"):
        fn(bad)


@pytest.mark.parametrize("bins, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                         (None, TypeError)])
def test_color_histogram_bad_bins(bins, error):
    with pytest.raises(error, match=r"color_histogram\(\): bins"):
        features.color_histogram(np.zeros((1, 4, 4), np.uint8), bins=bins)


@pytest.mark.parametrize("bad", [np.array([[[1.5]]]), np.array([[[-0.1]]]), np.array([[[np.nan]]])])
def test_color_histogram_values_outside_unit_range(bad):
    with pytest.raises(ValueError, match=r"color_histogram\(\): float images must have values in \[0, 1\]"):
        features.color_histogram(bad)


def test_color_histogram_bad_lists():
    with pytest.raises(ValueError, match=r"color_histogram\(\): images is an empty list"):
        features.color_histogram([])
    with pytest.raises(ValueError, match=r"color_histogram\(\): images must all have the same number of channels"):
        features.color_histogram([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"color_histogram\(\): images\[1\] must be a non-empty"):
        features.color_histogram([np.zeros((4, 4), np.uint8), np.zeros((4,), np.uint8)])
    with pytest.raises(TypeError, match=r"color_histogram\(\): images\[0\] must be uint8"):
        features.color_histogram([np.zeros((4, 4), np.int64)])


@pytest.mark.parametrize("fn", [features.hog, features.hog_reference], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(orientations=0), ValueError, "orientations must be >= 1"),
    (dict(orientations=9.0), TypeError, "orientations must be an int"),
    (dict(pixels_per_cell=(0, 7)), ValueError, "pixels_per_cell must be >= 1"),
    (dict(pixels_per_cell=7), TypeError, "pixels_per_cell must be a"),
    (dict(pixels_per_cell=(7, 7, 7)), TypeError, "pixels_per_cell must be a"),
    (dict(cells_per_block=(2, -1)), ValueError, "cells_per_block must be >= 1"),
    (dict(pixels_per_cell=(29, 7), cells_per_block=(1, 1)), ValueError, "images of 28x28 pixels are too small"),
    (dict(pixels_per_cell=(7, 7), cells_per_block=(5, 2)), ValueError, "images of 28x28 pixels are too small"),
], ids=["orient0", "orient-float", "cell0", "cell-int", "cell-triple", "block-neg", "cell-too-big",
        "block-too-big"])
def test_hog_bad_arguments(fn, kwargs, error, match):
    with pytest.raises(error, match=f"{fn.__name__}\\(\\): {match}"):
        fn(np.zeros((2, 28, 28), np.float32), **kwargs)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_hog_rejects_non_finite(value):
    x = np.zeros((2, 28, 28))
    x[1, 3, 4] = value
    with pytest.raises(ValueError, match=r"hog\(\): images contain NaN or infinity"):
        features.hog(x)
