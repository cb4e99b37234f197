"""Timing one configuration in this process: Keras latency and throughput (fp32 /\nbf16 / fp16), its int8 exports through their runtimes, and training-step memory."""

import os
import statistics
import time

from keras_fastfcn.benchmark.configs import _build, _deployed, _float32_logits, _flops, _params
from keras_fastfcn.benchmark.cpu import _vm

def _time(run, warmup, min_runs, min_seconds, max_runs=50):
    """Median, minimum and count of timed `run()` calls after `warmup` untimed ones
    (the protocol of the official `test_fps_params.py`)."""
    for _ in range(warmup):
        run()
    times = []
    begin = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - begin < min_seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        if len(times) >= max_runs:
            break
    return statistics.median(times), min(times), len(times)


XLA_CHOICES = {"auto": (False, "parts"), "off": (False,), "parts": ("parts",)}


def _xla_choices(xla):
    if xla not in XLA_CHOICES:
        raise ValueError(f"Unknown xla {xla!r}: expected one of {list(XLA_CHOICES)}.")
    return XLA_CHOICES[xla]


def measure_speed(head, encoder, upsampler, size=512, num_classes=59, warmup=3,
                  min_runs=5, min_seconds=10.0, fold=True, precision="fp32",
                  throughput_batch=8, xla="auto", gflops=None, freeze=False):
    """Latency, throughput, FLOPs and parameters of one configuration (in this process).

    Args:
        head, encoder, upsampler: the configuration (`HEADS`, `ENCODERS`,
            `UPSAMPLERS`).
        size: square image size.
        num_classes: classifier width (59: Pascal Context, as the paper's timings).
        warmup, min_runs, min_seconds: the timing protocol (untimed runs, then at
            least `min_runs` timed runs and `min_seconds` seconds).
        fold: fold BatchNorm into the convolutions (what the exports and
            `keras-fastfcn predict` / `evaluate` run).
        precision: `"fp32"`, `"bf16"` or `"fp16"` (Keras mixed precision).
        throughput_batch: batch of the throughput run (images/s); 0 skips it.
        xla: `"auto"` (time the graph without XLA and with `xla_parts`, keep the
            faster), `"off"` or `"parts"` (only that one).
        gflops: the configuration's GFLOPs if already counted (they do not depend on
            the precision): skips the fp32 graph and its profile.
        freeze: time the graph with the weights frozen into it, as
            `Predictor(freeze=True)` / `--freeze` runs it (with `fold`).

    Returns:
        A dict: `latency_s` (median, batch 1), `fps`, `xla`, `gflops` (per image),
        `params`, and with `throughput_batch` `throughput_ips` and its batch.

    Example:
    >>> measure_speed("encnet", "resnet50", "jpu", size=128,
    ...               min_seconds=1)["fps"] > 0  # a benchmark: a minute  # doctest: +SKIP
    True
    """
    import numpy as np
    import tensorflow as tf

    from keras_fastfcn.inference import trace
    from keras_fastfcn.precision import KERAS_PRECISIONS, check_precision

    check_precision(precision, KERAS_PRECISIONS, "the benchmark's Keras rows (int8: "
                    "measure_int8_speed)")
    jits = _xla_choices(xla)
    seg = _build(head, encoder, upsampler, num_classes)
    params = _params(seg)
    spec = tf.TensorSpec((1, size, size, 3), tf.float32)
    if gflops is None:
        # Counted on the fp32 graph: a mixed-precision graph adds casts, not arithmetic.
        gflops = _flops(_deployed(seg, fold), spec) / 1e9
    model = _deployed(seg, fold, precision)
    del seg
    rng = np.random.RandomState(0)
    images = tf.constant(rng.uniform(0, 255, (1, size, size, 3)), tf.float32)
    best, errors = None, []
    forward = _float32_logits(model)
    for jit in jits:
        start = time.perf_counter()
        try:
            # Traced as `inference.Predictor(fold_batchnorm=fold, freeze=freeze)` does.
            fn = trace(forward, spec, model, jit, freeze=freeze)
            fn(images).numpy()
        except Exception as err:  # e.g. an XLA kernel missing for a 16-bit type
            errors.append(f"xla={jit}: {type(err).__name__}: {str(err)[:120]}")
            continue
        compile_s = time.perf_counter() - start
        median, fastest, runs = _time(lambda: fn(images).numpy(), warmup - 1, min_runs,
                                      min_seconds)
        if best is None or median < best["latency_s"]:
            best = {"latency_s": median, "fps": 1.0 / median, "xla": jit, "runs": runs,
                    "latency_min_s": fastest, "compile_s": compile_s, "fn": fn}
        if not jit and median > 4 * min_seconds / min_runs:
            break  # very slow config: XLA on CPU will not change the ratio; save time
    if best is None:
        raise RuntimeError("; ".join(errors))
    best.pop("fn")
    if throughput_batch:
        batch = tf.constant(rng.uniform(0, 255, (int(throughput_batch), size, size, 3)),
                            tf.float32)
        bfn = trace(forward, tf.TensorSpec(batch.shape, tf.float32), model, best["xla"],
                    freeze=freeze)
        best.update(_throughput(lambda: bfn(batch).numpy(), throughput_batch, min_seconds))
    best["precision"] = precision
    best["frozen"] = bool(freeze)
    best["gflops"] = gflops
    best["params"] = params
    best["params_total"] = int(sum(params.values()))
    return best


def _throughput(run, batch, min_seconds):
    """The throughput columns of `run()`, which processes `batch` images: one warm-up
    (the trace), then as many runs as half the batch-1 protocol's time allows."""
    median, _, runs = _time(run, 1, 3, min_seconds / 2)
    return {"throughput_batch": int(batch), "throughput_ips": int(batch) / median,
            "throughput_runs": runs}


INT8_RUNTIMES = {"auto": ("tflite", "onnx"), "tflite": ("tflite",), "onnx": ("onnx",)}


INT8_CALIBRATION_IMAGES = 8


RUNTIME_NAMES = {"tflite": "TFLite", "onnx": "ONNX Runtime"}


def _int8_runtimes(runtime):
    if runtime not in INT8_RUNTIMES:
        raise ValueError(f"Unknown int8 runtime {runtime!r}: expected one of "
                         f"{list(INT8_RUNTIMES)}.")
    return INT8_RUNTIMES[runtime]


def measure_int8_speed(head, encoder, upsampler, size=512, num_classes=59, warmup=3,
                       min_runs=5, min_seconds=10.0, throughput_batch=8, runtime="auto",
                       gflops=None, threads=None):
    """Latency and throughput of one configuration's int8 exports (in this process).

    The configuration's model (`_build`) is exported as `keras-fastfcn export
    --precision int8` writes it: TFLite full-integer at `size` x `size` and ONNX QDQ
    (per-channel weights, the exporters' default layers left in float), calibrated on
    `INT8_CALIBRATION_IMAGES` random images (a quantized graph's speed does not depend
    on its scales; `benchmarks/precision.py` measures int8 accuracy on real data). Each
    export runs through `keras_fastfcn.serving.runtime.ExportPredictor`, as `predict` /
    `evaluate --model FILE` run it, and the faster runtime is kept.

    Args:
        head, encoder, upsampler, size, num_classes, warmup, min_runs, min_seconds:
            as `measure_speed`.
        throughput_batch: batch of the throughput run (TFLite runs it one image at a
            time, as its fixed-size export does); 0 skips it.
        runtime: `"auto"` (both, the faster kept), `"tflite"` or `"onnx"`.
        gflops: the configuration's GFLOPs if already counted; None counts them on the
            fp32 graph (int8 does the same multiply-adds).
        threads: CPU threads of each runtime (None: every core).

    Returns:
        A dict as `measure_speed`'s, with `runtime` (the faster), `runtime_latency_s`
        and `export_s` per runtime tried, and `runtime_errors` where one failed.

    Example:
    >>> row = measure_int8_speed("encnet", "resnet50", "jpu", size=128,
    ...                          min_seconds=1)  # a benchmark: minutes  # doctest: +SKIP
    >>> row["runtime"] in ("tflite", "onnx")  # doctest: +SKIP
    True
    """
    import tempfile

    import numpy as np
    import tensorflow as tf

    from keras_fastfcn import serving
    from keras_fastfcn.serving.runtime import ExportPredictor

    runtimes = _int8_runtimes(runtime)
    seg = _build(head, encoder, upsampler, num_classes)
    params = _params(seg)
    if gflops is None:
        gflops = _flops(_deployed(seg), tf.TensorSpec((1, size, size, 3), tf.float32)) / 1e9
    rng = np.random.RandomState(0)
    calibration = [rng.uniform(0, 255, (size, size, 3)).astype("uint8")
                   for _ in range(INT8_CALIBRATION_IMAGES)]
    image = rng.uniform(0, 255, (1, size, size, 3)).astype("float32")
    best, latencies, export_s, errors = None, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="kf-int8-") as work:
        for name in runtimes:
            start = time.perf_counter()
            # Any failure of one runtime (onnxruntime / tf2onnx not installed, a
            # conversion or kernel error) is recorded and shown with the row, which the
            # other runtime still gives.
            try:
                path = serving.export(
                    seg, os.path.join(work, f"model.{name}"), format=name, precision="int8",
                    calibration=calibration, probabilities=False,
                    **({"input_size": (size, size)} if name == "tflite" else {}))
                predictor = ExportPredictor(path, threads=threads)
                export_s[name] = time.perf_counter() - start
                median, fastest, runs = _time(lambda: predictor(image), warmup, min_runs,
                                              min_seconds)
            except Exception as err:
                errors[name] = f"{type(err).__name__}: {str(err)[:160]}"
                continue
            latencies[name] = median
            if best is None or median < best["latency_s"]:
                best = {"latency_s": median, "fps": 1.0 / median, "runtime": name,
                        "runs": runs, "latency_min_s": fastest, "predictor": predictor}
        if best is None:
            raise RuntimeError("no int8 runtime ran: " + "; ".join(
                f"{k}: {v}" for k, v in errors.items()))
        predictor = best.pop("predictor")
        if throughput_batch:
            batch = rng.uniform(0, 255, (int(throughput_batch), size, size, 3)).astype(
                "float32")
            best.update(_throughput(lambda: predictor(batch), throughput_batch, min_seconds))
    best.update(precision="int8", int8_runtime=runtime, runtime_latency_s=latencies,
                export_s=export_s, calibration_images=INT8_CALIBRATION_IMAGES,
                gflops=gflops, params=params, params_total=int(sum(params.values())))
    if errors:
        best["runtime_errors"] = errors
    return best


def measure_train_memory(head, encoder, upsampler, crop=480, batch=2, num_classes=59):
    """Peak RSS of one training step (call in a fresh process)."""
    import keras
    import numpy as np

    model = _build(head, encoder, upsampler, num_classes)  # aux head, SE loss for encnet
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=False)
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    y = rng.randint(0, num_classes, (batch, crop, crop)).astype("int32")
    model.optimizer.build(model.trainable_variables)
    before = _vm("VmRSS")
    start = time.perf_counter()
    model.train_on_batch(x, y)
    step_s = time.perf_counter() - start
    peak = _vm("VmHWM")
    return {"train_peak_rss_gb": peak / 2**30, "train_step_growth_gb": (peak - before) / 2**30,
            "train_first_step_s": step_s}
