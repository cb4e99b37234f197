"""Segmentation datasets and tf.data input pipelines for FastFCN.

Sources (`get_source`) give full-size `(image uint8 (H, W, 3), label int32 (H, W))`
examples with class ids `0..C-1` and 255 = ignore; `train_pipeline` applies the
official FastFCN training augmentation and batches; `eval_pipeline` batches for
evaluation (whole images, or the official short-side resize + centre crop).
Without TensorFlow, `pyloader.TrainBatches` / `EvalBatches` (Keras `PyDataset`s, the
official PIL transforms) feed training on JAX or PyTorch from file and demo sources.

Example:
>>> from keras_fastfcn import data
>>> src = data.get_source("demo")
>>> train = data.train_pipeline(src.dataset("train"), crop_size=64, base_size=72,
...                             batch_size=8, seed=0)
>>> val = data.eval_pipeline(src.dataset("val"), batch_size=4)
>>> src.palette.shape
(5, 3)
"""

import importlib

# Loaded on first use: `palettes`, `errors` and the image readers import no TensorFlow
# (the serving client uses them); sources and pipelines do.
_EXPORTS = {
    "palettes": "keras_fastfcn.data.palettes",
    "errors": "keras_fastfcn.data.errors",
    "DataError": "keras_fastfcn.data.errors",
    "translate_errors": "keras_fastfcn.data.errors",
    "demo": "keras_fastfcn.data.sources",
    "sources": "keras_fastfcn.data.sources",
    "pipelines": "keras_fastfcn.data.pipelines",
    "pyloader": "keras_fastfcn.data.pyloader",
    "TrainBatches": "keras_fastfcn.data.pyloader",
    "EvalBatches": "keras_fastfcn.data.pyloader",
    "eval_pipeline": "keras_fastfcn.data.pipelines",
    "gaussian_blur": "keras_fastfcn.data.pipelines",
    "train_pipeline": "keras_fastfcn.data.pipelines",
    "train_transform": "keras_fastfcn.data.pipelines",
    "val_transform": "keras_fastfcn.data.pipelines",
}
_EXPORTS.update({name: "keras_fastfcn.data.sources" for name in (
    "IGNORE_LABEL", "SPECS", "FileSource", "Source", "TfdsSource", "DemoSource",
    "ade20k_source", "camvid_source", "folder_source", "get_source", "label_lut",
    "voc_source", "cityscapes_source")})


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith("." + name) else getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
