"""What the memory options cost in time: training step with and without JPU remat, and
inference latency with each resize formulation (EncNet + JPU, ResNet-50, 59 classes).

Both comparisons run their variants in one process, interleaved (A, B, A, B, ...), so
that the load of a shared machine hits them alike; the spread of the repetitions is
printed with the medians.

- `train`: one SGD step (main + 0.2 aux + 0.2 SE losses) at crop 480, batch 2, through
  `model.train_on_batch`, for two models with the same weights, `remat` off and on.
- `infer`: the logits-only model on one 512x512 image, BatchNorm folded, in a
  `tf.function` (as `keras_fastfcn.benchmark.measure_speed`), with the final resize
  in its inference form (`gather`, what the models use) and in the `matmul` form.
- `benchmark`: `keras_fastfcn.benchmark.measure_speed` itself, alternately in fresh
  child processes of this checkout and of another one (`--code-root`, e.g. an export of
  the commit before these changes).

Examples:
    python benchmarks/profile_speed.py train --steps 4
    python benchmarks/profile_speed.py infer --runs 10
    python benchmarks/profile_speed.py benchmark --code-root /tmp/base --repeats 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:  # run from a checkout: use its keras_fastfcn
    sys.path.insert(0, os.path.dirname(_HERE))


def _spread(times):
    return (f"median {statistics.median(times):.3f} s (min {min(times):.3f}, "
            f"max {max(times):.3f}, n={len(times)})")


def train(steps=4, crop=480, batch=2, num_classes=59, backbone="resnet50"):
    import keras
    import numpy as np

    from keras_fastfcn import benchmark

    models = {}
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        model = benchmark._build("encnet", backbone, "jpu", num_classes)  # aux + SE heads
        model.backbone.upsampler.remat = remat
        model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), jit_compile=False)
        models[remat] = model
    models[True].set_weights(models[False].get_weights())
    rng = np.random.RandomState(0)
    x = rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
    y = rng.randint(0, num_classes, (batch, crop, crop)).astype("int32")
    times = {False: [], True: []}
    for model in models.values():
        model.train_on_batch(x, y)  # trace + warm-up
    for _ in range(steps):
        for remat, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[remat].append(time.perf_counter() - start)
    for remat in (False, True):
        print(f"train step, remat={remat}: {_spread(times[remat])}")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"remat / plain: {ratio:.3f}")
    return times


def infer(runs=10, size=512, num_classes=59, backbone="resnet50"):
    import numpy as np
    import tensorflow as tf

    from keras_fastfcn import benchmark
    from keras_fastfcn.inference.fold import fold_batchnorm

    base = benchmark._build("encnet", backbone, "jpu", num_classes)
    images = tf.constant(np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)),
                         tf.float32)
    spec = tf.TensorSpec((1, size, size, 3), tf.float32)
    fns = {}
    for method in ("gather", "matmul"):
        model = fold_batchnorm(base)
        model.get_layer("logits").method = method
        fn = tf.function(lambda x, m=model: m(x, training=False), input_signature=[spec])
        for _ in range(3):
            fn(images).numpy()
        fns[method] = fn
    times = {m: [] for m in fns}
    for _ in range(runs):
        for method, fn in fns.items():
            start = time.perf_counter()
            fn(images).numpy()
            times[method].append(time.perf_counter() - start)
    for method in fns:
        print(f"inference {size}x{size}, final resize {method}: {_spread(times[method])}")
    return times


def benchmark_children(code_root, repeats=2, backbone="resnet50", min_seconds=10.0):
    code = ("import json, sys; from keras_fastfcn import benchmark as b; "
            "print('RESULT ' + json.dumps(b.measure_speed('encnet', sys.argv[1], 'jpu', "
            "min_seconds=float(sys.argv[2]))))")
    roots = {"this": os.path.dirname(_HERE), "other": os.path.abspath(code_root)}
    results = {k: [] for k in roots}
    for _ in range(repeats):
        for name, root in roots.items():
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
            proc = subprocess.run([sys.executable, "-c", code, backbone, str(min_seconds)],
                                  capture_output=True, text=True, env=env, cwd=root)
            line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
            if not line:
                print(f"{name}: ERROR {proc.stderr.strip().splitlines()[-3:]}")
                continue
            r = json.loads(line[0][7:])
            results[name].append(r["latency_s"])
            print(f"{name} ({root}): {r['latency_s']:.3f} s (xla={r['xla']}, "
                  f"runs={r['runs']}, min {r['latency_min_s']:.3f} s)", flush=True)
    for name in roots:
        if results[name]:
            print(f"{name}: {_spread(results[name])}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("train", "infer", "benchmark"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--code-root", help="the other checkout, for `benchmark`")
    args = parser.parse_args(argv)
    if args.mode == "train":
        train(args.steps, backbone=args.backbone)
    elif args.mode == "infer":
        infer(args.runs, backbone=args.backbone)
    else:
        if not args.code_root:
            parser.error("benchmark needs --code-root")
        benchmark_children(args.code_root, args.repeats, args.backbone)


if __name__ == "__main__":
    main()
