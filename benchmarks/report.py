#!/usr/bin/env python
"""RESULTS.md and chart.png from the results files of `keras-fastfcn benchmark`.

`benchmarks/results/` holds one file per machine kind (one CPU model and ISA); each of
its rows names the run (date and command) that measured it. RESULTS.md is rendered
from all of them, one section and one table per machine kind (written to the folder
above `results/`, chart.png from the file with the most rows, or `--chart FILE`):

    python benchmarks/report.py benchmarks/results/*.json

A new run goes into its machine kind's file: each of its rows replaces the row of the
same head, encoder, upsampler and precision (the file's notes say which), then render:

    keras-fastfcn benchmark --heads encnet ... --output /tmp/run
    python benchmarks/report.py --add /tmp/run/results.json \
        --to benchmarks/results/xeon_amx.json --command "keras-fastfcn benchmark --heads encnet ..."

A plain `results.json` renders alone, RESULTS.md and chart.png next to it:

    python benchmarks/report.py OUT/results.json [--title CPU] [--output DIR]
"""

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_fastfcn.benchmark import (BENCHMARK_PRECISIONS, RUNTIME_NAMES,  # noqa: E402
                                     peak_gflops, ratios, row_precision, runtime_notes,
                                     upgrade_results)
from keras_fastfcn.benchmark.cpu import peak_clock, peak_formula  # noqa: E402
from keras_fastfcn.fileio import atomic_path  # noqa: E402

RESULT_HEADER = ["head", "encoder", "upsampler", "precision", "latency (s)", "FPS",
                 "throughput (img/s)", "GFLOPs", "GFLOP/s (% peak)", "official PyTorch (s)",
                 "params encoder / upsampler / head (M)", "train peak RSS (GB)",
                 "step growth (GB)", "XLA / runtime", "OpenVINO (s)"]
RATIO_HEADER = ["head", "encoder", "upsampler", "precision", "speed-up",
                "throughput speed-up", "official PyTorch speed-up", "FLOPs ratio",
                "peak RSS ratio", "step growth ratio"]


def _table(header, rows):
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cells) + " |" for cells in rows])


def _method(size, crop, batch):
    return (f"Inference: one {size}x{size} image, batch 1, logits-only model, folded BN, "
            "median of repeated runs after warm-up, faster of a plain `tf.function` and one "
            "with XLA for every part but the JPU (column XLA; \"frozen\": weights as graph "
            "constants, `--freeze`); bf16 / fp16: the model rebuilt under Keras mixed "
            "precision; int8: the static int8 TFLite / ONNX exports, timed in their runtime "
            "(column XLA / runtime: the faster, the other's latency in brackets), class map "
            "out. OpenVINO (`--openvino`): the same model exported with `keras-fastfcn "
            "export --format openvino` at the row's precision (bf16: the inference "
            "precision hint; int8: NNCF, the same calibration and float-kept layers), timed "
            "in OpenVINO's runtime with the same protocol. Throughput: images/s at the batch given. GFLOP/s: FLOPs / batch-1 latency, "
            "and its share of the CPU's peak for the precision. Official PyTorch: the official "
            "module structure timed in the same run (same size, batch 1, same protocol; bf16 "
            "under `torch.autocast`). The peak: cores x clock x FLOP/cycle/core of the "
            "microarchitecture (docs/benchmarking.md); where the machine reports only its "
            "nominal clock (a virtual machine), at the highest boost clock of its "
            "microarchitecture's parts, so the share is a lower bound. Training memory: peak "
            f"RSS of a child process running one step at crop {crop}, batch {batch} (main + "
            "aux + SE losses), and its growth during the step.")


def _result_cells(r):
    """One row of the results table (RESULT_HEADER)."""
    first = [r["head"], r["encoder"], r["upsampler"], r.get("precision", "fp32")]
    if "error" in r:
        return first + [f"error: {r['error'][:80]}"] + [""] * (len(RESULT_HEADER) - 5)
    p = r["params"]
    mem = ([f"{r['train_peak_rss_gb']:.2f}", f"{r['train_step_growth_gb']:.2f}"]
           if "train_peak_rss_gb" in r else ["-", "-"])
    throughput = (f"{r['throughput_ips']:.2f} (batch {r['throughput_batch']})"
                  if "throughput_ips" in r else "-")
    achieved = "-"
    if "achieved_gflops_s" in r:
        achieved = f"{r['achieved_gflops_s']:.1f}"
        if "peak_fraction" in r:
            achieved += f" ({100 * r['peak_fraction']:.1f}%)"
    anchor = (f"{r['torch_latency_s']:.3f} ({r['speedup_vs_torch']:.2f}x)"
              if "torch_latency_s" in r else "-")
    return first + [f"{r['latency_s']:.3f}", f"{r['fps']:.2f}", throughput,
                    f"{r['gflops']:.0f}", achieved, anchor,
                    f"{p['encoder'] / 1e6:.1f} / {p['upsampler'] / 1e6:.1f} / "
                    f"{p['head'] / 1e6:.1f}"] + mem + [_graph_cell(r), _openvino_cell(r)]


def _openvino_cell(r):
    """The same configuration and precision as an OpenVINO export (`--openvino`): its
    latency, what it ran in, its throughput and which of the two is faster."""
    if "openvino_error" in r:
        return f"error: {r['openvino_error'][:60]}"
    if "openvino_latency_s" not in r:
        return "-"
    ours, theirs = r["latency_s"], r["openvino_latency_s"]
    ratio = max(ours, theirs) / min(ours, theirs)
    faster = ("same speed" if round(ratio, 2) == 1.0
              else f"ours {ratio:.2f}x faster" if ours <= theirs
              else f"OpenVINO {ratio:.2f}x faster")
    runs = r["openvino_inference_precision"]
    if row_precision(r) == "int8":  # the hint covers only the ops NNCF left in float
        runs = f"int8, float parts {runs}"
    text = f"{theirs:.3f} (runs {runs}; {faster})"
    if "openvino_throughput_ips" in r:
        text += (f"; {r['openvino_throughput_ips']:.2f} img/s "
                 f"(batch {r['openvino_throughput_batch']})")
    return text


def _speedup(r):
    """A ratio's batch-1 speed-up; for int8 the runtime compared and the others' ratios."""
    text = f"{r['speedup']:.2f}x"
    if "runtime" in r:
        text += " (" + ", ".join(
            [RUNTIME_NAMES.get(r["runtime"], r["runtime"])]
            + [f"{RUNTIME_NAMES.get(k, k)} {v:.2f}x"
               for k, v in r.get("runtime_speedup", {}).items() if k != r["runtime"]]) + ")"
    return text


def _ratio_cells(r):
    """One row of the ratios table (RATIO_HEADER)."""
    mem = ([f"{r['memory_ratio']:.2f}", f"{r['step_growth_ratio']:.2f}"]
           if "memory_ratio" in r else ["-", "-"])
    tput = f"{r['throughput_speedup']:.2f}x" if "throughput_speedup" in r else "-"
    anchor = f"{r['torch_speedup']:.2f}x" if "torch_speedup" in r else "-"
    return [r["head"], r["encoder"], r["upsampler"], r.get("precision", "fp32"),
            _speedup(r), tput, anchor, f"{r['flops_ratio']:.2f}"] + mem


def _cpu_line(cpu):
    """The CPU, the peak's clock and the peaks, from the current table (`peak_gflops`):
    a file keeps the measurements, not a peak worked out with an older table."""
    mhz, source = peak_clock(cpu)
    peaks = ", ".join(f"{p} {v:.0f}" for p in BENCHMARK_PRECISIONS
                      if (v := peak_gflops(p, cpu)))
    line = (f"CPU: {cpu['model']}, {cpu['cores']} cores at {mhz or 0:.0f} MHz "
            f"({source}); ISA: {' '.join(cpu['flags'])}.")
    if peaks:
        line += f" Peak GFLOP/s ({peak_formula(cpu)}): {peaks}."
    return line


def _with_peak(row, cpu):
    """The row with its share of `cpu`'s peak worked out again (a copy; the file is not
    changed): the measured GFLOP/s over the current table's peak."""
    if not cpu or "achieved_gflops_s" not in row:
        return row
    peak = peak_gflops(row_precision(row), cpu)
    if not peak:
        return row
    return dict(row, peak_gflops_s=peak, peak_fraction=row["achieved_gflops_s"] / peak)


def write_report(payload, out_dir, title="CPU"):
    """Writes RESULTS.md and chart.png (rewritten) from one `results.json` payload."""
    results, rat, machine = payload["results"], payload["ratios"], payload["machine"]
    cpu = payload.get("cpu")  # absent from files written before the precision axis
    lines = [f"# Benchmarks ({title})", "", f"Machine: {machine}.", ""]
    if cpu:
        lines += [_cpu_line(cpu), ""]
    lines += [_method(payload["size"], payload["train_crop"], payload["train_batch"]), ""]
    lines += _table(RESULT_HEADER, [_result_cells(_with_peak(r, cpu)) for r in results])
    lines += ["", "Ratios against the dilated output-stride-8 model (DilatedFCN) of the same "
              "head, encoder and precision (official PyTorch: the same ratio of the official "
              "code):", ""]
    lines += _table(RATIO_HEADER, [_ratio_cells(r) for r in rat])
    with atomic_path(os.path.join(out_dir, "RESULTS.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    draw_chart(results, os.path.join(out_dir, "chart.png"))


# One file per machine kind ------------------------------------------------------------

def _key(row):
    return (row["head"], row["encoder"], row["upsampler"], row.get("precision", "fp32"))


def _ratios_within_runs(rows):
    """The ratios to the dilated model, each between two rows of one run."""
    out = []
    for run in sorted({r["run"] for r in rows}):
        for item in ratios([r for r in rows if r["run"] == run]):
            out.append(dict(item, run=run))
    return out


def add_run(results_path, machine_path, command, date=None, kind=None, notes=()):
    """Adds the rows of a `keras-fastfcn benchmark` results.json to a machine kind's file
    (created if missing) as a new run; each row replaces the row of the same head,
    encoder, upsampler and precision and keeps the older runs' dates and commands
    (`"superseded"`, summed up in `"replaced"`). Refuses another CPU
    (model or ISA flags) or other sizes. Returns the file's payload.

    Example:
    >>> add_run("/tmp/run/results.json", "benchmarks/results/xeon_amx.json",
    ...         "keras-fastfcn benchmark --heads encnet --precision int8")
    """
    with open(results_path, encoding="utf-8") as f:
        new = upgrade_results(json.load(f))
    settings = {k: new[k] for k in ("size", "train_crop", "train_batch")}
    cpu = new.get("cpu")
    if os.path.exists(machine_path):
        with open(machine_path, encoding="utf-8") as f:
            target = upgrade_results(json.load(f))
        old_cpu = target.get("cpu")
        if cpu and old_cpu and (cpu["model"], cpu["flags"]) != (old_cpu["model"],
                                                                old_cpu["flags"]):
            raise SystemExit(f"{results_path} was measured on {cpu['model']} "
                             f"({' '.join(cpu['flags'])}), {machine_path} holds "
                             f"{old_cpu['model']} ({' '.join(old_cpu['flags'])}): another "
                             "machine kind, another file")
        if settings != {k: target[k] for k in settings}:
            raise SystemExit(f"{results_path} has {settings}, {machine_path} "
                             f"{ {k: target[k] for k in settings} }: not comparable")
    else:
        if not kind and not cpu:
            raise SystemExit(f"{results_path} records no CPU: name the machine kind (--kind)")
        target = dict(kind=kind or cpu["model"], **settings, runs=[], results=[], notes=[])
    if kind:
        target["kind"] = kind
    target["machine"] = new["machine"]
    if cpu:
        target["cpu"] = cpu
    run = max([r["id"] for r in target["runs"]], default=0) + 1
    date = date or datetime.date.today().isoformat()
    runs = {r["id"]: r for r in target["runs"]}
    rows = {_key(r): r for r in target["results"]}
    for row in new["results"]:
        key = _key(row)
        old = rows.get(key)
        if "error" in row and old is not None and "error" not in old:
            target["notes"].append(f"{' '.join(key)}: failed in `{command}` ({date}; "
                                   f"{row['error'][:80]}); the row of run {old['run']} "
                                   "stays.")
            continue
        superseded = []
        if old is not None:
            superseded = old.get("superseded", []) + [
                {"date": runs[old["run"]]["date"], "command": runs[old["run"]]["command"]}]
        rows[key] = dict(row, precision=key[3], run=run, superseded=superseded)
    target["notes"] += list(notes)
    target["results"] = list(rows.values())
    used = {r["run"] for r in target["results"]}
    target["runs"] = [r for r in target["runs"] if r["id"] in used]
    target["runs"].append({"id": run, "date": date, "command": command})
    target["replaced"] = _replaced_notes(target["results"])
    target["ratios"] = _ratios_within_runs(target["results"])
    os.makedirs(os.path.dirname(os.path.abspath(machine_path)), exist_ok=True)
    with atomic_path(machine_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(target, f, indent=2)
            f.write("\n")
    return target


def _replaced_notes(rows):
    """Per kept run, which rows it measured again and the older runs' commands."""
    groups = {}
    for r in rows:
        if r.get("superseded"):
            earlier = tuple((s["date"], s["command"]) for s in r["superseded"])
            groups.setdefault((r["run"], earlier), []).append(r)
    out = []
    for (run, earlier), items in groups.items():
        names = ", ".join(" ".join(_key(r)) for r in items)
        out.append(f"{names}: run {run} is the newest of {len(earlier) + 1} runs that "
                   "measured them; also measured, oldest first, by "
                   + "; ".join(f"`{c}` ({d})" for d, c in earlier) + ".")
    return out


def _ordered(rows):
    """Rows by head and encoder (first seen first), precision, then upsampler."""
    precisions = ["fp32", "bf16", "fp16", "int8"]

    def rank(items, item):
        return items.index(item) if item in items else len(items)

    models = list(dict.fromkeys((r["head"], r["encoder"]) for r in rows))
    upsamplers = list(dict.fromkeys(r["upsampler"] for r in rows))
    return sorted(rows, key=lambda r: (models.index((r["head"], r["encoder"])),
                                       rank(precisions, r.get("precision", "fp32")),
                                       rank(upsamplers, r["upsampler"])))


def _dates(payload):
    dates = sorted(r["date"] for r in payload["runs"])
    return dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"


def _machine_section(payload):
    cpu = payload.get("cpu")
    lines = [f"## {payload['kind']} ({_dates(payload)})", ""]
    lines += [_cpu_line(cpu) if cpu else "CPU: not recorded (files of that date had no "
              "`\"cpu\"`).", "", f"Machine: {payload['machine']}. Images "
              f"{payload['size']}x{payload['size']}; training memory at crop "
              f"{payload['train_crop']}, batch {payload['train_batch']}.", "",
              "Runs (column run):", ""]
    lines += [f"- {r['id']}, {r['date']}: `{r['command']}`" for r in payload["runs"]]
    by_key = {_key(r): r for r in payload["ratios"]}
    rows = []
    for r in _ordered(payload["results"]):
        ratio = by_key.get(_key(r))
        vs = "-"
        if ratio is not None and ratio["run"] == r["run"]:
            vs = _speedup(ratio)
            if "throughput_speedup" in ratio:
                vs += f"; batch {r['throughput_batch']}: {ratio['throughput_speedup']:.2f}x"
        rows.append(_result_cells(_with_peak(r, cpu)) + [vs, str(r["run"])])
    lines += ["", *_table(RESULT_HEADER + ["vs OS8 (same run)", "run"], rows)]
    if payload.get("notes"):  # the older runs of each row ("replaced") stay in the file
        lines += ["", "Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    return lines + [""]


def write_machines(payloads, out_dir, chart=None):
    """Writes RESULTS.md (one section per machine kind, newest first) and chart.png (the
    fp32 rows of `chart`, default: the payload with the most rows)."""
    payloads = sorted(payloads, key=lambda p: max(r["date"] for r in p["runs"]),
                      reverse=True)
    chart = chart or max(payloads, key=lambda p: sum("error" not in r for r in p["results"]))
    chart_rows = [r for r in chart["results"] if r.get("precision", "fp32") == "fp32"]
    sizes = {(p["size"], p["train_crop"], p["train_batch"]) for p in payloads}
    size, crop, batch = sorted(sizes)[0] if len(sizes) == 1 else ("N", "C", "B")
    lines = ["# Benchmarks (CPU)", "",
             "One section per machine kind, rendered by `python benchmarks/report.py "
             "benchmarks/results/*.json` from one file per machine kind in "
             "`benchmarks/results/`. Each row comes from the newest run that measured "
             "its configuration and precision; the run column names its date and "
             "command. Compare latencies within one machine kind; the ratios to the "
             "dilated model (vs OS8) pair rows of one run.", "",
             _method(size, crop, batch), "",
             f"`chart.png`: FPS and training-step peak RSS of the fp32 rows of "
             f"\"{chart['kind']}\".", ""]
    for payload in payloads:
        lines += _machine_section(payload)
    with atomic_path(os.path.join(out_dir, "RESULTS.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines).rstrip("\n") + "\n")
    draw_chart(chart_rows, os.path.join(out_dir, "chart.png"))


def _graph_cell(row):
    """What ran the row: XLA off / parts (and frozen) for Keras rows; for int8 rows the
    faster runtime, with the other one's latency."""
    if "runtime" in row:
        others = runtime_notes(row, leave_out=(row["runtime"],), error_chars=60)
        return RUNTIME_NAMES.get(row["runtime"], row["runtime"]) + (
            f" ({', '.join(others)})" if others else "")
    return f"{'parts' if row.get('xla') else 'off'}{', frozen' if row.get('frozen') else ''}"


def draw_chart(results, path):
    """Bar chart of FPS and training memory per configuration (PIL, no plotting dependency)."""
    from PIL import Image, ImageDraw

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
        key = f"{r['head']} {r['encoder']}"
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*",
                        help="the machine kinds' files (benchmarks/results/*.json), or one "
                             "results.json of keras-fastfcn benchmark")
    parser.add_argument("--output", default=None,
                        help="folder (default: above the machine files' folder; for one "
                             "results.json its folder)")
    parser.add_argument("--title", default="CPU", help="title of a single results.json")
    parser.add_argument("--chart", default=None,
                        help="the machine file whose fp32 rows chart.png shows "
                             "(default: the one with the most rows)")
    parser.add_argument("--add", metavar="RESULTS_JSON",
                        help="add this run's rows to the machine file --to, then stop")
    parser.add_argument("--to", metavar="MACHINE_JSON")
    parser.add_argument("--command", help="the command that wrote RESULTS_JSON")
    parser.add_argument("--date", help="of the run (default: today)")
    parser.add_argument("--kind", help="machine kind, for a new file (default: CPU model)")
    parser.add_argument("--note", action="append", default=[], help="a note for the file")
    args = parser.parse_args(argv)
    if args.add:
        if not (args.to and args.command):
            parser.error("--add needs --to and --command")
        payload = add_run(args.add, args.to, args.command, args.date, args.kind, args.note)
        print(f"{args.to}: run {payload['runs'][-1]['id']} added")
        return 0
    if not args.results:
        parser.error("give the results files")
    payloads = []
    for path in args.results:
        with open(path, encoding="utf-8") as f:
            payloads.append(upgrade_results(json.load(f)))
    first = os.path.dirname(os.path.abspath(args.results[0]))
    if len(payloads) == 1 and "runs" not in payloads[0]:
        out_dir = args.output or first
        if not args.output and os.path.isdir(os.path.join(out_dir, "results")):
            parser.error(f"{out_dir}/RESULTS.md is rendered from {out_dir}/results/*.json: "
                         f"add this run with --add {args.results[0]} --to "
                         f"{out_dir}/results/KIND.json --command '...', or give --output")
        write_report(payloads[0], out_dir, title=args.title)
    else:
        plain = [p for p, d in zip(args.results, payloads) if "runs" not in d]
        if plain:
            parser.error(f"{', '.join(plain)}: a plain results.json renders alone; add it "
                         "to its machine kind's file with --add")
        out_dir = args.output or os.path.dirname(first)
        chart = None
        if args.chart:
            chart = payloads[[os.path.abspath(p) for p in args.results].index(
                os.path.abspath(args.chart))]
        write_machines(payloads, out_dir, chart)
    print(f"Wrote {os.path.join(out_dir, 'RESULTS.md')} and chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
