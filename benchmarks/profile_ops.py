"""Where the inference time goes, per TensorFlow op: the deployed graph (logits only,
BatchNorm folded, optionally under a Keras mixed-precision policy) frozen and run in a
`tf.compat.v1.Session` with a full trace; the kernels' wall times are summed by op
type and by model part (the first name scope: encoder, JPU, head, ...), medians over
`--runs` traced runs after warm-up.

TensorFlow's grappler (with oneDNN, its layout and fusion passes) rewrites the graph
before it runs, so the op types printed are the kernels that ran (e.g.
`_MklNativeFusedConv2D`, `_FusedConv2D`, `DepthwiseConv2dNative`). Without XLA: the
question is which kernels are slow, not how XLA clusters them.

`--runtime openvino`: the same model as `keras-fastfcn export --format openvino
--no-probabilities` writes it (int8: NNCF on random calibration images, as the
benchmark's int8 rows), compiled as `ExportPredictor` compiles it (the inference
precision its export recorded) plus `PERF_COUNT`, and summed the same way from
OpenVINO's per-node profile: op type and kernel (e.g. `Convolution jit_avx512_FP32`),
and model part from the node names, which keep the Keras scopes through tf2onnx.
Nodes OpenVINO fused into others report no time of their own.

Example:
    python benchmarks/profile_ops.py --upsampler jpu --precision bf16 --size 512
    python benchmarks/profile_ops.py --runtime openvino --precision int8
    ONEDNN_VERBOSE=1 python benchmarks/profile_ops.py --runs 1 | grep onednn_verbose
"""

import argparse
import collections
import os
import re
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:  # run from a checkout: use its keras_fastfcn
    sys.path.insert(0, os.path.dirname(_HERE))


def frozen_graph(head, backbone, upsampler, size, precision, num_classes=59):
    import tensorflow as tf

    from keras_fastfcn.benchmark import _build, frozen_forward
    from keras_fastfcn.precision import with_precision
    from keras_fastfcn.inference.fold import fold_batchnorm

    seg = _build(head, backbone, upsampler, num_classes)
    if precision != "fp32":
        seg = with_precision(seg, precision)
    frozen = frozen_forward(fold_batchnorm(seg),  # the logits-only graph, folded
                            tf.TensorSpec((1, size, size, 3), tf.float32))
    return (frozen.graph.as_graph_def(), frozen.inputs[0].name.split(":")[0],
            frozen.outputs[0].name)


def part_of(node_name, depth=1):
    """The model part of a node: its first `depth` scopes below the model's own (e.g.
    `resnet50_os32`, `jpu`, `head`; depth 2: `jpu/dilation1`), call suffixes dropped."""
    scopes = [re.sub(r"_\d+$", "", s) for s in node_name.split("/")[1:-1]]
    return "/".join(scopes[:depth]) or "(graph)"


class _Medians:
    """Per-run kernel times by op type and by model part, and each run's wall time; their
    medians over the runs are `profile`'s tables."""

    def __init__(self):
        self.by_type, self.by_part, self.totals = (collections.defaultdict(list)
                                                   for _ in range(3))

    def add(self, types, parts, wall_ms):
        for key, ms in types.items():
            self.by_type[key].append(ms)
        for key, ms in parts.items():
            self.by_part[key].append(ms)
        self.totals["kernels"].append(sum(types.values()))
        self.totals["wall"].append(wall_ms)

    def tables(self):
        def medians(samples):
            return {k: statistics.median(v) for k, v in samples.items()}

        return medians(self.by_type), medians(self.by_part), medians(self.totals)


def profile(graph_def, input_name, output_name, size, runs=5, warmup=2, depth=1):
    import numpy as np
    import tensorflow as tf

    image = np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    medians = _Medians()
    with tf.compat.v1.Session(graph=graph) as sess:
        feed = {input_name + ":0": image}
        for _ in range(warmup):
            sess.run(output_name, feed)
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            meta = tf.compat.v1.RunMetadata()
            sess.run(output_name, feed, options=options, run_metadata=meta)
            types, parts = collections.Counter(), collections.Counter()
            start, end = None, 0
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    if node.node_name in ("_SOURCE", "_SINK") or not node.op_end_rel_micros:
                        continue
                    op = node.timeline_label.split("(")[0].split(" = ")[-1].strip() or "?"
                    ms = node.op_end_rel_micros / 1000.0
                    types[op] += ms
                    parts[part_of(node.node_name, depth)] += ms
                    start = node.all_start_micros if start is None else min(
                        start, node.all_start_micros)
                    end = max(end, node.all_start_micros + node.all_end_rel_micros)
            medians.add(types, parts, (end - start) / 1000.0)
    return medians.tables()


def part_of_openvino(node_name, depth=1):
    """The model part of an OpenVINO node from its tf2onnx name (the TF op name, under
    `StatefulPartitionedCall/...` scopes): the scopes from the first Keras part on."""
    scopes = [re.sub(r"_\d+$", "", s) for s in node_name.split("/")[:-1]]
    keep = [s for s in scopes if s and not s.startswith(("StatefulPartitionedCall",
                                                         "PartitionedCall"))]
    # the first scope is the model's own name (as in `part_of`)
    return "/".join(keep[1:1 + depth]) or "(graph)"


def profile_openvino(head, backbone, upsampler, size, precision, runs=5, warmup=2,
                     depth=1, num_classes=59):
    """`profile`'s tables from OpenVINO's per-node profile of the exported model."""
    import tempfile

    import numpy as np
    import openvino

    from keras_fastfcn.benchmark.run import export_openvino_config
    from keras_fastfcn.serving.runtime import ExportPredictor

    image = np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    with tempfile.TemporaryDirectory(prefix="kf-profile-") as work:
        path = export_openvino_config(head, backbone, upsampler, size, precision,
                                      os.path.join(work, "model.xml"), num_classes)
        # Compiled as predict / the benchmark compile it (ExportPredictor: threads,
        # latency hint, the recorded inference precision), with per-node counters.
        config = dict(ExportPredictor(path).compile_config, PERF_COUNT=True)
        core = openvino.Core()
        request = core.compile_model(core.read_model(path), "CPU",
                                     config).create_infer_request()
    medians = _Medians()
    for _ in range(warmup):
        request.infer({"images": image})
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({"images": image})
        wall_ms = 1000 * (time.perf_counter() - start)
        types, parts = collections.Counter(), collections.Counter()
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1000
            if not ms:
                continue
            types[f"{info.node_type} {info.exec_type}"] += ms
            parts[part_of_openvino(info.node_name, depth)] += ms
        medians.add(types, parts, wall_ms)
    return medians.tables()


def _print_table(title, times, total, top):
    print(f"\n{title} (ms, share of kernel time)")
    for key, ms in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:9.1f}  {100 * ms / total:5.1f}%  {key}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head", default="encnet")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--upsampler", default="jpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "int8"),
                        help="int8: --runtime openvino only")
    parser.add_argument("--runtime", default="tensorflow", choices=("tensorflow", "openvino"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--depth", type=int, default=2, help="scopes per model part")
    args = parser.parse_args(argv)

    from keras_fastfcn.benchmark import machine_description

    print(machine_description())
    if args.runtime == "openvino":
        if args.precision == "fp16":
            parser.error("--runtime openvino: fp32, bf16 or int8")
        by_type, by_part, med = profile_openvino(
            args.head, args.backbone, args.upsampler, args.size, args.precision,
            runs=args.runs, depth=args.depth)
    else:
        if args.precision == "int8":
            parser.error("int8: the TensorFlow graph has no int8 form (--runtime openvino)")
        graph_def, inp, out = frozen_graph(args.head, args.backbone, args.upsampler,
                                           args.size, args.precision)
        by_type, by_part, med = profile(graph_def, inp, out, args.size, runs=args.runs,
                                        depth=args.depth)
    print(f"{args.runtime}: "
          f"{args.head} {args.backbone} {args.upsampler} {args.precision} {args.size}px: "
          f"wall {med['wall']:.1f} ms, kernel time {med['kernels']:.1f} ms "
          f"(> wall: kernels ran in parallel)")
    _print_table("By op type", by_type, med["kernels"], args.top)
    _print_table("By model part", by_part, med["kernels"], args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
