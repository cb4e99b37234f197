"""What the package needs of any segmentation model: its logits-only form, its
`ModelInfo` (classes, names, dataset, resize semantics), and loading it from a file."""

import dataclasses
import os
import zipfile
from typing import List, Optional

import keras

import keras_fastfcn.models  # noqa: F401  (load_model: registers the classes)
from keras_fastfcn.models import presets


def logits_model(model):
    """The logits-only functional model of `model`.

    A `FastFCNImageSegmenter` (whose graph also holds the training-only outputs)
    and any functional model with dict outputs are reduced to their `"logits"`
    (sharing layers and weights); any other model is returned as is.
    """
    try:
        output = model.output
    except (AttributeError, ValueError):  # a subclassed model has no symbolic output
        output = None
    if isinstance(output, dict):
        if "logits" not in output:
            raise ValueError(f"Model {model.name!r} has dict outputs without a 'logits' entry.")
        return keras.Model(model.input, output["logits"], name=f"{model.name}_logits")
    return model


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What prediction, evaluation and export need to know about a segmentation model."""

    num_classes: Optional[int]  # None: an export that did not record it
    class_names: Optional[List[str]]
    dataset: Optional[str]
    align_corners: bool


def model_info(model):
    """`ModelInfo` of any Keras model mapping images `(B, H, W, 3)` to logits `(B, H, W, C)`.

    keras_fastfcn models carry their class names and dataset; for other models (e.g.
    one a user built around `keras_fastfcn.layers.JPU`) the number of classes is read
    off the output shape and the names are None.

    Raises:
        ValueError: the model does not take `(B, H, W, 3)` images or does not return
            `(B, H, W, C)` logits with a known C.
    """
    net = logits_model(model)
    in_shape = tuple(getattr(net, "input_shape", ()) or ())
    out_shape = tuple(getattr(net, "output_shape", ()) or ())
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise ValueError(f"Model {model.name!r} takes inputs of shape {in_shape}; a segmentation "
                         "model must take RGB images (batch, height, width, 3).")
    if len(out_shape) != 4 or out_shape[-1] is None:
        raise ValueError(f"Model {model.name!r} returns shape {out_shape}; a segmentation model "
                         "must return logits (batch, height, width, num_classes).")
    num_classes = int(getattr(model, "num_classes", None) or out_shape[-1])
    names = getattr(model, "class_names", None)
    return ModelInfo(num_classes=num_classes, class_names=list(names) if names else None,
                     dataset=getattr(model, "dataset", None),
                     align_corners=bool(getattr(model, "align_corners", True)))


def load_model(path):
    """Loads a segmentation model from a `.keras` file or a preset folder, with a
    clear error otherwise.

    Any Keras model mapping `(B, H, W, 3)` images to `(B, H, W, C)` logits is accepted
    (a keras_fastfcn model, a 0.1 `FastFCN` file, or a model of your own).

    Args:
        path: path of a `.keras` file written by `model.save`, or of a folder written
            by `save_to_preset`.

    Returns:
        The model (not compiled).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a Keras model, or not a segmentation model.

    Example:
    >>> model = load_model("model.keras")  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if os.path.isdir(path):
        if not presets.is_preset_dir(path):
            raise ValueError(f"{path} is a folder, neither a .keras model file nor a preset "
                             f"folder (save_to_preset: {presets.CONFIG_FILE}, "
                             f"{presets.WEIGHTS_FILE}, {presets.METADATA_FILE}).")
        return presets.load_segmenter(keras.Model, path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a Keras model file (.keras, a zip archive written by model.save)."
        )

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for foreign or broken files.
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Could not load {path} as a Keras model: {first_line}") from err
    try:
        model_info(model)
    except ValueError as err:
        raise ValueError(f"{path} is not a segmentation model: {err}") from None
    return model
