#!/usr/bin/env python
"""The JPU's dilated depthwise 3x3 conv on CPU: `keras.ops.depthwise_conv` against
`depthwise_shifted` (nine shifted multiply-adds), alone and in a whole JPU.

Times, on the backend of `KERAS_BACKEND` (jax or tensorflow), each form compiled
(`jax.jit`, `tf.function`), inference and a training step (forward + gradients),
interleaved (one call of each in turn, so that other load on a shared machine hits
all of them alike) and reports medians in ms:

    KERAS_BACKEND=jax python benchmarks/depthwise_jax.py
    KERAS_BACKEND=tensorflow python benchmarks/depthwise_jax.py

Op alone: `(1, 64, 64, 1536)` (the JPU's 3 x 512 channels at stride 8 of a 512 px
image), dilations 1, 2, 4, 8. JPU: width 512, C3/C4/C5 of 512/1024/2048 channels at
64/32/16 px, batch 1, `SHIFTED_DEPTHWISE` False (the conv) against True.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_fastfcn.layers import conv as conv_module  # noqa: E402
from keras_fastfcn.layers.conv import depthwise_shifted  # noqa: E402
from keras_fastfcn.layers.jpu import JPU  # noqa: E402

BACKEND = keras.backend.backend()


def _compile(fn):
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=False)
    raise SystemExit(f"KERAS_BACKEND={BACKEND}: this script times jax and tensorflow")


def _block(out):
    leaves = out if isinstance(out, (list, tuple)) else [out]
    for leaf in leaves:
        if isinstance(leaf, (list, tuple)):
            _block(leaf)
        elif hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        else:
            keras.ops.convert_to_numpy(leaf)
    return out


def _grad(fn):
    """`fn`'s loss (sum of squares) and its gradients w.r.t. its arguments."""
    if BACKEND == "jax":
        import jax

        return jax.value_and_grad(lambda *a: keras.ops.sum(keras.ops.square(fn(*a))),
                                  argnums=tuple(range(2)))
    import tensorflow as tf

    def step(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            loss = tf.reduce_sum(tf.square(fn(*args)))
        return loss, tape.gradient(loss, args)
    return step


def interleaved(calls, repeats, warmup=2):
    """Median seconds per call of each of `calls` (name -> (fn, args)), one call of
    each in turn `repeats` times."""
    for fn, args in calls.values():
        for _ in range(warmup):
            _block(fn(*args))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            start = time.perf_counter()
            _block(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def op_alone(repeats, shape=(1, 64, 64, 1536)):
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.standard_normal(shape, dtype=np.float32))
    k = keras.ops.convert_to_tensor(rng.standard_normal((3, 3, shape[-1], 1),
                                                        dtype=np.float32) / 3)
    print(f"depthwise 3x3 on {shape}, {BACKEND}: median ms over {repeats} interleaved calls")
    for rate in (1, 2, 4, 8):
        def conv(x, k, rate=rate):
            return keras.ops.depthwise_conv(x, k, 1, "same", dilation_rate=rate)

        def shifted(x, k, rate=rate):
            return depthwise_shifted(x, k, rate)

        calls = {"conv": (_compile(conv), (x, k)), "shifted": (_compile(shifted), (x, k)),
                 "conv train": (_compile(_grad(conv)), (x, k)),
                 "shifted train": (_compile(_grad(shifted)), (x, k))}
        t = interleaved(calls, repeats)
        print(f"  dilation {rate}: inference conv {1e3 * t['conv']:.1f}, shifted "
              f"{1e3 * t['shifted']:.1f}; forward+gradients conv "
              f"{1e3 * t['conv train']:.1f}, shifted {1e3 * t['shifted train']:.1f}")


def whole_jpu(repeats, size=64, width=512):
    rng = np.random.default_rng(0)
    feats = [keras.ops.convert_to_tensor(rng.standard_normal((1, size >> i, size >> i, c),
                                                             dtype=np.float32))
             for i, c in enumerate((512, 1024, 2048))]
    layer = JPU(width=width)
    layer(feats)
    tv = [v.value for v in layer.trainable_variables]
    ntv = [v.value for v in layer.non_trainable_variables]

    def make(setting, training):
        def forward(tv, ntv, feats):
            conv_module.SHIFTED_DEPTHWISE = setting  # read while tracing
            try:
                out, _ = layer.stateless_call(tv, ntv, feats, training=training)
            finally:
                conv_module.SHIFTED_DEPTHWISE = default
            return out
        if not training:
            return _compile(forward)

        def loss(tv, feats):
            return forward(tv, ntv, feats)
        return _compile(_grad(loss))

    default = conv_module.SHIFTED_DEPTHWISE
    calls = {}
    for setting in (False, True):
        calls[f"inference {setting}"] = (make(setting, False), (tv, ntv, feats))
        calls[f"train {setting}"] = (make(setting, True), (tv, feats))
    t = interleaved(calls, repeats)
    print(f"JPU width {width}, C3 {size}x{size} (batch 1), {BACKEND}, median ms over "
          f"{repeats} interleaved calls (remat on, the default):")
    print(f"  inference: conv {1e3 * t['inference False']:.1f}, shifted "
          f"{1e3 * t['inference True']:.1f}")
    print(f"  forward+gradients (training=True): conv {1e3 * t['train False']:.1f}, "
          f"shifted {1e3 * t['train True']:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--jpu-repeats", type=int, default=7)
    parser.add_argument("--skip-op", action="store_true", help="time the JPU only")
    parser.add_argument("--skip-jpu", action="store_true", help="time the op only")
    args = parser.parse_args(argv)
    model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in model.splitlines()
                  if line.startswith("Model name")), "?")
    print(f"CPU: {model}, {len(os.sched_getaffinity(0))} cores; Keras {keras.__version__}")
    if not args.skip_op:
        op_alone(args.repeats)
    if not args.skip_jpu:
        whole_jpu(args.jpu_repeats)


if __name__ == "__main__":
    main()
