#!/usr/bin/env python
"""RESULTS.md and chart.png from the `results.json` of `keras-fastfcn benchmark`.

Usage:
    python benchmarks/report.py benchmarks/results.json [--title CPU] [--output benchmarks]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_fastfcn.benchmark import RUNTIME_NAMES, runtime_notes  # noqa: E402
from keras_fastfcn.fileio import atomic_path  # noqa: E402


def write_report(payload, out_dir, title="CPU"):
    """Writes RESULTS.md and chart.png (rewritten) from a `results.json` payload."""
    results, rat, machine = payload["results"], payload["ratios"], payload["machine"]
    size, crop, batch = payload["size"], payload["train_crop"], payload["train_batch"]
    cpu = payload.get("cpu")  # absent from files written before the precision axis
    lines = [f"# Benchmarks ({title})", "", f"Machine: {machine}.", ""]
    if cpu:
        peaks = ", ".join(f"{p} {v:.0f}" for p, v in cpu["peak_gflops_s"].items() if v)
        lines += [f"CPU: {cpu['model']}, {cpu['cores']} cores at {cpu['mhz'] or 0:.0f} MHz "
                  f"({cpu['mhz_source']}); ISA: {' '.join(cpu['flags'])}. Peak GFLOP/s "
                  f"({cpu['peak_formula']}): {peaks}.", ""]
    lines += [f"Inference: one {size}x{size} image, batch 1, logits-only model, folded BN, "
             "median of repeated runs after warm-up, faster of a plain `tf.function` and one with "
             "XLA for every part but the JPU (column XLA); bf16 / fp16: the model rebuilt under "
             "Keras mixed precision; int8: the static int8 TFLite / ONNX exports, timed in "
             "their runtime (column XLA / runtime: the faster, the other's latency in "
             "brackets), class map out. Throughput: images/s at the batch given. GFLOP/s: FLOPs / "
             "batch-1 latency, and its share of the CPU's peak for the precision. Official "
             "PyTorch: the official module structure timed in the same run (same size, batch 1, "
             "same protocol; bf16 under `torch.autocast`). "
             f"Training memory: peak RSS of a child process running one step at crop {crop}, "
             f"batch {batch} (main + aux + SE losses), and its growth during the step.", "",
             "| head | backbone | upsampler | precision | latency (s) | FPS | throughput (img/s) "
             "| GFLOPs | GFLOP/s (% peak) | official PyTorch (s) | params backbone / "
             "upsampler / head (M) | train peak RSS (GB) | step growth (GB) | XLA / runtime |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        precision = r.get("precision", "fp32")
        if "error" in r:
            lines.append(f"| {r['head']} | {r['backbone']} | {r['upsampler']} | {precision} | "
                         f"error: {r['error'][:80]} | | | | | | | | | |")
            continue
        p = r["params"]
        mem = (f"{r['train_peak_rss_gb']:.2f} | {r['train_step_growth_gb']:.2f}"
               if "train_peak_rss_gb" in r else "- | -")
        throughput = (f"{r['throughput_ips']:.2f} (batch {r['throughput_batch']})"
                      if "throughput_ips" in r else "-")
        achieved = "-"
        if "achieved_gflops_s" in r:
            achieved = f"{r['achieved_gflops_s']:.1f}"
            if "peak_fraction" in r:
                achieved += f" ({100 * r['peak_fraction']:.1f}%)"
        anchor = (f"{r['torch_latency_s']:.3f} ({r['speedup_vs_torch']:.2f}x)"
                  if "torch_latency_s" in r else "-")
        lines.append(
            f"| {r['head']} | {r['backbone']} | {r['upsampler']} | {precision} | "
            f"{r['latency_s']:.3f} | {r['fps']:.2f} | {throughput} | {r['gflops']:.0f} | "
            f"{achieved} | {anchor} | {p['backbone'] / 1e6:.1f} / "
            f"{p['upsampler'] / 1e6:.1f} / {p['head'] / 1e6:.1f} | {mem} | {_graph_cell(r)} |")
    lines += ["", "Ratios against the dilated output-stride-8 model (DilatedFCN) of the same "
              "head, backbone and precision (official PyTorch: the same ratio of the official "
              "code):", "",
              "| head | backbone | upsampler | precision | speed-up | throughput speed-up | "
              "official PyTorch speed-up | FLOPs ratio | peak RSS ratio | step growth ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rat:
        mem = (f"{r['memory_ratio']:.2f} | {r['step_growth_ratio']:.2f}"
               if "memory_ratio" in r else "- | -")
        tput = f"{r['throughput_speedup']:.2f}x" if "throughput_speedup" in r else "-"
        anchor = f"{r['torch_speedup']:.2f}x" if "torch_speedup" in r else "-"
        speedup = f"{r['speedup']:.2f}x"
        if "runtime" in r:  # int8: the ratio of one runtime, and the others' ratios
            speedup += " (" + ", ".join(
                [RUNTIME_NAMES.get(r["runtime"], r["runtime"])]
                + [f"{RUNTIME_NAMES.get(k, k)} {v:.2f}x"
                   for k, v in r.get("runtime_speedup", {}).items() if k != r["runtime"]]) + ")"
        lines.append(f"| {r['head']} | {r['backbone']} | {r['upsampler']} | "
                     f"{r.get('precision', 'fp32')} | {speedup} | {tput} | {anchor} | "
                     f"{r['flops_ratio']:.2f} | {mem} |")
    with atomic_path(os.path.join(out_dir, "RESULTS.md")) as tmp:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
    draw_chart(results, os.path.join(out_dir, "chart.png"))


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json of keras-fastfcn benchmark")
    parser.add_argument("--output", default=None, help="folder (default: the json's folder)")
    parser.add_argument("--title", default="CPU")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        payload = json.load(f)
    out_dir = args.output or os.path.dirname(os.path.abspath(args.results))
    write_report(payload, out_dir, title=args.title)
    print(f"Wrote {os.path.join(out_dir, 'RESULTS.md')} and chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
