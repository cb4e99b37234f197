"""`keras-fastfcn train`: a training run from a YAML config (`keras_fastfcn.train.run`)."""

import os
import sys

from keras_fastfcn.cli import interrupts
from keras_fastfcn.cli.common import check_output_folder, positive_int


def add_arguments(parser):
    parser.add_argument("--config", required=True,
                        help="YAML config path or bundled name (demo, camvid, ...)")
    parser.add_argument("--strategy", default="default",
                        choices=("default", "mirrored", "multiworker"),
                        help="TensorFlow: one device, tf.distribute.MirroredStrategy, or "
                             "MultiWorkerMirroredStrategy (TF_CONFIG). JAX (KERAS_BACKEND=jax): "
                             "default and mirrored both train on every local device with "
                             "keras.distribution.DataParallel")
    parser.add_argument("--cpu-devices", type=positive_int, default=None,
                        help="N (logical) CPU devices as replicas, no GPU needed: with "
                             "--strategy mirrored on TensorFlow, any strategy on JAX")
    parser.add_argument("--output-dir", default=None, help="overrides output_dir")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="overrides train.epochs")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=None,
                        help="overrides train.steps_per_epoch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=0.01 (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train from the start into an output folder that holds a "
                             "finished run, replacing its files (without it: refused; an "
                             "unfinished run there is resumed either way)")


def run(args):
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    # The config is checked (YAML, keys, types, ranges) before TensorFlow starts.
    from keras_fastfcn.train.config import load_config

    cfg = load_config(args.config, overrides)
    check_output_folder(cfg["output_dir"], "--output-dir" if args.output_dir else "output_dir")
    from keras_fastfcn import train

    strategy = train.make_strategy(args.strategy, args.cpu_devices)
    replicas = train.Replicas(strategy)
    print(f"Training {cfg['name']} on {replicas.backend} with {replicas.name} "
          f"({replicas.count} replica(s)) into {cfg['output_dir']}")
    # Stops at the next step after a Ctrl-C that TensorFlow swallowed.
    results = train.run(cfg, strategy, callbacks=[interrupts.callback()],
                        overwrite=args.overwrite)
    print(f"\nValidation ({cfg['data']['val_split']}): pixAcc {results['val_pixAcc']:.4f}  "
          f"mIoU {results['val_mIoU']:.4f} (official: mean over all classes)  "
          f"mIoU {results['val_mIoU_present']:.4f} (classes present)")
    if "model_path" in results:
        out = cfg["output_dir"]
        print(f"Final model: {results['model_path']}")
        print(f"Best model:  {os.path.join(out, 'best.keras')}")
        print(f"Results:     {os.path.join(out, 'results.json')}")
        print(f"Evaluate:    {_evaluate_command(cfg, results['model_path'])}")
        if os.path.isdir(os.path.join(out, "logs")):  # written where TensorFlow is installed
            print(f"TensorBoard: tensorboard --logdir {os.path.join(out, 'logs')}")
    sys.stdout.flush()
    return 0


def _evaluate_command(cfg, model_path):
    """The `keras-fastfcn evaluate` command that scores `model_path` as the run's
    results.json does: the same data source, options and split."""
    import json
    import shlex

    d = cfg["data"]
    words = ["keras-fastfcn", "evaluate", "--model", model_path, "--data", d["source"],
             "--split", d["val_split"]]
    for key, value in sorted(d["options"].items()):  # JSON values are YAML too
        words += ["--data-option", f"{key}={json.dumps(value)}"]
    return " ".join(shlex.quote(str(w)) for w in words)
