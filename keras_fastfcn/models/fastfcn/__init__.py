"""FastFCN: backbone (encoder + JPU), image segmenter task, preprocessor, presets."""

from keras_fastfcn.models.fastfcn.fastfcn_backbone import FastFCNBackbone
from keras_fastfcn.models.fastfcn.fastfcn_compat import FastFCN
from keras_fastfcn.models.fastfcn.fastfcn_image_segmenter import FastFCNImageSegmenter
from keras_fastfcn.models.fastfcn.fastfcn_preprocessor import (
    FastFCNImageConverter,
    FastFCNImageSegmenterPreprocessor,
)

__all__ = ["FastFCN", "FastFCNBackbone", "FastFCNImageConverter", "FastFCNImageSegmenter",
           "FastFCNImageSegmenterPreprocessor"]
