"""cyconv.features.BagOfWords: descriptors, k-means codebook, word assignment and histograms.

Each step is held to a brute-force twin written here: descriptors cut out window by window (and HOG
blocks read from hog_reference), words as the argmin of every squared distance computed in float64, and
histograms counted image by image. The codebook is held to what k-means must find on clearly clustered
data.
"""

import numpy as np
import pytest

from cyconv import features
from cyconv.features import BagOfWords


def random_images(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def brute_patches(x, patch, stride):
    """Every window, one by one, normalised as the docstring says: (N, P, D) float64."""
    n, H, W, C = x.shape
    out = []
    for r in range(0, H - patch + 1, stride):
        for c in range(0, W - patch + 1, stride):
            window = x[:, r:r + patch, c:c + patch, :].transpose(0, 3, 1, 2).reshape(n, -1).astype(np.float64)
            centred = window - window.mean(axis=1, keepdims=True)
            out.append(centred / np.sqrt(np.mean(centred ** 2, axis=1, keepdims=True) + 0.01))
    return np.stack(out, axis=1)


def brute_words(descriptors, codebook):
    """The nearest word of every descriptor from all squared distances in float64, and the sorted
    distances (to tell clear choices from near-ties)."""
    d = descriptors.reshape(-1, descriptors.shape[-1]).astype(np.float64)
    dist = ((d[:, None, :] - codebook.astype(np.float64)[None]) ** 2).sum(axis=2)
    return dist.argmin(axis=1).reshape(descriptors.shape[:2]), np.sort(dist, axis=1)


def brute_histograms(words, n_words):
    return np.stack([np.bincount(w, minlength=n_words) / len(w) for w in words])


# ---------------------------------------------------------------------------------------------------------
# Descriptors


@pytest.mark.parametrize("shape, patch, stride", [
    ((3, 16, 16, 3), 8, 4), ((2, 17, 13, 3), 5, 3), ((2, 12, 12), 4, 4), ((1, 9, 9, 2), 9, 1)])
def test_patch_descriptors_match_the_windows_cut_one_by_one(shape, patch, stride):
    x = random_images(shape)
    bow = BagOfWords(descriptor="patch", patch=patch, stride=stride)
    got = bow.descriptors(x)
    expected = brute_patches(x if x.ndim == 4 else x[..., None], patch, stride)
    gy, gx = (shape[1] - patch) // stride + 1, (shape[2] - patch) // stride + 1
    channels = shape[3] if len(shape) == 4 else 1
    assert got.dtype == np.float32 and got.shape == (shape[0], gy * gx, channels * patch * patch)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_patch_descriptors_ignore_brightness_and_keep_the_pattern():
    x = random_images((2, 12, 12, 3)) * 0.5
    bow = BagOfWords(descriptor="patch", patch=6, stride=3)
    d = bow.descriptors(x)
    # Brighter: the same descriptors. Stronger contrast: the same pattern (direction), longer as the
    # contrast rises above the noise floor.
    np.testing.assert_allclose(bow.descriptors(x + 0.3), d, atol=1e-5)
    stronger = bow.descriptors(1.8 * x)
    cosine = (stronger * d).sum(axis=2) / np.linalg.norm(stronger, axis=2) / np.linalg.norm(d, axis=2)
    np.testing.assert_allclose(cosine, 1, rtol=1e-5)
    assert np.all(np.linalg.norm(stronger, axis=2) > np.linalg.norm(d, axis=2))
    # A flat grey patch is the zero vector (a flat coloured one is not: its channels differ).
    np.testing.assert_allclose(bow.descriptors(np.full((1, 12, 12, 3), 0.7, np.float32)), 0, atol=1e-5)


@pytest.mark.parametrize("shape, patch, stride, orientations", [
    ((2, 32, 32, 3), 16, 8, 9), ((2, 20, 27), 8, 4, 6), ((1, 15, 15, 3), 5, 5, 4)])
def test_hog_descriptors_are_hog_blocks_on_the_grid(shape, patch, stride, orientations):
    x = random_images(shape, seed=1)
    cells = patch // stride
    bow = BagOfWords(descriptor="hog", patch=patch, stride=stride, orientations=orientations)
    got = bow.descriptors(x)
    gy, gx = (shape[1] - patch) // stride + 1, (shape[2] - patch) // stride + 1
    expected = features.hog_reference(x, orientations, (stride, stride), (cells, cells))
    assert got.shape == (shape[0], gy * gx, cells * cells * orientations) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-5, atol=1e-6)


def test_the_defaults_are_the_docstring_s():
    bow = BagOfWords()
    assert (bow.n_words, bow.descriptor, bow.patch, bow.stride, bow.orientations) == (400, "hog", 24, 8, 9)
    # "64x64x3 images with the defaults: P = 6 * 6 = 36 descriptors of D = 3 * 3 * 9 = 81 values each."
    assert bow.descriptors(random_images((2, 64, 64, 3))).shape == (2, 36, 81)


def test_uint8_images_are_scaled_as_everywhere_in_features():
    x = np.random.default_rng(2).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    bow = BagOfWords(n_words=5, patch=4, stride=4).fit(x)
    as_float = x.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(bow.descriptors(x), bow.descriptors(as_float))
    np.testing.assert_array_equal(bow.transform(x), bow.transform(as_float))


# ---------------------------------------------------------------------------------------------------------
# Words and histograms against the brute-force twins


@pytest.mark.parametrize("descriptor, patch, stride", [("patch", 6, 3), ("hog", 8, 4)])
def test_words_and_histograms_match_brute_force(descriptor, patch, stride):
    x = random_images((6, 20, 20, 3), seed=3)
    bow = BagOfWords(n_words=12, descriptor=descriptor, patch=patch, stride=stride, seed=1).fit(x)
    test = random_images((5, 20, 20, 3), seed=4)
    words = bow.words(test)
    expected, dist = brute_words(bow.descriptors(test), bow.codebook_)
    clear = (dist[:, 1] - dist[:, 0] > 1e-4 * dist[:, 1]).reshape(words.shape)
    assert clear.mean() > 0.9  # the comparison below is not vacuous
    np.testing.assert_array_equal(words[clear], expected[clear])
    # Where two words are within rounding of each other, either is right: the chosen one is as near.
    chosen = ((bow.descriptors(test).astype(np.float64) - bow.codebook_[words]) ** 2).sum(axis=2)
    np.testing.assert_allclose(chosen.ravel(), dist[:, 0], rtol=1e-4, atol=1e-5)

    hist = bow.transform(test)
    assert hist.dtype == np.float32 and hist.shape == (5, 12)
    np.testing.assert_allclose(hist, brute_histograms(words, 12), rtol=1e-6)
    np.testing.assert_allclose(hist.sum(axis=1), 1, rtol=1e-5)
    assert hist.min() >= 0


def test_nearest_matches_brute_force_on_random_points():
    rng = np.random.default_rng(5)
    points = rng.standard_normal((500, 7)).astype(np.float32)
    centres = rng.standard_normal((9, 7)).astype(np.float32)
    labels, d2 = features._nearest(points, centres)
    expected, dist = brute_words(points[None], centres)
    clear = dist[:, 1] - dist[:, 0] > 1e-4
    np.testing.assert_array_equal(labels[clear], expected[0][clear])
    np.testing.assert_allclose(d2, dist[:, 0], rtol=1e-4, atol=1e-5)


def test_nearest_ties_go_to_the_lower_word():
    centres = np.array([[1, 0], [0, 1], [1, 0]], np.float32)  # words 0 and 2 are the same point
    points = np.array([[1, 0], [0.5, 0.5], [0, 1]], np.float32)  # the middle one is as near to all three
    np.testing.assert_array_equal(features._nearest(points, centres)[0], [0, 0, 1])


def test_small_chunks_give_the_same_answers(monkeypatch):
    x = random_images((7, 16, 16, 3), seed=6)
    reference = BagOfWords(n_words=6, patch=4, stride=4, seed=2).fit(x)
    expected = reference.transform(x), reference.words(x), reference.codebook_
    # A few descriptors at a time, in both the image chunks and the distance chunks.
    monkeypatch.setattr(features, "_CHUNK_FLOATS", 100)
    chunked = BagOfWords(n_words=6, patch=4, stride=4, seed=2).fit(x)
    np.testing.assert_array_equal(chunked.codebook_, expected[2])
    np.testing.assert_array_equal(chunked.words(x), expected[1])
    np.testing.assert_array_equal(chunked.transform(x), expected[0])


@pytest.mark.parametrize("descriptor, patch, stride", [("hog", 24, 8), ("patch", 8, 4)])
def test_memory_is_bounded_by_chunks_not_by_the_number_of_images(descriptor, patch, stride):
    import tracemalloc

    images = np.random.default_rng(12).integers(0, 256, (2000, 64, 64, 3), dtype=np.uint8)  # 24.6 MB
    bow = BagOfWords(n_words=50, descriptor=descriptor, patch=patch, stride=stride, seed=0).fit(images[:100])
    tracemalloc.start()
    try:
        hist = bow.transform(images)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hist.shape == (2000, 50)
    # A float32 copy of the images alone would be 98 MB (their 8x8 patches 346 MB); a chunk is 16 MB.
    assert peak < 48e6, peak


def test_images_of_another_size_are_histograms_too():
    bow = BagOfWords(n_words=4, patch=4, stride=2).fit(random_images((5, 12, 12, 3)))
    for size in (4, 30):
        hist = bow.transform(random_images((3, size, size + 3, 3), seed=7))
        assert hist.shape == (3, 4)
        np.testing.assert_allclose(hist.sum(axis=1), 1, rtol=1e-6)


def test_empty_batch_transforms_to_no_rows():
    bow = BagOfWords(n_words=3, descriptor="patch", patch=4, stride=4).fit(random_images((3, 8, 8)))
    assert bow.transform(np.zeros((0, 8, 8), np.float32)).shape == (0, 3)
    assert bow.descriptors(np.zeros((0, 8, 8), np.float32)).shape == (0, 4, 16)


# ---------------------------------------------------------------------------------------------------------
# The codebook


def tiled_images(n, colours, tile, grid, seed):
    """Images made of tile x tile squares, each one of `colours` (flat, plus a little noise), and the
    colour index of every square."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(colours), (n, grid, grid))
    images = np.repeat(np.repeat(np.asarray(colours, np.float32)[which], tile, axis=1), tile, axis=2)
    images += rng.normal(0, 0.005, images.shape).astype(np.float32)
    return images, which.reshape(n, -1)


COLOURS = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.1, 0.9), (0.8, 0.8, 0.1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_codebook_finds_the_clusters(seed):
    # Every patch is one flat colour, so the descriptors form four tight clusters, far apart.
    x, colour = tiled_images(30, COLOURS, tile=4, grid=4, seed=seed)
    bow = BagOfWords(n_words=4, descriptor="patch", patch=4, stride=4, seed=seed).fit(x)
    words = bow.words(x)
    # Each word holds one colour's patches and each colour one word: a one-to-one map.
    pairs = set(zip(words.ravel().tolist(), colour.ravel().tolist()))
    assert len(pairs) == 4 and len({w for w, _ in pairs}) == 4
    # The words are the colours' normalised patches, and each histogram counts the image's colours.
    for w, c in pairs:
        flat_patch = brute_patches(np.full((1, 4, 4, 3), COLOURS[c], np.float32), 4, 4)[0, 0]
        np.testing.assert_allclose(bow.codebook_[w], flat_patch, atol=0.05)
    to_word = {c: w for w, c in pairs}
    np.testing.assert_allclose(bow.transform(x), brute_histograms(np.vectorize(to_word.get)(colour), 4), rtol=1e-6)
    # All 480 descriptors are clustered; what is left within the clusters is the noise, next to nothing.
    d = bow.descriptors(x).reshape(-1, 48)
    assert bow.inertia_ < 1e-3 * ((d - d.mean(axis=0)) ** 2).sum()


def test_kmeans_separates_gaussian_blobs():
    rng = np.random.default_rng(8)
    means = rng.standard_normal((6, 10)) * 10
    truth = rng.integers(0, 6, 3000)
    points = (means[truth] + rng.standard_normal((3000, 10)) * 0.3).astype(np.float32)
    centres, inertia, n_iter = features._kmeans(points, 6, np.random.default_rng(0), max_iter=50)
    labels = features._nearest(points, centres)[0]
    # The clusters are the blobs (up to their numbering), and the centres their means.
    assert len(set(zip(labels.tolist(), truth.tolist()))) == 6
    for k in range(6):
        np.testing.assert_allclose(centres[k], means[truth[labels == k][0]], atol=0.05)
    assert n_iter < 50  # converged: no point changed cluster
    np.testing.assert_allclose(inertia, 3000 * 10 * 0.3 ** 2, rtol=0.1)


def test_kmeans_with_fewer_distinct_points_than_words():
    points = np.repeat(np.array([[0, 0], [1, 1]], np.float32), 10, axis=0)
    centres, inertia, _ = features._kmeans(points, 3, np.random.default_rng(0), max_iter=10)
    assert centres.shape == (3, 2) and inertia == 0
    assert {tuple(c) for c in centres.tolist()} == {(0, 0), (1, 1)}


def test_same_seed_same_codebook_other_seed_another():
    x = random_images((8, 16, 16, 3), seed=9)
    a = BagOfWords(n_words=10, patch=4, stride=2, seed=3, max_descriptors=200).fit(x)
    b = BagOfWords(n_words=10, patch=4, stride=2, seed=3, max_descriptors=200).fit(x)
    c = BagOfWords(n_words=10, patch=4, stride=2, seed=4, max_descriptors=200).fit(x)
    np.testing.assert_array_equal(a.codebook_, b.codebook_)
    np.testing.assert_array_equal(a.transform(x), b.transform(x))
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    assert not np.array_equal(a.codebook_, c.codebook_)
    # fit starts afresh: fitting again gives the same codebook.
    np.testing.assert_array_equal(a.fit(x).codebook_, b.codebook_)


def test_max_descriptors_bounds_the_sample():
    x = random_images((10, 12, 12), seed=10)  # 10 images x 9 windows = 90 descriptors
    BagOfWords(n_words=90, patch=4, stride=4).fit(x)  # all of them
    with pytest.raises(ValueError, match=r"n_words 31 is more than the 30 descriptors"):
        BagOfWords(n_words=31, patch=4, stride=4, max_descriptors=30).fit(x)
    with pytest.raises(ValueError, match=r"n_words 91 is more than the 90 descriptors .*10 images x 9 grid"):
        BagOfWords(n_words=91, patch=4, stride=4).fit(x)


def test_fit_transform_is_fit_then_transform():
    x = random_images((5, 12, 12, 3), seed=11)
    np.testing.assert_array_equal(BagOfWords(n_words=4, patch=4, stride=4).fit_transform(x),
                                  BagOfWords(n_words=4, patch=4, stride=4).fit(x).transform(x))


# ---------------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_words=0), ValueError, "n_words must be >= 1"),
    (dict(n_words=2.5), TypeError, "n_words must be an int"),
    (dict(n_words=True), TypeError, "n_words must be an int"),
    (dict(descriptor="sift"), ValueError, "descriptor must be one of 'hog', 'patch', got 'sift'"),
    (dict(descriptor=None), ValueError, "descriptor must be one of"),
    (dict(patch=0), ValueError, "patch must be >= 1"),
    (dict(stride=-2), ValueError, "stride must be >= 1"),
    (dict(descriptor="hog", patch=12, stride=5), ValueError, "descriptor 'hog' needs patch to be a multiple of stride"),
    (dict(orientations=0), ValueError, "orientations must be >= 1"),
    (dict(max_descriptors=0), ValueError, "max_descriptors must be >= 1"),
    (dict(max_iter="10"), TypeError, "max_iter must be an int"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=r"BagOfWords\(\): " + match.replace("(", r"\(")):
        BagOfWords(**kwargs)


def test_bad_images_are_refused_clearly():
    bow = BagOfWords(n_words=2, patch=4, stride=4)
    with pytest.raises(ValueError, match=r"BagOfWords.transform\(\): the codebook is not fitted yet"):
        bow.transform(random_images((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"BagOfWords.fit\(\): images is an empty batch"):
        bow.fit(np.zeros((0, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"BagOfWords.fit\(\): images of 3x8 pixels are smaller than one patch"):
        bow.fit(random_images((2, 3, 8)))
    bad = random_images((2, 8, 8, 3))
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"BagOfWords.fit\(\): images contain NaN"):
        bow.fit(bad)
    with pytest.raises(TypeError, match=r"BagOfWords.fit\(\): images must be uint8"):
        bow.fit(np.zeros((2, 8, 8), np.int16))
    with pytest.raises(ValueError, match=r"BagOfWords.descriptors\(\): images must be \(N, H, W\)"):
        bow.descriptors(np.zeros((8, 8), np.float32))
    bow.fit(random_images((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"BagOfWords.words\(\): images have 1 channel\(s\), but the codebook "
                                         r"was fitted on images with 3"):
        bow.words(random_images((2, 8, 8)))
