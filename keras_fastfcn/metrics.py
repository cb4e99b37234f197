"""Segmentation metrics: pixAcc and mIoU (official definitions) and Keras streaming metrics.

Definitions (wuhuikai/FastFCN `encoding/utils/metrics.py`), accumulated over the
whole dataset, never averaged per image:

- `pixAcc = correct / (eps + labeled)`, over the pixels whose label is not the
  ignore label (255 here; -1 in the official datasets).
- `IoU_c = intersection_c / (eps + union_c)`, where on labeled pixels
  `union_c = predicted_c + labeled_c - intersection_c`; `eps = np.spacing(1)`.
- **mIoU (official)**: the plain mean of `IoU_c` over *all* classes, so a class that
  appears neither in the labels nor in the predictions counts as 0.
- **mIoU over present classes** (`mIoU_present`): the mean over classes with
  `union_c > 0` (present in the labels or the predictions): mmsegmentation's
  `nanmean` and also what `keras.metrics.MeanIoU` computes. The two agree when
  every class occurs; on small or partial evaluation sets the official one is lower.

`SegmentationMetric` is the exact accumulator (int64 confusion matrix, numpy) used by
`keras-fastfcn evaluate` and the final evaluation of training; `PixelAccuracy` and
`MeanIoU` (`segmentation_metrics()`) are the streaming Keras metrics that
`FastFCNImageSegmenter.compile()` uses, with the same definitions.
"""

import warnings

import numpy as np

import keras

IGNORE_LABEL = 255
_EPS = np.spacing(1)  # the official epsilon


class SegmentationMetric:
    """Dataset-level pixAcc / mIoU from a confusion matrix, with the official formulas.

    Args:
        num_classes: number of classes `C`; labels are `0..C-1` or `ignore_label`.
        ignore_label: label value that is not scored (255).
        class_names: optional list of `C` names used in `result()` and `format()`.

    Example:
    >>> metric = SegmentationMetric(3)
    >>> metric.update(np.array([[0, 1], [2, 255]]), np.array([[0, 1], [1, 0]]))
    >>> round(metric.result()["pixAcc"], 4), round(metric.result()["mIoU"], 4)
    (0.6667, 0.5)
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, class_names=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.class_names = list(class_names) if class_names is not None else None
        self.reset()

    def reset(self):
        """Clears the accumulated counts."""
        self.confusion_matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, labels, preds):
        """Adds a batch.

        Args:
            labels: integer array `(..., H, W)`, class ids or `ignore_label`.
            preds: integer class ids of the same shape, or scores/logits with one
                more trailing axis of size `num_classes` (argmax is taken, as the
                official `torch.max(output, 1)`).

        Raises:
            ValueError: shapes differ, or labels/predictions hold values outside
                `0..num_classes-1` (labels may also be `ignore_label`).
        """
        labels = np.asarray(labels)
        preds = np.asarray(preds)
        if preds.ndim == labels.ndim + 1:
            if preds.shape[-1] != self.num_classes:
                raise ValueError(
                    f"Scores have {preds.shape[-1]} classes on their last axis, expected "
                    f"{self.num_classes}.")
            preds = np.argmax(preds, axis=-1)
        if preds.shape != labels.shape:
            raise ValueError(
                f"labels and predictions differ in shape: {labels.shape} vs {preds.shape}.")
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.mod(labels, 1) == 0):
                raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
        labels = labels.astype(np.int64, copy=False)
        preds = preds.astype(np.int64, copy=False)
        scored = labels != self.ignore_label
        labels = labels[scored]
        preds = preds[scored]
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            values = np.unique(labels[bad])[:10].tolist()
            raise ValueError(
                f"labels hold values {values} outside 0..{self.num_classes - 1} "
                f"(and {self.ignore_label} = ignore).")
        bad = (preds < 0) | (preds >= self.num_classes)
        if bad.any():
            values = np.unique(preds[bad])[:10].tolist()
            raise ValueError(f"predictions hold values {values} outside 0..{self.num_classes - 1}.")
        counts = np.bincount(labels * self.num_classes + preds,
                             minlength=self.num_classes * self.num_classes)
        self.confusion_matrix += counts.reshape(self.num_classes, self.num_classes)

    def result(self):
        """The metrics as a JSON-ready dict.

        Keys: `pixAcc`, `mIoU` (official: mean over all classes), `mIoU_present`
        (mean over classes with union > 0; mmsegmentation / keras.metrics.MeanIoU),
        `IoU` (per class, official formula; 0 for absent classes), `labeled_pixels`,
        `classes_present`, and `per_class`: one dict per class with `id`, `name`,
        `IoU`, `present`, `label_pixels`, `predicted_pixels`.
        """
        cm = self.confusion_matrix
        inter = np.diag(cm).astype(np.float64)
        label_area = cm.sum(axis=1).astype(np.float64)   # rows: labels
        pred_area = cm.sum(axis=0).astype(np.float64)    # columns: predictions
        union = label_area + pred_area - inter
        labeled = float(label_area.sum())
        pix_acc = float(inter.sum() / (_EPS + labeled))
        iou = inter / (_EPS + union)
        present = union > 0
        names = self.class_names or [f"class_{i}" for i in range(self.num_classes)]
        return {
            "pixAcc": pix_acc,
            "mIoU": float(iou.mean()),
            "mIoU_present": float(iou[present].mean()) if present.any() else 0.0,
            "IoU": [float(v) for v in iou],
            "labeled_pixels": int(labeled),
            "classes_present": int(present.sum()),
            "num_classes": self.num_classes,
            "per_class": [
                {"id": i, "name": str(names[i]), "IoU": float(iou[i]), "present": bool(present[i]),
                 "label_pixels": int(label_area[i]), "predicted_pixels": int(pred_area[i])}
                for i in range(self.num_classes)
            ],
        }

    def format(self, result=None):
        """A plain-text table of `result()` (summary lines, then IoU per class)."""
        return format_results(result or self.result())


def format_results(result):
    """Formats a `SegmentationMetric.result()` dict as a text table."""
    n = result["num_classes"]
    lines = [
        f"pixAcc        {result['pixAcc']:.4f}   correct / labeled pixels "
        f"({result['labeled_pixels']} labeled)",
        f"mIoU          {result['mIoU']:.4f}   official: mean IoU over all {n} classes "
        "(absent classes count 0)",
        f"mIoU_present  {result['mIoU_present']:.4f}   mean over the {result['classes_present']} "
        "classes present in labels or predictions (mmsegmentation, keras MeanIoU)",
        "",
    ]
    width = max([5] + [len(c["name"]) for c in result["per_class"]])
    lines.append(f"{'id':>3}  {'class':<{width}}  {'IoU':>6}  {'label px':>10}  {'pred px':>10}")
    for c in result["per_class"]:
        iou = f"{c['IoU']:.4f}" if c["present"] else "absent"
        lines.append(f"{c['id']:>3}  {c['name']:<{width}}  {iou:>6}  {c['label_pixels']:>10}  "
                     f"{c['predicted_pixels']:>10}")
    unlabeled = [c["name"] for c in result["per_class"] if not c["label_pixels"]]
    if unlabeled and result["labeled_pixels"]:
        lines += ["", f"No labeled pixels of: {', '.join(unlabeled)}. If that is unexpected, "
                      "check the masks: their values are class ids 0..C-1, 255 = ignore "
                      "(a mask saved as 0/255 has no class 1)."]
    return "\n".join(lines)


# ----------------------------------------------------------- Keras streaming metrics


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class MeanIoU(keras.metrics.MeanIoU):
    """Streaming mean IoU on logits that skips `ignore_class`: official or over present classes.

    Keras' `MeanIoU` already keeps what is needed (a streaming confusion matrix,
    argmax of dense predictions, `ignore_class`), but its mean is over the classes
    present (union > 0) in what it has seen: mmsegmentation's mIoU. The official
    FastFCN mIoU (`SegmentationMetric`'s `"mIoU"`) is the mean over *all* classes,
    an absent class counting 0; `over="all"` (the default) gives that. The two agree
    once every class occurs. Counts are int32: enough for ~2e9 pixels per cell.

    Args:
        num_classes: int.
        ignore_class: label value not scored (255).
        over: `"all"` (official) or `"present"`.
        name: metric name.

    Example:
    >>> metric = MeanIoU(3)
    >>> _ = metric.update_state(np.array([[0, 1, 255]]), np.eye(3)[None, [0, 0, 2]])
    >>> round(float(metric.result()), 4)  # IoU 1/2, 0, absent 0 -> mean over 3
    0.1667
    """

    def __init__(self, num_classes, ignore_class=IGNORE_LABEL, over="all", name="mean_iou",
                 dtype=None, **kwargs):
        if over not in ("all", "present"):
            raise ValueError(f"over must be 'all' or 'present', got {over!r}.")
        super().__init__(num_classes=num_classes, ignore_class=ignore_class,
                         sparse_y_true=True, sparse_y_pred=False, name=name, dtype=dtype)
        self.over = over

    def update_state(self, y_true, y_pred, sample_weight=None):
        # Keras' IoU asks for int64 internally; JAX without x64 gives int32 (what the
        # counts are anyway) and warns at every trace. The warning says nothing to a
        # user of this metric.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
            return super().update_state(y_true, y_pred, sample_weight)

    def result(self):
        if self.over == "present":
            return super().result()
        ops = keras.ops
        cm = ops.cast(self.total_cm, "float32")
        inter = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - inter
        iou = inter / ops.maximum(union, 1.0)
        return ops.mean(iou)  # float32 (this metric's dtype is its int count type)

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_class": self.ignore_class,
                "over": self.over, "name": self.name, "dtype": self.dtype}


def mean_iou(num_classes, ignore_label=IGNORE_LABEL, name="mean_iou", over="all"):
    """`MeanIoU` on logits skipping `ignore_label` (`over="all"`: the official mean).

    Example:
    >>> model.compile(optimizer="sgd", loss=..., metrics=[mean_iou(21)])  # doctest: +SKIP
    """
    return MeanIoU(num_classes, ignore_class=ignore_label, over=over, name=name)


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class PixelAccuracy(keras.metrics.Metric):
    """Streaming pixel accuracy over pixels whose label is not `ignore_class`.

    `keras.metrics.SparseCategoricalAccuracy` cannot skip the ignore label (it would
    need a per-pixel `sample_weight` that `compile(metrics=...)` does not pass), and
    averaging per-batch accuracies would weight batches, not pixels; this metric
    keeps the two official counts (correct, labeled) instead.

    Args:
        ignore_class: label value not scored (255).
        name: metric name.
        dtype: result dtype.

    Example:
    >>> metric = PixelAccuracy()
    >>> _ = metric.update_state(np.array([[0, 1, 255]]), np.eye(3)[None, [0, 0, 2]])
    >>> float(metric.result())
    0.5
    """

    def __init__(self, ignore_class=IGNORE_LABEL, name="pixel_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype or "float32")
        self.ignore_class = ignore_class
        # Integer counts stay exact past float32's 2**24: int64, or int32 (2**31 pixels,
        # about 9000 crops of 480x480 per epoch) on JAX, whose default has no 64-bit types.
        self._count, self._ratio = (("int32", "float32") if keras.config.backend() == "jax"
                                    else ("int64", "float64"))
        self.correct = self.add_variable(shape=(), initializer="zeros", dtype=self._count,
                                         name="correct")
        self.labeled = self.add_variable(shape=(), initializer="zeros", dtype=self._count,
                                         name="labeled")
        self._direction = "up"

    def update_state(self, y_true, y_pred, sample_weight=None):
        """`y_true`: class ids `(B, H, W)` (or `(B, H, W, 1)`); `y_pred`: logits `(B, H, W, C)`."""
        ops = keras.ops
        y_pred = ops.argmax(y_pred, axis=-1)
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        mask = ops.not_equal(y_true, self.ignore_class)
        if sample_weight is not None:
            weight = ops.reshape(ops.convert_to_tensor(sample_weight), (-1,))
            mask = ops.logical_and(mask, ops.broadcast_to(weight > 0, ops.shape(mask)))
        hits = ops.logical_and(mask, ops.equal(y_true, y_pred))
        self.correct.assign(self.correct + ops.sum(ops.cast(hits, self._count)))
        self.labeled.assign(self.labeled + ops.sum(ops.cast(mask, self._count)))

    def result(self):
        ops = keras.ops
        correct = ops.cast(self.correct, self._ratio)
        labeled = ops.cast(self.labeled, self._ratio)
        return ops.cast(correct / ops.maximum(labeled, 1.0), self.dtype)

    def reset_state(self):
        self.correct.assign(0)
        self.labeled.assign(0)

    def get_config(self):
        return {"ignore_class": self.ignore_class, "name": self.name, "dtype": self.dtype}


def segmentation_metrics(num_classes, ignore_label=IGNORE_LABEL):
    """`[PixelAccuracy, MeanIoU]` (official definitions) for `compile(metrics=...)`.

    Their names, `pixel_accuracy` and `mean_iou`, give the official model-selection
    score `(pixAcc + mIoU) / 2` (`keras_fastfcn.train.callbacks.OfficialScore`).

    Example:
    >>> from keras_fastfcn.losses import segmentation_loss
    >>> model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(59, 1)])
    >>> model.compile(optimizer="sgd", loss=segmentation_loss(),
    ...               metrics=segmentation_metrics(59))
    """
    return [PixelAccuracy(ignore_class=ignore_label),
            mean_iou(num_classes, ignore_label=ignore_label)]
