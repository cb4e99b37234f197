"""Training and evaluation input pipelines, with the official FastFCN augmentation.

`train_pipeline` reproduces `_sync_transform` of the official
encoding/datasets/base.py, in this order:

1. random horizontal flip (p = 0.5);
2. random scale: the **short** side becomes an integer drawn uniformly from
   `int(0.5 * base_size)..int(2.0 * base_size)` (inclusive), the long side
   `int(long * short / short_original)`; bilinear for the image (antialiased when
   shrinking, as PIL's resize), nearest for the label;
3. pad right/bottom to `crop_size` where smaller: image with 0, label with 255;
4. random `crop_size` x `crop_size` crop;
5. Gaussian blur with p = 0.5 and sigma ~ U(0, 1) (PIL's `GaussianBlur(radius)`
   takes the standard deviation), on the image only.

Differences from the official code, and why: padded label pixels are 255 (ignore)
for every dataset; the official pads masks with 0 before its per-dataset label shift,
which makes them ignore for ADE20K and Pascal Context but "background" for VOC. The
image stays float32 (0-255, no rounding to uint8 after resize and blur). Steps 2-4 are
computed in one `ScaleAndTranslate` over only the crop window, which equals resizing
the whole image and cropping, without materialising the up-to-4x-larger image.

Randomness is stateless and keyed per element on `Dataset.random(seed)` drawn after
shuffling, so with a seed the batches do not depend on threading or timing, and each
epoch re-draws. `eval_pipeline` is `_val_sync_transform` (short side to `crop_size`,
centre crop) or, with `crop_size=None`, the whole image at full size.

Example:
>>> from keras_fastfcn import data
>>> src = data.get_source("demo")
>>> ds = data.train_pipeline(src.dataset("train"), 64, 72, batch_size=4, seed=0)
>>> images, labels = next(iter(ds))
>>> images.shape, labels.shape
(TensorShape([4, 64, 64, 3]), TensorShape([4, 64, 64]))
"""

import tensorflow as tf

from keras_fastfcn.data.sources import IGNORE_LABEL, lazy_parts

__all__ = ["train_pipeline", "eval_pipeline", "train_transform", "val_transform",
           "gaussian_blur"]

_AUTOTUNE = tf.data.AUTOTUNE
_BLUR_RADIUS = 3  # taps each side: covers 3 sigma for sigma < 1


def _positive_int(value, what):
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    return int(value)


def _scaled_window(image, label, out_h, out_w, top, left, size_h, size_w):
    """Window `[top, top + size)` x `[left, left + size)` of the image resized to
    `(out_h, out_w)`: bilinear (antialiased) image and nearest label, computed
    without resizing the rest."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    scale = tf.stack([tf.cast(out_h, tf.float32) / tf.cast(h, tf.float32),
                      tf.cast(out_w, tf.float32) / tf.cast(w, tf.float32)])
    translation = -tf.cast(tf.stack([top, left]), tf.float32)
    window = tf.raw_ops.ScaleAndTranslate(
        images=tf.expand_dims(image, 0), size=tf.stack([size_h, size_w]), scale=scale,
        translation=translation, kernel_type="triangle", antialias=True)[0]
    # Nearest neighbour as PIL: output pixel y reads source row floor((y + 0.5) * h / oh).
    rows = (tf.cast(top + tf.range(size_h), tf.float64) + 0.5) * \
        tf.cast(h, tf.float64) / tf.cast(out_h, tf.float64)
    cols = (tf.cast(left + tf.range(size_w), tf.float64) + 0.5) * \
        tf.cast(w, tf.float64) / tf.cast(out_w, tf.float64)
    rows = tf.minimum(tf.cast(tf.floor(rows), tf.int32), h - 1)
    cols = tf.minimum(tf.cast(tf.floor(cols), tf.int32), w - 1)
    label = tf.gather(tf.gather(label, rows, axis=0), cols, axis=1)
    return window, label


def _short_side_size(h, w, short):
    """Official rule: the short side becomes `short`, the long side is truncated."""
    h64, w64, s64 = (tf.cast(v, tf.float64) for v in (h, w, short))
    portrait = h > w
    out_w = tf.where(portrait, short, tf.cast(tf.floor(w64 * s64 / h64), tf.int32))
    out_h = tf.where(portrait, tf.cast(tf.floor(h64 * s64 / w64), tf.int32), short)
    return out_h, out_w


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of an `(H, W, C)` float image (edges mirrored).

    Args:
        image: float32 `(H, W, C)`.
        sigma: scalar standard deviation in pixels (0 to ~1; the kernel spans 3 px
            each side). Sigma 0 returns the image unchanged.

    Returns:
        The blurred image.

    Example:
    >>> gaussian_blur(tf.ones((5, 5, 3)), 0.8).shape
    TensorShape([5, 5, 3])
    """
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    taps = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    x = tf.pad(image[None], [[0, 0], [_BLUR_RADIUS] * 2, [_BLUR_RADIUS] * 2, [0, 0]],
               mode="SYMMETRIC")
    k_rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    k_cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, k_rows, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, k_cols, [1, 1, 1, 1], "VALID")
    return x[0]


def train_transform(image, label, seed, crop_size, base_size, scale_range=(0.5, 2.0),
                    flip=True, blur=True, ignore_label=IGNORE_LABEL):
    """One training example through the official `_sync_transform` (see module doc).

    Args:
        image: `(H, W, 3)` uint8 or float image.
        label: `(H, W)` int label.
        seed: int32/int64 tensor of shape `(2,)`, the stateless seed of this example.
        crop_size: output size (square).
        base_size: the short side is scaled to `base_size * U(scale_range)`.
        scale_range: `(low, high)` factors of `base_size` (official: 0.5, 2.0).
        flip: random horizontal flip.
        blur: random Gaussian blur.
        ignore_label: label fill value for padding.

    Returns:
        `(image float32 (crop, crop, 3) in 0..255, label int32 (crop, crop))`.

    Example:
    >>> img, lbl = train_transform(tf.zeros((40, 60, 3), tf.uint8), tf.zeros((40, 60), tf.int32),
    ...                            tf.constant([1, 2]), crop_size=32, base_size=36)
    >>> img.shape, lbl.shape
    (TensorShape([32, 32, 3]), TensorShape([32, 32]))
    """
    crop = int(crop_size)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)
    image = tf.convert_to_tensor(image)
    label = tf.cast(label, tf.int32)
    if flip:
        mirror = tf.random.stateless_uniform([], seeds[0]) < 0.5
        image = tf.cond(mirror, lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(mirror, lambda: tf.reverse(label, [1]), lambda: label)
    low, high = int(base_size * scale_range[0]), int(base_size * scale_range[1])
    short = tf.random.stateless_uniform([], seeds[1], minval=low, maxval=high + 1,
                                        dtype=tf.int32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    out_h, out_w = _short_side_size(h, w, short)
    top = tf.random.stateless_uniform([], seeds[2], 0, tf.maximum(out_h, crop) - crop + 1,
                                      dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[3], 0, tf.maximum(out_w, crop) - crop + 1,
                                       dtype=tf.int32)
    valid_h, valid_w = tf.minimum(crop, out_h - top), tf.minimum(crop, out_w - left)
    image, label = _scaled_window(image, label, out_h, out_w, top, left, valid_h, valid_w)
    pad = [[0, crop - valid_h], [0, crop - valid_w]]
    image = tf.pad(image, pad + [[0, 0]], constant_values=0.0)
    label = tf.pad(label, pad, constant_values=ignore_label)
    if blur:
        do_blur = tf.random.stateless_uniform([], seeds[4]) < 0.5
        sigma = tf.random.stateless_uniform([], seeds[5])
        image = tf.cond(do_blur, lambda: gaussian_blur(image, sigma), lambda: image)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([crop, crop, 3])
    label.set_shape([crop, crop])
    return image, label


def val_transform(image, label, crop_size):
    """The official `_val_sync_transform`: short side to `crop_size`, centre crop.

    The centre offset is `round((size - crop) / 2)` with Python's round-half-to-even,
    as in the official code.

    Args:
        image: `(H, W, 3)` image.
        label: `(H, W)` label.
        crop_size: output size (square).

    Returns:
        `(image float32 (crop, crop, 3), label int32 (crop, crop))`.

    Example:
    >>> img, lbl = val_transform(tf.zeros((40, 60, 3)), tf.zeros((40, 60), tf.int32), 32)
    >>> img.shape
    TensorShape([32, 32, 3])
    """
    crop = int(crop_size)
    image = tf.convert_to_tensor(image)
    label = tf.cast(label, tf.int32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    # Official: `if w > h` scales the height, else the width (squares: the width).
    landscape = w > h
    h64, w64, c64 = (tf.cast(v, tf.float64) for v in (h, w, crop))
    out_h = tf.where(landscape, crop, tf.cast(tf.floor(h64 * c64 / w64), tf.int32))
    out_w = tf.where(landscape, tf.cast(tf.floor(w64 * c64 / h64), tf.int32), crop)
    top = tf.cast(tf.round(tf.cast(out_h - crop, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(out_w - crop, tf.float64) / 2.0), tf.int32)
    image, label = _scaled_window(image, label, out_h, out_w, top, left, crop, crop)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([crop, crop, 3])
    label.set_shape([crop, crop])
    return image, label


def train_pipeline(ds, crop_size, base_size, batch_size, seed=None, *,
                   scale_range=(0.5, 2.0), flip=True, blur=True, shuffle=True,
                   shuffle_buffer=512, repeat=False, skip_batches=0, drop_remainder=True,
                   num_parallel_calls=_AUTOTUNE, prefetch=True):
    """Shuffled, augmented, batched training data.

    Datasets from `Source.dataset` are shuffled before decoding (file names: the
    whole split; tfds records: `shuffle_buffer` of them); other datasets are shuffled
    with a `shuffle_buffer` of decoded examples. Each pass over the data reshuffles
    and re-draws the augmentation, deterministically when `seed` is set.

    Args:
        ds: `tf.data.Dataset` of `(image (H, W, 3), label (H, W))`.
        crop_size: square crop size (official default 480).
        base_size: base short side of the random scaling (official default 520).
        batch_size: examples per batch.
        seed: int for reproducible shuffling and augmentation, or None.
        scale_range: short side = `base_size * U(scale_range)`; official (0.5, 2.0).
        flip, blur: random horizontal flip and Gaussian blur (both official).
        shuffle: shuffle the examples.
        shuffle_buffer: buffer size where the whole dataset cannot be shuffled.
        repeat: repeat forever (for `steps_per_epoch` training).
        skip_batches: start after this many batches of the same stream, for resuming a
            run: with the same seed the result equals `.skip(skip_batches)` of the
            full pipeline, but the skipped examples are neither read nor augmented.
        drop_remainder: drop the last incomplete batch (fixed batch shape).
        num_parallel_calls: parallelism of decoding and augmentation.
        prefetch: prefetch batches.

    Returns:
        Dataset of `(images float32 (B, crop, crop, 3) 0..255, labels int32 (B, crop,
        crop))`, 255 = ignore.

    Example:
    >>> from keras_fastfcn.data import get_source
    >>> ds = train_pipeline(get_source("demo").dataset("train"), 64, 72, 8, seed=1)
    >>> ds.element_spec[0].shape
    TensorShape([8, 64, 64, 3])
    """
    crop_size = _positive_int(crop_size, "crop_size")
    base_size = _positive_int(base_size, "base_size")
    batch_size = _positive_int(batch_size, "batch_size")
    skip_batches = int(skip_batches)
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}.")
    low, high = scale_range
    if not 0 < low <= high or int(base_size * low) < 1:
        raise ValueError(f"scale_range must be 0 < low <= high with base_size * low >= 1, "
                         f"got {scale_range!r} for base_size {base_size}.")
    deterministic = seed is not None
    if seed is not None:
        seed = int(seed)
    lazy = lazy_parts(ds)
    if lazy is not None:
        # Shuffle, repeat and skip the cheap keys; read each kept example once.
        ds, load, num_keys, keys_are_small = lazy
        buffer = num_keys if keys_are_small else min(num_keys, shuffle_buffer)
    else:
        load, buffer = None, _positive_int(shuffle_buffer, "shuffle_buffer")
    if shuffle:
        ds = ds.shuffle(max(1, buffer), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # One random int64 per element, re-drawn each pass; element k of the stream always
    # gets random k, so skipping elements before reading them changes nothing else.
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, randoms))
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)

    def read_and_augment(example, random):
        if load is not None:
            example = load(*example) if isinstance(example, tuple) else load(example)
        image, label = example
        key = tf.stack([random, tf.bitwise.right_shift(random, 32)])
        return train_transform(image, label, key, crop_size, base_size, scale_range,
                               flip, blur)

    ds = ds.map(read_and_augment, num_parallel_calls=num_parallel_calls,
                deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(_AUTOTUNE) if prefetch else ds


def eval_pipeline(ds, batch_size=1, crop_size=None, *, num_parallel_calls=_AUTOTUNE,
                  prefetch=True):
    """Batched evaluation data, in dataset order.

    Args:
        ds: `tf.data.Dataset` of `(image (H, W, 3), label (H, W))`.
        batch_size: examples per batch. Whole images of different sizes are padded
            to the largest in the batch (image 0, label 255 so metrics ignore it);
            use 1 to avoid padding.
        crop_size: None for whole images at full size (the official `testval`
            mode), or an int for the official `val` mode: short side to
            `crop_size`, centre crop.
        num_parallel_calls: parallelism.
        prefetch: prefetch batches.

    Returns:
        Dataset of `(images float32 (B, H, W, 3), labels int32 (B, H, W))`.

    Example:
    >>> from keras_fastfcn.data import get_source
    >>> ds = eval_pipeline(get_source("demo").dataset("val"), batch_size=2)
    >>> ds.element_spec[0].shape   # the demo images all have the same size
    TensorShape([None, 96, 96, 3])
    """
    batch_size = _positive_int(batch_size, "batch_size")
    if crop_size is not None:
        crop_size = _positive_int(crop_size, "crop_size")

        def prepare(image, label):
            return val_transform(image, label, crop_size)
    else:
        def prepare(image, label):
            return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    if crop_size is not None:
        ds = ds.batch(batch_size)
    else:
        ds = ds.padded_batch(batch_size, padding_values=(0.0, IGNORE_LABEL))
    return ds.prefetch(_AUTOTUNE) if prefetch else ds
