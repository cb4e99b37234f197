"""`keras-fastfcn` command line: one subcommand per module, argument parsing and printing only.

The work is done by the library (`keras_fastfcn.train`, `.evaluation`, `.inference`,
`.serving`, `.convert`, ...); a command parses its options, checks what it can before
any slow work, calls the library and prints. Errors a user can fix (bad paths,
options, data) print one line and exit 1; set `KERAS_FASTFCN_DEBUG=1` to get the
traceback instead.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and
`run(args) -> int` and imports Keras/TensorFlow only inside `run`; only the chosen
one is imported, so `--help` is instant.

Every command takes `--import MODULE` (repeatable): your own module, imported first,
whose registrations (a head, an encoder or upsampler, a data source, an export
format) the command then offers like the built-in ones, without an edit of the
package: `keras-fastfcn train --import my_heads --config my.yaml`.
"""

import argparse
import importlib
import os
import sys

from keras_fastfcn.cli import interrupts

COMMANDS = {
    "demo": "train, evaluate, predict and export on the generated demo dataset",
    "train": "train a model from a YAML config",
    "evaluate": "pixAcc / mIoU of a saved model on a dataset",
    "predict": "class maps, colour masks and overlays for images",
    "export": "SavedModel (TF Serving), ONNX, TFLite or OpenVINO export",
    "benchmark": "speed, FLOPs and memory: JPU vs dilated",
    "convert": "released PyTorch FastFCN checkpoint (authors' or mmsegmentation's) -> .keras",
}


# The `--import` modules, for the child processes a command starts.
PLUGINS_ENV = "KERAS_FASTFCN_IMPORTS"


class CommandError(Exception):
    """An error the user can fix; printed without a traceback."""


def import_plugins(modules):
    """Imports each of `modules` (`--import`), a `CommandError` naming one that fails.

    A module is found on `sys.path`, which holds the current folder (a `my_heads.py`
    next to where the command runs) and `PYTHONPATH`.
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise CommandError(f"--import {name}: {err}") from None
    if modules:  # child processes (the benchmark's) import them too
        os.environ[PLUGINS_ENV] = ",".join(modules)


def _usage():
    lines = ["usage: keras-fastfcn COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "Run `keras-fastfcn COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _import_tensorflow_quietly():
    """Imports TensorFlow and looks for GPUs with the process's stderr closed.

    TensorFlow's native start-up lines ("All log messages before absl::InitializeLog()",
    "Could not find cuda drivers", twice, and on a machine without a GPU driver
    "failed call to cuInit") are written straight to file descriptor 2, before
    `TF_CPP_MIN_LOG_LEVEL` takes effect; they would open the output of every command.
    Listing the GPUs here (which leaves the runtime unconfigured, so strategies can
    still set up devices) is where the last one is printed. Python errors raised
    meanwhile still show (they are printed after stderr is restored);
    `KERAS_FASTFCN_DEBUG=1` keeps everything.
    """
    if "tensorflow" in sys.modules or os.environ.get("KERAS_FASTFCN_DEBUG"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow

        tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"keras-fastfcn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"keras_fastfcn.cli.{name}")
    parser = argparse.ArgumentParser(prog=f"keras-fastfcn {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        metavar="MODULE",
                        help="import MODULE first: its registered heads, encoders, "
                             "upsamplers, data sources and export formats become "
                             "available (repeatable)")
    args = parser.parse_args(argv[1:])
    from keras_fastfcn.data.errors import translate_errors

    _import_tensorflow_quietly()
    with interrupts.recorded():
        try:
            import_plugins(args.imports)
            # Data errors raised inside tf.data come out as one line naming the file.
            with translate_errors():
                return int(module.run(args) or 0)
        except KeyboardInterrupt:
            print(f"keras-fastfcn {name}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if interrupts.received():  # what TensorFlow made of the KeyboardInterrupt
                print(f"keras-fastfcn {name}: interrupted", file=sys.stderr)
                return 130
            # OSError: missing, busy, read-only, ...
            if not isinstance(err, (CommandError, ValueError, OSError)) \
                    or os.environ.get("KERAS_FASTFCN_DEBUG"):
                raise
            print(f"keras-fastfcn {name}: error: {err}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
