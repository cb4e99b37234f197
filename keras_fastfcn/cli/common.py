"""Options shared by several commands, and checks that run before any slow work.

Nothing here imports Keras or TensorFlow: `--help` of every command stays instant.
"""

import argparse
import math
import os
import sys

from keras_fastfcn.precision import KERAS_PRECISIONS  # numpy only: the CLI stays quick


def _int_at_least(text, low):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text):
    """argparse type: an int >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text):
    """argparse type: an int >= 0 (0 usually turns something off)."""
    return _int_at_least(text, 0)


def scales(text):
    """argparse type: comma-separated positive numbers (`0.75,1.0,1.25`)."""
    try:
        values = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive numbers like 0.75,1.0,1.25, got {text!r}")
    return values


def max_pixels(text):
    """argparse type: a pixel count >= 1, or 0 / `none` for no limit."""
    if str(text).lower() in ("0", "none"):
        return None
    return positive_int(text)


def key_value(text):
    """argparse type: `KEY=VALUE`, the value read as YAML (`3`, `true`, `[11]`, `road`),
    as `train --set` reads it; returns `(key, value)`."""
    import yaml

    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not YAML ({err})") from None


# The inference options' values when neither a flag nor the preset sets them: the
# flags default to None, so that a flag given is told apart from one left out.
INFERENCE_DEFAULTS = {"protocol": "official", "mode": "whole", "crop_size": 480,
                      "base_size": None, "keep_ratio_fit": None}


def add_inference_arguments(parser):
    """The `--protocol/--mode/--scales/--ms/--flip/--crop-size/--base-size/
    --keep-ratio-fit/--precision/--jit-compile/--freeze` options."""
    group = parser.add_argument_group(
        "inference", "With --model PRESET (a released model's name) --protocol, --mode, "
        "--crop-size, --base-size and --keep-ratio-fit default to the protocol its reported "
        "mIoU was measured with (kf.models.list_presets()[NAME]['inference']); a flag given "
        "overrides it.")
    group.add_argument("--protocol", default=None, choices=("official", "mmseg"),
                       help="official: the FastFCN authors' evaluator (the options below); "
                            "mmseg: mmsegmentation's test, whole images resized to fit "
                            "--keep-ratio-fit, scales and flips averaged as probabilities "
                            "(default: official, or the preset's)")
    group.add_argument("--mode", default=None, choices=("whole", "slide"),
                       help="whole: the model sees each (resized) image whole; slide: the "
                            "official sliding window of --crop-size tiles, stride 2/3 crop "
                            "(default: whole, or the preset's)")
    group.add_argument("--scales", type=scales, default=None, metavar="S1,S2,...",
                       help="resize factors of --base-size, scores summed (default: 1.0)")
    group.add_argument("--ms", action="store_true",
                       help="official multi-scale test: scales 0.5,0.75,1.0,1.25,1.5,1.75 "
                            "with --flip")
    group.add_argument("--flip", action="store_true",
                       help="add horizontally flipped predictions")
    group.add_argument("--crop-size", type=positive_int, default=None, metavar="N",
                       help="window size for --mode slide (official: 480; default 480)")
    group.add_argument("--base-size", type=positive_int, default=None, metavar="N",
                       help="resize the long side to N * scale (official: 520 for Pascal "
                            "Context/ADE20K); default: each image's own size")
    group.add_argument("--keep-ratio-fit", type=positive_int, nargs=2, default=None,
                       metavar=("LONG", "SHORT"),
                       help="--protocol mmseg: resize each image, aspect kept, to fit LONG x "
                            "SHORT times the scale (mmsegmentation: 2048 1024 for Cityscapes, "
                            "2048 512 for ADE20K); default: each image's own size")
    group.add_argument("--precision", default="fp32", choices=KERAS_PRECISIONS,
                       help="compute precision: bf16/fp16 rebuild the model under Keras "
                            "mixed precision with the same weights (fast where the CPU has "
                            "AVX512-BF16/AMX or on GPUs); int8 is an export option "
                            "(keras-fastfcn export --precision int8; evaluate and predict take "
                            "the .onnx/.tflite file) (default fp32)")
    group.add_argument("--jit-compile", nargs="?", const="on", default="off",
                       choices=("off", "on", "parts"),
                       help="XLA-compile the model forward: on (the whole forward; may help "
                            "--mode slide on GPU), parts (backbone and head, not the JPU: "
                            "the fastest on CPU for the psp and deeplab heads); default off")
    group.add_argument("--freeze", action="store_true",
                       help="TensorFlow: hold the weights as constants of the graph of the "
                            "first repeated image size: faster per image (bf16 EncNet R50: "
                            "about 1.6x on an AMX Xeon) after about 8 s and 3 GB more; "
                            "for hundreds of images of one size")
    return group


def inference_flags_given(args):
    """The `add_inference_arguments` flags that `args` sets to other than their
    default, e.g. `["--flip", "--precision"]` (defaults read from the parser itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_inference_arguments(parser)
    return ["--" + dest.replace("_", "-") for dest, default in vars(parser.parse_args([])).items()
            if getattr(args, dest, default) != default]


def released_preset(model):
    """`--model`'s name if it names a released model (`kf.models.list_presets()`) and
    no file or folder of that name exists, else None."""
    if not model or os.path.exists(model):
        return None
    from keras_fastfcn.models import list_presets

    return model if model in list_presets() else None


def check_model_arg(model):
    """Fails early (before the data or the slow model load) unless `--model` is a model
    file, an export or a released model's name."""
    if os.path.exists(model):
        return check_model_file(model)
    if released_preset(model):
        return None
    import difflib

    from keras_fastfcn.models import list_presets

    close = difflib.get_close_matches(model, list(list_presets()), n=1)
    hint = (f"did you mean the released model {close[0]}?" if close else
            "nor the name of a released model (kf.models.list_presets())")
    raise FileNotFoundError(f"Model file not found: {model}; {hint}")


def inference_options(args):
    """The `Predictor` size and protocol options of parsed `add_inference_arguments`
    flags: `{protocol, mode, crop_size, base_size, keep_ratio_fit}`.

    A flag given wins; else, for `--model PRESET`, the preset's protocol
    (`list_presets()[PRESET]["inference"]`: mmsegmentation's presets `--protocol mmseg
    --keep-ratio-fit 2048 1024` (Cityscapes) or `2048 512` (ADE20K), the authors'
    `--mode slide --base-size 520 --crop-size 480`); else `INFERENCE_DEFAULTS`. A
    `--protocol` other than the preset's drops all of the preset's options. Raises a
    ValueError naming the flags that do not belong to the protocol.
    """
    name = released_preset(getattr(args, "model", None))
    preset = {}
    if name:
        from keras_fastfcn.models import list_presets

        preset = dict(list_presets()[name]["inference"])
    given = {key: getattr(args, key, None) for key in INFERENCE_DEFAULTS}
    if given["keep_ratio_fit"] is not None:
        given["keep_ratio_fit"] = tuple(given["keep_ratio_fit"])
    if given["protocol"] and given["protocol"] != preset.get("protocol", "official"):
        preset = {}
    options = {key: value if value is not None else preset.get(key, INFERENCE_DEFAULTS[key])
               for key, value in given.items()}
    whose = f" ({name}'s protocol)" if preset.get("protocol") == options["protocol"] and name \
        else ""
    if options["protocol"] == "mmseg":
        for flag, wrong in (("--mode slide", options["mode"] == "slide"),
                            ("--base-size", options["base_size"] is not None)):
            if wrong:
                raise ValueError(
                    f"{flag} belongs to the official protocol; --protocol mmseg{whose} "
                    "predicts whole images resized to fit --keep-ratio-fit. Add --protocol "
                    f"official to use {flag}.")
    elif options["keep_ratio_fit"] is not None:
        raise ValueError(f"--keep-ratio-fit belongs to --protocol mmseg, not --protocol "
                         f"{options['protocol']}{whose}; the official protocol resizes the "
                         "long side to --base-size * scale.")
    if options["mode"] == "slide" and options["crop_size"] < 2:
        raise ValueError(f"--crop-size must be >= 2 for --mode slide, got "
                         f"{options['crop_size']}.")
    return options


def refuse_export_flags(args):
    """Raises if `--model` is an export and an inference flag is not its default: the
    export runs as exported, so the flag would be silently ignored."""
    from keras_fastfcn.serving.runtime import is_export

    given = inference_flags_given(args) if is_export(args.model) else []
    if given:
        raise ValueError(
            f"{args.model} is an export: its scales, flip and precision were fixed by "
            f"keras-fastfcn export, so {', '.join(given)} cannot apply; export again with "
            "those options, or use the .keras model.")


def open_predictor(args):
    """The predictor of `--model` and its `inference.ModelInfo`, for predict / evaluate.

    A `.keras` model, or a released model named by `--model` (`from_preset`: downloaded
    and converted on first use), runs through `predictor_from_args` (the inference flags
    apply, and the preset's protocol where none is given); an
    `.onnx` / `.tflite` export through `serving.runtime.ExportPredictor`, as exported:
    its scales, flip and precision were fixed by `keras-fastfcn export`. Callers run
    `refuse_export_flags` first, before their slower checks, so a non-default inference
    flag is refused rather than silently ignored. The export's `num_classes` is None
    when it did not record it (a TFLite file without the probabilities output).
    """
    from keras_fastfcn import inference
    from keras_fastfcn.serving.runtime import ExportPredictor, is_export

    if is_export(args.model):
        try:
            predictor = ExportPredictor(args.model)
        except RuntimeError as err:  # its runtime is not installed: the message says which
            from keras_fastfcn.cli import CommandError

            raise CommandError(str(err)) from None
        return predictor, predictor.info()
    name = released_preset(args.model)
    if name:  # downloaded and converted on first use, then from the Keras cache
        from keras_fastfcn.models import FastFCNImageSegmenter

        model = FastFCNImageSegmenter.from_preset(name)
    else:
        model = inference.load_model(args.model)
    return predictor_from_args(model, args), inference.model_info(model)


def predictor_from_args(model, args):
    """An `inference.Predictor` from parsed `add_inference_arguments` options (with
    `--model PRESET`, its protocol's where no flag is given: `inference_options`)."""
    from keras_fastfcn import inference

    if args.ms and args.scales is not None:
        raise ValueError("--ms and --scales are exclusive: --ms means --scales "
                         f"{','.join(str(s) for s in inference.MS_SCALES)} --flip.")
    options = inference_options(args)
    return inference.Predictor(
        model, scales=inference.MS_SCALES if args.ms else (args.scales or (1.0,)),
        flip=bool(args.flip or args.ms), **options,
        jit_compile={"off": False, "on": True}.get(args.jit_compile, args.jit_compile),
        fold_batchnorm=True,  # a model read from a file: its weights do not change
        precision=getattr(args, "precision", "fp32"),
        freeze=bool(getattr(args, "freeze", False)),
        max_pixels=getattr(args, "max_pixels", inference.MAX_PIXELS))


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's `dest`, with a warning.

    Example:
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--encoders")
    >>> _ = parser.add_argument("--backbones", dest="encoders", action=DeprecatedAlias,
    ...                         new="--encoders", help=argparse.SUPPRESS)
    >>> parser.parse_args(["--backbones", "resnet50"]).encoders  # warns on stderr
    'resnet50'
    """

    def __init__(self, option_strings, dest, new=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import warnings

        warnings.warn(f"{option_string} is deprecated: use {self.new}.", DeprecationWarning,
                      stacklevel=2)
        print(f"warning: {option_string} is deprecated; use {self.new}.", file=sys.stderr)
        setattr(namespace, self.dest, values)


def check_output_file(path, option="--output"):
    """Fails early (before any work) if `path` cannot be written as a file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a folder; give a file name.")
    _check_creatable(path, os.path.dirname(os.path.abspath(path)))


def _check_creatable(path, folder):
    """Raises unless `folder` (or its nearest existing ancestor) is a writable folder."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"Cannot create {path}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"Cannot write into {path}: {existing} is not writable.")


def check_output_folder(path, option="--output"):
    """Fails early if `path` cannot be (created as) a writable folder; creates nothing."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{option} {path} exists and is not a folder.")
    _check_creatable(path, os.path.abspath(path))


def check_model_file(path):
    """Fails early (before the data or the slow model load) if the model file is missing."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if os.path.isdir(path):
        from keras_fastfcn.models import presets

        if not presets.is_preset_dir(path):
            raise ValueError(f"--model {path} is a folder, neither a .keras model file nor "
                             "a preset folder (written by save_to_preset).")
