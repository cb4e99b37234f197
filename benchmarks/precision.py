"""Speed and accuracy of every precision x format, measured in one run on this machine.

For a trained model (default: a CamVid model from `keras-fastfcn train --config camvid`):

- accuracy on the CamVid val split (pixAcc / mIoU, official definitions, whole images
  at their 360x480 size, single scale) and argmax agreement with the fp32 Keras model,
  for Keras fp32 / bf16 / fp16, TFLite fp32 / fp16 / int8 / int8_dynamic and ONNX
  Runtime fp32 / int8 / int8_dynamic, OpenVINO fp32 / bf16 / int8 where `openvino` and
  `nncf` are installed (int8 calibrated on CamVid train images), and the
  static int8 exports again with the layers of each `--keep-float` list left in float
  (`keep_float` of the exporters: ONNX `nodes_to_exclude`, TFLite selective
  quantization; the plain int8 rows use the exporters' default float set, `--keep-float
  none` adds rows with every op in int8);
- latency at `--size` (512x512 by default, batch 1, median of `--repeats`) of the same
  configurations, with the CPU model and its ISA flags.

Writes `--output` (a Markdown table, default `precision_run.md` in the current folder)
and its `.json`, and prints the table; `benchmarks/PRECISION.md` keeps the dated tables
per machine kind, to which a run's rows are added by hand with its command.

    python benchmarks/precision.py --model runs/camvid/model.keras --val-images 101
    # only the int8 rows (Keras fp32 is always measured: the reference):
    python benchmarks/precision.py --model m.keras --only tflite:int8,onnx:int8 \
        --keep-float classifier,logits --keep-float encoding,classifier,logits
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FORMAT_KEYS = {"keras": "Keras", "tflite": "TFLite", "onnx": "ONNX Runtime",
               "openvino": "OpenVINO"}


def parse_only(text):
    """`--only keras:bf16,onnx:int8` -> {("Keras", "bf16"), ("ONNX Runtime", "int8")}."""
    if not text:
        return None
    out = set()
    for item in text.split(","):
        fmt, _, precision = item.strip().partition(":")
        if fmt not in FORMAT_KEYS or not precision:
            raise SystemExit(f"--only: expected FORMAT:PRECISION with FORMAT one of "
                             f"{list(FORMAT_KEYS)}, got {item!r}")
        out.add((FORMAT_KEYS[fmt], precision))
    return out


def kept_in_float(model, precision, fmt, keep):
    """The layers a static int8 row leaves in float (None for other rows): `keep`, or
    the exporter's default for `model` (its default names that are layers of it)."""
    from keras_fastfcn.serving import onnx, tflite

    if precision != "int8":
        return None
    if keep is None:
        default = tflite.DEFAULT_KEEP_FLOAT if fmt == "TFLite" else onnx.DEFAULT_KEEP_FLOAT
        return list(onnx.default_keep_float(model, default))
    return list(keep)


def kept_cell(row):
    kept = row["keep_float"]
    if kept is None:
        return "-"
    return ("default: " if row["default_keep_float"] else "") + (", ".join(kept) or "none")


def file_tag(keep):
    return "_default" if keep is None else "_" + ("_".join(keep).replace("/", "-") or "none")


def confusion(pred, label, num_classes):
    valid = label < num_classes
    return np.bincount(num_classes * label[valid].astype(np.int64) + pred[valid],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(matrix):
    tp = np.diag(matrix).astype(np.float64)
    pix_acc = tp.sum() / max(matrix.sum(), 1)
    union = matrix.sum(0) + matrix.sum(1) - tp
    miou = np.mean(tp / np.maximum(union, 1))  # official: over all classes
    return pix_acc, miou


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="camvid")
    parser.add_argument("--val-images", type=int, default=101)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--size", type=int, default=512,
                        help="latency image size; 0: the val images' own size (reuses the "
                             "evaluated exports: half the conversions)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-float", action="append", default=[],
                        help="comma list of Keras layer names kept in float in the static "
                             "int8 exports (one more TFLite and ONNX int8 row per use); "
                             "'none': every op in int8")
    parser.add_argument("--only", default="",
                        help="comma list of FORMAT:PRECISION rows to measure (keras, tflite, "
                             "onnx, openvino; Keras fp32 is always measured: the reference)")
    parser.add_argument("--output", default="precision_run.md")
    args = parser.parse_args()
    only = parse_only(args.only)
    keep_lists = []
    for item in args.keep_float:
        names = tuple(k.strip() for k in item.split(",") if k.strip())
        if not names:
            raise SystemExit("--keep-float: expected a comma list of layer names, e.g. "
                             "classifier,logits, or none")
        keep_lists.append(() if names[0].lower() == "none" and len(names) == 1 else names)

    import keras  # noqa: F401
    import onnxruntime as ort
    import tensorflow as tf

    from keras_fastfcn import data, inference, serving
    from keras_fastfcn.benchmark import cpu_info
    from keras_fastfcn.precision import calibration_images, with_precision

    info_cpu = cpu_info()
    has_openvino = importlib.util.find_spec("openvino") is not None
    openvino_version = ""
    if has_openvino:
        import openvino

        openvino_version = f", OpenVINO {openvino.get_version().split('-')[0]}"
    cpu, isa = f"{info_cpu['model']}, {info_cpu['cores']} CPUs", info_cpu["flags"]
    threads = os.cpu_count()
    model = inference.load_model(args.model)
    info = inference.model_info(model)
    source = data.get_source(args.data)
    val = [(np.asarray(i, np.uint8), np.asarray(lab)) for i, lab in
           source.dataset("val").take(args.val_images)]
    height, width = val[0][0].shape[:2]
    calib_native = calibration_images(source, args.calibration_images)
    calib_fixed = calibration_images(source, args.calibration_images, size=(height, width))
    work = tempfile.mkdtemp(prefix="precision-")
    size = args.size
    bench_shape = (1, size, size, 3) if size else (1, height, width, 3)
    bench_image = np.random.RandomState(0).uniform(0, 255, bench_shape).astype("float32")

    def keras_runner(precision):
        m = with_precision(model, precision)
        predictor = inference.Predictor(m, fold_batchnorm=True)  # as the CLI
        return predictor.class_map  # the argmax in the graph, as the exports

    # keep=None: the exporter's default float set (what `keras-fastfcn export` writes);
    # () quantizes every op.
    def tflite_runner(precision, h, w, keep=None):
        calib = calib_fixed if (h, w) == (height, width) else calibration_images(
            source, args.calibration_images, size=(h, w))
        name = f"m_{precision}_{h}{file_tag(keep)}.tflite"
        path = serving.export(model, os.path.join(work, name),
                              format="tflite", input_size=(h, w), precision=precision,
                              calibration=calib if precision == "int8" else None,
                              probabilities=False, keep_float=keep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(path, num_threads=threads)
        run = interpreter.get_signature_runner()
        return lambda x: run(images=x)["class_map"]

    export_paths = {}

    def export_runner(fmt, precision, keep=None):
        # ONNX and OpenVINO exports take any H, W: one file evaluates and times. Run as
        # `predict --model FILE` runs them.
        from keras_fastfcn.serving.runtime import ExportPredictor

        if (fmt, precision, keep) not in export_paths:
            export_paths[fmt, precision, keep] = serving.export(
                model, os.path.join(work, f"m_{precision}{file_tag(keep)}"
                                          f"{'.xml' if fmt == 'openvino' else '.onnx'}"),
                format=fmt, precision=precision, probabilities=False,
                calibration=calib_native if precision == "int8" else None, keep_float=keep)
        return ExportPredictor(export_paths[fmt, precision, keep], threads=threads).class_map

    configs = [("Keras", p, lambda p=p: keras_runner(p), lambda p=p: keras_runner(p))
               for p in ("fp32", "bf16", "fp16")]
    configs += [("TFLite", p, lambda p=p: tflite_runner(p, height, width),
                 lambda p=p: tflite_runner(p, size, size))
                for p in ("fp32", "fp16", "int8", "int8_dynamic")]
    formats = [("ONNX Runtime", "onnx", ("fp32", "int8", "int8_dynamic"))]
    if has_openvino:
        formats.append(("OpenVINO", "openvino", ("fp32", "bf16", "int8")))
    configs += [(name, p, lambda f=fmt, p=p: export_runner(f, p),
                 lambda f=fmt, p=p: export_runner(f, p))
                for name, fmt, precisions in formats for p in precisions]
    configs = [(fmt, p, None, e, b) for fmt, p, e, b in configs]
    for keep in keep_lists:
        configs += [("TFLite", "int8", keep,
                     lambda k=keep: tflite_runner("int8", height, width, k),
                     lambda k=keep: tflite_runner("int8", size, size, k))]
        configs += [(name, "int8", keep, lambda f=fmt, k=keep: export_runner(f, "int8", k),
                     lambda f=fmt, k=keep: export_runner(f, "int8", k))
                    for name, fmt, _ in formats]
    if only is not None:
        configs = [c for c in configs if c[:2] == ("Keras", "fp32") or c[:2] in only]

    rows, reference = [], None
    for fmt, precision, keep, make_eval, make_bench in configs:
        kept = {"keep_float": kept_in_float(model, precision, fmt, keep),
                "default_keep_float": keep is None}
        print(f"{fmt} {precision} {kept_cell(kept)}...", flush=True)
        try:
            run = make_eval()
            matrix = np.zeros((info.num_classes, info.num_classes), np.int64)
            maps = []
            for image, label in val:
                pred = np.asarray(run(image[None].astype("float32")))[0]
                maps.append(pred)
                matrix += confusion(pred, label, info.num_classes)
            if reference is None:
                reference = maps
            agree = np.mean([(a == b).mean() for a, b in zip(maps, reference)])
            if size:
                run = make_bench()
            run(bench_image)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run(bench_image)
                times.append(time.perf_counter() - start)
            pix_acc, miou = scores(matrix)
            rows.append(dict(format=fmt, precision=precision, **kept,
                             pixAcc=pix_acc, mIoU=miou, agreement=agree,
                             latency_s=statistics.median(times)))
        except Exception as err:  # a format/precision this machine cannot run
            rows.append(dict(format=fmt, precision=precision, **kept,
                             error=f"{type(err).__name__}: {str(err)[:160]}"))
        print(rows[-1], flush=True)

    base = next(r for r in rows if "error" not in r)
    lines = [f"# Precision x format: accuracy and speed ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {cpu}; ISA: {' '.join(isa) or 'n/a'}; TensorFlow {tf.__version__}, "
             f"ONNX Runtime {ort.__version__}{openvino_version}, {threads} threads.",
             f"Model: `{args.model}` ({info.num_classes} classes). Accuracy: {len(val)} "
             f"{args.data} val images at {height}x{width}, single scale; int8 calibrated on "
             f"{args.calibration_images} train images. Latency: {bench_shape[1]}x{bench_shape[2]}, batch 1, "
             f"median of {args.repeats}.", "",
             f"Command: `python benchmarks/precision.py {' '.join(sys.argv[1:])}`", "",
             "| format | precision | kept in float | pixAcc | mIoU | mIoU vs fp32 | argmax = fp32 "
             "| latency (s) | speed vs Keras fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = kept_cell(r)
        if "error" in r:
            lines.append(f"| {r['format']} | {r['precision']} | {kept} | - | - | - | - | - | "
                         f"{r['error']} |")
            continue
        lines.append(
            f"| {r['format']} | {r['precision']} | {kept} | {r['pixAcc']:.4f} | {r['mIoU']:.4f} | "
            f"{100 * (r['mIoU'] - base['mIoU']):+.2f} | {100 * r['agreement']:.2f}% | "
            f"{r['latency_s']:.3f} | {base['latency_s'] / r['latency_s']:.2f}x |")
    text = "\n".join(lines) + "\n"
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.splitext(args.output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(dict(machine=cpu, isa=isa, rows=rows), f, indent=2)
    print(text)


if __name__ == "__main__":
    main()
