"""Losses of the official FastFCN training (`encoding.nn.SegmentationLosses`).

- Pixel cross-entropy that skips the ignore label: Keras'
  `SparseCategoricalCrossentropy(ignore_class=255)` already averages over the
  non-ignored pixels only, as PyTorch's `CrossEntropyLoss(ignore_index=...)`, so it is
  used as it is (`segmentation_loss`).
- Auxiliary loss: the same cross-entropy on the auxiliary head's logits, weight 0.2
  (0.4 in the official PSP and DeepLabV3 scripts).
- SE loss (EncNet): binary cross-entropy between the SE logits and the set of classes
  present in the label map (`class_presence`), weight 0.2.

`FastFCNImageSegmenter.compute_loss` combines them from the masks alone, so `fit`
takes plain `(images, masks)` pairs. Written with `keras.ops` (every backend).
"""

import keras
from keras import ops

IGNORE_LABEL = 255


def segmentation_loss(ignore_label=IGNORE_LABEL):
    """Pixel-wise cross-entropy on logits that skips `ignore_label` pixels.

    Args:
        ignore_label: int, label value excluded from the loss and its average.

    Returns:
        A `keras.losses.SparseCategoricalCrossentropy(from_logits=True, ...)`.

    Example:
    >>> loss = segmentation_loss()
    >>> float(loss(np.array([[0, 255]]), np.array([[[2.0, 0.0], [0.0, 9.0]]])))  # 2nd pixel ignored
    0.126928...
    """
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_label)


def se_loss():
    """EncNet's SE loss: sigmoid BCE of the class-presence logits (mean over classes)."""
    return keras.losses.BinaryCrossentropy(from_logits=True)


def class_presence(labels, num_classes):
    """Multi-hot `(B, num_classes)` float32 vector of the classes present in `labels`.

    As the official `_get_batch_label_vector` (a histogram over `[0, num_classes-1]`),
    ignore pixels (255) and other out-of-range values do not count.

    Args:
        labels: int tensor `(B, H, W)` (or `(B, H, W, 1)`).
        num_classes: int.

    Example:
    >>> keras.ops.convert_to_numpy(class_presence(np.array([[[0, 2], [255, 2]]]), 4))
    array([[1., 0., 1., 0.]], dtype=float32)
    """
    labels = ops.cast(labels, "int32")
    batch = ops.shape(labels)[0]
    flat = ops.reshape(labels, (batch, -1))
    valid = ops.logical_and(flat >= 0, flat < num_classes)
    # One histogram over batch * (C + 1) bins: image b's class c is bin b * (C + 1) + c,
    # and everything that is not a class goes to the spare bin C.
    flat = ops.where(valid, flat, num_classes)
    offsets = ops.arange(batch, dtype="int32")[:, None] * (num_classes + 1)
    ids = ops.reshape(flat + offsets, (-1,))
    # segment_sum with num_segments, not bincount: JAX's bincount needs a static length.
    counts = ops.segment_sum(ops.ones_like(ids, dtype="float32"), ids,
                             num_segments=batch * (num_classes + 1))
    counts = ops.reshape(counts, (batch, num_classes + 1))
    return ops.cast(counts[:, :num_classes] > 0, "float32")


def pixel_weights(labels, sample_weight=None, class_weight=None):
    """Per-pixel loss weights from Keras' weighting arguments, or None.

    Keras applies `sample_weight` to the loss elementwise and turns `class_weight` into
    a sample weight per label, which both fail on masks: one weight per image
    `(B,)` meets a per-pixel loss `(B, H, W)`, and Keras' class weights read each
    label array as one class id. Here an image's weight applies to all its pixels and
    a class's weight to its pixels (ignore pixels get weight 0; the loss skips them
    anyway). As in Keras, the weighted pixel losses are then averaged over the
    labelled pixels (PyTorch's `CrossEntropyLoss(weight=...)` divides by the sum of
    the weights instead).

    Args:
        labels: int tensor `(B, H, W)` (or `(B, H, W, 1)`).
        sample_weight: None, `(B,)` per image, or `(B, H, W)` per pixel.
        class_weight: None, or a float vector with one weight per class id.

    Example:
    >>> w = pixel_weights(np.array([[[0, 1]], [[1, 255]]]), np.array([1.0, 0.5]),
    ...                   np.array([2.0, 1.0], "float32"))
    >>> keras.ops.convert_to_numpy(w).tolist()
    [[[2.0, 1.0]], [[0.5, 0.0]]]
    """
    if sample_weight is None and class_weight is None:
        return None
    labels = ops.cast(labels, "int32")
    if len(labels.shape) == 4:
        labels = ops.squeeze(labels, -1)
    weight = ops.ones(ops.shape(labels), "float32")
    if class_weight is not None:
        table = ops.convert_to_tensor(class_weight, "float32")
        num_classes = table.shape[0]
        valid = ops.logical_and(labels >= 0, labels < num_classes)
        weight = ops.where(valid, ops.take(table, ops.clip(labels, 0, num_classes - 1)), 0.0)
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        rank = len(sample_weight.shape)
        if rank not in (1, 3, 4):
            raise ValueError(
                f"sample_weight must be one weight per image (batch,) or per pixel (batch, "
                f"height, width), got shape {tuple(sample_weight.shape)}.")
        if rank == 1:
            sample_weight = ops.reshape(sample_weight, (-1, 1, 1))
        elif rank == 4:
            sample_weight = ops.squeeze(sample_weight, -1)
        weight = weight * sample_weight
    return weight


def image_weights(sample_weight):
    """`sample_weight` if it holds one weight per image `(B,)` (for the per-image SE
    loss), else None."""
    if sample_weight is None or len(ops.shape(sample_weight)) != 1:
        return None
    return ops.cast(sample_weight, "float32")


def invalid_labels(labels, num_classes, ignore_label=IGNORE_LABEL):
    """The label values that are neither a class id `0..C-1` nor `ignore_label`.

    Args:
        labels: int tensor `(B, H, W)` (or `(B, H, W, 1)`).
        num_classes: int.
        ignore_label: int.

    Returns:
        `(invalid, stats)`: a bool mask of `labels`' shape, and a float32 vector
        `[count, smallest, largest]` of the invalid values (count 0: none; the
        extremes are then meaningless).

    Example:
    >>> _, stats = invalid_labels(np.array([[[0, 7], [255, -1]]]), 3)
    >>> keras.ops.convert_to_numpy(stats).tolist()
    [2.0, -1.0, 7.0]
    """
    labels = ops.cast(labels, "int32")
    invalid = ops.logical_and(ops.logical_or(labels < 0, labels >= num_classes),
                              ops.not_equal(labels, ignore_label))
    values = ops.cast(labels, "float32")
    count = ops.sum(ops.cast(invalid, "float32"))
    smallest = ops.min(ops.where(invalid, values, 3.0e38))
    largest = ops.max(ops.where(invalid, values, -3.0e38))
    return invalid, ops.stack([count, smallest, largest])
