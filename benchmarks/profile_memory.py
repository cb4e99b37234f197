"""Where the training-step memory goes: FastFCN with JPU vs the dilated (DilatedFCN) model.

Three views of one SGD training step (main + 0.2 aux + 0.2 SE losses, crop 480, batch 2,
the protocol of `keras_fastfcn.benchmark.measure_train_memory`), TensorFlow backend, CPU:

- `saved`: static analysis of the traced training step. Every forward tensor that a
  gradient op reads stays alive until the backward pass reaches it; their sizes are
  summed per module (backbone stages, JPU parts, head, losses). No execution.
- `timeline`: profiles one (steady-state) step with the TensorFlow profiler and the
  BFC allocator, finds the allocator's peak and lists the tensors alive at that
  moment, per module, with the op that reached it (forward or backward pass).
- `peak`: runs the step in a fresh child process per configuration with TensorFlow's
  BFC allocator on the CPU (`TF_CPU_ALLOCATOR_USE_BFC=true`), which counts tensor bytes
  exactly (no malloc fragmentation): bytes held before the step (weights, optimizer
  slots) and the peak during it. Ablations isolate the parts: the full step; no
  auxiliary head; loss on the stride-8 head output (no full-resolution resize and
  loss); backbone + upsampler only; backbone only.
- `rss`: the benchmark protocol itself: peak RSS (VmHWM) of a fresh child process and
  its growth during the step, with the default allocator.

`--remat on|off` sets the JPU's `remat` option, `--resize auto|gather` the resize
formulation of the training graph (`gather` reproduces the formulation used before
the matmul form was added), so before/after comparisons run in the same code and
process setup.

Examples:
    python benchmarks/profile_memory.py saved --upsamplers jpu,os8 --remat off,on
    python benchmarks/profile_memory.py timeline --upsamplers jpu,os8
    python benchmarks/profile_memory.py peak --variants full,stride8,features,backbone
    python benchmarks/profile_memory.py rss --repeats 2 --remat on,off
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

VARIANTS = ("idle", "full", "no_aux", "stride8", "features", "backbone")
_HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------
# Model and step construction (runs in the measuring process)

def _apply_options(model, remat, resize):
    """Sets the JPU remat option and the training resize formulation, where present."""
    from keras_fastfcn.layers import jpu as jpu_module

    applied = {}
    try:
        jpu = model.get_layer("jpu")
    except ValueError:
        jpu = None
    if jpu is not None and remat is not None and hasattr(jpu, "remat"):
        jpu.remat = remat
        applied["remat"] = remat
    if resize == "gather":
        # Older checkouts: the JPU module's own resize policy (`_resize_method` before).
        for policy in ("layer_resize_method", "_resize_method"):
            if hasattr(jpu_module, policy):
                setattr(jpu_module, policy, lambda training: "gather")
        # Every BilinearResize (the logits, the JPU's `upsample`, pyramid pooling).
        try:
            from keras_fastfcn._keras_private import all_layers
        except ImportError:
            def all_layers(m):
                return m._flatten_layers(include_self=False, recursive=True)
        from keras_fastfcn.layers.resize import BilinearResize

        resizes = [layer for layer in all_layers(model) if isinstance(layer, BilinearResize)]
        for layer in resizes:
            layer.method = "gather"
        applied["resize"] = "gather"
        applied["resize_layers"] = len(resizes)
    return applied


def _build(backbone, upsampler, num_classes, variant, remat, resize):
    import keras

    from keras_fastfcn import benchmark

    if variant == "no_aux":
        from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter

        up, stride = benchmark.UPSAMPLERS[upsampler]
        full = FastFCNImageSegmenter(
            FastFCNBackbone(encoder=backbone, upsampler=up, output_stride=stride),
            num_classes=num_classes, head="encnet", aux=False, se_loss=True)
    else:  # the official training heads: aux + SE
        full = benchmark._build("encnet", backbone, upsampler, num_classes)
    applied = _apply_options(full, remat, resize)
    if variant in ("idle", "full", "no_aux"):
        return full, applied
    # Sub-models share the full model's layers: same weights and options.
    images = keras.Input((None, None, 3), name="images")
    c2, c3, c4, c5 = full.backbone.encoder(full.get_layer("preprocessing")(images))
    if variant == "backbone":
        return keras.Model(images, c5), applied
    try:
        jpu = full.get_layer("jpu")
    except ValueError:
        jpu = None
    feat = jpu([c3, c4, c5]) if jpu is not None else c5
    if variant == "features":
        return keras.Model(images, feat), applied
    logits, se = full.get_layer("head")(feat)  # stride8: main logits at stride 8, + SE
    return keras.Model(images, {"logits": logits, "se_logits": se}), applied


def _compiled_full(backbone, upsampler, num_classes, remat, resize):
    """The full training model (main + 0.2 aux + 0.2 SE losses, SGD), compiled."""
    import keras

    model, applied = _build(backbone, upsampler, num_classes, "full", remat, resize)
    model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=False)
    return model, applied


def _train_step_fn(model, variant, num_classes):
    """A tf.function SGD step for the sub-model variants (the full ones use fit's step)."""
    import keras
    import tensorflow as tf

    from keras_fastfcn import losses

    optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
    optimizer.build(model.trainable_variables)
    ce, bce = losses.segmentation_loss(), losses.se_loss()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            if variant == "stride8":
                size = tf.shape(out["logits"])[1:3]
                y8 = tf.image.resize(y[..., None], size, method="nearest")[..., 0]
                loss = ce(y8, out["logits"]) + 0.2 * bce(
                    losses.class_presence(y, num_classes), out["se_logits"])
            else:  # features / backbone: any scalar that needs the full backward
                loss = tf.reduce_mean(tf.square(out))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def measure(backbone="resnet50", upsampler="jpu", variant="full", crop=480, batch=2,
            num_classes=59, remat=None, resize="auto"):
    """One configuration, in this (fresh) process: memory before and at the peak of a step."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_fastfcn.benchmark import _vm  # the benchmark's /proc/self/status reader

    bfc = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")

    def tensor_bytes():
        if not bfc:
            return None
        info = tf.config.experimental.get_memory_info("CPU:0")
        return info["current"], info["peak"]

    model, applied = _build(backbone, upsampler, num_classes, variant, remat, resize)
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    y = rng.randint(0, num_classes, (batch, crop, crop)).astype("int32")
    if variant in ("idle", "full", "no_aux"):
        # The segmenter's own losses: main + 0.2 aux (when built with it) + 0.2 SE.
        model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=False)
        model.optimizer.build(model.trainable_variables)

        def run():
            model.train_on_batch(x, y)
    else:
        step = _train_step_fn(model, variant, num_classes)
        xt, yt = tf.constant(x), tf.constant(y)

        def run():
            step(xt, yt).numpy()

    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    before_rss = _vm("VmRSS")
    before = tensor_bytes()
    if bfc:
        tf.config.experimental.reset_memory_stats("CPU:0")
    start = time.perf_counter()
    if variant != "idle":
        run()
    seconds = time.perf_counter() - start
    result = {"backbone": backbone, "upsampler": upsampler, "variant": variant, "crop": crop,
              "batch": batch, "allocator": "bfc" if bfc else "default", "options": applied,
              "trainable_params": params, "rss_before_gb": before_rss / 2**30,
              "peak_rss_gb": _vm("VmHWM") / 2**30, "first_step_s": seconds}
    result["rss_growth_gb"] = result["peak_rss_gb"] - result["rss_before_gb"]
    if bfc:
        after = tensor_bytes()
        result["tensors_before_gb"] = before[0] / 2**30
        result["tensors_peak_gb"] = after[1] / 2**30
        result["tensors_step_gb"] = (after[1] - before[0]) / 2**30
    if variant != "idle" and os.environ.get("PROFILE_MEMORY_TIME_STEPS"):
        times = []
        for _ in range(int(os.environ["PROFILE_MEMORY_TIME_STEPS"])):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        result["step_s"] = sorted(times)[len(times) // 2]
        result["step_times_s"] = times
    return result


def _live_at_peak(logdir):
    """Tensors alive at the allocator's peak, from the profiler's memory events."""
    import glob

    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older TensorFlow layouts
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = names.get(event.metadata_id, "")
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for stat in event.stats:
                    key = stat_names.get(stat.metadata_id)
                    stats[key] = (stat.str_value or stat.int64_value or stat.uint64_value
                                  or (plane.stat_metadata[stat.ref_value].name
                                      if stat.ref_value else 0))
                events.append((line.timestamp_ns + event.offset_ps // 1000, kind, stats))
    events.sort(key=lambda e: e[0])
    live, best, best_live, best_op = {}, -1, {}, ""
    for _, kind, stats in events:
        addr = stats.get("addr")
        if kind == "MemoryAllocation":
            # requested_bytes: the tensor; allocation_bytes: the BFC chunk (rounded up,
            # up to 2x for large tensors: allocator overhead, not model memory).
            live[addr] = (stats.get("tf_op") or "?", int(stats.get("requested_bytes") or 0),
                          stats.get("shape") or "")
        else:
            live.pop(addr, None)
        total = int(stats.get("bytes_allocated") or 0)
        if total > best:
            best, best_live, best_op = total, dict(live), stats.get("tf_op") or "?"
    return best, best_op, list(best_live.values())


def timeline(backbone="resnet50", upsampler="jpu", crop=480, batch=2, num_classes=59,
             remat=None, resize="auto", top=12):
    """Profiles a (second, steady-state) full training step; groups the tensors alive at
    its peak by module. Needs TF_CPU_ALLOCATOR_USE_BFC=true (set by the command line)."""
    import tempfile

    import numpy as np
    import tensorflow as tf

    off = os.environ.get("PROFILE_MEMORY_GRAPPLER_OFF")
    if off:  # e.g. "constant_folding,arithmetic_optimization", to test their effect
        tf.config.optimizer.set_experimental_options({k: False for k in off.split(",")})
    model, applied = _compiled_full(backbone, upsampler, num_classes, remat, resize)
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    y = rng.randint(0, num_classes, (batch, crop, crop)).astype("int32")
    model.train_on_batch(x, y)
    logdir = tempfile.mkdtemp(prefix="profile_memory_")
    tf.config.experimental.reset_memory_stats("CPU:0")
    tf.profiler.experimental.start(logdir)
    model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    peak, peak_op, live = _live_at_peak(logdir)
    per_group = collections.Counter()
    for op, nbytes, _ in live:
        per_group[_group(op) if op != "?" else "untracked (weights, slots, inputs)"] += nbytes
    phase = "backward" if peak_op.startswith("gradient_tape") else "forward/loss/optimizer"
    biggest = sorted(live, key=lambda item: -item[1])[:top]
    return {"backbone": backbone, "upsampler": upsampler, "options": applied,
            "peak_gb": peak / 2**30, "peak_op": peak_op, "phase": phase,
            "live_requested_gb": sum(per_group.values()) / 2**30,
            "live_mb": {k: v / 2**20 for k, v in per_group.items()},
            "biggest": [(op, nbytes / 2**20, shape) for op, nbytes, shape in biggest]}


_CODE_ROOT = [os.path.dirname(_HERE)]


def _child(config, bfc, entry="measure"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    if bfc:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(
        _CODE_ROOT + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); import profile_memory as p; "
            f"print('RESULT ' + json.dumps(p.{entry}(**json.loads(sys.argv[1]))))")
    # cwd: `python -c` puts it first on sys.path, so it decides which checkout loads.
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(config), _HERE],
                          capture_output=True, text=True, env=env, cwd=_CODE_ROOT[0])
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {**config, "error": " | ".join(tail) or f"exit code {proc.returncode}"}


# ----------------------------------------------------------------------------------------
# Static analysis of the traced step

def _group(op_name):
    """A readable module name for a forward op name."""
    parts = [re.sub(r"_\d+$", "", p) for p in op_name.split("/")]
    if parts and parts[0].startswith("fastfcn"):
        parts = parts[1:]
    if not parts:
        return "other"
    top = parts[0]
    if top.startswith("resnet"):
        sub = parts[1] if len(parts) > 1 else ""
        match = re.match(r"conv(\d)_block", sub)
        if match:
            stage = int(match.group(1))
            return f"backbone stage {stage} (conv{stage}_x)"
        return "backbone stem (conv1, pool)"
    if top == "jpu":
        sub = parts[1] if len(parts) > 1 else ""
        if sub.startswith("dilation") or sub.startswith("jum"):
            detail = "/".join(parts[1:3]) if sub.startswith("jum") else sub
            return f"jpu {detail}"
        if sub == "concat" and len(parts) == 2:
            return "jpu concat"
        return f"jpu {sub}"
    if top in ("head", "auxlayer"):
        return "head (EncNet)" if top == "head" else "aux FCN head"
    if top in ("logits", "aux_logits"):
        return f"resize to input ({top})"
    if "crossentropy" in top or top == "compile_loss":
        return "losses (softmax grads)"
    if top == "sgd":
        return "optimizer temporaries"
    if top == "preprocessing":
        return "preprocessing"
    return "other"


def saved_for_backward(graph):
    """Forward tensors of a traced training step that its backward pass reads.

    Returns {tensor name: (tensor, bytes)} over the ops that run (feed a variable
    update or an output), following ops that alias their input buffer.
    """
    import numpy as np

    ops_list = graph.get_operations()
    backward = set()
    for op in ops_list:  # creation order is topological
        if (op.name.startswith("gradient_tape/")
                or any(t.op.name in backward for t in op.inputs)
                or any(c.name in backward for c in op.control_inputs)):
            backward.add(op.name)
    # Only ops that feed a stateful op (variable updates) or an output run: TF prunes
    # the rest, e.g. the unused gradient of a matmul with respect to a constant matrix.
    live, stack = set(), [op for op in ops_list if op.op_def.is_stateful]
    stack += [t.op for t in graph.outputs]
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        live.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    skip = {"ReadVariableOp", "Const", "Shape", "VarHandleOp", "Placeholder"}
    aliasing = {"Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims", "StopGradient"}

    def source(t):
        # Ops that forward their input buffer do not hold memory of their own.
        while t.op.type in aliasing and t.op.inputs:
            t = t.op.inputs[t.value_index if t.op.type == "IdentityN" else 0]
        return t

    saved = {}
    for op in ops_list:
        if op.name not in backward or op.name not in live:
            continue
        for t in op.inputs:
            if t.op.name in backward:
                continue
            t = source(t)
            if t.op.name in backward or t.op.type in skip:
                continue
            if t.shape.rank is None or not t.shape.is_fully_defined():
                continue
            saved[t.name] = (t, int(np.prod(t.shape.as_list())) * t.dtype.size)
    return saved


def saved_activations(backbone="resnet50", upsampler="jpu", crop=480, batch=2, num_classes=59,
                      remat=None, resize="auto"):
    """Bytes of forward tensors read by the backward pass of the step, per module."""
    import numpy as np
    import tensorflow as tf

    model, applied = _compiled_full(backbone, upsampler, num_classes, remat, resize)
    model.optimizer.build(model.trainable_variables)
    specs = (tf.TensorSpec((batch, crop, crop, 3), tf.float32),
             {"logits": tf.TensorSpec((batch, crop, crop), tf.int32),
              "aux_logits": tf.TensorSpec((batch, crop, crop), tf.int32),
              "se_logits": tf.TensorSpec((batch, num_classes), tf.float32)})
    graph = tf.function(lambda x, y: model.train_step((x, y))).get_concrete_function(*specs).graph

    saved = saved_for_backward(graph)
    per_group = collections.Counter()
    for t, nbytes in saved.values():
        if nbytes >= 1 << 20:  # skip per-channel statistics and scalars
            per_group[_group(t.op.name)] += nbytes
    if os.environ.get("PROFILE_MEMORY_LIST"):
        for t, nbytes in sorted(saved.values(), key=lambda item: -item[1]):
            if _group(t.op.name) == os.environ["PROFILE_MEMORY_LIST"] and nbytes >= 1 << 20:
                print(f"  {nbytes / 2**20:7.1f} MB {t.op.type:<24} {t.name} {t.shape}",
                      file=sys.stderr)
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return {"backbone": backbone, "upsampler": upsampler, "crop": crop, "batch": batch,
            "options": applied, "trainable_params": params,
            "saved_mb": {k: v / 2**20 for k, v in per_group.items()},
            "saved_total_mb": sum(per_group.values()) / 2**20}


def _saved_child(config):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        _CODE_ROOT + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); import profile_memory as p; "
            "print('RESULT ' + json.dumps(p.saved_activations(**json.loads(sys.argv[1]))))")
    # cwd: `python -c` puts it first on sys.path, so it decides which checkout loads.
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(config), _HERE],
                          capture_output=True, text=True, env=env, cwd=_CODE_ROOT[0])
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-3:])


# ----------------------------------------------------------------------------------------
# Command line

def _label(r):
    opts = r.get("options", {})
    bits = [r["upsampler"]]
    if "remat" in opts:
        bits.append("remat" if opts["remat"] else "no-remat")
    if opts.get("resize") == "gather":
        bits.append("gather-resize")
    return " ".join(bits)


def _options(args, upsampler):
    remats = [{"on": True, "off": False}[v] for v in args.remat.split(",")]
    if upsampler not in ("jpu", "jpu_x"):
        remats = remats[:1]  # no JPU: the option does not apply
    resizes = args.resize.split(",")
    return [(rm, rs) for rm in remats for rs in resizes]


def _configs(args):
    """The configurations the command line asks for, as measurement keyword arguments."""
    for backbone in args.backbones.split(","):
        for upsampler in args.upsamplers.split(","):
            for remat, resize in _options(args, upsampler):
                yield {"backbone": backbone, "upsampler": upsampler, "crop": args.crop,
                       "batch": args.batch, "num_classes": args.num_classes,
                       "remat": remat, "resize": resize}


def _append_json(path, row):
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("saved", "timeline", "peak", "rss"))
    parser.add_argument("--backbones", default="resnet50")
    parser.add_argument("--upsamplers", default="jpu,os8")
    parser.add_argument("--variants", default="idle,full,no_aux,stride8,features,backbone",
                        help=f"peak/rss ablations, some of {VARIANTS}")
    parser.add_argument("--crop", type=int, default=480)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=59)
    parser.add_argument("--remat", default="on", help="JPU remat: on, off or on,off")
    parser.add_argument("--resize", default="auto", help="auto, gather or auto,gather")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="append results (JSON lines) to this file")
    parser.add_argument("--code-root", help="import keras_fastfcn from this checkout instead "
                        "(e.g. an export of an older commit, for before/after numbers)")
    parser.add_argument("--tag", default="", help="label stored with the results")
    args = parser.parse_args(argv)
    if args.code_root:
        _CODE_ROOT[:] = [os.path.abspath(args.code_root)]
    rows = []
    if args.mode == "saved":
        rows = [_saved_child(config) for config in _configs(args)]
        groups = sorted({g for r in rows for g in r["saved_mb"]},
                        key=lambda g: -max(r["saved_mb"].get(g, 0) for r in rows))
        labels = [f"{r['backbone']} {_label(r)}" for r in rows]
        width = max(14, *(len(s) for s in labels))
        print(f"Saved activations of one training step (MB), crop {args.crop}, batch "
              f"{args.batch}, {args.num_classes} classes")
        print(f"{'module':<34}" + "".join(f"{s:>{width + 2}}" for s in labels))
        for g in groups:
            print(f"{g:<34}" + "".join(f"{r['saved_mb'].get(g, 0):>{width + 2}.0f}" for r in rows))
        print(f"{'TOTAL':<34}" + "".join(f"{r['saved_total_mb']:>{width + 2}.0f}" for r in rows))
        print(f"{'weights (MB, x3 with grads+momentum)':<34}"
              + "".join(f"{r['trainable_params'] * 4 / 2**20:>{width + 2}.0f}" for r in rows))
    elif args.mode == "timeline":
        for config in _configs(args):
            r = _child(config, bfc=True, entry="timeline")
            rows.append(r)
            if "error" in r:
                print(f"{config['backbone']} {config['upsampler']}: ERROR {r['error']}")
                continue
            print(f"\n{config['backbone']} {_label(r)}: allocator peak {r['peak_gb']:.2f} GB "
                  f"({r['live_requested_gb']:.2f} GB requested by the live tensors), "
                  f"reached in the {r['phase']} at op {r['peak_op']}")
            for g, mb in sorted(r["live_mb"].items(), key=lambda kv: -kv[1]):
                if mb >= 1:
                    print(f"  {g:<40} {mb:8.0f} MB")
            print("  largest live tensors:")
            for op, mb, shape in r["biggest"]:
                print(f"    {mb:7.1f} MB {shape:<22} {op}")
            _append_json(args.json, r)
    else:
        bfc = args.mode == "peak"
        for rep in range(args.repeats):
            for config in _configs(args):
                for variant in args.variants.split(","):
                    r = _child({**config, "variant": variant}, bfc)
                    r["repeat"], r["tag"] = rep, args.tag
                    rows.append(r)
                    print(_row_text(r, bfc), flush=True)
                    _append_json(args.json, r)
    return rows


def _row_text(r, bfc):
    head = f"{r.get('tag', ''):<8}{r['backbone']:>9} {_label(r):<26} {r['variant']:<9}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    text = (f"{head} RSS before {r['rss_before_gb']:.2f} peak {r['peak_rss_gb']:.2f} "
            f"growth {r['rss_growth_gb']:.2f} GB")
    if bfc:
        text += (f" | tensors before {r['tensors_before_gb']:.2f} peak "
                 f"{r['tensors_peak_gb']:.2f} step {r['tensors_step_gb']:.2f} GB")
    text += f" | step {r['first_step_s']:.1f} s"
    if "step_s" in r:
        text += f" (steady {r['step_s']:.2f} s)"
    return text


if __name__ == "__main__":
    main()
