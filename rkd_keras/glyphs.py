"""Glyphs: a procedurally generated many-class dataset of stroke drawings, offline and deterministic.

A stand-in for the paper's many-class datasets (CUB: 100 training classes and
100 unseen), which cannot be downloaded everywhere: `NUM_CLASSES` classes of
`IMAGES_PER_CLASS` grey `IMAGE_SIZE`² images, as Omniglot's characters. Each
class is a few random strokes (cubic Bézier curves); each image draws its
class's strokes with jittered control points, a random affine transform
(rotation, scale, shear, translation), a random stroke width, anti-aliased,
plus Gaussian pixel noise. The jitter is what makes learning matter: raw
pixels retrieve the unseen classes poorly, a trained network well (the
measured numbers are in the README).

Plain NumPy, no TensorFlow, vectorised: the default 8,000 images take seconds
(`benchmarks/glyphs.py`), once per process. The same seed gives the same
bytes (`numpy.random.Generator(PCG64)`, whose streams NumPy keeps stable;
the ink is drawn with IEEE-rounded arithmetic only). The affine transform's
sine and cosine come from the platform's maths library, which may differ in
the last bit between machines: a pixel could then differ by one grey level.

`data.load_dataset("glyphs", ...)` splits them as the other datasets:
metric learning trains on the first half of the classes and tests on the
others; classification uses every class, `TEST_FRACTION` of each class's
images held out for test.
"""

import functools

import numpy as np

NUM_CLASSES = 400
IMAGES_PER_CLASS = 20
IMAGE_SIZE = 32
# Classification: the share of each class's images held out for test (its first ones in the stored order).
TEST_FRACTION = 0.2

# The generator's settings, chosen by measurement (README, "Glyphs"): a class
# is 2–4 strokes; an image jitters each control point by JITTER (a share of
# the canvas), rotates by up to ROTATION degrees, scales by SCALE, shears by
# up to SHEAR, shifts by up to SHIFT, and draws strokes WIDTH pixels wide,
# with Gaussian noise of NOISE (a share of full ink).
STROKES = (2, 4)
JITTER = 0.05
ROTATION = 25.0
SCALE = (0.8, 1.15)
SHEAR = 0.2
SHIFT = 0.12
WIDTH = (1.2, 2.6)
NOISE = 0.15
_POINTS_PER_STROKE = 48  # at most about a pixel apart on a stroke across the canvas
_REACH = 2  # pixels each way around a curve's point that its ink can reach (w/2 + 1/2 <= 1.8)
_CHUNK = 500  # images drawn at once: a few (points, 25) float32 arrays of ~5 MB


def generate(
    num_classes: int = NUM_CLASSES, images_per_class: int = IMAGES_PER_CLASS, *, image_size: int = IMAGE_SIZE, seed: int = 0
):
    """The glyph images and labels of a seed.

    Args:
        num_classes: Classes, each its own random strokes.
        images_per_class: Images of each class.
        image_size: Side of the square grey images.
        seed: The classes' strokes and every image's jitter follow from it.

    Returns:
        `(images, labels)`: uint8 `(N, image_size, image_size)` and int64
        `(N,)`, N = `num_classes · images_per_class`, class by class (each
        class's images in the order they were drawn). Read-only arrays.

    Example:
    >>> images, labels = generate(3, 2, image_size=16)
    >>> images.shape, images.dtype, labels.tolist()
    ((6, 16, 16), dtype('uint8'), [0, 0, 1, 1, 2, 2])
    """
    from rkd_keras.checks import check_int

    num_classes = check_int("num_classes", num_classes, low=1)
    images_per_class = check_int("images_per_class", images_per_class, low=1)
    image_size = check_int("image_size", image_size, low=4)
    seed = check_int("seed", seed, low=0)
    return _generate(num_classes, images_per_class, image_size, seed)


@functools.lru_cache(maxsize=4)
def _generate(num_classes, images_per_class, image_size, seed):
    rng = np.random.default_rng(seed)
    most = STROKES[1]
    # Each class: `most` strokes of 4 control points in the canvas [0, 1]², of which the first `strokes` are drawn.
    controls = rng.uniform(0.1, 0.9, size=(num_classes, most, 4, 2))
    strokes = rng.integers(STROKES[0], most + 1, size=num_classes)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    n = len(labels)
    points = controls[labels] + rng.normal(0.0, JITTER, size=(n, most, 4, 2))
    angle = np.deg2rad(rng.uniform(-ROTATION, ROTATION, n))
    scale = rng.uniform(*SCALE, n)
    shear = rng.uniform(-SHEAR, SHEAR, n)
    shift = rng.uniform(-SHIFT, SHIFT, size=(n, 2))
    width = rng.uniform(*WIDTH, n)
    noise_seed = int(rng.integers(2**63))
    cos, sin = np.cos(angle), np.sin(angle)
    # Rotation · shear · scale, about the canvas centre.
    affine = scale[:, None, None] * np.stack(
        [np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], -2
    )
    centred = points - 0.5
    points = np.einsum("nij,nskj->nski", affine, centred) + 0.5 + shift[:, None, None, :]
    curves = _bezier(points, _POINTS_PER_STROKE) * image_size  # (n, most, T, 2) in pixels
    drawn = np.arange(most)[None, :] < strokes[labels][:, None]
    ink = np.zeros((n, image_size * image_size))
    for first in range(0, n, _CHUNK):
        part = slice(first, first + _CHUNK)
        _draw(ink[part], curves[part], drawn[part], width[part], image_size)
    ink += np.random.default_rng(noise_seed).normal(0.0, NOISE, size=ink.shape)
    images = np.rint(255.0 * np.clip(ink, 0.0, 1.0)).astype(np.uint8)
    images = images.reshape(n, image_size, image_size)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _bezier(controls, count):
    """`count` points along each cubic Bézier curve of `controls` `(..., 4, 2)`: `(..., count, 2)`."""
    t = np.linspace(0.0, 1.0, count)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)  # (count, 4)
    return np.einsum("tc,...cd->...td", basis, controls)


def _draw(ink, curves, drawn, width, image_size):
    """Draws the curves into `ink` `(images, pixels)`: each pixel's ink is `clip(w/2 + 1/2 − d, 0, 1)`.

    `d` is the distance from the pixel's centre to the nearest point of a
    drawn curve, the curve being `_POINTS_PER_STROKE` points at most about a
    pixel apart; only the pixels within `_REACH` of each point are visited
    (a stroke's ink ends at `w/2 + 1/2` < `_REACH`), so the cost grows with
    the curves' points, not with every pixel against every point.
    """
    images, most, count, _ = curves.shape
    image = np.repeat(np.arange(images), most * count)[np.repeat(drawn.ravel(), count)]
    points = curves[drawn].reshape(-1, 2).astype(np.float32)  # the drawn strokes' points, (M, 2)
    half_width = (width[image] / 2 + 0.5).astype(np.float32)[:, None]
    offsets = np.arange(-_REACH, _REACH + 1, dtype=np.float32)
    dx, dy = (grid.ravel() for grid in np.meshgrid(offsets, offsets, indexing="xy"))
    column = np.floor(points[:, :1]) + dx  # (M, window)
    row = np.floor(points[:, 1:]) + dy
    # sqrt, not hypot: IEEE-rounded, so every machine draws the same ink.
    distance = np.sqrt(np.square(column + 0.5 - points[:, :1]) + np.square(row + 0.5 - points[:, 1:]))
    value = np.minimum(half_width - distance, 1.0)
    inside = (column >= 0) & (column < image_size) & (row >= 0) & (row < image_size) & (value > 0)
    index = (image[:, None] * image_size + row.astype(np.int64)) * image_size + column.astype(np.int64)
    np.maximum.at(ink.reshape(-1), index[inside], value[inside])
