"""Serving a trained model: SavedModel (TF Serving), ONNX, TFLite, and a REST client.

Every format serves the same graph (`graph.py`): raw 0-255 RGB images in, preprocessing
in the graph, `class_map` (exact argmax) and `probabilities` out, optionally with
in-graph multi-scale + flip. The model served is `keras_fastfcn.inference.prepare`'s
(BatchNorm folded, the runtime's native resizes), as predict, evaluate and the
benchmark run it. `client.py` queries TF Serving's REST API and imports no TensorFlow.

Example:
>>> from keras_fastfcn import serving
>>> inputs = keras.Input((None, None, 3))
>>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
>>> serving.export(model, "saved_models/fastfcn")  # any model from images to logits
'saved_models/fastfcn/1'
>>> serving.export(model, "fastfcn.onnx", format="onnx", scales=(0.75, 1.0, 1.25), flip=True)
'fastfcn.onnx'
"""

import importlib

from keras_fastfcn.fileio import removing_new_folders
from keras_fastfcn.serving.formats import FORMATS, get_format, register_format  # noqa: F401
# Loaded on first use, so that `keras_fastfcn.serving.client` imports no TensorFlow.
_EXPORTS = {
    "export_saved_model": "keras_fastfcn.serving.saved_model",
    "export_onnx": "keras_fastfcn.serving.onnx",
    "export_tflite": "keras_fastfcn.serving.tflite",
    "DEFAULT_OPSET": "keras_fastfcn.serving.onnx",
    "SIGNATURES": "keras_fastfcn.serving.graph",
    "make_forward": "keras_fastfcn.serving.graph",
    "serving_endpoints": "keras_fastfcn.serving.graph",
    "resolve_version_dir": "keras_fastfcn.serving.targets",
    "prepare": "keras_fastfcn.inference.prepare",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def export(model, output: str, format: str = "saved_model", **options) -> str:
    """Exports `model` to `format` (`"saved_model"`, `"onnx"` or `"tflite"`); returns the path.

    Args:
        model: a segmentation model (`FastFCNImageSegmenter`, or any Keras model from
            0-255 RGB images to logits).
        output: `BASE` or `BASE/VERSION` (SavedModel), or a `.onnx` / `.tflite` file.
        format: a registered format (`keras_fastfcn.serving.formats.FORMATS`).
        **options: the exporter's options (`scales`, `flip`, `input_size`, ...).
    """
    with removing_new_folders(output):  # BASE of a SavedModel, the folder of a file
        return get_format(format).export_function()(model, output, **options)


__all__ = ["FORMATS", "export", "get_format", "register_format"] + sorted(_EXPORTS)
