"""Speed, FLOPs, parameters and training memory: JPU vs DilatedFCN (`keras-fastfcn benchmark`).

The measurements live here; `benchmarks/report.py` turns their `results.json` into
`RESULTS.md` and `chart.png`.

Every configuration (head x backbone x upsampler) runs in its own child process, so
one model's memory and thread pools do not bias the next; all run on the same input.

- Latency: the inference model (logits only) on one 512x512 image, through the
  fastest path the package offers: BatchNorm folded into the convolutions
  (`keras_fastfcn.serving.fold`) and a compiled `tf.function`, without XLA and with XLA for
  every part but the JPU (`keras_fastfcn.inference.xla_parts`; for a dilated model
  that is nearly the whole graph), the faster kept. Protocol of the official `test_fps_params.py` (warm-up runs, then
  repeated timed runs), reported as the median latency and its FPS. (The official
  script times the training model with its auxiliary head; we time what is deployed.)
- FLOPs: TensorFlow's graph profiler on the frozen inference graph (a multiply-add
  counts 2).
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


def _vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _build(head, backbone, upsampler, num_classes):
    from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter

    up, stride = UPSAMPLERS[upsampler]
    return FastFCNImageSegmenter(
        FastFCNBackbone(encoder=backbone, upsampler=up, output_stride=stride),
        num_classes=num_classes, head=head)


def _count(layer):
    return int(sum(int(w.shape.num_elements() if hasattr(w.shape, "num_elements")
                       else _prod(w.shape)) for w in layer.weights))


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out


def measure_speed(head, backbone, upsampler, size=512, num_classes=59, warmup=3,
                  min_runs=5, min_seconds=10.0, fold=True):
    """Latency, FLOPs and parameters of one configuration (in this process)."""
    import numpy as np
    import tensorflow as tf

    from keras_fastfcn.inference import xla_parts

    from keras_fastfcn.inference import logits_model

    seg = _build(head, backbone, upsampler, num_classes)
    params = {"backbone": _count(seg.backbone.encoder),
              "upsampler": _count(seg.backbone.upsampler) if seg.backbone.upsampler else 0,
              "head": _count(seg.head_layer)}
    model = logits_model(seg)  # what is deployed: no aux head or SE branch
    if fold:
        from keras_fastfcn.serving.fold import fold_batchnorm

        model = fold_batchnorm(model)
    images = tf.constant(np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)),
                         tf.float32)
    spec = tf.TensorSpec((1, size, size, 3), tf.float32)
    best = None
    for jit in (False, "parts"):
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        start = time.perf_counter()
        if jit == "parts":
            with xla_parts(model):
                fn.get_concrete_function()
        fn(images).numpy()
        compile_s = time.perf_counter() - start
        for _ in range(warmup - 1):
            fn(images).numpy()
        times = []
        begin = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - begin < min_seconds:
            start = time.perf_counter()
            fn(images).numpy()
            times.append(time.perf_counter() - start)
            if len(times) >= 50:
                break
        median = statistics.median(times)
        if best is None or median < best["latency_s"]:
            best = {"latency_s": median, "fps": 1.0 / median, "xla": jit, "runs": len(times),
                    "latency_min_s": min(times), "compile_s": compile_s}
        if not jit and median > 4 * min_seconds / min_runs:
            break  # very slow config: XLA on CPU will not change the ratio; save time
    best["gflops"] = _flops(model, spec) / 1e9
    best["params"] = params
    best["params_total"] = int(sum(params.values()))
    return best


def _flops(model, spec):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )
    from tensorflow.python.profiler import model_analyzer, option_builder

    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
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
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, backend "
            f"{keras.backend.backend()}")


def run_benchmarks(heads, backbones, upsamplers, size=512, crop=480, batch=2, memory=True,
                   min_seconds=10.0, log=print, done=(), on_result=None):
    """Measures every configuration; returns a list of result dicts.

    Args:
        done: results of an earlier run with the same settings; configurations found
            there without an error are kept, not measured again.
        on_result: called with the results so far after each configuration, so that a
            long run killed midway keeps what it measured.
    """
    previous = {(r["head"], r["backbone"], r["upsampler"]): r for r in done
                if "error" not in r}
    results = []
    for backbone in backbones:
        for head in heads:
            for upsampler in upsamplers:
                config = {"head": head, "backbone": backbone, "upsampler": upsampler}
                row = previous.get((head, backbone, upsampler))
                if row is None:
                    row = dict(config)
                    row.update(_child("measure_speed", config,
                                      {"size": size, "min_seconds": min_seconds}))
                    if memory and "error" not in row:
                        row.update(_child("measure_train_memory", config,
                                          {"crop": crop, "batch": batch}))
                    log(_row_text(row))
                else:
                    log(_row_text(row) + "  (kept from the earlier run)")
                results.append(row)
                if on_result is not None:
                    on_result(results)
    return results


def _row_text(row):
    if "error" in row:
        return f"{row['head']:>8} {row['backbone']:>9} {row['upsampler']:>6}  ERROR {row['error']}"
    mem = f"{row['train_peak_rss_gb']:.2f} GB" if "train_peak_rss_gb" in row else "-"
    return (f"{row['head']:>8} {row['backbone']:>9} {row['upsampler']:>6}  "
            f"{row['latency_s']:.3f} s  {row['fps']:.2f} FPS  {row['gflops']:.0f} GFLOPs  "
            f"{row['params_total'] / 1e6:.1f} M params  train peak {mem}")


def ratios(results, reference="os8"):
    """JPU (and the others) relative to the dilated reference, per head and backbone."""
    index = {(r["head"], r["backbone"], r["upsampler"]): r for r in results if "error" not in r}
    out = []
    for (head, backbone, upsampler), row in index.items():
        ref = index.get((head, backbone, reference))
        if ref is None or upsampler == reference:
            continue
        item = {"head": head, "backbone": backbone, "upsampler": upsampler,
                "speedup": ref["latency_s"] / row["latency_s"],
                "flops_ratio": row["gflops"] / ref["gflops"]}
        if "train_peak_rss_gb" in row and "train_peak_rss_gb" in ref:
            item["memory_ratio"] = row["train_peak_rss_gb"] / ref["train_peak_rss_gb"]
            item["step_growth_ratio"] = row["train_step_growth_gb"] / ref["train_step_growth_gb"]
        out.append(item)
    return out


def previous_results(out_dir, machine, size, crop, batch):
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


def write_results(results, out_dir, machine, size, crop, batch):
    """Writes `results.json` (atomically): every row and the ratios to the dilated model."""
    from keras_fastfcn.fileio import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    payload = {"machine": machine, "size": size, "train_crop": crop, "train_batch": batch,
               "results": results, "ratios": ratios(results)}
    with atomic_path(os.path.join(out_dir, "results.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return payload
