"""Speed, FLOPs, parameters and training memory: JPU vs DilatedFCN (`keras-fastfcn benchmark`).

Every configuration (head x backbone x upsampler) runs in its own child process, so
one model's memory and thread pools do not bias the next; all run on the same input.

- Latency: the inference model (logits only) on one 512x512 image, through the
  fastest path the package offers: BatchNorm folded into the convolutions
  (`keras_fastfcn.fold`) and a compiled `tf.function`, without XLA and with XLA for
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


def _build(head, backbone, upsampler, num_classes, training=False):
    import keras_fastfcn as kf

    up, stride = UPSAMPLERS[upsampler]
    return kf.FastFCN(num_classes=num_classes, head=head, backbone=backbone, upsampler=up,
                      output_stride=stride, aux=training, se_loss=training and head == "encnet")


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

    model = _build(head, backbone, upsampler, num_classes)
    params = {"backbone": 0, "upsampler": 0, "head": 0}
    for layer in model.layers:
        if layer.name == "jpu":
            params["upsampler"] += _count(layer)
        elif layer.name == "head":
            params["head"] += _count(layer)
        elif layer.name.startswith(backbone):
            params["backbone"] += _count(layer)
    if fold:
        from keras_fastfcn.fold import fold_batchnorm

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

    from keras_fastfcn import losses

    model = _build(head, backbone, upsampler, num_classes, training=True)
    loss = {"logits": losses.segmentation_loss(), "aux_logits": losses.segmentation_loss()}
    weights = {"logits": 1.0, "aux_logits": 0.2}
    if "se_logits" in model.output:
        loss["se_logits"], weights["se_logits"] = losses.se_loss(), 0.2
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss=loss,
                  loss_weights=weights, jit_compile=False)
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    y = rng.randint(0, num_classes, (batch, crop, crop)).astype("int32")
    targets = losses.training_targets(y, num_classes, aux=True, se="se_logits" in model.output)
    targets = {k: np.asarray(v) for k, v in targets.items()}
    model.optimizer.build(model.trainable_variables)
    before = _vm("VmRSS")
    start = time.perf_counter()
    model.train_on_batch(x, targets)
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


def write_report(results, out_dir, machine, size, crop, batch, title="CPU"):
    """Writes RESULTS.md (appending nothing: the file is rewritten), results.json, chart PNG."""
    from keras_fastfcn.fileio import atomic_path

    os.makedirs(out_dir, exist_ok=True)
    rat = ratios(results)
    payload = {"machine": machine, "size": size, "train_crop": crop, "train_batch": batch,
               "results": results, "ratios": rat}
    with atomic_path(os.path.join(out_dir, "results.json")) as tmp:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
    lines = [f"# Benchmarks ({title})", "", f"Machine: {machine}.", "",
             f"Inference: one {size}x{size} image, batch 1, logits-only model, folded BN, "
             "median of repeated runs after warm-up, faster of a plain `tf.function` and one with "
             "XLA for every part but the JPU (column XLA). "
             f"Training memory: peak RSS of a child process running one step at crop {crop}, "
             f"batch {batch} (main + aux + SE losses), and its growth during the step.", "",
             "| head | backbone | upsampler | latency (s) | FPS | GFLOPs | params backbone / "
             "upsampler / head (M) | train peak RSS (GB) | step growth (GB) | XLA |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['head']} | {r['backbone']} | {r['upsampler']} | error: "
                         f"{r['error'][:80]} | | | | | | |")
            continue
        p = r["params"]
        mem = (f"{r['train_peak_rss_gb']:.2f} | {r['train_step_growth_gb']:.2f}"
               if "train_peak_rss_gb" in r else "- | -")
        lines.append(
            f"| {r['head']} | {r['backbone']} | {r['upsampler']} | {r['latency_s']:.3f} | "
            f"{r['fps']:.2f} | {r['gflops']:.0f} | {p['backbone'] / 1e6:.1f} / "
            f"{p['upsampler'] / 1e6:.1f} / {p['head'] / 1e6:.1f} | {mem} | "
            f"{'parts' if r.get('xla') else 'off'} |")
    lines += ["", "Ratios against the dilated output-stride-8 model (DilatedFCN) of the same "
              "head and backbone:", "",
              "| head | backbone | upsampler | speed-up | FLOPs ratio | peak RSS ratio | "
              "step growth ratio |", "|---|---|---|---|---|---|---|"]
    for r in rat:
        mem = (f"{r['memory_ratio']:.2f} | {r['step_growth_ratio']:.2f}"
               if "memory_ratio" in r else "- | -")
        lines.append(f"| {r['head']} | {r['backbone']} | {r['upsampler']} | "
                     f"{r['speedup']:.2f}x | {r['flops_ratio']:.2f} | {mem} |")
    with atomic_path(os.path.join(out_dir, "RESULTS.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    draw_chart(results, os.path.join(out_dir, "chart.png"))
    return payload


def draw_chart(results, path):
    """Bar chart of FPS and training memory per configuration (PIL, no plotting dependency)."""
    from PIL import Image, ImageDraw

    from keras_fastfcn.fileio import atomic_path

    rows = [r for r in results if "error" not in r]
    if not rows:
        return
    colors = {"jpu": (31, 119, 180), "jpu_x": (44, 160, 44), "os8": (214, 39, 40),
              "os16": (255, 127, 14), "os32": (148, 103, 189)}
    panels = [("FPS (higher is better)", "fps")]
    if any("train_peak_rss_gb" in r for r in rows):
        panels.append(("Train-step peak RSS, GB (lower is better)", "train_peak_rss_gb"))
    bar, gap, left, top, panel_h = 14, 10, 170, 40, 220
    groups = []
    for r in rows:
        key = f"{r['head']} {r['backbone']}"
        if not groups or groups[-1][0] != key:
            groups.append((key, []))
        groups[-1][1].append(r)
    width = left + sum(len(g[1]) * bar + gap for g in groups) + 20
    height = top + len(panels) * (panel_h + 70) + 30
    img = Image.new("RGB", (max(width, 600), height), "white")
    draw = ImageDraw.Draw(img)
    x_legend = 10
    for name, color in colors.items():
        draw.rectangle([x_legend, 10, x_legend + 12, 22], fill=color)
        draw.text((x_legend + 16, 10), name, fill="black")
        x_legend += 70
    for p, (title, key) in enumerate(panels):
        y0 = top + p * (panel_h + 70)
        vals = [r.get(key, 0) for r in rows]
        vmax = max(vals) or 1.0
        draw.text((10, y0), title, fill="black")
        base = y0 + 20 + panel_h
        draw.line([left - 5, base, width - 10, base], fill="black")
        x = left
        for key_name, items in groups:
            draw.text((10, base - 12 - (panel_h // 2)), "", fill="black")
            for r in items:
                h = int(panel_h * r.get(key, 0) / vmax)
                draw.rectangle([x, base - h, x + bar - 2, base],
                               fill=colors.get(r["upsampler"], (90, 90, 90)))
                x += bar
            draw.text((x - len(items) * bar, base + 4), key_name.replace(" resnet", "\nr"),
                      fill="black")
            x += gap
        draw.text((left - 60, y0 + 16), f"{vmax:.2f}", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _previous_results(out_dir, machine, size, crop, batch):
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


def add_arguments(parser):
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--upsamplers", default=",".join(UPSAMPLERS),
                        help="jpu, jpu_x, os8, os16, os32 (dilated baselines)")
    parser.add_argument("--size", type=int, default=512, help="inference image size")
    parser.add_argument("--crop", type=int, default=480, help="training-step crop")
    parser.add_argument("--batch", type=int, default=2, help="training-step batch")
    parser.add_argument("--min-seconds", type=float, default=10.0,
                        help="minimum timed seconds per configuration")
    parser.add_argument("--no-memory", action="store_true", help="skip the training-memory runs")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: 128 px, crop 96, encnet x resnet50 x (jpu, os8)")
    parser.add_argument("--output", default="benchmarks", help="folder for RESULTS.md etc.")
    parser.add_argument("--resume", action="store_true",
                        help="keep the configurations already in OUTPUT/results.json (same "
                             "machine and sizes) and measure only the missing ones")


def run(args):
    def split(text, valid, what):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in valid]
        if bad or not items:
            raise ValueError(f"Unknown {what} {bad or text!r}: expected some of {list(valid)}.")
        return items

    heads = split(args.heads, HEADS, "head(s)")
    backbones = split(args.backbones, BACKBONES, "backbone(s)")
    upsamplers = split(args.upsamplers, UPSAMPLERS, "upsampler(s)")
    size, crop, min_seconds = args.size, args.crop, args.min_seconds
    if args.quick:
        heads, backbones, upsamplers = ["encnet"], ["resnet50"], ["jpu", "os8"]
        size, crop, min_seconds = 128, 96, 1.0
    machine = machine_description()
    print(f"Benchmarking on {machine}")
    done = _previous_results(args.output, machine, size, crop, args.batch) if args.resume else []
    # The report is rewritten after each configuration: a full run takes most of an hour.
    results = run_benchmarks(
        heads, backbones, upsamplers, size=size, crop=crop, batch=args.batch,
        memory=not args.no_memory, min_seconds=min_seconds, done=done,
        on_result=lambda rows: write_report(rows, args.output, machine, size, crop, args.batch))
    for r in ratios(results):
        mem = f", train memory x{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
        print(f"{r['head']} {r['backbone']} {r['upsampler']} vs os8: "
              f"{r['speedup']:.2f}x faster{mem}")
    print(f"Wrote {os.path.join(args.output, 'RESULTS.md')}, results.json and chart.png")
    return 0 if all("error" not in r for r in results) else 1
