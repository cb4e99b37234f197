#!/usr/bin/env python
"""GPU benchmark: our models under Keras' JAX backend vs the official PyTorch structure.

Each configuration runs in its own process (clean GPU memory statistics):
- JAX (Keras 3, `KERAS_BACKEND=jax`): one training step at crop 480, batch 2
  (main + 0.2 aux + 0.2 SE losses, SGD), its peak GPU memory
  (`memory_stats()["peak_bytes_in_use"]`, preallocation off) and time; then
  inference of the logits-only model on one 512x512 image under `jax.jit`, timed
  with the official `test_fps_params.py` protocol (10 warm-up runs, then 10 rounds of
  10 runs; FPS = mean over rounds).
- PyTorch: `keras_fastfcn/benchmark/torch_reference.py`, the official module structure
  (deep-stem ResNet), eval mode, `torch.no_grad`, same protocol, same image size;
  peak memory of a training step with `torch.cuda.max_memory_allocated`. Its
  Encoding layer uses broadcasting instead of the official CUDA kernel.

Batch and precision axis (`--batches 1,16 --precisions fp32,bf16 --configs batch`):
inference images/s of every batch size at fp32 and bf16 (Keras `mixed_bfloat16`
policy; PyTorch `torch.autocast("cuda", torch.bfloat16)`), for JPU and dilated OS8 on
the official deep-stem ResNet-50, and the training step at `--batch` (crop `--crop`).

Usage (on the GPU machine, with keras/namex/optree importable):
    python benchmarks/gpu_jax.py --out results.jsonl --budget 480
    # peak memory without XLA's autotuning workspaces (see benchmarks/GPU.md):
    GPU_BENCH_MEMORY_ONLY=1 XLA_FLAGS=--xla_gpu_autotune_level=0 \
        python benchmarks/gpu_jax.py --out memory.jsonl --budget 300
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (framework, head, backbone, upsampler); most important first: the run stops
# launching new configurations when the time budget is spent.
CONFIGS = [
    ("jax", "encnet", "resnet50", "jpu"), ("jax", "encnet", "resnet50", "os8"),
    ("torch", "encnet", "resnet50s", "jpu"), ("torch", "encnet", "resnet50s", "os8"),
    ("jax", "encnet", "resnet101", "jpu"), ("jax", "encnet", "resnet101", "os8"),
    ("jax", "encnet", "resnet50s", "jpu"), ("jax", "encnet", "resnet50s", "os8"),
    ("torch", "encnet", "resnet101s", "jpu"), ("torch", "encnet", "resnet101s", "os8"),
    ("jax", "psp", "resnet50", "jpu"), ("jax", "psp", "resnet50", "os8"),
    ("jax", "deeplab", "resnet50", "jpu"), ("jax", "deeplab", "resnet50", "os8"),
    ("jax", "encnet", "resnet50", "jpu_x"), ("jax", "encnet", "resnet50", "os16"),
    ("jax", "fcn", "resnet50", "jpu"), ("jax", "fcn", "resnet50", "os8"),
]
# The batch/precision table (benchmarks/GPU.md): the official backbone in both frameworks.
BATCH_CONFIGS = [
    ("torch", "encnet", "resnet50s", "jpu"), ("torch", "encnet", "resnet50s", "os8"),
    ("jax", "encnet", "resnet50s", "jpu"), ("jax", "encnet", "resnet50s", "os8"),
    ("jax", "encnet", "resnet50", "jpu"), ("jax", "encnet", "resnet50", "os8"),
]
# Memory-only runs turn XLA's convolution autotuning off: its trial workspaces
# otherwise set `peak_bytes_in_use` (about 33 GB on an H200 whatever the model).
MEMORY_ONLY = os.environ.get("GPU_BENCH_MEMORY_ONLY") == "1"
UPSAMPLERS = {"jpu": ("jpu", None), "jpu_x": ("jpu_x", None), "os8": (None, 8),
              "os16": (None, 16), "os32": (None, 32)}


def _fps_protocol(run_once, sync, rounds_count=10):
    for _ in range(10):
        run_once()
    sync()
    rounds = []
    for _ in range(rounds_count):
        start = time.perf_counter()
        for _ in range(10):
            run_once()
        sync()
        rounds.append(10 / (time.perf_counter() - start))
    mean = sum(rounds) / len(rounds)
    return mean, (sum((r - mean) ** 2 for r in rounds) / len(rounds)) ** 0.5


def _axis(result, precision, batch, calls_per_s, std):
    """One inference cell: calls/s of a batch -> latency and images/s."""
    result[f"{precision}_b{batch}"] = {"latency_ms": 1000 / calls_per_s,
                                       "images_per_s": calls_per_s * batch,
                                       "std_calls_per_s": std}


BATCHES = (1,)
PRECISIONS = ("fp32",)


def run_jax(head, backbone, upsampler, size, crop, batch, classes=59):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    sys.path.insert(0, REPO)
    import keras_fastfcn as kf

    up, stride = UPSAMPLERS[upsampler]
    result = {}
    # --- training step
    model = kf.FastFCN(num_classes=classes, head=head, backbone=backbone, upsampler=up,
                       output_stride=stride, aux=True, se_loss=head == "encnet")
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32"))
    y = jnp.asarray(rng.randint(0, classes, (batch, crop, crop)))
    presence = jnp.ones((batch, classes), "float32")
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def loss_fn(tv, ntv, x, y):
        out, ntv = model.stateless_call(tv, ntv, x, training=True)
        ce = keras.ops.sparse_categorical_crossentropy
        loss = ce(y, out["logits"], from_logits=True).mean()
        loss = loss + 0.2 * ce(y, out["aux_logits"], from_logits=True).mean()
        if "se_logits" in out:
            loss = loss + 0.2 * keras.ops.binary_crossentropy(
                presence, out["se_logits"], from_logits=True).mean()
        return loss, ntv

    @jax.jit
    def train_step(tv, ntv, x, y):
        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, y)
        tv = [w - 0.001 * g for w, g in zip(tv, grads)]
        return loss, tv, ntv

    start = time.perf_counter()
    loss, tv2, ntv2 = train_step(tv, ntv, x, y)
    loss.block_until_ready()
    result["train_compile_s"] = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss, tv2, ntv2 = train_step(tv, ntv, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    result["train_step_s"] = min(times)
    stats = jax.devices()[0].memory_stats() or {}
    result["train_peak_gb"] = stats.get("peak_bytes_in_use", 0) / 2**30
    if MEMORY_ONLY:
        return result
    del model, tv, ntv, tv2, ntv2
    # --- inference, every precision x batch
    for precision in PRECISIONS:
        keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bf16" else "float32")
        model = kf.FastFCN(num_classes=classes, head=head, backbone=backbone, upsampler=up,
                           output_stride=stride)
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        for b in BATCHES:
            image = jnp.asarray(rng.uniform(0, 255, (b, size, size, 3)).astype("float32"))
            out = [None]

            def once():
                out[0] = forward(tv, ntv, image)

            start = time.perf_counter()
            once()
            out[0].block_until_ready()
            result[f"infer_compile_s_{precision}_b{b}"] = time.perf_counter() - start
            fps, std = _fps_protocol(once, lambda: out[0].block_until_ready(),
                                     rounds_count=10 if b == 1 else 3)
            _axis(result, precision, b, fps, std)
            if precision == "fp32" and b == 1:
                result.update(fps=fps, fps_std=std, latency_ms=1000 / fps)
        result["params"] = int(sum(np.prod(v.shape) for v in model.weights))
        del model, tv, ntv
    keras.config.set_dtype_policy("float32")
    return result


def run_torch(head, backbone, upsampler, size, crop, batch, classes=59):
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from keras_fastfcn.benchmark.torch_reference import DEPTHS, SegmentationModel

    torch.backends.cudnn.benchmark = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: to try the script here
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    jpu = {"jpu": "JPU", "jpu_x": "JPU_X", "os8": None}[upsampler]
    result = {}
    model = SegmentationModel(head, classes, DEPTHS[backbone], jpu=jpu, aux=True,
                              se_loss=head == "encnet").to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    x = torch.rand(batch, 3, crop, crop, device=dev)
    y = torch.randint(0, classes, (batch, crop, crop), device=dev)
    presence = torch.ones(batch, classes, device=dev)
    def step():
        outs = model(x)
        loss = torch.nn.functional.cross_entropy(outs[0], y)
        loss = loss + 0.2 * torch.nn.functional.cross_entropy(outs[-1], y)
        if head == "encnet":
            loss = loss + 0.2 * torch.nn.functional.binary_cross_entropy_with_logits(
                outs[1], presence)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    sync()
    if dev == "cuda":  # after the first step: cudnn.benchmark's trial workspaces excluded
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    result["train_step_s"] = min(times)
    result["train_peak_gb"] = (torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda"
                               else 0.0)
    if MEMORY_ONLY:
        return result
    del model, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    model = SegmentationModel(head, classes, DEPTHS[backbone], jpu=jpu, aux=False,
                              se_loss=head == "encnet").to(dev).eval()
    for precision in PRECISIONS:
        for b in BATCHES:
            image = torch.rand(b, 3, size, size, device=dev)
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16,
                                                 enabled=precision == "bf16"):
                fps, std = _fps_protocol(lambda: model(image), sync,
                                         rounds_count=10 if b == 1 else 3)
            _axis(result, precision, b, fps, std)
            if precision == "fp32" and b == 1:
                result.update(fps=fps, fps_std=std, latency_ms=1000 / fps)
    result["params"] = int(sum(p.numel() for p in model.parameters()))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=480, help="seconds for all configs")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--crop", type=int, default=480)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--one", nargs=4, metavar=("FRAMEWORK", "HEAD", "BACKBONE", "UPSAMPLER"))
    parser.add_argument("--limit", type=int, default=len(CONFIGS))
    parser.add_argument("--batches", default="1", help="inference batch sizes, e.g. 1,16")
    parser.add_argument("--precisions", default="fp32", help="fp32 and/or bf16")
    parser.add_argument("--configs", choices=("all", "batch"), default="all",
                        help="all: the heads x backbones list; batch: BATCH_CONFIGS")
    args = parser.parse_args()
    global BATCHES, PRECISIONS
    BATCHES = tuple(int(b) for b in args.batches.split(","))
    PRECISIONS = tuple(p.strip() for p in args.precisions.split(","))
    if set(PRECISIONS) - {"fp32", "bf16"}:
        parser.error(f"--precisions: fp32 and/or bf16, got {args.precisions}")
    if args.one:
        framework, head, backbone, upsampler = args.one
        fn = run_jax if framework == "jax" else run_torch
        result = fn(head, backbone, upsampler, args.size, args.crop, args.batch)
        print("RESULT " + json.dumps(result), flush=True)
        return
    start = time.time()
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    configs = BATCH_CONFIGS if args.configs == "batch" else CONFIGS
    for config in configs[:args.limit]:
        left = args.budget - (time.time() - start)
        if left < 30:
            print(f"budget spent, skipping {config}", flush=True)
            continue
        cmd = [sys.executable, __file__, "--out", args.out, "--size", str(args.size),
               "--crop", str(args.crop), "--batch", str(args.batch), "--batches", args.batches,
               "--precisions", args.precisions, "--one", *config]
        row = dict(zip(("framework", "head", "backbone", "upsampler"), config),
                   train_batch=args.batch, crop=args.crop, size=args.size)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=left)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if lines:
                row.update(json.loads(lines[-1][7:]))
            else:
                row["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            row["error"] = "timeout"
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
