"""What each export-only graph rewrite buys: one configuration exported with the rewrite
and without it, both timed in their runtime, and their class maps compared.

Rewrites (`--rewrite`):
- `pad`: the dilated convolutions as explicit padding + valid convolution
  (`inference.fold.pad_dilated_convs`), which the ONNX and OpenVINO exports apply; off,
  only the JPU's depthwise convolutions are padded, as before the ASPP branches and
  dilated encoders were.
- `argmax`: the OpenVINO export's class map as reductions
  (`serving.openvino.argmax_as_reductions`); off, OpenVINO's stable TopK.
- `transposes`: the ONNX graph's layout transposes around channel-wise products
  cancelled (`serving.onnx._cancel_layout_transposes`, EncNet's channel attention);
  off, as tf2onnx leaves them. The ONNX and OpenVINO exports apply it.

The model is the benchmark's (`benchmark.configs._build`: random weights with trained-like
BatchNorm statistics, seeded, so that both exports hold the same weights), exported with
`serving.export(..., probabilities=False)` (int8: NNCF / ONNX Runtime calibrated on
`--calibration-images` random images) and run through `serving.runtime.ExportPredictor`
on 2 threads: batch 1, median of `--runs` after two warm-up calls, the exports taking
turns call by call (`export_latency.round_robin`).

Example:
    python benchmarks/export_rewrites.py --rewrite pad --head deeplab --upsampler jpu
    python benchmarks/export_rewrites.py --rewrite pad --upsampler os8 --formats openvino:int8
    python benchmarks/export_rewrites.py --rewrite argmax --formats openvino:fp32,openvino:int8
    python benchmarks/export_rewrites.py --rewrite transposes --formats onnx:fp32,openvino:int8
"""

import argparse
import contextlib
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:  # run from a checkout: use its keras_fastfcn
    sys.path.insert(0, os.path.dirname(_HERE))


def rewrite_off(name):
    """A context manager within which the export runs without the rewrite `name`."""
    from unittest import mock

    import keras

    from keras_fastfcn.inference import fold
    from keras_fastfcn.serving import onnx, openvino

    if name == "pad":  # only the JPU's depthwise convs, as before
        return mock.patch.dict(fold._PADDED, {
            keras.layers.DepthwiseConv2D: fold.PaddedDepthwiseConv2D}, clear=True)
    if name == "argmax":
        return mock.patch.object(openvino, "argmax_as_reductions", lambda proto: 0)
    if name == "transposes":
        return mock.patch.object(onnx, "_cancel_layout_transposes", lambda proto: 0)
    raise ValueError(f"unknown rewrite {name!r}: pad, argmax or transposes")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rewrite", required=True, choices=("pad", "argmax", "transposes"))
    parser.add_argument("--head", default="encnet")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--upsampler", default="jpu")
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--formats", default="onnx:fp32,openvino:fp32",
                        help="comma-separated FORMAT:PRECISION (onnx, openvino; fp32, int8)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration-images", type=int, default=8)
    args = parser.parse_args(argv)
    items = args.formats.split(",")
    for item in items:
        fmt, _, precision = item.partition(":")
        if fmt not in ("onnx", "openvino") or precision not in ("fp32", "int8"):
            parser.error(f"--formats: {item!r} is not FORMAT:PRECISION with FORMAT onnx "
                         "or openvino and PRECISION fp32 or int8")

    import keras
    import numpy as np

    from keras_fastfcn import serving
    from keras_fastfcn.benchmark.configs import _build
    from keras_fastfcn.benchmark import machine_description
    from keras_fastfcn.benchmark.cpu import cpu_info
    from keras_fastfcn.serving.runtime import ExportPredictor

    from export_latency import round_robin

    print(machine_description())
    print("CPU flags:", " ".join(cpu_info().get("flags", [])))
    rng = np.random.RandomState(1)
    calibration = [rng.uniform(0, 255, (args.size, args.size, 3)).astype("uint8")
                   for _ in range(args.calibration_images)]
    image = np.random.RandomState(0).uniform(0, 255, (1, args.size, args.size, 3)).astype(
        "float32")
    runners = {}
    with tempfile.TemporaryDirectory(prefix="kf-rewrites-") as work:
        for leg in ("without", "with"):
            keras.utils.set_random_seed(0)
            model = _build(args.head, args.encoder, args.upsampler, args.num_classes)
            for item in items:
                fmt, precision = item.split(":")
                ext = {"onnx": ".onnx", "openvino": ".xml"}[fmt]
                path = os.path.join(work, f"{leg}_{fmt}_{precision}{ext}")
                options = {"calibration": calibration} if precision == "int8" else {}
                with (rewrite_off(args.rewrite) if leg == "without"
                      else contextlib.nullcontext()):
                    serving.export(model, path, format=fmt, precision=precision,
                                   probabilities=False, **options)
                runners[(item, leg)] = ExportPredictor(path, threads=2)
        timings, maps = round_robin(
            {key: (lambda run=run: run(image)) for key, run in runners.items()}, args.runs)
    print(f"{args.head} {args.encoder} {args.upsampler} {args.size}px, rewrite {args.rewrite}")
    print("| export | without (s) | with (s) | class map equal |")
    print("|---|---|---|---|")
    for item in items:
        without, with_ = (timings[(item, leg)][0] for leg in ("without", "with"))
        same = float((np.asarray(maps[(item, "without")])
                      == np.asarray(maps[(item, "with")])).mean())
        print(f"| {item} | {without:.3f} | {with_:.3f} | {100 * same:.2f}% |")


if __name__ == "__main__":
    main()
