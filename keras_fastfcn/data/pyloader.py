"""The input pipeline without TensorFlow: `keras.utils.PyDataset`s with the official augmentation.

`keras-fastfcn train` feeds `tf.data` (`data.pipelines`) whenever TensorFlow is
installed, on every backend. Hosts with JAX or PyTorch and no TensorFlow (a GPU
machine set up for JAX, say) train from these instead. They are the official
`_sync_transform` / `_val_sync_transform` of wuhuikai/FastFCN
`encoding/datasets/base.py`, written with PIL as the official code is:

1. random horizontal flip (p = 0.5);
2. the short side becomes an integer drawn uniformly from
   `int(lo * base_size)..int(hi * base_size)` (`scale_range=(lo, hi)`, official
   0.5..2.0), the long side `int(long * short / short_original)`; PIL bilinear for the
   image (antialiased when shrinking), nearest for the label;
3. pad right/bottom to `crop_size`: image with 0, label with 255 (as `data.pipelines`,
   see there why 255 rather than the official 0);
4. random `crop_size` crop;
5. PIL `GaussianBlur(radius=U(0, 1))` with p = 0.5, image only.

The tf.data pipeline computes the same transform with TensorFlow's resize, so the two
agree in distribution, not pixel for pixel (PIL rounds the resized image to uint8).
Randomness: the examples' order is a permutation per pass over the data drawn from
`(seed, pass)`, and every example's augmentation from `(seed, position in the
stream)`, so batch `i` is the same whatever thread builds it and a resumed run
(`skip_batches`) continues the same stream.

Example:
>>> from keras_fastfcn import data
>>> from keras_fastfcn.data.pyloader import TrainBatches
>>> batches = TrainBatches(data.get_source("demo"), "train", crop_size=64, base_size=72,
...                        batch_size=4, seed=0)
>>> images, labels = batches[0]
>>> images.shape, labels.shape
((4, 64, 64, 3), (4, 64, 64))
"""

import functools
import math
import os

import keras
import numpy as np
from PIL import Image, ImageFilter

from keras_fastfcn.data.sources.base import IGNORE_LABEL

__all__ = ["TrainBatches", "EvalBatches", "train_example", "val_example"]


def _workers():
    # PIL's resize and blur release the GIL: threads scale over the cores.
    return max(1, min(8, os.cpu_count() or 1))


def _resize(image, label, out_w, out_h):
    img = Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR)
    lab = Image.fromarray(label.astype(np.int32), mode="I").resize((out_w, out_h),
                                                                    Image.NEAREST)
    return img, lab


def train_example(image, label, rng, crop_size, base_size, scale_range=(0.5, 2.0)):
    """The official training transform of one example (module docstring).

    Args:
        image: uint8 `(H, W, 3)`.
        label: int `(H, W)` class ids, 255 = ignore.
        rng: a `numpy.random.Generator`.
        crop_size: output size.
        base_size: base of the random short side.
        scale_range: `(lo, hi)` factors of `base_size` for the short side.

    Returns:
        `(image float32 (crop, crop, 3) 0-255, label int32 (crop, crop))`.
    """
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    h, w = label.shape
    short = int(rng.integers(int(scale_range[0] * base_size),
                             int(scale_range[1] * base_size) + 1))
    if h > w:
        out_w, out_h = short, int(1.0 * h * short / w)
    else:
        out_h, out_w = short, int(1.0 * w * short / h)
    img, lab = _resize(np.ascontiguousarray(image), np.ascontiguousarray(label), out_w, out_h)
    img = np.asarray(img)
    lab = np.asarray(lab, np.int32)
    pad_h, pad_w = max(crop_size - out_h, 0), max(crop_size - out_w, 0)
    if pad_h or pad_w:
        img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)))
        lab = np.pad(lab, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_LABEL)
    top = int(rng.integers(0, img.shape[0] - crop_size + 1))
    left = int(rng.integers(0, img.shape[1] - crop_size + 1))
    img = img[top:top + crop_size, left:left + crop_size]
    lab = lab[top:top + crop_size, left:left + crop_size]
    if rng.random() < 0.5:
        radius = float(rng.random())
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img))
                         .filter(ImageFilter.GaussianBlur(radius=radius)))
    return img.astype(np.float32), lab.astype(np.int32)


def val_example(image, label, crop_size):
    """The official validation transform: short side to `crop_size`, centre crop.

    `crop_size=None` returns the example unchanged (float32 image, int32 label).
    """
    if crop_size is None:
        return image.astype(np.float32), label.astype(np.int32)
    h, w = label.shape
    if w > h:
        out_h, out_w = crop_size, int(1.0 * w * crop_size / h)
    else:
        out_w, out_h = crop_size, int(1.0 * h * crop_size / w)
    img, lab = _resize(image, label, out_w, out_h)
    left = int(round((out_w - crop_size) / 2.0))
    top = int(round((out_h - crop_size) / 2.0))
    box = (left, top, left + crop_size, top + crop_size)
    return (np.asarray(img.crop(box), np.float32), np.asarray(lab.crop(box), np.int32))


class TrainBatches(keras.utils.PyDataset):
    """Endless augmented training batches `(images float32, labels int32)` of a source.

    Batch `i` holds stream positions `(skip_batches + i) * batch_size ...`; each pass
    over the data is a fresh permutation (an incomplete last batch of a pass is not
    formed: the stream simply continues into the next pass).

    Args:
        source: a `Source` with `example()` (file and demo sources).
        split: the split name.
        crop_size: output size.
        base_size: base of the random short side.
        batch_size: images per batch (global batch).
        seed: int; None draws one.
        scale_range: `(lo, hi)` factors of `base_size`.
        skip_batches: batches already consumed (a resumed run).
        workers: threads building batches (default: up to 8, one per core).
    """

    def __init__(self, source, split, crop_size, base_size, batch_size, seed=None,
                 scale_range=(0.5, 2.0), skip_batches=0, workers=None):
        super().__init__(workers=workers or _workers(), use_multiprocessing=False,
                         max_queue_size=16)
        self.source, self.split = source, split
        self.count = int(source.num_examples(split) or 0)
        if self.count < 1:
            raise ValueError(f"{source.name}: split {split!r} has no examples to train on.")
        self.crop_size, self.base_size = int(crop_size), int(base_size)
        self.batch_size = int(batch_size)
        self.seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if seed is None else int(seed)
        self.scale_range = tuple(float(v) for v in scale_range)
        self.skip_batches = int(skip_batches)
        # The pass over the data a batch reads from: its permutation is a function of
        # (seed, pass), cached for the current and the next pass (thread-safe).
        self._order = functools.lru_cache(maxsize=2)(self._permutation)

    @property
    def num_batches(self):
        return None  # endless: fit() runs steps_per_epoch of it per epoch

    def _permutation(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(self.count)

    def __getitem__(self, index):
        first = (self.skip_batches + int(index)) * self.batch_size
        images = np.empty((self.batch_size, self.crop_size, self.crop_size, 3), np.float32)
        labels = np.empty((self.batch_size, self.crop_size, self.crop_size), np.int32)
        for k in range(self.batch_size):
            position = first + k
            epoch, offset = divmod(position, self.count)
            image, label = self.source.example(self.split, int(self._order(epoch)[offset]))
            rng = np.random.default_rng([self.seed, 1, position])
            images[k], labels[k] = train_example(image, label, rng, self.crop_size,
                                                 self.base_size, self.scale_range)
        return images, labels


class EvalBatches(keras.utils.PyDataset):
    """Validation batches in order, the official centre-crop transform.

    Args:
        source: a `Source` with `example()`.
        split: the split name.
        batch_size: images per batch; with `crop_size=None` (whole images of any
            size) it must be 1.
        crop_size: output size, or None for the whole images.
        pad_to: the last batch is padded to a multiple of this with blank images
            labelled 255 (ignored by every score): JAX's DataParallel splits each
            batch evenly over its devices.
        workers: threads (default: up to 8).
    """

    def __init__(self, source, split, batch_size=1, crop_size=None, pad_to=1, workers=None):
        super().__init__(workers=workers or _workers(), use_multiprocessing=False,
                         max_queue_size=16)
        if crop_size is None and batch_size != 1:
            raise ValueError("EvalBatches of whole images (crop_size=None) need batch_size=1.")
        self.source, self.split = source, split
        self.count = int(source.num_examples(split) or 0)
        self.batch_size, self.crop_size, self.pad_to = int(batch_size), crop_size, int(pad_to)

    @property
    def num_batches(self):
        return math.ceil(self.count / self.batch_size)

    def __len__(self):
        return self.num_batches

    def __getitem__(self, index):
        start = int(index) * self.batch_size
        pairs = [val_example(*self.source.example(self.split, i), self.crop_size)
                 for i in range(start, min(start + self.batch_size, self.count))]
        images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        extra = -len(pairs) % self.pad_to
        if extra:
            images = np.concatenate([images, np.zeros((extra,) + images.shape[1:], images.dtype)])
            labels = np.concatenate([labels, np.full((extra,) + labels.shape[1:], IGNORE_LABEL,
                                                     labels.dtype)])
        return images, labels
