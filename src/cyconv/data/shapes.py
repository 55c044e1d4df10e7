"""make_shapes: a small generated colour data set of shapes (circle, cross, square, triangle), returned as
an ImageFolder, which `save` writes as PNG files.
"""

from __future__ import annotations

import numpy as np

from .folders import ImageFolder, _allocate
from .images import MAX_IMAGE_SIDE, _is_int


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
