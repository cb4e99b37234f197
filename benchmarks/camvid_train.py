#!/usr/bin/env python
"""Bounded CPU training run on CamVid; prints and records the validation mIoU.

Trains the bundled `camvid` config (EncNet + JPU, ResNet-50) at reduced resolution
from a random initialization (no ImageNet download is needed), then evaluates the
whole 360x480 validation images with the official metrics and writes
`benchmarks/CAMVID.md`. With ImageNet weights (`--set model.encoder_weights=imagenet`
on a machine with internet) the same recipe reaches far higher numbers.

Usage:
    python benchmarks/camvid_train.py [--epochs 20] [--crop 224] [--base 288] [--output runs/camvid_bench]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--base", type=int, default=288)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone-weights", default="null")
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "camvid_bench"))
    parser.add_argument("--report", default=os.path.join(REPO, "benchmarks", "CAMVID.md"))
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "keras_fastfcn", "train", "--config", "camvid",
           "--output-dir", args.output, "--epochs", str(args.epochs),
           "--set", f"model.encoder_weights={args.backbone_weights}",
           "--set", f"data.crop_size={args.crop}", "--set", f"data.base_size={args.base}",
           "--set", f"train.batch_size={args.batch}", "--set", "train.verbose=2"]
    print(" ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    minutes = (time.time() - start) / 60
    with open(os.path.join(args.output, "results.json")) as f:
        results = json.load(f)
    names = [line.strip() for line in open(os.path.join(
        REPO, os.pardir, "shared", "data", "camvid", "classes.txt")) if line.strip()]
    per_class = " | ".join(f"{n} {v:.3f}" for n, v in zip(names, results["val_IoU_per_class"]))
    text = f"""# CamVid training run (CPU)

Command: `python benchmarks/camvid_train.py --epochs {args.epochs} --crop {args.crop} --base {args.base} --batch {args.batch} --backbone-weights {args.backbone_weights}`

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores. Wall time {minutes:.1f} min
for {results['steps']} steps ({results['epochs']} epochs x {results['steps_per_epoch']} steps, batch {args.batch}).

Model: EncNet + JPU (width 512) on ResNet-50, aux + SE losses, official SGD / poly recipe,
backbone weights: {args.backbone_weights} (random init when null). Training crops {args.crop} px
from images scaled around a short side of {args.base} px (0.5-2x).

Validation (101 images, whole 360x480 images, single scale, void ignored):

| pixAcc | mIoU (official, all 11 classes) | mIoU (classes present) |
|---|---|---|
| {results['val_pixAcc']:.4f} | {results['val_mIoU']:.4f} | {results['val_mIoU_present']:.4f} |

Per-class IoU: {per_class}
"""
    with open(args.report, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
