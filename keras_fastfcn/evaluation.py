"""Scoring a predictor on a dataset split: the official pixAcc / mIoU over whole images.

Images are predicted one at a time at full size (as the official `test.py`, one
image per GPU), with any `keras_fastfcn.inference.Predictor`, and scored against the
full-size labels with `metrics.SegmentationMetric` (official pixAcc and mIoU, plus the
mean over present classes). `keras-fastfcn evaluate` and the final evaluation of a
training run both use `evaluate_dataset`, so they report the same numbers.

Example:
>>> from keras_fastfcn import data, evaluation, inference, models
>>> source = data.get_source("demo", size=64)
>>> model = models.FastFCNImageSegmenter(models.FastFCNBackbone("resnet50", width=64),
...                                      num_classes=source.num_classes, head="fcn")
>>> result = evaluation.evaluate_dataset(inference.Predictor(model), source.examples("val"),
...                                      source.num_classes, limit=2, verbose=0)
>>> result["images"], 0.0 <= result["mIoU"] <= 1.0
(2, True)
"""

import sys
import time

import numpy as np
import keras

from keras_fastfcn.metrics import IGNORE_LABEL, SegmentationMetric


def class_map(predictor, images):
    """The `(B, H, W)` class map of `images` from any predictor the CLI runs: its
    `class_map` method where it has one (`inference.Predictor`: the argmax in the graph;
    `serving.runtime.ExportPredictor`), else the argmax of the scores it returns (any
    callable returning `(B, H, W, C)` scores, or a class map already)."""
    if hasattr(predictor, "class_map"):
        return np.asarray(predictor.class_map(images))
    out = np.asarray(predictor(images))
    return out if out.ndim == 3 else np.argmax(out, axis=-1)


def evaluate_dataset(predictor, dataset, num_classes, class_names=None,
                     ignore_label=IGNORE_LABEL, num_examples=None, limit=None, verbose=1):
    """Scores `predictor` on `(image, label)` pairs; returns `SegmentationMetric.result()`.

    Args:
        predictor: an `inference.Predictor` (or any callable `(1, H, W, 3)` ->
            scores `(1, H, W, C)`), or one that returns the class map `(1, H, W)`
            itself (`serving.runtime.ExportPredictor`); see `class_map`.
        dataset: iterable of `(image (H, W, 3) uint8, label (H, W) int)`, e.g.
            `data.get_source(spec).examples(split)` (any backend, no TensorFlow
            needed) or a `tf.data.Dataset` from `.dataset(split)`.
        num_classes: int.
        class_names: optional names for the per-class table.
        ignore_label: label value that is not scored.
        num_examples: dataset size for the progress bar (None: unknown).
        limit: evaluate only the first `limit` images.
        verbose: 1 shows a `keras.utils.Progbar`; 0 is silent.

    Returns:
        The metric dict plus `images` and `seconds` (wall time of the loop) and
        `images_per_second`.

    Example:
    >>> from keras_fastfcn.data import get_source
    >>> from keras_fastfcn.inference import Predictor
    >>> src = get_source("demo", size=64)
    >>> model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1)])
    >>> result = evaluate_dataset(Predictor(model), src.examples("val"), 5, limit=3,
    ...                           verbose=0)
    >>> result["images"], len(result["IoU"])  # scored images, IoU per class
    (3, 5)
    """
    metric = SegmentationMetric(num_classes, ignore_label=ignore_label, class_names=class_names)
    target = num_examples if limit is None else (min(limit, num_examples) if num_examples
                                                 else limit)
    progbar = None
    if verbose:
        # As Keras' verbose="auto": a live bar on a terminal, one summary line in logs.
        progbar = keras.utils.Progbar(target, stateful_metrics=["pixAcc", "mIoU"],
                                      unit_name="image",
                                      verbose=1 if sys.stdout.isatty() else 2)
    if hasattr(dataset, "prefetch"):
        dataset = dataset.prefetch(2)
    count = 0
    start = time.perf_counter()
    for image, label in dataset:
        if limit is not None and count >= limit:
            break
        image = np.asarray(image)
        label = np.asarray(label)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if image.ndim != 3 or label.shape != image.shape[:2]:
            raise ValueError(
                f"Example {count}: image {image.shape} and label {label.shape} do not match "
                "(expected (H, W, 3) and (H, W)).")
        pred = class_map(predictor, image[None])[0]
        metric.update(label, pred)
        count += 1
        if progbar is not None:
            running = metric.result()
            progbar.update(count, [("pixAcc", running["pixAcc"]), ("mIoU", running["mIoU"])],
                           finalize=False)
    seconds = time.perf_counter() - start
    if count == 0:
        raise ValueError("The dataset split is empty: nothing to evaluate.")
    result = metric.result()
    if progbar is not None:
        progbar.update(count, [("pixAcc", result["pixAcc"]), ("mIoU", result["mIoU"])],
                       finalize=True)
    result.update(images=count, seconds=round(seconds, 3),
                  images_per_second=round(count / seconds, 3) if seconds > 0 else None)
    return result
