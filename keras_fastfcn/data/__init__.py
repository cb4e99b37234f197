"""Segmentation datasets and tf.data input pipelines for FastFCN.

Sources (`get_source`) give full-size `(image uint8 (H, W, 3), label int32 (H, W))`
examples with class ids `0..C-1` and 255 = ignore; `train_pipeline` applies the
official FastFCN training augmentation and batches; `eval_pipeline` batches for
evaluation (whole images, or the official short-side resize + centre crop).

Example:
>>> from keras_fastfcn import data
>>> src = data.get_source("demo")
>>> train = data.train_pipeline(src.dataset("train"), crop_size=64, base_size=72,
...                             batch_size=8, seed=0)
>>> val = data.eval_pipeline(src.dataset("val"), batch_size=4)
>>> src.palette.shape
(5, 3)
"""

from keras_fastfcn.data import demo, palettes
from keras_fastfcn.data.errors import DataError, translate_errors
from keras_fastfcn.data.pipelines import (eval_pipeline, gaussian_blur, train_pipeline,
                                          train_transform, val_transform)
from keras_fastfcn.data.sources import (IGNORE_LABEL, SPECS, FileSource, Source,
                                        TfdsSource, ade20k_source, camvid_source,
                                        folder_source, get_source, label_lut, voc_source)

__all__ = [
    "DataError", "FileSource", "IGNORE_LABEL", "SPECS", "Source", "TfdsSource",
    "ade20k_source", "camvid_source", "demo", "eval_pipeline", "folder_source", "gaussian_blur",
    "get_source", "label_lut", "palettes", "train_pipeline", "train_transform",
    "translate_errors", "val_transform", "voc_source",
]
