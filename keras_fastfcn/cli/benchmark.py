"""`keras-fastfcn benchmark`: speed, FLOPs and training memory, JPU vs the dilated models.

Writes `OUTPUT/results.json` after every configuration (a killed run keeps its rows;
`--resume` measures only the missing ones) and prints the ratios to the dilated
output-stride-8 model. `python benchmarks/report.py --add OUTPUT/results.json --to
benchmarks/results/KIND.json --command "..."` merges it into its machine kind's file, from
which `python benchmarks/report.py benchmarks/results/*.json` renders `RESULTS.md`.

Columns besides latency: `--precision` (fp32 / bf16 / fp16 rows of the Keras model; int8
rows of its TFLite / ONNX Runtime int8 exports, `--int8-runtime`), throughput at
`--throughput-batch`, achieved GFLOP/s against this CPU's peak for the precision
(cores x clock x FLOP/cycle/core from the ISA flags: `keras_fastfcn.benchmark.peak_gflops`)
and, where PyTorch is installed, the official code timed in the same run (`--no-torch`
skips it).
"""

import argparse
import os

from keras_fastfcn.benchmark import INT8_RUNTIMES  # no TensorFlow import: the CLI stays quick
from keras_fastfcn.cli.common import DeprecatedAlias, non_negative_int, positive_int


HEADS = ("encnet", "psp", "deeplab", "fcn")
ENCODERS = ("resnet50", "resnet101")
UPSAMPLERS = ("jpu", "jpu_x", "os8", "os16", "os32")


def add_arguments(parser):
    parser.add_argument("--heads", default=",".join(HEADS), metavar="H1,H2,...",
                        help="registered heads to time, comma-separated (default: "
                             f"{','.join(HEADS)})")
    parser.add_argument("--encoders", default=",".join(ENCODERS), metavar="E1,E2,...",
                        help="registered encoders to time, comma-separated (default: "
                             f"{','.join(ENCODERS)})")
    parser.add_argument("--backbones", dest="encoders", action=DeprecatedAlias,
                        new="--encoders", help=argparse.SUPPRESS)
    parser.add_argument("--upsamplers", default=",".join(UPSAMPLERS),
                        help="jpu, jpu_x, os8, os16, os32 (dilated baselines)")
    parser.add_argument("--size", type=positive_int, default=512, help="inference image size")
    parser.add_argument("--crop", type=positive_int, default=480, metavar="N",
                        help="crop size (N x N) of the training-step and training-memory "
                             "runs (default: 480, the official crop)")
    parser.add_argument("--batch", type=positive_int, default=2, help="training-step batch")
    parser.add_argument("--min-seconds", type=float, default=10.0,
                        help="minimum timed seconds per configuration")
    parser.add_argument("--no-memory", action="store_true", help="skip the training-memory runs")
    parser.add_argument("--precision", default="fp32",
                        help="comma list of fp32, bf16, fp16, int8: one row each. bf16 / "
                             "fp16: the model rebuilt under Keras mixed precision (same "
                             "weights); int8: its static int8 TFLite and ONNX exports, "
                             "calibrated on random images (speed only; int8 accuracy: "
                             "python benchmarks/precision.py)")
    parser.add_argument("--int8-runtime", default="auto", choices=tuple(INT8_RUNTIMES),
                        help="int8 rows: time the TFLite and the ONNX Runtime export and "
                             "keep the faster (auto), or only one")
    parser.add_argument("--throughput-batch", type=non_negative_int, default=8,
                        help="batch of the throughput column (images/s); 0: no throughput run")
    parser.add_argument("--xla", default="auto", choices=("auto", "off", "parts"),
                        help="time the inference graph without XLA and with XLA for every "
                             "part but the JPU and keep the faster (auto), or only one")
    parser.add_argument("--freeze", action="store_true",
                        help="time the graphs with the weights frozen into them, as "
                             "predict / evaluate --freeze run them")
    parser.add_argument("--no-torch", action="store_true",
                        help="do not time the official PyTorch structure (the anchor column; "
                             "timed only where torch is installed)")
    parser.add_argument("--openvino", action="store_true",
                        help="also time each fp32 / bf16 / int8 row as an OpenVINO export "
                             "(openvino_* columns; needs pip install -e '.[openvino]')")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized: 128 px, crop 96, encnet x resnet50 x (jpu, os8)")
    parser.add_argument("--output", default="benchmarks", help="folder for results.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the configurations already in OUTPUT/results.json (same "
                             "machine and sizes) and measure only the missing ones")


def _split(text, valid, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise ValueError(f"Unknown {what} {bad or text!r}: expected some of {list(valid)}.")
    return items


def run(args):
    from keras_fastfcn import benchmark

    from keras_fastfcn.models import registry

    # Any registered head (yours too, with --import); the default is the paper's four.
    heads = _split(args.heads, registry.available("head"), "head(s)")
    encoders = _split(args.encoders, registry.available("encoder"), "encoder(s)")
    upsamplers = _split(args.upsamplers, UPSAMPLERS, "upsampler(s)")
    precisions = _split(args.precision, benchmark.BENCHMARK_PRECISIONS, "precision(s)")
    size, crop, min_seconds = args.size, args.crop, args.min_seconds
    if not min_seconds > 0:
        raise ValueError(f"--min-seconds must be > 0, got {min_seconds}.")
    if args.quick:
        heads, encoders, upsamplers = ["encnet"], ["resnet50"], ["jpu", "os8"]
        size, crop, min_seconds = 128, 96, 1.0
    machine = benchmark.machine_description()
    cpu = benchmark.cpu_info()
    print(f"Benchmarking on {machine}")
    peaks = ", ".join(f"{p} {benchmark.peak_gflops(p, cpu) or 0:.0f}" for p in precisions)
    print(f"CPU flags: {' '.join(cpu['flags']) or 'n/a'}; {cpu['cores']} cores at "
          f"{cpu['mhz'] or 0:.0f} MHz ({cpu['mhz_source']}); peak GFLOP/s: {peaks}")
    done = (benchmark.previous_results(args.output, machine, size, crop, args.batch)
            if args.resume else [])
    results = benchmark.run_benchmarks(
        heads, encoders, upsamplers, size=size, crop=crop, batch=args.batch,
        memory=not args.no_memory, min_seconds=min_seconds, done=done,
        precisions=precisions, throughput_batch=args.throughput_batch,
        torch_anchor=not args.no_torch, cpu=cpu, xla=args.xla, freeze=args.freeze,
        int8_runtime=args.int8_runtime, openvino=args.openvino,
        on_result=lambda rows: benchmark.write_results(rows, args.output, machine, size, crop,
                                                       args.batch, cpu))
    for r in benchmark.ratios(results):
        mem = f", train memory x{r['memory_ratio']:.2f}" if "memory_ratio" in r else ""
        torch = (f", official PyTorch x{r['torch_speedup']:.2f}" if "torch_speedup" in r
                 else "")
        runtime = f" ({r['runtime']})" if "runtime" in r else ""
        print(f"{r['head']} {r['encoder']} {r['upsampler']} {r['precision']}{runtime} vs os8: "
              f"{r['speedup']:.2f}x faster{mem}{torch}")
    path = os.path.join(args.output, "results.json")
    print(f"Wrote {path}; a report of this run alone: python benchmarks/report.py {path} "
          f"--output DIR; into the repository's results: python benchmarks/report.py --add "
          f"{path} --to benchmarks/results/KIND.json --command \"keras-fastfcn benchmark ...\"")
    return 0 if all("error" not in r for r in results) else 1
