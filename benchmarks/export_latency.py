"""Export time and latency of each export format, in one process on one image.

Builds FastFCN EncNet + JPU on ResNet-50 (random weights: speed does not depend
on them), then measures:
1. Keras latency with and without BatchNorm folding (`keras_fastfcn.fold`);
2. export time of SavedModel, ONNX (tf2onnx) and TFLite at SIZE x SIZE;
3. latency of the exported SavedModel (`serving_float`), ONNX Runtime and TFLite
   on the same image, and their class-map agreement with Keras.

Usage:
    python benchmarks/export_latency.py [--size 512] [--runs 5] [--formats saved_model onnx tflite]

Latencies are the median of `--runs` timed calls after two warm-up calls, batch 1,
on CPU with the default thread settings of each runtime.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def timed(fn, runs, warmup=2):
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--head", default="encnet")
    parser.add_argument("--jpu-width", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--formats", nargs="+", default=["saved_model", "onnx", "tflite"])
    parser.add_argument("--out-dir", default=None, help="where to write exports (default: a temp dir)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_fastfcn as kf
    from keras_fastfcn import export
    from keras_fastfcn.fold import batchnorm_layers, fold_batchnorm

    size = args.size
    print(f"FastFCN {args.head} + JPU (width {args.jpu_width}), ResNet-50, {args.num_classes} "
          f"classes, {size}x{size}, batch 1; TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs")
    model = kf.FastFCN(num_classes=args.num_classes, head=args.head, backbone="resnet50",
                       upsampler="jpu", jpu_width=args.jpu_width)
    image = np.random.RandomState(0).randint(0, 256, (1, size, size, 3)).astype(np.uint8)
    x = tf.constant(image.astype(np.float32))
    rows = []

    # 1. BatchNorm folding, Keras graph (tf.function), same process and image.
    start = time.perf_counter()
    folded = fold_batchnorm(model)
    fold_s = time.perf_counter() - start
    plain_fn = tf.function(lambda t: model(t, training=False))
    folded_fn = tf.function(lambda t: folded(t, training=False))
    plain_s, plain_min, ref = timed(lambda: plain_fn(x).numpy(), args.runs)
    folded_s, folded_min, out = timed(lambda: folded_fn(x).numpy(), args.runs)
    ref_map = ref.argmax(-1)
    print(f"BatchNorm folding: {len(batchnorm_layers(model))} -> {len(batchnorm_layers(folded))} "
          f"BN layers in {fold_s:.1f} s; max |logit diff| {np.abs(out - ref).max():.2e} "
          f"(logit scale {np.abs(ref).max():.1f})")
    rows.append(("Keras (tf.function), BN not folded", plain_s, plain_min, 1.0))
    rows.append(("Keras (tf.function), BN folded", folded_s, folded_min,
                 float((out.argmax(-1) == ref_map).mean())))

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="fastfcn_export_bench_")
    exports = []
    if "saved_model" in args.formats:
        start = time.perf_counter()
        path = export.export_saved_model(model, os.path.join(out_dir, "saved_model"),
                                         overwrite=True, probabilities=False)
        exports.append(("SavedModel", time.perf_counter() - start, path))
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_float"]
        med, best, res = timed(lambda: serve(image_tensor=x)["class_map"].numpy(), args.runs)
        rows.append(("TF SavedModel serving_float", med, best, float((res == ref_map).mean())))
        serve_u8 = loaded.signatures["serving_default"]
        u8 = tf.constant(image)
        med, best, res = timed(lambda: serve_u8(image_tensor=u8)["class_map"].numpy(), args.runs)
        rows.append(("TF SavedModel serving_default (uint8)", med, best,
                     float((res == ref_map).mean())))
    if "onnx" in args.formats:
        import onnxruntime as ort

        start = time.perf_counter()
        path = export.export_onnx(model, os.path.join(out_dir, "model.onnx"), overwrite=True,
                                  probabilities=False)
        exports.append(("ONNX (dynamic B, H, W)", time.perf_counter() - start, path))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {"images": image.astype(np.float32)}
        med, best, res = timed(lambda: sess.run(["class_map"], feed)[0], args.runs)
        rows.append((f"ONNX Runtime {ort.__version__} (CPU EP)", med, best,
                     float((res == ref_map).mean())))
    if "tflite" in args.formats:
        start = time.perf_counter()
        path = export.export_tflite(model, os.path.join(out_dir, "model.tflite"), overwrite=True,
                                    probabilities=False, input_size=(size, size))
        exports.append((f"TFLite float32 {size}x{size}", time.perf_counter() - start, path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(path)
        runner = interpreter.get_signature_runner()
        feed32 = image.astype(np.float32)
        med, best, res = timed(lambda: runner(images=feed32)["class_map"], args.runs)
        rows.append(("TFLite interpreter (XNNPACK)", med, best, float((res == ref_map).mean())))

    print("\nExport time")
    print(f"| {'format':<32} | {'seconds':>8} | {'size MB':>8} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|")
    for name, seconds, path in exports:
        if os.path.isdir(path):
            nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        else:
            nbytes = os.path.getsize(path)
        print(f"| {name:<32} | {seconds:8.1f} | {nbytes / 1e6:8.1f} |")
    print(f"\nLatency, {size}x{size}, batch 1 (median / min of {args.runs} runs)")
    print(f"| {'runtime':<40} | {'median s':>8} | {'min s':>8} | {'class map = Keras':>17} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 19}|")
    for name, med, best, agree in rows:
        print(f"| {name:<40} | {med:8.3f} | {best:8.3f} | {agree:16.4%} |")
    print(f"\nBN folding speed-up (Keras graph): {plain_s / folded_s:.2f}x")
    print(f"exports in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
