"""`keras-fastfcn evaluate`: pixAcc / mIoU of a saved model on a dataset split.

Images are predicted one at a time at full size (as the official `test.py`, one
image per GPU), with the inference options of `keras_fastfcn.inference`, and
scored against the full-size labels with `metrics.SegmentationMetric` (official
pixAcc and mIoU, plus the mean over present classes). A Keras progress bar shows
the running pixAcc / mIoU; the table is printed at the end and, with `--output`,
written as JSON (atomically, only once the whole split has been evaluated).

Example:
    keras-fastfcn evaluate --model runs/camvid/model.keras --data camvid --split val
    keras-fastfcn evaluate --model m.keras --data camvid --mode slide --crop-size 360 --ms \
        --output results.json
"""

import json
import os
import sys
import time

import numpy as np

from keras_fastfcn import inference
from keras_fastfcn.fileio import atomic_path
from keras_fastfcn.metrics import IGNORE_LABEL, SegmentationMetric, format_results


def check_output_file(path):
    """Fails early (before any work) if `path` cannot be an output file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a directory; give a file name such as results.json.")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"Cannot create {path}: {existing} is not a directory.")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"Cannot write {path}: {existing} is not writable.")


def evaluate_dataset(predictor, dataset, num_classes, class_names=None,
                     ignore_label=IGNORE_LABEL, num_examples=None, limit=None, verbose=1):
    """Scores `predictor` on `(image, label)` pairs; returns `SegmentationMetric.result()`.

    Args:
        predictor: an `inference.Predictor` (or any callable `(1, H, W, 3)` ->
            scores `(1, H, W, C)`).
        dataset: iterable of `(image (H, W, 3) uint8, label (H, W) int)`, e.g. a
            `tf.data.Dataset` from `data.get_source(spec).dataset(split)`.
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
    >>> evaluate_dataset(Predictor(model), src.dataset("val"), 11)  # doctest: +SKIP
    """
    import keras
    import tensorflow as tf

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
        scores = predictor(image[None])
        pred = tf.argmax(scores, axis=-1, output_type=tf.int32).numpy()[0]
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


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="a .keras file saved from a keras_fastfcn FastFCN model")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help="data source: demo, camvid, camvid:PATH, folder:PATH, tfds:NAME")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N images")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    inference.add_inference_arguments(parser)


def run(args):
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")
    if args.output:
        check_output_file(args.output)
    if not os.path.exists(args.model):  # before the (slower) data source checks
        raise FileNotFoundError(f"Model file not found: {args.model}")

    from keras_fastfcn import data

    source = data.get_source(args.data)
    model = inference.load_model(args.model)
    predictor = inference.predictor_from_args(model, args)
    if source.num_classes != model.num_classes:
        raise ValueError(
            f"The model predicts {model.num_classes} classes but data {args.data!r} has "
            f"{source.num_classes}.")
    class_names = model.class_names or source.class_names
    dataset = source.dataset(args.split)
    num_examples = source.num_examples(args.split)  # None when unknown

    print(f"Evaluating {args.model} on {args.data} [{args.split}]: "
          f"{inference.describe_predictor(predictor)}")
    # (cli.main turns data errors met inside tf.data into one-line DataErrors.)
    result = evaluate_dataset(
        predictor, dataset, model.num_classes, class_names=class_names,
        ignore_label=source.ignore_label, num_examples=num_examples, limit=args.limit,
        verbose=0 if args.quiet else 1)

    print()
    print(format_results(result))
    print(f"\n{result['images']} images in {result['seconds']:.1f} s "
          f"({result['images_per_second']} images/s)")

    if args.output:
        report = {
            "model": os.path.abspath(args.model),
            "data": args.data,
            "split": args.split,
            "inference": inference.predictor_settings(predictor),
            "metric_definitions": {
                "pixAcc": "correct / labeled pixels (label 255 ignored), over the split",
                "mIoU": "official FastFCN: mean over all classes of intersection / union "
                        "accumulated over the split; a class absent from labels and "
                        "predictions counts 0",
                "mIoU_present": "mmsegmentation / keras.metrics.MeanIoU: mean over classes "
                                "with union > 0",
            },
            **result,
        }
        with atomic_path(args.output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.output}")
    return 0
