"""Where exports go: TF Serving version folders, single files, and the metadata written beside.

Every target is checked (exists? writable? the right kind?) before the model is
loaded, so a bad `--output` fails in a second with one line.
"""

import json
import os
import time

import keras

METADATA_FILE = "keras_fastfcn_export.json"


def check_options(scales, flip, input_size, base_size, model=None):
    """The export options checked and normalized. Without `input_size`, a `model`
    declared with a fixed input size (`keras.Input((96, 96, 3))`) runs at that size, as
    Keras would only run it: images are resized to it and the outputs back (TFLite:
    the file's input size)."""
    if input_size is None and model is not None:
        shape = getattr(model, "input_shape", None)
        if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]:
            input_size = shape[1:3]
    scales = tuple(float(s) for s in (scales or (1.0,)))
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}.")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width) > 0, got {input_size}.")
    if base_size is not None and int(base_size) < 1:
        raise ValueError(f"base_size must be a positive int, got {base_size}.")
    return scales, bool(flip), input_size, (int(base_size) if base_size else None)


def export_metadata(info, options):
    """The metadata an ONNX, TFLite or OpenVINO export carries: the model's class names,
    count and dataset (`info`, an `inference.ModelInfo`) and the export's `options`,
    as strings (JSON where not a plain count); `ExportPredictor` reads them back."""
    return {
        "class_names": json.dumps(info.class_names),
        "num_classes": str(info.num_classes),
        "dataset": json.dumps(info.dataset),
        "input": "images: float32 [B, H, W, 3], RGB 0-255",
        "keras_fastfcn_export": json.dumps(options),
    }


def resolve_version_dir(output):
    """Splits a TF Serving target into `(model base folder, version)`.

    `saved_models/demo/3` -> version 3; `saved_models/demo` -> one more than
    the largest integer-named version already there (1 when none).

    Example:
    >>> resolve_version_dir("saved_models/demo/3")
    ('saved_models/demo', 3)
    """
    output = os.path.normpath(os.fspath(output))
    inside = os.path.dirname(os.path.abspath(output))
    while True:  # e.g. BASE/1/variables: a SavedModel nested in another
        if os.path.isfile(os.path.join(inside, "saved_model.pb")):
            raise ValueError(
                f"{output} is inside the SavedModel {inside}; give the model's base folder "
                f"({os.path.dirname(inside)}) to write the next version beside it.")
        if os.path.dirname(inside) == inside:
            break
        inside = os.path.dirname(inside)
    name = os.path.basename(output)
    if name.isdigit():
        return os.path.dirname(output) or ".", int(name)
    if os.path.isfile(os.path.join(output, "saved_model.pb")):
        raise ValueError(
            f"{output} is itself a SavedModel folder; TF Serving wants "
            "BASE/VERSION/saved_model.pb. Give the base folder (a new version is "
            "picked) or BASE/VERSION."
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise NotADirectoryError(f"Export base {output} exists and is not a folder.")
    versions = []
    if os.path.isdir(output):
        versions = [int(entry) for entry in os.listdir(output)
                    if entry.isdigit() and os.path.isdir(os.path.join(output, entry))]
    return output, max(versions, default=0) + 1


def check_writable(folder, create=True):
    """Raises a clear error unless `folder` exists (or can be created) and is writable."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise NotADirectoryError(f"Cannot export to {folder}: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write to {probe} (export to {folder}): permission denied.")
    if create:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise PermissionError(
                f"Cannot create the export folder {folder}: {err.strerror}.") from err


def check_saved_model_target(output, overwrite, create=True):
    base, version = resolve_version_dir(output)
    target = os.path.join(base, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}; pass --overwrite "
            "(overwrite=True) to replace it, or give the base folder to get the next version."
        )
    check_writable(base, create=create)
    return target, version


def check_target_file(path, overwrite, suffix, create=True):
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ValueError(f"The output path for this format must end in {suffix}, got {path}.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; give a file path ending in {suffix}.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass --overwrite (overwrite=True) to replace it.")
    check_writable(os.path.dirname(os.path.abspath(path)), create=create)
    return path


def metadata(model, info, fmt, options, extra=None):
    """The JSON written beside an export: what was exported, how, with which versions."""
    try:
        config = keras.saving.serialize_keras_object(model)
    except Exception:  # a model of the user's whose config does not serialize
        config = None
    info = {
        "format": fmt,
        "keras_fastfcn_model": config,
        "class_names": info.class_names,
        "num_classes": info.num_classes,
        "dataset": info.dataset,
        "options": options,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "keras_version": keras.__version__,
    }
    try:
        import tensorflow as tf

        info["tensorflow_version"] = tf.__version__
    except ImportError:
        pass
    info.update(extra or {})
    return info

