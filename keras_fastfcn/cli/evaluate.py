"""`keras-fastfcn evaluate`: pixAcc / mIoU of a saved model on a dataset split.

Every image of the split is predicted at full size with the inference options and
scored against its full-size label (`keras_fastfcn.evaluation.evaluate_dataset`: the
official pixAcc and mIoU, plus the mean over present classes). A progress bar shows
the running pixAcc / mIoU; the table is printed at the end and, with `--output`,
written as JSON (atomically, only once the whole split has been evaluated).

An exported `.onnx`, `.tflite` or OpenVINO `.xml` model is scored the same way (ONNX
Runtime / TFLite / OpenVINO, `serving.runtime.ExportPredictor`): that is how an int8 or fp16 export's accuracy is
measured. Its inference options were fixed at export, so the inference flags below are
refused for it.

`--model` may also name a released model (`kf.models.list_presets()`): it is
downloaded and converted on first use, and evaluated with the protocol its reported
mIoU was measured with unless flags say otherwise (mmsegmentation's presets:
`--protocol mmseg --keep-ratio-fit 2048 1024` on Cityscapes; add `--ms` for its
MS+flip number).

Example:
    keras-fastfcn evaluate --model fastfcn_psp_jpu_resnet50_v1c_cityscapes_b8 \
        --data cityscapes:/data/cityscapes
    keras-fastfcn evaluate --model runs/camvid/model.keras --data camvid --split val
    keras-fastfcn evaluate --model runs/mine/model.keras --data folder:/data/mine \
        --data-option ignore_index=11
    keras-fastfcn evaluate --model fastfcn_int8.onnx --data camvid
    keras-fastfcn evaluate --model m.keras --data camvid --mode slide --crop-size 360 --ms \
        --output results.json
"""

import json
import os

from keras_fastfcn.cli.common import (add_inference_arguments, check_model_arg,
                                      check_output_file, inference_options, key_value,
                                      max_pixels,
                                      open_predictor, positive_int, refuse_export_flags,
                                      released_preset)
from keras_fastfcn.data.sources import SPECS  # no TensorFlow import: the CLI stays quick

METRIC_DEFINITIONS = {
    "pixAcc": "correct / labeled pixels (label 255 ignored), over the split",
    "mIoU": "official FastFCN: mean over all classes of intersection / union accumulated "
            "over the split; a class absent from labels and predictions counts 0",
    "mIoU_present": "mmsegmentation / keras.metrics.MeanIoU: mean over classes with union > 0",
}


def add_arguments(parser):
    parser.add_argument("--model", required=True, metavar="PATH|PRESET",
                        help="a .keras segmentation model (keras_fastfcn or any Keras model "
                             "from images to logits), a save_to_preset folder, an .onnx / "
                             ".tflite / OpenVINO .xml export, or a released model's name "
                             "(kf.models.list_presets(); downloaded on first use)")
    parser.add_argument("--data", required=True, metavar="SPEC",
                        help=f"data source: {', '.join(SPECS)}")
    parser.add_argument("--data-option", dest="data_options", type=key_value,
                        action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the data source, as the training config's "
                             "data.options (repeatable), e.g. --data-option ignore_index=11 "
                             "--data-option num_classes=12 for a folder without classes.txt")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="evaluate only the first N images")
    parser.add_argument("--output", default=None, metavar="FILE.json",
                        help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--max-pixels", type=max_pixels, default=4096 * 4096, metavar="N",
                        help="the largest network input (height x width) after --scales / "
                             "--ms / --base-size: an image that would need more is refused "
                             "(with its name) instead of exhausting memory. 0 = no limit "
                             "(default 16777216 = 4096^2: Cityscapes at --ms fits)")
    add_inference_arguments(parser)


def run(args):
    if args.output:
        check_output_file(args.output)
    check_model_arg(args.model)  # before the (slower) data source checks

    from keras_fastfcn import data
    from keras_fastfcn.evaluation import evaluate_dataset
    from keras_fastfcn.fileio import atomic_path
    from keras_fastfcn.metrics import format_results

    refuse_export_flags(args)  # before the (slower) data source and model loading
    source = data.get_source(args.data, **dict(args.data_options))
    inference_options(args)  # flags that do not fit the protocol: before any download
    name = released_preset(args.model)
    if name:
        from keras_fastfcn.models import list_presets

        preset = list_presets()[name]
        if preset["num_classes"] != source.num_classes:  # before downloading it
            raise ValueError(f"{name} predicts {preset['num_classes']} classes "
                             f"({preset['dataset']}) but data {args.data!r} has "
                             f"{source.num_classes}.")
    predictor, info = open_predictor(args)
    # An export that did not record its class count is scored on the data's.
    num_classes, class_names = info.num_classes or source.num_classes, info.class_names
    if source.num_classes != num_classes:
        raise ValueError(f"The model predicts {num_classes} classes but data "
                         f"{args.data!r} has {source.num_classes}.")
    print(f"Evaluating {args.model} on {args.data} [{args.split}]: {predictor.describe()}")
    result = evaluate_dataset(
        predictor, source.examples(args.split), num_classes,
        class_names=class_names or source.class_names, ignore_label=source.ignore_label,
        num_examples=source.num_examples(args.split), limit=args.limit,
        verbose=0 if args.quiet else 1)

    print()
    print(format_results(result))
    print(f"\n{result['images']} images in {result['seconds']:.1f} s "
          f"({result['images_per_second']} images/s)")
    if args.output:
        report = {"model": name or os.path.abspath(args.model), "data": args.data, "split": args.split,
                  "inference": predictor.settings(), "metric_definitions": METRIC_DEFINITIONS,
                  **result}
        with atomic_path(args.output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.output}")
    return 0

