"""A whole benchmark run: one child process per configuration, rows, ratios to the\ndilated output-stride-8 model, and the results file.

With `run_benchmarks(openvino=True)` (or `"auto"`: where openvino is installed), each
fp32, bf16 and int8 row also times the OpenVINO export of its configuration at that
precision (`measure_openvino_speed`): `openvino_*` columns beside the row's own runtime,
as the official PyTorch anchor's `torch_*` ones."""

import importlib.util
import json
import os
import subprocess
import sys

from keras_fastfcn.benchmark.cpu import (BENCHMARK_PRECISIONS, cpu_info, peak_formula,
                                         peak_gflops)
from keras_fastfcn.benchmark.timing import RUNTIME_NAMES, _int8_runtimes, _xla_choices
from keras_fastfcn.benchmark.torch_anchor import torch_anchor_available

def _child(kind, config, options):
    """Runs one measurement in a fresh interpreter and returns its JSON result."""
    # The command's `--import` modules (KERAS_FASTFCN_IMPORTS) register their parts
    # in the child too.
    code = ("import importlib,json,os,sys; from keras_fastfcn import benchmark as b; "
            "[importlib.import_module(m) for m in "
            "os.environ.get('KERAS_FASTFCN_IMPORTS', '').split(',') if m]; "
            f"r = b.{kind}(**json.loads(sys.argv[1])); print('RESULT ' + json.dumps(r))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps({**config, **options})],
                          capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")


def openvino_available(precision="fp32"):
    """Why the OpenVINO columns of a `precision` row cannot be measured here (a
    missing package, a precision it has no export of), or None when they can."""
    if precision not in OPENVINO_PRECISIONS:
        return f"no OpenVINO {precision} export"
    needed = ["openvino", "tf2onnx", "onnx"] + (["nncf"] if precision == "int8" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def export_openvino_config(head, encoder, upsampler, size, precision, path, num_classes=59):
    """One benchmark configuration's model (`configs._build`) as `keras-fastfcn export
    --format openvino --precision PRECISION --no-probabilities` writes it; int8: NNCF
    calibrated on `timing.INT8_CALIBRATION_IMAGES` random `size` x `size` images, as the
    int8 rows' exports (a quantized graph's speed does not depend on its scales).

    Returns:
        The path of the IR (`path`, a `.xml`).
    """
    import numpy as np

    from keras_fastfcn import serving
    from keras_fastfcn.benchmark.configs import _build
    from keras_fastfcn.benchmark.timing import INT8_CALIBRATION_IMAGES

    options = {}
    if precision == "int8":
        rng = np.random.RandomState(1)
        options["calibration"] = [rng.uniform(0, 255, (size, size, 3)).astype("uint8")
                                  for _ in range(INT8_CALIBRATION_IMAGES)]
    return serving.export(_build(head, encoder, upsampler, num_classes), path,
                          format="openvino", precision=precision, probabilities=False,
                          **options)


def measure_openvino_speed(head, encoder, upsampler, size=512, num_classes=59,
                           precision="fp32", warmup=3, min_runs=5, min_seconds=10.0,
                           throughput_batch=8, threads=None):
    """Latency and throughput of one configuration's OpenVINO export (in this process).

    The configuration's model is exported (`export_openvino_config`) and run through
    `serving.runtime.ExportPredictor`, as `predict` / `evaluate --model FILE.xml` run
    it: batch 1 with the timing protocol of
    `timing.measure_speed`, then batch `throughput_batch`.

    Args:
        head, encoder, upsampler, size, num_classes, warmup, min_runs, min_seconds:
            as `timing.measure_speed`.
        precision: `"fp32"`, `"bf16"` or `"int8"`.
        throughput_batch: batch of the throughput run; 0 skips it.
        threads: CPU threads of OpenVINO (None: every core).

    Returns:
        A dict: `latency_s`, `latency_min_s`, `runs`, `export_s`, `inference_precision`
        (what OpenVINO compiled for: bf16 runs as f32 on CPUs without bf16), the
        throughput columns and `openvino_version`.

    Example:
    >>> row = measure_openvino_speed("encnet", "resnet50", "jpu", size=128,
    ...                              min_seconds=1)  # a minute  # doctest: +SKIP
    >>> sorted(row)[:3]  # doctest: +SKIP
    ['export_s', 'inference_precision', 'latency_min_s']
    """
    import tempfile
    import time

    import numpy as np
    import openvino

    from keras_fastfcn.benchmark.timing import _throughput, _time
    from keras_fastfcn.serving.runtime import ExportPredictor

    why = openvino_available(precision)
    if why:
        raise RuntimeError(f"OpenVINO {precision}: {why}")
    rng = np.random.RandomState(0)
    image = rng.uniform(0, 255, (1, size, size, 3)).astype("float32")
    with tempfile.TemporaryDirectory(prefix="kf-openvino-") as work:
        start = time.perf_counter()
        path = export_openvino_config(head, encoder, upsampler, size, precision,
                                      os.path.join(work, "model.xml"), num_classes)
        predictor = ExportPredictor(path, threads=threads)
        export_s = time.perf_counter() - start
        median, fastest, runs = _time(lambda: predictor(image), warmup, min_runs,
                                      min_seconds)
        row = {"latency_s": median, "latency_min_s": fastest, "runs": runs,
               "export_s": export_s, "inference_precision": predictor.inference_precision,
               "openvino_version": openvino.get_version().split("-")[0]}
        if throughput_batch:
            batch = rng.uniform(0, 255, (int(throughput_batch), size, size, 3)).astype(
                "float32")
            row.update(_throughput(lambda: predictor(batch), throughput_batch, min_seconds))
    return row


def row_precision(row):
    """A result row's precision (rows written before the precision axis are fp32)."""
    return row.get("precision", "fp32")


def _key(row):
    return row["head"], row["encoder"], row["upsampler"], row_precision(row)


def run_benchmarks(heads, encoders, upsamplers, size=512, crop=480, batch=2, memory=True,
                   min_seconds=10.0, log=print, done=(), on_result=None,
                   precisions=("fp32",), throughput_batch=8, torch_anchor=True, cpu=None,
                   xla="auto", freeze=False, int8_runtime="auto", openvino=False):
    """Measures every configuration; returns a list of result dicts.

    Args:
        heads, encoders, upsamplers: the configurations (every combination).
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
        openvino: also time each fp32, bf16 and int8 row's OpenVINO export at that
            precision (`measure_openvino_speed`: the `openvino_*` columns): True (a row
            says `openvino_error` where it cannot run), `"auto"` (where openvino is
            installed: `openvino_available`) or False.

    Example:
    >>> rows = run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], size=128,
    ...                       memory=False, precisions=("fp32", "bf16"))  # doctest: +SKIP
    encnet  resnet50    jpu fp32  0.059 s  17.09 FPS  7 GFLOPs ...
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
    for encoder in encoders:
        for head in heads:
            for upsampler in upsamplers:
                gflops = None  # counted once per configuration: the same at any precision
                for precision in precisions:
                    config = {"head": head, "encoder": encoder, "upsampler": upsampler}
                    row = previous.get((head, encoder, upsampler, precision))
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
                            if openvino:
                                _add_openvino(row, config, size, min_seconds,
                                              throughput_batch, cpu,
                                              required=openvino is True)
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
                                 cpu.get("all_flags", cpu.get("flags", ())), config["head"])
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


def _add_openvino(row, config, size, min_seconds, throughput_batch, cpu, required=None):
    """The row's configuration and precision as an OpenVINO export (`openvino_*`:
    latency at batch 1, throughput at `throughput_batch`, and the speed-up over the
    row's own latency); nothing where it cannot run here, unless `required`."""
    precision = row_precision(row)
    why = openvino_available(precision)
    if why:
        if required:
            row["openvino_error"] = why
        return
    result = _child("run.measure_openvino_speed", config, {
        "size": size, "min_seconds": min_seconds, "precision": precision,
        "throughput_batch": throughput_batch, "threads": cpu.get("cores")})
    if "error" in result:
        row["openvino_error"] = result["error"]
        return
    row["openvino_latency_s"] = result["latency_s"]
    row["openvino_inference_precision"] = result["inference_precision"]
    row["openvino_export_s"] = result["export_s"]
    row["openvino_version"] = result["openvino_version"]
    if "throughput_ips" in result:
        row["openvino_throughput_ips"] = result["throughput_ips"]
        row["openvino_throughput_batch"] = result["throughput_batch"]
    row["openvino_speedup"] = row["latency_s"] / result["latency_s"]


def runtime_notes(row, leave_out=(), error_chars=None):
    """An int8 row's runtimes as text: `"TFLite 0.080 s"` for each one timed and
    `"ONNX Runtime failed: ..."` for each one that failed (its error cut to
    `error_chars`), those in `leave_out` left out."""
    notes = [f"{RUNTIME_NAMES.get(k, k)} {v:.3f} s"
             for k, v in row.get("runtime_latency_s", {}).items() if k not in leave_out]
    return notes + [f"{RUNTIME_NAMES.get(k, k)} failed: {v[:error_chars]}"
                    for k, v in row.get("runtime_errors", {}).items()]


def _row_text(row):
    name = f"{row['head']:>8} {row['encoder']:>9} {row['upsampler']:>6} {row_precision(row):>4}"
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
    if "openvino_latency_s" in row:
        text += (f"  OpenVINO {row['openvino_latency_s']:.3f} s "
                 f"(runs {row['openvino_inference_precision']}, "
                 f"{row['openvino_speedup']:.2f}x)")
        if "openvino_throughput_ips" in row:
            text += (f" {row['openvino_throughput_ips']:.2f} img/s at batch "
                     f"{row['openvino_throughput_batch']}")
    elif "openvino_error" in row:
        text += f"  OpenVINO failed: {row['openvino_error'][:120]}"
    return text + f"  train peak {mem}"


def ratios(results, reference="os8"):
    """JPU (and the others) relative to the dilated reference, per head, encoder and
    precision (rows without a precision are fp32)."""
    index = {_key(r): r for r in results if "error" not in r}
    out = []
    for (head, encoder, upsampler, precision), row in index.items():
        ref = index.get((head, encoder, reference, precision))
        if ref is None or upsampler == reference:
            continue
        item = {"head": head, "encoder": encoder, "upsampler": upsampler,
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
        if "openvino_latency_s" in row and "openvino_latency_s" in ref:
            item["openvino_speedup"] = ref["openvino_latency_s"] / row["openvino_latency_s"]
        if "train_peak_rss_gb" in row and "train_peak_rss_gb" in ref:
            item["memory_ratio"] = row["train_peak_rss_gb"] / ref["train_peak_rss_gb"]
            item["step_growth_ratio"] = row["train_step_growth_gb"] / ref["train_step_growth_gb"]
        out.append(item)
    return out


def upgrade_results(payload):
    """A results payload with 0.2's names in the current vocabulary, in place: each row's
    and ratio's `backbone` (and its parameter count's) is now `encoder`.

    Example:
    >>> upgrade_results({"results": [{"backbone": "resnet50"}]})["results"][0]
    {'encoder': 'resnet50'}
    """
    rows = list(payload.get("results", [])) + list(payload.get("ratios", []))
    for run in payload.get("runs", []) if isinstance(payload.get("runs"), list) else []:
        if isinstance(run, dict):
            rows += list(run.get("results", []))
    for row in rows:
        if isinstance(row, dict) and "backbone" in row and "encoder" not in row:
            row["encoder"] = row.pop("backbone")
        params = row.get("params") if isinstance(row, dict) else None
        if isinstance(params, dict) and "backbone" in params and "encoder" not in params:
            params["encoder"] = params.pop("backbone")
    return payload


def previous_results(out_dir, machine, size, crop, batch):
    """The rows of `OUT_DIR/results.json` if it was measured with the same machine and
    sizes, else `[]` (with a note).

    Example:
    >>> from keras_fastfcn.benchmark.cpu import machine_description
    >>> previous_results("benchmarks", machine_description(), 512, 480, 2)  # none yet
    []
    """
    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        payload = upgrade_results(json.load(f))
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
    >>> from keras_fastfcn.benchmark.cpu import machine_description
    >>> rows = [{"head": "encnet", "encoder": "resnet50", "upsampler": "jpu",
    ...          "precision": "fp32", "latency_s": 0.58}]
    >>> payload = write_results(rows, "benchmarks", machine_description(), 512, 480, 2,
    ...                         cpu_info())
    >>> len(previous_results("benchmarks", machine_description(), 512, 480, 2))
    1
    """
    from keras_fastfcn.fileio import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    payload = {"machine": machine, "size": size, "train_crop": crop, "train_batch": batch,
               "results": results, "ratios": ratios(results)}
    if cpu is not None:
        # vendor, family and model number let the report find the microarchitecture
        # (its FLOP/cycle and boost clock) again with a later, corrected table.
        payload["cpu"] = {key: cpu.get(key) for key in (
            "model", "vendor", "family", "model_number", "microarchitecture", "flags",
            "cores", "mhz", "mhz_source")}
        payload["cpu"]["peak_gflops_s"] = {p: peak_gflops(p, cpu) for p in BENCHMARK_PRECISIONS}
        payload["cpu"]["peak_formula"] = peak_formula(cpu)
    with atomic_path(os.path.join(out_dir, "results.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
    return payload
