"""Speed, FLOPs, parameters and training memory: JPU vs DilatedFCN (`keras-fastfcn benchmark`).

The measurements live here; `benchmarks/report.py` turns their `results.json` into
`RESULTS.md` and `chart.png`.

Every configuration (head x backbone x upsampler) runs in its own child process, so
one model's memory and thread pools do not bias the next; all run on the same input.

- Latency: the inference model (logits only) on one 512x512 image, through the
  fastest path the package offers, the one `keras-fastfcn predict` / `evaluate` run:
  BatchNorm folded into the convolutions (`keras_fastfcn.serving.fold`) and a
  `tf.function` (`keras_fastfcn.inference.trace`; with `freeze` / `--freeze` the
  weights frozen into its graph, as `predict --freeze` runs it), without XLA and with
  XLA for every part but the JPU (`keras_fastfcn.inference.xla_parts`; for a dilated
  model that is nearly the whole graph; under bf16 / fp16 only the float32 logits
  resize), the faster kept (`xla="auto"`; `"off"` / `"parts"` time one of the two:
  half the tracing). The random models get trained-like BatchNorm statistics
  (`_trained_like_normalization`). Protocol of the official `test_fps_params.py`
  (warm-up runs, then repeated timed runs), reported as the median latency and its FPS. (The official
  script times the training model with its auxiliary head; we time what is deployed.)
- Precision (`precisions`): `fp32`, or the model rebuilt under Keras' mixed-precision
  policy (`bf16`: `mixed_bfloat16`, `fp16`: `mixed_float16`) with the same weights
  (`keras_fastfcn.precision.with_precision`), then folded and timed the same way.
  `int8` (`measure_int8_speed`): TensorFlow has no int8 kernels for these graphs, so the
  model is exported as `keras-fastfcn export --precision int8` writes it (static
  post-training quantization, the exporters' default float set) to TFLite and to ONNX
  and timed in TFLite's interpreter and ONNX Runtime through
  `keras_fastfcn.serving.runtime.ExportPredictor`, the faster runtime kept
  (`int8_runtime="auto"`). Calibration: a few random images, since the speed of a
  quantized graph does not depend on its scales; int8 accuracy on real data is
  `benchmarks/precision.py`'s job. The exports output the class map, so int8 rows also
  time the argmax (about 1 ms at 512x512) that the logits-only Keras rows leave out.
- Throughput: images/s of the same function at batch `throughput_batch` (8), median of
  repeated runs after a warm-up (0 turns it off).
- FLOPs: TensorFlow's graph profiler on the frozen fp32 inference graph (a multiply-add
  counts 2); the same count at every precision.
- Achieved GFLOP/s (FLOPs / batch-1 latency, and at the throughput batch) against this
  CPU's peak for the precision (`peak_gflops`): cores x clock x FLOP/cycle/core, the
  FLOP/cycle/core from the ISA flags of `/proc/cpuinfo` (`flops_per_cycle`).
- Anchor: where PyTorch is installed, the official module structure
  (`tests/torch_fastfcn_reference.py`: deep-stem ResNet, same head and JPU / dilated
  OS8, random weights, a normalized random image) timed in the same run, same size,
  batch 1, same protocol, eval mode under `torch.inference_mode`,
  `torch.set_num_threads` = the cores TensorFlow uses; fp32, and
  `torch.autocast("cpu", dtype=torch.bfloat16)` for the bf16 rows where the CPU has bf16
  hardware (`torch_anchor_available`).
- Parameters: backbone, upsampler (JPU / JPU_X) and head, as `test_fps_params.py`.
- Memory: peak resident memory (VmHWM) of a child process that runs one training step
  (SGD, main + auxiliary + SE losses as in training) at crop 480, batch 2; also the
  growth during the step (peak minus the resident size just before it).
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

UPSAMPLERS = {  # name -> (FastFCN upsampler, output_stride)
    "jpu": ("jpu", None),
    "jpu_x": ("jpu_x", None),
    "os8": (None, 8),
    "os16": (None, 16),
    "os32": (None, 32),
}
HEADS = ("encnet", "psp", "deeplab", "fcn")
BACKBONES = ("resnet50", "resnet101")

# Peak FLOP per cycle and core, from the widest FMA each ISA extension gives. An FMA
# counts 2 FLOPs; x86 server cores since Haswell issue 2 FMAs per cycle (AVX-512 on
# Xeon Gold/Platinum: 2 units; some Xeon Silver/Bronze have 1, AMD Zen 4 runs AVX-512
# on 256-bit units: for those the fp32 figure is an upper bound).
#   fp32: AVX-512 2 x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; SSE (mul + add) 16.
#   bf16: AMX-BF16 1024 (a 16x32 tile op per 16 cycles: 16*16*32*2/16);
#         AVX512_BF16 128 (VDPBF16PS: 2 x 32 products x 2).
#   fp16: AMX-FP16 1024; AVX512_FP16 128 (2 x 32 lanes x 2).
#   int8 (integer multiply-adds, counted as FLOPs are): AMX-INT8 2048 (a 16x64 tile op
#         per 16 cycles); AVX512_VNNI 256 (VPDPBUSD: 2 x 64 products x 2); AVX-VNNI 128;
#         without VNNI twice the fp32 figure (VPMADDUBSW + VPMADDWD: an upper bound).
_FP32_FLOPS = (("avx512f", 64), ("avx2", 32))
_PEAK_LOW = {"bf16": (("amx_bf16", 1024), ("avx512_bf16", 128)),
             "fp16": (("amx_fp16", 1024), ("avx512_fp16", 128)),
             "int8": (("amx_int8", 2048), ("avx512_vnni", 256), ("avx_vnni", 128))}
# The precisions of the benchmark's rows, each with a peak (`flops_per_cycle`).
BENCHMARK_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
INT8_RUNTIMES = {"auto": ("tflite", "onnx"), "tflite": ("tflite",), "onnx": ("onnx",)}
INT8_CALIBRATION_IMAGES = 8
RUNTIME_NAMES = {"tflite": "TFLite", "onnx": "ONNX Runtime"}


def flops_per_cycle(flags, precision="fp32"):
    """Peak FLOP/cycle/core of a CPU with ISA `flags` in `precision`.

    fp32: AVX-512 (2 FMA units) 64, AVX2 with FMA 32, else 16. bf16: AMX-BF16 1024,
    AVX512_BF16 128, else the fp32 figure (TensorFlow then converts bf16 to fp32 and
    computes in fp32). fp16: AMX-FP16 1024, AVX512_FP16 128, else the fp32 figure.
    int8 (integer operations): AMX-INT8 2048, AVX512_VNNI 256, AVX-VNNI 128, else twice
    the fp32 figure.

    Args:
        flags: the CPU's flags as in `/proc/cpuinfo` (`avx2`, `fma`, `avx512f`,
            `amx_bf16`, ...), any iterable of strings.
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.

    Example:
    >>> flops_per_cycle({"avx2", "fma"}, "bf16")
    32
    """
    flags = {f.lower() for f in flags}
    if precision not in BENCHMARK_PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: expected one of "
                         f"{list(BENCHMARK_PRECISIONS)}.")
    fp32 = 16
    for flag, value in _FP32_FLOPS:
        if flag in flags and (flag != "avx2" or "fma" in flags):
            fp32 = value
            break
    for flag, value in _PEAK_LOW.get(precision, ()):
        if flag in flags:
            return value
    return 2 * fp32 if precision == "int8" else fp32


def cpu_info():
    """This CPU's model name, ISA flags, cores and clock, for the peak and the results.

    Cores: the CPUs this process may run on (what TensorFlow sizes its thread pool to).
    Clock: `lscpu`'s "CPU max MHz" (the turbo limit), else the first "cpu MHz" of
    `/proc/cpuinfo` (what a virtual machine reports; the nominal clock).

    Returns:
        A dict: `model`, `flags` (the SIMD/AMX ones, sorted), `cores`, `mhz`,
        `mhz_source`, and `all_flags` (every flag, for `flops_per_cycle`).

    Example:
    >>> cpu_info()["cores"] >= 1
    True
    """
    model, flags, mhz, source = platform.processor() or platform.machine(), [], None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not flags:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                elif key == "cpu MHz" and mhz is None:
                    mhz, source = float(value), "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError):
        pass
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "CPU max MHz" and float(value) > 0:
                mhz, source = float(value), "lscpu CPU max MHz"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")) or f == "f16c")
    return {"model": model, "flags": isa, "cores": int(cores or 1), "mhz": mhz,
            "mhz_source": source, "all_flags": flags}


def peak_gflops(precision, info=None):
    """This CPU's peak GFLOP/s in `precision`: cores x clock (GHz) x `flops_per_cycle`.

    Args:
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.
        info: `cpu_info()` (or a dict with `cores`, `mhz`, `all_flags`); None reads it.

    Returns:
        The peak, or None where the clock is unknown.

    Example:
    >>> round(peak_gflops("fp32", {"cores": 2, "mhz": 2445.4, "all_flags": ["avx2", "fma"]}), 1)
    156.5
    """
    info = cpu_info() if info is None else info
    if not info.get("mhz"):
        return None
    return info["cores"] * info["mhz"] / 1000.0 * flops_per_cycle(
        info.get("all_flags") or info.get("flags", ()), precision)


def _vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _build(head, backbone, upsampler, num_classes, seed=0):
    """The configuration's `FastFCNImageSegmenter`, random weights, with BatchNorm
    statistics such as a trained model has (`_trained_like_normalization`)."""
    from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter

    up, stride = UPSAMPLERS[upsampler]
    model = FastFCNImageSegmenter(
        FastFCNBackbone(encoder=backbone, upsampler=up, output_stride=stride),
        num_classes=num_classes, head=head)
    return _trained_like_normalization(model, seed)


def _trained_like_normalization(model, seed=0):
    """Gives every BatchNormalization of `model` random scales, offsets and moving
    statistics (seeded), as a trained model has, and returns `model`.

    Why: a fresh BatchNorm (gamma 1, beta 0, mean 0, variance 1) folds into a
    convolution with a zero bias, which TensorFlow's grappler drops, and with it the
    Conv + BiasAdd + ReLU (+ residual Add) fusions that a trained model gets. Timing
    fresh models timed a graph no user runs: on an AMX Xeon the frozen bf16 EncNet R50
    ran 138 ms (JPU) and 216 ms (OS8) fresh against 121 ms and 206 ms with these
    statistics. The values keep activations at a trained network's scale.
    """
    import keras
    import numpy as np

    from keras_fastfcn._keras_private import all_layers

    rng = np.random.RandomState(seed)
    draws = {"gamma": lambda n: rng.uniform(0.5, 1.0, n),
             "beta": lambda n: rng.normal(0.0, 0.1, n),
             "moving_mean": lambda n: rng.normal(0.0, 0.1, n),
             "moving_variance": lambda n: rng.uniform(0.8, 1.5, n)}
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for attr, draw in draws.items():
                variable = getattr(layer, attr, None)  # None: center / scale off
                if variable is not None:
                    variable.assign(draw(tuple(variable.shape)).astype(variable.dtype))
    return model


def _count(layer):
    return int(sum(int(w.shape.num_elements() if hasattr(w.shape, "num_elements")
                       else _prod(w.shape)) for w in layer.weights))


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out


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


def measure_speed(head, backbone, upsampler, size=512, num_classes=59, warmup=3,
                  min_runs=5, min_seconds=10.0, fold=True, precision="fp32",
                  throughput_batch=8, xla="auto", gflops=None, freeze=False):
    """Latency, throughput, FLOPs and parameters of one configuration (in this process).

    Args:
        head, backbone, upsampler: the configuration (`HEADS`, `BACKBONES`,
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
    >>> measure_speed("encnet", "resnet50", "jpu", size=128, min_seconds=1)["fps"] > 0
    True
    """
    import numpy as np
    import tensorflow as tf

    from keras_fastfcn.inference import trace
    from keras_fastfcn.precision import KERAS_PRECISIONS, check_precision, with_precision

    check_precision(precision, KERAS_PRECISIONS, "the benchmark's Keras rows (int8: "
                    "measure_int8_speed)")
    jits = _xla_choices(xla)
    seg = _build(head, backbone, upsampler, num_classes)
    params = _params(seg)
    spec = tf.TensorSpec((1, size, size, 3), tf.float32)
    if gflops is None:
        # Counted on the fp32 graph: a mixed-precision graph adds casts, not arithmetic.
        gflops = _flops(_deployed(seg, fold), spec) / 1e9
    model = _deployed(seg if precision == "fp32" else with_precision(seg, precision), fold)
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


def _params(seg):
    """Parameters of the backbone, the upsampler (JPU / JPU_X) and the head, as the
    official `test_fps_params.py` counts them."""
    return {"backbone": _count(seg.backbone.encoder),
            "upsampler": _count(seg.backbone.upsampler) if seg.backbone.upsampler else 0,
            "head": _count(seg.head_layer)}


def _deployed(segmenter, fold=True):
    """What is deployed: the logits-only model (no auxiliary head or SE branch), with
    BatchNorm folded into the convolutions (`fold`)."""
    from keras_fastfcn.inference import logits_model

    model = logits_model(segmenter)
    if fold:
        from keras_fastfcn.serving.fold import fold_batchnorm

        model = fold_batchnorm(model)
    return model


def _int8_runtimes(runtime):
    if runtime not in INT8_RUNTIMES:
        raise ValueError(f"Unknown int8 runtime {runtime!r}: expected one of "
                         f"{list(INT8_RUNTIMES)}.")
    return INT8_RUNTIMES[runtime]


def measure_int8_speed(head, backbone, upsampler, size=512, num_classes=59, warmup=3,
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
        head, backbone, upsampler, size, num_classes, warmup, min_runs, min_seconds:
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
    >>> row = measure_int8_speed("encnet", "resnet50", "jpu", size=128, min_seconds=1)
    >>> row["runtime"] in ("tflite", "onnx")
    True
    """
    import tempfile

    import numpy as np
    import tensorflow as tf

    from keras_fastfcn import serving
    from keras_fastfcn.serving.runtime import ExportPredictor

    runtimes = _int8_runtimes(runtime)
    seg = _build(head, backbone, upsampler, num_classes)
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


TORCH_BACKBONES = {"resnet50": "resnet50s", "resnet101": "resnet101s"}
TORCH_UPSAMPLERS = {"jpu": "JPU", "jpu_x": "JPU_X", "os8": None}
TORCH_PRECISIONS = ("fp32", "bf16")


def torch_reference_path():
    """Path of `tests/torch_fastfcn_reference.py` (the official module structure) in
    this checkout, or None (an installed package has no tests)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "torch_fastfcn_reference.py")
    return path if os.path.exists(path) else None


def torch_anchor_available(upsampler, precision, flags=None):
    """Why the official PyTorch structure is not timed for this row, or None.

    Args:
        upsampler: the row's upsampler (the official code has JPU, JPU_X and OS8).
        precision: the row's precision (`fp32`, or `bf16` through `torch.autocast`).
        flags: the CPU's ISA flags (None: read them). Without AVX512_BF16 or AMX-BF16,
            PyTorch emulates bf16 convolutions: on the AVX2 EPYC of this project
            autocast ran EncNet+JPU at 128 px in 48 s against 3.3 s in fp32, which
            would make a 512 px run last hours, so bf16 is not timed there.

    Example:
    >>> torch_anchor_available("os16", "fp32")
    'the official code has no os16 model'
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    if torch_reference_path() is None:
        return "tests/torch_fastfcn_reference.py is not in this checkout"
    if upsampler not in TORCH_UPSAMPLERS:
        return f"the official code has no {upsampler} model"
    if precision not in TORCH_PRECISIONS:
        return f"no PyTorch CPU anchor for {precision}"
    if precision == "bf16":
        flags = set(cpu_info()["all_flags"] if flags is None else flags)
        if not flags & {"avx512_bf16", "amx_bf16"}:
            return "this CPU has no bf16 hardware (AVX512_BF16 / AMX-BF16): PyTorch emulates it"
    return None


def measure_torch(head, backbone, upsampler, size=512, num_classes=59, warmup=3,
                  min_runs=5, min_seconds=10.0, precision="fp32", threads=None):
    """Batch-1 latency of the official FastFCN structure in PyTorch (in this process).

    The model of `tests/torch_fastfcn_reference.py` (the official module tree: deep-stem
    ResNet, JPU / JPU_X or dilated output stride 8, the official heads) in eval mode
    without the auxiliary head, random weights, under `torch.inference_mode`, timed
    with the protocol of `measure_speed`. bf16: `torch.autocast("cpu", torch.bfloat16)`.

    Args:
        head, backbone, upsampler: as `measure_speed` (`resnet50` is timed as the
            official `resnet50s`, the deep-stem variant the paper uses).
        precision: `"fp32"` or `"bf16"`.
        threads: `torch.set_num_threads` (default: the CPUs this process may use, as
            TensorFlow's pool).

    Example:
    >>> measure_torch("encnet", "resnet50", "jpu", size=128, min_seconds=1)["latency_s"] > 0
    True
    """
    import importlib.util

    import torch

    why = torch_anchor_available(upsampler, precision, flags=("avx512_bf16",))
    if why:  # bf16 here is timed even where emulated: the caller decides
        raise ValueError(f"Cannot time the official code: {why}.")
    spec = importlib.util.spec_from_file_location("torch_fastfcn_reference",
                                                  torch_reference_path())
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    threads = threads or cpu_info()["cores"]
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = ref.SegmentationModel(head, num_classes, ref.DEPTHS[TORCH_BACKBONES[backbone]],
                                  jpu=TORCH_UPSAMPLERS[upsampler], aux=False,
                                  se_loss=head == "encnet").eval()
    image = torch.rand(1, 3, size, size)  # normalized range, as the official loader gives
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def run():
        with torch.inference_mode(), autocast:
            model(image)[0].float()

    median, fastest, runs = _time(run, warmup, min_runs, min_seconds)
    return {"latency_s": median, "latency_min_s": fastest, "runs": runs,
            "threads": int(threads), "torch_version": torch.__version__}


def frozen_forward(model, spec):
    """`model`'s inference forward on `spec` as a concrete function with its weights as
    constants (what the FLOP count and `benchmarks/profile_ops.py` read), logits cast
    to float32 as every inference path does."""
    import tensorflow as tf

    from keras_fastfcn._keras_private import freeze_function

    return freeze_function(tf.function(_float32_logits(model)).get_concrete_function(spec))


def _float32_logits(model):
    """`model`'s inference forward with its logits cast to float32, as every inference
    path does (a mixed-precision model's are 16-bit)."""
    from keras import ops

    return lambda x: ops.cast(model(x, training=False), "float32")


def _flops(model, spec):
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    frozen = frozen_forward(model, spec)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        opts = option_builder.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        stats = model_analyzer.profile(graph, options=opts)
    return float(stats.total_float_ops)


def measure_train_memory(head, backbone, upsampler, crop=480, batch=2, num_classes=59):
    """Peak RSS of one training step (call in a fresh process)."""
    import keras
    import numpy as np

    model = _build(head, backbone, upsampler, num_classes)  # aux head, SE loss for encnet
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


def _child(kind, config, options):
    """Runs one measurement in a fresh interpreter and returns its JSON result."""
    code = ("import json,sys; from keras_fastfcn import benchmark as b; "
            f"r = b.{kind}(**json.loads(sys.argv[1])); print('RESULT ' + json.dumps(r))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps({**config, **options})],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def machine_description():
    """One line naming this machine, its Python, TensorFlow and Keras (the results' key
    for `--resume`; the CPU's flags and peak are in `cpu_info`).

    Example:
    >>> "TensorFlow" in machine_description()
    True
    """
    import keras
    import tensorflow as tf

    cpu = cpu_info()["model"]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, backend "
            f"{keras.backend.backend()}")


def row_precision(row):
    """A result row's precision (rows written before the precision axis are fp32)."""
    return row.get("precision", "fp32")


def _key(row):
    return row["head"], row["backbone"], row["upsampler"], row_precision(row)


def run_benchmarks(heads, backbones, upsamplers, size=512, crop=480, batch=2, memory=True,
                   min_seconds=10.0, log=print, done=(), on_result=None,
                   precisions=("fp32",), throughput_batch=8, torch_anchor=True, cpu=None,
                   xla="auto", freeze=False, int8_runtime="auto"):
    """Measures every configuration; returns a list of result dicts.

    Args:
        heads, backbones, upsamplers: the configurations (every combination).
        size: inference image size; crop, batch: the training-memory step.
        memory: measure the training step's memory (fp32 rows only: training does not
            depend on the inference precision).
        min_seconds: minimum timed seconds per configuration.
        log: called with one line per configuration.
        done: results of an earlier run with the same settings; configurations found
            there without an error are kept, not measured again.
        on_result: called with the results so far after each configuration, so that a
            long run killed midway keeps what it measured.
        precisions: `"fp32"`, `"bf16"`, `"fp16"` (Keras, `measure_speed`) and `"int8"`
            (the int8 exports, `measure_int8_speed`): one row per configuration each.
        throughput_batch: batch of the throughput column (0: none).
        torch_anchor: also time the official PyTorch structure where torch is
            installed (fp32 and bf16 rows).
        cpu: `cpu_info()` (None reads it): the peak GFLOP/s per precision.
        xla: `measure_speed`'s `xla` (`"auto"`: both paths, the faster kept).
        freeze: `measure_speed`'s `freeze` (weights frozen into the timed graphs).
        int8_runtime: `measure_int8_speed`'s `runtime` (`"auto"`: TFLite and ONNX
            Runtime, the faster kept).

    Example:
    >>> rows = run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], size=128,
    ...                       memory=False, precisions=("fp32", "bf16"))
    """
    from keras_fastfcn.precision import check_precision

    for precision in precisions:
        check_precision(precision, BENCHMARK_PRECISIONS, "the benchmark")
    _xla_choices(xla)
    _int8_runtimes(int8_runtime)
    cpu = cpu_info() if cpu is None else cpu
    # Rows of a run with another --freeze (Keras rows) or --int8-runtime (int8 rows)
    # setting are measured again, not mixed in.
    previous = {_key(r): r for r in done if "error" not in r and (
        r.get("int8_runtime") == int8_runtime if row_precision(r) == "int8"
        else bool(r.get("frozen")) == bool(freeze))}
    results = []
    for backbone in backbones:
        for head in heads:
            for upsampler in upsamplers:
                gflops = None  # counted once per configuration: the same at any precision
                for precision in precisions:
                    config = {"head": head, "backbone": backbone, "upsampler": upsampler}
                    row = previous.get((head, backbone, upsampler, precision))
                    if row is None:
                        row = dict(config, precision=precision)
                        options = {"size": size, "min_seconds": min_seconds,
                                   "throughput_batch": throughput_batch, "gflops": gflops}
                        if precision == "int8":
                            row.update(_child("measure_int8_speed", config, dict(
                                options, runtime=int8_runtime, threads=cpu.get("cores"))))
                        else:
                            row.update(_child("measure_speed", config, dict(
                                options, precision=precision, xla=xla, freeze=freeze)))
                        if "error" not in row:
                            _add_peak(row, cpu)
                            if torch_anchor:
                                _add_torch(row, config, size, min_seconds, cpu)
                        if memory and precision == "fp32" and "error" not in row:
                            row.update(_child("measure_train_memory", config,
                                              {"crop": crop, "batch": batch}))
                        log(_row_text(row))
                    else:
                        log(_row_text(row) + "  (kept from the earlier run)")
                    results.append(row)
                    if "gflops" in row:
                        gflops = row["gflops"]
                    if on_result is not None:
                        on_result(results)
    return results


def _add_peak(row, cpu):
    """Achieved GFLOP/s (batch 1 and the throughput batch) and this CPU's peak."""
    row["achieved_gflops_s"] = row["gflops"] / row["latency_s"]
    if "throughput_ips" in row:
        row["throughput_gflops_s"] = row["gflops"] * row["throughput_ips"]
    peak = peak_gflops(row_precision(row), cpu)
    if peak:
        row["peak_gflops_s"] = peak
        row["peak_fraction"] = row["achieved_gflops_s"] / peak


def _add_torch(row, config, size, min_seconds, cpu):
    """The official PyTorch structure's latency at the row's precision (`torch_*`)."""
    why = torch_anchor_available(config["upsampler"], row_precision(row),
                                 cpu.get("all_flags", cpu.get("flags", ())))
    if why:
        row["torch_skipped"] = why
        return
    anchor = _child("measure_torch", config, {"size": size, "min_seconds": min_seconds,
                                              "precision": row_precision(row),
                                              "threads": cpu.get("cores")})
    if "error" in anchor:
        row["torch_error"] = anchor["error"]
        return
    row["torch_latency_s"] = anchor["latency_s"]
    row["torch_threads"] = anchor["threads"]
    row["torch_version"] = anchor["torch_version"]
    row["speedup_vs_torch"] = anchor["latency_s"] / row["latency_s"]


def runtime_notes(row, leave_out=(), error_chars=None):
    """An int8 row's runtimes as text: `"TFLite 0.080 s"` for each one timed and
    `"ONNX Runtime failed: ..."` for each one that failed (its error cut to
    `error_chars`), those in `leave_out` left out."""
    notes = [f"{RUNTIME_NAMES.get(k, k)} {v:.3f} s"
             for k, v in row.get("runtime_latency_s", {}).items() if k not in leave_out]
    return notes + [f"{RUNTIME_NAMES.get(k, k)} failed: {v[:error_chars]}"
                    for k, v in row.get("runtime_errors", {}).items()]


def _row_text(row):
    name = f"{row['head']:>8} {row['backbone']:>9} {row['upsampler']:>6} {row_precision(row):>4}"
    if "error" in row:
        return f"{name}  ERROR {row['error']}"
    mem = f"{row['train_peak_rss_gb']:.2f} GB" if "train_peak_rss_gb" in row else "-"
    text = (f"{name}  {row['latency_s']:.3f} s  {row['fps']:.2f} FPS  "
            f"{row['gflops']:.0f} GFLOPs  {row['params_total'] / 1e6:.1f} M params")
    if "throughput_ips" in row:
        text += f"  {row['throughput_ips']:.2f} img/s at batch {row['throughput_batch']}"
    if "achieved_gflops_s" in row:
        text += f"  {row['achieved_gflops_s']:.1f} GFLOP/s"
        if "peak_fraction" in row:
            text += (f" ({100 * row['peak_fraction']:.1f}% of {row['peak_gflops_s']:.0f} "
                     "peak)")
    if "runtime" in row:
        text += "  " + ", ".join(runtime_notes(row))
    if "torch_latency_s" in row:
        text += (f"  official PyTorch {row['torch_latency_s']:.3f} s "
                 f"({row['speedup_vs_torch']:.2f}x)")
    return text + f"  train peak {mem}"


def ratios(results, reference="os8"):
    """JPU (and the others) relative to the dilated reference, per head, backbone and
    precision (rows without a precision are fp32)."""
    index = {_key(r): r for r in results if "error" not in r}
    out = []
    for (head, backbone, upsampler, precision), row in index.items():
        ref = index.get((head, backbone, reference, precision))
        if ref is None or upsampler == reference:
            continue
        item = {"head": head, "backbone": backbone, "upsampler": upsampler,
                "precision": precision,
                "speedup": ref["latency_s"] / row["latency_s"],
                "flops_ratio": row["gflops"] / ref["gflops"]}
        same_runtime = row.get("runtime") == ref.get("runtime")
        if "runtime_latency_s" in row and "runtime_latency_s" in ref:
            # int8 rows keep each configuration's faster runtime: compare like with like.
            mine, theirs = row["runtime_latency_s"], ref["runtime_latency_s"]
            item["runtime_speedup"] = {k: theirs[k] / mine[k] for k in mine if k in theirs}
            if row["runtime"] in item["runtime_speedup"]:
                item["runtime"] = row["runtime"]
                item["speedup"] = item["runtime_speedup"][row["runtime"]]
            else:
                item["runtime"] = f"{row['runtime']} vs {ref['runtime']}"
        if "throughput_ips" in row and "throughput_ips" in ref and same_runtime:
            item["throughput_speedup"] = row["throughput_ips"] / ref["throughput_ips"]
        if "torch_latency_s" in row and "torch_latency_s" in ref:
            item["torch_speedup"] = ref["torch_latency_s"] / row["torch_latency_s"]
        if "train_peak_rss_gb" in row and "train_peak_rss_gb" in ref:
            item["memory_ratio"] = row["train_peak_rss_gb"] / ref["train_peak_rss_gb"]
            item["step_growth_ratio"] = row["train_step_growth_gb"] / ref["train_step_growth_gb"]
        out.append(item)
    return out


def previous_results(out_dir, machine, size, crop, batch):
    """The rows of `OUT_DIR/results.json` if it was measured with the same machine and
    sizes, else `[]` (with a note).

    Example:
    >>> previous_results("benchmarks", machine_description(), 512, 480, 2)
    """
    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        payload = json.load(f)
    same = (payload.get("machine"), payload.get("size"), payload.get("train_crop"),
            payload.get("train_batch")) == (machine, size, crop, batch)
    if not same:
        print(f"Not resuming from {path}: it was measured on another machine or with other "
              "sizes; measuring everything again.")
        return []
    return payload.get("results", [])


def write_results(results, out_dir, machine, size, crop, batch, cpu=None):
    """Writes `results.json` (atomically): every row and the ratios to the dilated model.

    Args:
        results: the rows of `run_benchmarks`.
        out_dir: the folder (created).
        machine: `machine_description()`.
        size, crop, batch: the run's settings (compared by `--resume`).
        cpu: `cpu_info()`: its model, SIMD/AMX flags, cores, clock and the peak
            GFLOP/s per precision are written as `"cpu"` (older files have none).

    Example:
    >>> write_results(rows, "benchmarks", machine_description(), 512, 480, 2, cpu_info())
    """
    from keras_fastfcn.fileio import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    payload = {"machine": machine, "size": size, "train_crop": crop, "train_batch": batch,
               "results": results, "ratios": ratios(results)}
    if cpu is not None:
        payload["cpu"] = {key: cpu[key] for key in ("model", "flags", "cores", "mhz",
                                                    "mhz_source")}
        payload["cpu"]["peak_gflops_s"] = {p: peak_gflops(p, cpu) for p in BENCHMARK_PRECISIONS}
        payload["cpu"]["peak_formula"] = ("cores x clock x FLOP/cycle/core (fp32: AVX-512 64, "
                                          "AVX2+FMA 32, else 16; bf16: AMX-BF16 1024, "
                                          "AVX512_BF16 128; fp16: AMX-FP16 1024, "
                                          "AVX512_FP16 128; else the fp32 figure; int8 "
                                          "(integer ops): AMX-INT8 2048, AVX512_VNNI 256, "
                                          "AVX-VNNI 128, else twice the fp32 figure)")
    with atomic_path(os.path.join(out_dir, "results.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return payload
