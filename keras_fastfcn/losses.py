"""Losses of the official FastFCN training (`encoding.nn.SegmentationLosses`).

- Pixel cross-entropy that skips the ignore label: Keras'
  `SparseCategoricalCrossentropy(ignore_class=255)` already averages over the
  non-ignored pixels only, as PyTorch's `CrossEntropyLoss(ignore_index=...)`, so it is
  used as it is (`segmentation_loss`).
- Auxiliary loss: the same cross-entropy on the `"aux_logits"` output, weight 0.2.
- SE loss (EncNet): binary cross-entropy between the `"se_logits"` and the set of
  classes present in the label map, weight 0.2. Its target is built in the input
  pipeline (`class_presence`), so the loss is plain `BinaryCrossentropy`.
"""

import keras
import tensorflow as tf

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
        labels: int tensor `(B, H, W)` or `(H, W)`.
        num_classes: int.

    Example:
    >>> class_presence(tf.constant([[[0, 2], [255, 2]]]), 4).numpy()
    array([[1., 0., 1., 0.]], dtype=float32)
    """
    labels = tf.cast(labels, tf.int32)
    batched = labels.shape.rank == 3
    if not batched:
        labels = labels[None]
    flat = tf.reshape(labels, (tf.shape(labels)[0], -1))
    valid = tf.logical_and(flat >= 0, flat < num_classes)
    # bincount drops values >= maxlength, so ignore pixels map to num_classes.
    flat = tf.where(valid, flat, num_classes)
    counts = tf.math.bincount(flat, minlength=num_classes, maxlength=num_classes, axis=-1)
    presence = tf.cast(counts > 0, tf.float32)
    return presence if batched else presence[0]


def training_targets(labels, num_classes, aux=False, se=False):
    """The `y` of `model.fit` for a FastFCN model with the given extra outputs.

    Returns the label map itself for a single-output model, else a dict keyed like
    the model outputs (`"logits"`, `"aux_logits"`, `"se_logits"`).
    """
    if not aux and not se:
        return labels
    targets = {"logits": labels}
    if aux:
        targets["aux_logits"] = labels
    if se:
        targets["se_logits"] = class_presence(labels, num_classes)
    return targets
