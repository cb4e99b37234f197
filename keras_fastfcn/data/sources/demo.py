"""The demo dataset: coloured shapes on textured backgrounds, generated in memory.

Five classes: background, circle, rectangle, triangle, ring. Each image has 1-4
shapes (each in a colour family of its class, with jitter and texture; rectangles
at 8 orientations, rings with a see-through hole) over one of four backgrounds
(noise, stripes, gradient, checkerboard) in muted colours, plus pixel noise. The
one- to two-pixel band where two regions meet is labelled 255 (ignore), like the
object boundaries of Pascal VOC. Defaults: 96 x 96 pixels, 240 training and 60
validation images, seed 0; generation takes well under a second.

Everything is drawn from `numpy.random.RandomState` (whose stream NumPy keeps
stable across versions) with 64-bit integer draws, and the drawing uses only
integer and correctly rounded float arithmetic (no sin/cos/exp), so the same
arguments give the same bytes on every machine.

Example:
>>> from keras_fastfcn.data import demo
>>> images, labels = demo.generate("train", num_images=4)
>>> images.shape, labels.dtype
((4, 96, 96, 3), dtype('uint8'))
"""

import functools
import os
import pathlib
import zlib

import numpy as np

from keras_fastfcn.data import palettes
from keras_fastfcn.fileio import atomic_path
from keras_fastfcn.data.sources.base import IGNORE_LABEL, Source, _attach_lazy

__all__ = ["DemoSource", "generate", "write_folder", "CLASSES"]

CLASSES = palettes.DEMO_CLASSES
# Colour family of each shape class (jittered per shape by +-25 per channel): far
# apart from each other and from the muted backgrounds, so colour alone is a strong
# cue and a small network learns the demo in minutes on a CPU.
_SHAPE_RGB = {1: (220, 35, 45), 2: (30, 185, 60), 3: (35, 75, 225), 4: (235, 195, 25)}
_SHAPE_JITTER = 25
# Integer direction vectors: rectangles at 0, 26.6, 45 and 63.4 degrees (and their
# perpendiculars) without trigonometry.
_DIRECTIONS = ((1, 0), (2, 1), (1, 1), (1, 2))
_STRIPE_DIRECTIONS = ((1, 0), (0, 1), (1, 1), (1, -1))


def _randint(rng, low, high, size=None):
    # Explicit int64: the default integer type is platform dependent and changes the
    # stream of RandomState.randint.
    return rng.randint(low, high, size=size, dtype=np.int64)


def _background(rng, yy, xx):
    grey = _randint(rng, 60, 196)
    c1 = (grey + _randint(rng, -15, 16, 3)).astype(np.float64)
    c2 = c1 + float(_randint(rng, -70, 71))
    kind = _randint(rng, 0, 4)
    if kind == 0:  # noise
        return c1 + _randint(rng, -30, 31, xx.shape + (1,))
    if kind == 1:  # stripes (triangle wave)
        period = _randint(rng, 6, 17)
        a, b = _STRIPE_DIRECTIONS[_randint(rng, 0, 4)]
        t = (xx * a + yy * b) % period
        weight = np.abs(2 * t - period) / period
    elif kind == 2:  # linear gradient
        a, b = 0, 0
        while a == 0 and b == 0:
            a, b = _randint(rng, -3, 4), _randint(rng, -3, 4)
        t = xx * a + yy * b
        weight = (t - t.min()) / (t.max() - t.min())
    else:  # checkerboard
        cell = _randint(rng, 6, 17)
        weight = ((xx // cell + yy // cell) % 2).astype(np.float64)
    return c1 + (c2 - c1) * weight[..., None]


def _shape_mask(rng, cls, yy, xx, size):
    r_min, r_max = max(3, round(size * 0.09)), max(4, round(size * 0.22))
    margin = round(size * 0.12)
    cy, cx = _randint(rng, margin, size - margin), _randint(rng, margin, size - margin)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # circle
        r = _randint(rng, r_min, r_max + 1)
        return dx * dx + dy * dy <= r * r
    if cls == 2:  # rectangle, possibly rotated
        half_w, half_h = _randint(rng, r_min, r_max + 1), _randint(rng, r_min - 2, r_max)
        a, b = _DIRECTIONS[_randint(rng, 0, len(_DIRECTIONS))]
        norm = float(np.sqrt(a * a + b * b))
        u, v = dx * a + dy * b, dy * a - dx * b
        return (np.abs(u) <= half_w * norm) & (np.abs(v) <= half_h * norm)
    if cls == 3:  # triangle: random vertices, rejected until large and not thin
        radius = _randint(rng, r_min + 2, r_max + 3)
        for _ in range(100):
            pts = _randint(rng, -radius, radius + 1, (3, 2))
            edges = pts[[1, 2, 0]] - pts
            area2 = abs(edges[0, 0] * edges[2, 1] - edges[0, 1] * edges[2, 0])
            if area2 >= radius * radius and (edges ** 2).sum(1).min() >= radius * radius:
                break
        sides = [(dx - px) * ey - (dy - py) * ex
                 for (px, py), (ex, ey) in zip(pts.tolist(), edges.tolist())]
        return (np.minimum.reduce(sides) >= 0) | (np.maximum.reduce(sides) <= 0)
    # ring
    outer = _randint(rng, r_min + 3, r_max + 3)
    inner = outer * _randint(rng, 45, 61) / 100.0
    d2 = dx * dx + dy * dy
    return (d2 <= outer * outer) & (d2 >= inner * inner)


def _boundaries(label):
    """Pixels with a 4-neighbour of another class (both sides of every edge)."""
    edge = np.zeros(label.shape, bool)
    vertical = label[1:, :] != label[:-1, :]
    horizontal = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def _example(rng, size, ignore_border):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.int64)
    image = _background(rng, yy, xx)
    label = np.zeros((size, size), np.uint8)
    for _ in range(_randint(rng, 1, 5)):
        cls = int(_randint(rng, 1, 5))
        mask = _shape_mask(rng, cls, yy, xx, size)
        colour = np.asarray(_SHAPE_RGB[cls], np.int64) + _randint(
            rng, -_SHAPE_JITTER, _SHAPE_JITTER + 1, 3)
        fill = colour + _randint(rng, -15, 16, (size, size, 1))
        image[mask] = fill[mask]
        label[mask] = cls
    image = image + _randint(rng, -10, 11, (size, size, 3))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if ignore_border:
        label[_boundaries(label)] = IGNORE_LABEL
    return image, label


@functools.lru_cache(maxsize=8)
def _generate_cached(split, num_images, size, seed, ignore_border):
    rng = np.random.RandomState([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode())])
    images = np.empty((num_images, size, size, 3), np.uint8)
    labels = np.empty((num_images, size, size), np.uint8)
    for i in range(num_images):
        images[i], labels[i] = _example(rng, size, ignore_border)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def generate(split="train", num_images=240, size=96, seed=0, ignore_border=True):
    """Generates demo images and labels (cached per arguments; read-only arrays).

    Args:
        split: split name; each name draws its own images from `seed`.
        num_images: number of images.
        size: height and width in pixels (>= 32).
        seed: int seed.
        ignore_border: label the pixels along class boundaries 255 (ignore).

    Returns:
        `(images uint8 (N, size, size, 3), labels uint8 (N, size, size))`, labels in
        `0..4` and 255.

    Example:
    >>> _, labels = generate("val", num_images=2, size=64)
    >>> labels.shape, int(labels.max())
    ((2, 64, 64), 255)
    """
    size, num_images = int(size), int(num_images)
    if size < 32:
        raise ValueError(f"demo size must be >= 32 pixels, got {size}.")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    return _generate_cached(str(split), num_images, size, int(seed), bool(ignore_border))


class DemoSource(Source):
    """The generated demo dataset as a `Source` (splits `train` and `val`).

    Args:
        size: image size in pixels.
        num_train, num_val: images per split.
        seed: int seed (the same seed gives the same dataset on every machine).
        ignore_border: label class boundaries 255.

    Example:
    >>> src = DemoSource(num_train=8, num_val=4, size=64)
    >>> image, label = next(iter(src.dataset("train")))
    >>> image.shape, label.dtype
    (TensorShape([64, 64, 3]), tf.int32)
    """

    def __init__(self, size=96, num_train=240, num_val=60, seed=0, ignore_border=True):
        super().__init__("demo", len(CLASSES), CLASSES, palettes.get_palette("demo"),
                         splits=("train", "val"))
        self._counts = {"train": int(num_train), "val": int(num_val)}
        self._args = dict(size=int(size), seed=int(seed), ignore_border=bool(ignore_border))
        generate("train", num_images=1, **self._args)  # validates the arguments early

    def arrays(self, split):
        """`(images uint8 (N, H, W, 3), labels uint8 (N, H, W))` of `split`."""
        split = self._split(split)
        return generate(split, num_images=self._counts[split], **self._args)

    def num_examples(self, split):
        return self._counts[self._split(split)]

    def example(self, split, index):
        images, labels = self.arrays(split)
        return images[index], labels[index].astype(np.int32)

    def dataset(self, split):
        import tensorflow as tf

        images, labels = self.arrays(split)
        images_t, labels_t = tf.constant(images), tf.constant(labels)
        keys = tf.data.Dataset.range(len(images))

        def load(index):
            return tf.gather(images_t, index), tf.cast(tf.gather(labels_t, index), tf.int32)

        ds = keys.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _attach_lazy(ds, keys, load, len(images), keys_are_small=True)


def write_folder(path, size=96, num_train=240, num_val=60, seed=0, overwrite=False):
    """Writes the demo dataset in the folder layout (PNG images and labels).

    Written to a temporary sibling folder first and renamed into place, so `path`
    never holds a partial dataset. Reading it back with `folder_source(path)` gives
    exactly the in-memory dataset.

    Args:
        path: target folder (`path/train/images`, `path/train/labels`, `path/val/...`,
            `path/classes.txt`).
        size, num_train, num_val, seed: as in `DemoSource`.
        overwrite: replace an existing `path`.

    Returns:
        The `pathlib.Path` written.

    Example:
    >>> write_folder("/tmp/kf_demo", num_train=4, num_val=2, overwrite=True)  # doctest: +SKIP
    """
    from PIL import Image

    target = pathlib.Path(os.path.expanduser(str(path))).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    with atomic_path(target, is_dir=True) as tmp:
        tmp = pathlib.Path(tmp)
        for split, count in (("train", num_train), ("val", num_val)):
            images, labels = generate(split, num_images=count, size=size, seed=seed)
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "labels").mkdir(parents=True)
            for i, (image, label) in enumerate(zip(images, labels)):
                stem = f"demo_{split}_{i:04d}"
                Image.fromarray(image).save(tmp / split / "images" / f"{stem}.png")
                Image.fromarray(label).save(tmp / split / "labels" / f"{stem}.png")
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    return target
