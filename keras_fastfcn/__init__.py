"""keras_fastfcn: FastFCN (Joint Pyramid Upsampling) semantic segmentation for Keras 3.

The package is loaded lazily: `import keras_fastfcn` imports neither Keras nor
TensorFlow; `kf.models`, `kf.layers`, ... load on first use. Its Keras classes are
registered as soon as Keras is imported, so `keras.models.load_model` reads its
`.keras` files after a plain `import keras_fastfcn`.

Example:
>>> import keras, keras_fastfcn as kf
>>> backbone = kf.models.FastFCNBackbone(encoder="resnet50", upsampler="jpu")
>>> seg = kf.models.FastFCNImageSegmenter(backbone=backbone, num_classes=59, head="encnet")
>>> jpu = kf.layers.JPU(width=512)
"""

import importlib
import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) drowns the
# command-line output; an explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_fastfcn.version import __version__  # noqa: E402

_SUBMODULES = ("benchmark", "cli", "convert", "data", "evaluation", "fileio", "images",
               "inference", "layers", "losses", "metrics", "models", "optimizers",
               "precision", "serving", "train", "visualize")
_SHORTCUTS = {name: "keras_fastfcn.models" for name in (
    "FastFCN", "FastFCNBackbone", "FastFCNImageSegmenter", "FastFCNImageConverter",
    "FastFCNImageSegmenterPreprocessor")}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(_SHORTCUTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_SHORTCUTS))


__all__ = sorted(set(_SUBMODULES) | set(_SHORTCUTS) | {"__version__"})

from keras_fastfcn import _registration  # noqa: E402

_registration.install()
