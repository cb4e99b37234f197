"""`keras-fastfcn` command line: one subcommand per module.

Errors a user can fix (bad paths, options, data) print one line and exit 1; set
`KERAS_FASTFCN_DEBUG=1` to get the traceback instead.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported, so `--help` is instant and a
command does not pay for the others' imports.
"""

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": ("keras_fastfcn.demo", "train, evaluate, predict and export on the generated demo dataset"),
    "train": ("keras_fastfcn.training", "train a model from a YAML config"),
    "evaluate": ("keras_fastfcn.evaluate", "pixAcc / mIoU of a saved model on a dataset"),
    "predict": ("keras_fastfcn.predict", "class maps, colour masks and overlays for images"),
    "export": ("keras_fastfcn.export", "SavedModel (TF Serving), ONNX or TFLite export"),
    "benchmark": ("keras_fastfcn.benchmark", "speed, FLOPs and memory: JPU vs dilated"),
    "convert": ("keras_fastfcn.convert", "official PyTorch FastFCN checkpoint -> .keras"),
}


class CommandError(Exception):
    """An error the user can fix; printed without a traceback."""


def _usage():
    lines = ["usage: keras-fastfcn COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `keras-fastfcn COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"keras-fastfcn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"keras-fastfcn {name}",
                                     description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from keras_fastfcn.data.errors import translate_errors

    try:
        # Data errors raised inside tf.data come out as one line naming the file.
        with translate_errors():
            return int(module.run(args) or 0)
    except (CommandError, ValueError, FileNotFoundError, NotADirectoryError,
            FileExistsError, PermissionError) as err:
        if os.environ.get("KERAS_FASTFCN_DEBUG"):
            raise
        print(f"keras-fastfcn {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"keras-fastfcn {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
