"""Export time and latency of each export format, in one process on one image.

Builds FastFCN EncNet + JPU on ResNet-50 (random weights: speed does not depend
on them), then measures:
1. Keras latency with and without BatchNorm folding (`keras_fastfcn.inference.fold`);
2. export time of SavedModel, ONNX (tf2onnx) and TFLite at SIZE x SIZE;
3. latency of the exported SavedModel (`serving_float`), ONNX Runtime and TFLite
   on the same image, and their class-map agreement with Keras.

Usage:
    python benchmarks/export_latency.py [--size 512] [--runs 5] [--formats saved_model onnx tflite]

Latencies are the median (and min) of `--runs` timed calls after two warm-up
calls, batch 1, on CPU with each runtime's default threads. The runtimes are
timed round-robin so that load changes on a shared machine hit all of them alike.
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


def round_robin(fns, runs, warmup=2):
    """Times each callable `runs` times, interleaved (A B C A B C ...).

    On a shared machine the load drifts; interleaving spreads that drift evenly
    over the runtimes instead of penalizing whichever ran last.
    """
    outputs = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            outputs[name] = fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}, outputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--head", default="encnet")
    parser.add_argument("--jpu-width", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--formats", nargs="+", default=["saved_model", "onnx", "tflite"])
    parser.add_argument("--out-dir", default=None,
                        help="where to write exports (default: a temp dir)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    import keras_fastfcn as kf
    from keras_fastfcn import serving as export
    from keras_fastfcn.inference.fold import batchnorm_layers, fold_batchnorm

    size = args.size
    print(f"FastFCN {args.head} + JPU (width {args.jpu_width}), ResNet-50, {args.num_classes} "
          f"classes, {size}x{size}, batch 1; TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs")
    model = kf.FastFCN(num_classes=args.num_classes, head=args.head, backbone="resnet50",
                       upsampler="jpu", jpu_width=args.jpu_width)
    image = np.random.RandomState(0).randint(0, 256, (1, size, size, 3)).astype(np.uint8)
    x = tf.constant(image.astype(np.float32))
    fns = {}

    # 1. BatchNorm folding, Keras graph (tf.function), same process and image.
    start = time.perf_counter()
    folded = fold_batchnorm(model)
    fold_s = time.perf_counter() - start
    plain_fn = tf.function(lambda t: model(t, training=False))
    folded_fn = tf.function(lambda t: folded(t, training=False))
    ref = plain_fn(x).numpy()
    diff = np.abs(folded_fn(x).numpy() - ref).max()
    print(f"BatchNorm folding: {len(batchnorm_layers(model))} -> {len(batchnorm_layers(folded))} "
          f"BN layers in {fold_s:.1f} s; max |logit diff| {diff:.2e} "
          f"(logit scale {np.abs(ref).max():.1f})")
    ref_map = ref.argmax(-1)
    fns["Keras (tf.function), BN not folded"] = lambda: plain_fn(x).numpy().argmax(-1)
    fns["Keras (tf.function), BN folded"] = lambda: folded_fn(x).numpy().argmax(-1)

    # 2. Exports.
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="fastfcn_export_bench_")
    exports = []
    u8 = tf.constant(image)
    if "saved_model" in args.formats:
        for fold_bn in (False, True):
            start = time.perf_counter()
            path = export.export_saved_model(
                model, os.path.join(out_dir, "saved_model" + ("_folded" if fold_bn else "")),
                overwrite=True, probabilities=False, fold_bn=fold_bn)
            label = "BN folded" if fold_bn else "BN not folded"
            exports.append((f"SavedModel, {label}", time.perf_counter() - start, path))
            sigs = tf.saved_model.load(path).signatures
            fns[f"TF SavedModel serving_default, {label}"] = (
                lambda s=sigs["serving_default"]: s(image_tensor=u8)["class_map"].numpy())
        fns["TF SavedModel serving_float, BN folded"] = (
            lambda s=sigs["serving_float"]: s(image_tensor=x)["class_map"].numpy())
    if "onnx" in args.formats:
        import onnxruntime as ort

        start = time.perf_counter()
        path = export.export_onnx(model, os.path.join(out_dir, "model.onnx"), overwrite=True,
                                  probabilities=False)
        exports.append(("ONNX (dynamic B, H, W), BN folded", time.perf_counter() - start, path))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {"images": image.astype(np.float32)}
        fns[f"ONNX Runtime {ort.__version__} (CPU EP)"] = lambda: sess.run(["class_map"], feed)[0]
    if "tflite" in args.formats:
        start = time.perf_counter()
        path = export.export_tflite(model, os.path.join(out_dir, "model.tflite"), overwrite=True,
                                    probabilities=False, input_size=(size, size))
        exports.append((f"TFLite float32 {size}x{size}, BN folded", time.perf_counter() - start,
                        path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(path)
        runner = interpreter.get_signature_runner()
        feed32 = image.astype(np.float32)
        fns["TFLite interpreter (XNNPACK)"] = lambda: runner(images=feed32)["class_map"]

    # 3. Latency, interleaved.
    timings, outputs = round_robin(fns, args.runs)
    rows = [(name, med, best, float((np.asarray(outputs[name]) == ref_map).mean()))
            for name, (med, best) in timings.items()]

    print("\nExport time")
    print(f"| {'format':<40} | {'seconds':>8} | {'size MB':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|")
    for name, seconds, path in exports:
        if os.path.isdir(path):
            nbytes = sum(os.path.getsize(os.path.join(d, f))
                         for d, _, fs in os.walk(path) for f in fs)
        else:
            nbytes = os.path.getsize(path)
        print(f"| {name:<40} | {seconds:8.1f} | {nbytes / 1e6:8.1f} |")
    print(f"\nLatency, {size}x{size}, batch 1 (median / min of {args.runs} runs)")
    print(f"| {'runtime':<48} | {'median s':>8} | {'min s':>8} | {'class map = Keras':>17} |")
    print(f"|{'-' * 50}|{'-' * 10}|{'-' * 10}|{'-' * 19}|")
    for name, med, best, agree in rows:
        print(f"| {name:<48} | {med:8.3f} | {best:8.3f} | {agree:16.4%} |")
    keras_gain = (timings["Keras (tf.function), BN not folded"][0]
                  / timings["Keras (tf.function), BN folded"][0])
    print(f"\nBN folding speed-up (median): Keras graph {keras_gain:.2f}x", end="")
    if "saved_model" in args.formats:
        sm_gain = (timings["TF SavedModel serving_default, BN not folded"][0]
                   / timings["TF SavedModel serving_default, BN folded"][0])
        print(f", SavedModel {sm_gain:.2f}x", end="")
    print()
    print(f"exports in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
