"""Keras layers of FastFCN: JPU, JPU_X, the segmentation heads and their building blocks.

Every layer uses `keras.ops` only (it runs on the TensorFlow, JAX and PyTorch backends),
implements `build`, `call`, `compute_output_shape` and `get_config`, and is registered
for `.keras` saving under the package name `keras_fastfcn`.

Example:
>>> from keras_fastfcn.layers import JPU
>>> jpu = JPU(width=512, dilations=(1, 2, 4, 8))
>>> c3, c4, c5 = (keras.ops.ones((1, 16, 16, 512)), keras.ops.ones((1, 8, 8, 1024)),
...               keras.ops.ones((1, 4, 4, 2048)))  # strides 8, 16, 32 of a 128 px image
>>> jpu([c3, c4, c5]).shape  # stride-8 features, 4 * width channels
(1, 16, 16, 2048)
"""

from keras_fastfcn.layers.conv import ConvBNReLU, SeparableConvBN
from keras_fastfcn.layers.encoding import EncModule, Encoding
from keras_fastfcn.layers.heads import (
    ASPP,
    ASPPHead,
    EncHead,
    FCNHead,
    PSPHead,
    PyramidPooling,
    adaptive_avg_pool2d,
)
from keras_fastfcn.layers.heads_mmseg import MMSegASPPHead
from keras_fastfcn.layers.jpu import JPU, JPUX, JUM, DilatedBranch
from keras_fastfcn.layers.preprocessing import ImageNormalization, check_image_batch
from keras_fastfcn.layers.resize import (
    BilinearResize,
    log_add_exp,
    log_resize_bilinear,
    resize_bilinear,
    resize_nearest,
)

JPU_X = JPUX  # the official code's name
DeepLabV3Head = ASPPHead

__all__ = [
    "ASPP", "ASPPHead", "BilinearResize", "ConvBNReLU", "DeepLabV3Head", "DilatedBranch",
    "EncHead", "EncModule", "Encoding", "FCNHead", "ImageNormalization", "JPU", "JPUX",
    "JPU_X", "JUM", "MMSegASPPHead", "PSPHead", "PyramidPooling", "SeparableConvBN", "adaptive_avg_pool2d",
    "check_image_batch", "log_add_exp", "log_resize_bilinear", "resize_bilinear",
    "resize_nearest",
]
