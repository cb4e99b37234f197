"""`keras-fastfcn export`: SavedModel (TF Serving), ONNX, TFLite or OpenVINO from a `.keras` model.

Everything about the output (exists? writable? the right kind? tf2onnx installed?)
is checked before the model is loaded; the export itself is atomic (a version folder
or file appears complete or not at all).

Example:
    keras-fastfcn export --model model.keras --output saved_models/fastfcn
    keras-fastfcn export --model model.keras --format onnx --output fastfcn.onnx --ms
    keras-fastfcn export --model model.keras --format openvino --output fastfcn.xml
"""

import argparse
import os
import time

from keras_fastfcn.cli import CommandError
from keras_fastfcn.cli.common import check_model_file, max_pixels, positive_int, scales
from keras_fastfcn.serving.formats import FORMATS, check_export_precision, export_precisions



def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="a .keras segmentation model (keras_fastfcn or any Keras model "
                             "from images to logits)")
    parser.add_argument("--format", default="saved_model", choices=tuple(FORMATS),
                        help="export format (default: saved_model)")
    parser.add_argument("--output", required=True,
                        help="saved_model: BASE (next version) or BASE/VERSION; "
                             "onnx/tflite: a .onnx / .tflite file; openvino: NAME.xml "
                             "(its weights go to NAME.bin)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing version folder or file")
    parser.add_argument("--no-probabilities", dest="probabilities", action="store_false",
                        help="leave out the (large) probabilities output")
    parser.add_argument("--ms", action="store_true",
                        help="official multi-scale + flip in the graph: scales "
                             "0.5,0.75,1.0,1.25,1.5,1.75 with --flip")
    parser.add_argument("--scales", type=scales, default=None, metavar="S1,S2,...",
                        help="in-graph scales, scores summed (default: 1.0)")
    parser.add_argument("--flip", action="store_true",
                        help="add horizontally flipped predictions in the graph")
    parser.add_argument("--base-size", type=positive_int, default=None, metavar="N",
                        help="with --scales/--ms: the long side that scale 1.0 maps to "
                             "(default: each image's own)")
    parser.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"),
                        default=None,
                        help="fixed network input size (default: the model's own if it "
                             "was built with one; required for tflite otherwise)")
    parser.add_argument("--max-pixels", type=max_pixels, default=2048 * 2048, metavar="N",
                        help="saved_model: refuse (with a clear error) images over N pixels "
                             "(height x width), so one huge request cannot exhaust the "
                             "server's memory; 0 = no limit (default 4194304 = 2048^2)")
    parser.add_argument("--max-batch-pixels", type=max_pixels, default=argparse.SUPPRESS,
                        metavar="N",
                        help="saved_model: refuse requests over N pixels in all (batch x "
                             "height x width, at the network's scales), checked from the "
                             "image headers before decoding; 0 = no limit (default: the "
                             "--max-pixels value)")
    parser.add_argument("--fold-bn", dest="fold_bn", action="store_true", default=True,
                        help="fold BatchNorm into the convolutions (default)")
    parser.add_argument("--no-fold-bn", dest="fold_bn", action="store_false")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--precision", default="fp32", choices=export_precisions(),
                        help="; ".join(f"{f.name}: {f.precision_help}" for f in
                                       FORMATS.values()) + " (default fp32)")
    parser.add_argument("--calibration-data", default=None, metavar="SPEC",
                        help="int8: the data source whose train images calibrate the "
                             "quantization (camvid, demo, folder:PATH, ...)")
    parser.add_argument("--calibration-images", type=positive_int, default=100, metavar="N",
                        help="int8: number of calibration images (default 100)")
    parser.add_argument("--keep-float", default=None, metavar="LAYER,...",
                        help="int8 (onnx, tflite, openvino): Keras layers left in float32, "
                             "e.g. classifier,logits, or 'none' to quantize every layer "
                             "(default: the layers measured to lose accuracy, "
                             "benchmarks/PRECISION.md; onnx and openvino: classifier,logits; "
                             "tflite: also preprocessing,encoding,encoding_bn)")


def run(args):
    start = time.perf_counter()
    if args.ms and args.scales is not None:
        raise ValueError("--ms and --scales are exclusive: --ms means --scales "
                         "0.5,0.75,1.0,1.25,1.5,1.75 --flip.")
    from keras_fastfcn.serving import targets

    # Output problems, unsupported options and missing optional packages are reported
    # before the model load.
    check_export_precision(args.format, args.precision, args.calibration_data)
    keep_float = None
    if args.keep_float is not None:
        if args.format not in ("onnx", "tflite", "openvino"):
            raise ValueError(f"--keep-float applies to int8 onnx, tflite and openvino "
                             f"exports, not to --format {args.format}.")
        from keras_fastfcn.serving.onnx import check_keep_float

        names = [n.strip() for n in args.keep_float.split(",")]
        keep_float = check_keep_float([] if names == ["none"] else names, args.precision)
    if args.format == "saved_model":
        targets.check_saved_model_target(args.output, args.overwrite, create=False)
    elif args.format == "openvino":  # NAME.xml and NAME.bin
        from keras_fastfcn.serving.openvino import check_openvino_target

        check_openvino_target(args.output, args.overwrite)
    else:
        targets.check_target_file(args.output, args.overwrite, FORMATS[args.format].suffix,
                                  create=False)
    try:  # a missing package: the message says what to install
        if args.format == "onnx":
            from keras_fastfcn.serving.onnx import require_onnx

            require_onnx(quantize=args.precision != "fp32")
        elif args.format == "openvino":
            from keras_fastfcn.serving.openvino import require_openvino

            require_openvino(quantize=args.precision == "int8")
    except RuntimeError as err:
        raise CommandError(str(err)) from None
    calibration_source = None
    if args.precision == "int8":  # a bad spec or a missing folder, before the model load
        from keras_fastfcn import data

        calibration_source = data.get_source(args.calibration_data)
    check_model_file(args.model)

    from keras_fastfcn import inference, serving

    model = inference.load_model(args.model)
    options = dict(overwrite=args.overwrite, probabilities=args.probabilities,
                   scales=inference.MS_SCALES if args.ms else (args.scales or (1.0,)),
                   flip=bool(args.flip or args.ms), input_size=args.input_size,
                   base_size=args.base_size, fold_bn=args.fold_bn)
    if args.format == "onnx":
        options["opset"] = args.opset
    if args.format == "saved_model":
        options["max_pixels"] = args.max_pixels
        options["max_batch_pixels"] = getattr(args, "max_batch_pixels", "auto")
    options["precision"] = args.precision
    if keep_float is not None:
        options["keep_float"] = keep_float
    if args.precision == "int8":
        from keras_fastfcn.precision import calibration_images

        # A fixed-size export is calibrated at its size: its input is that size.
        options["calibration"] = calibration_images(
            calibration_source, args.calibration_images, size=args.input_size)
    try:
        path = serving.export(model, args.output, args.format, **options)
    except RuntimeError as err:  # the converter's (the exporters name it and the output)
        raise CommandError(str(err)) from err
    weights = f" (weights: {os.path.splitext(path)[0]}.bin)" if args.format == "openvino" else ""
    print(f"exported {args.format} to {path}{weights} in {time.perf_counter() - start:.1f} s")
    if args.format == "saved_model":
        print(f"signatures: {', '.join(serving.SIGNATURES)}; serve with: "
              f"--model_base_path={os.path.abspath(os.path.dirname(path))}")
    return 0
