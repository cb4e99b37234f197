"""Keras layers of FastFCN: JPU, JPU_X and the segmentation heads."""

from keras_fastfcn.layers.conv import ConvBNReLU, SeparableConvBN
from keras_fastfcn.layers.encoding import EncModule, Encoding
from keras_fastfcn.layers.heads import (
    ASPP,
    ASPPHead,
    EncHead,
    FCNHead,
    PSPHead,
    PyramidPooling,
)
from keras_fastfcn.layers.jpu import JPU, JPUX, JUM, DilatedBranch
from keras_fastfcn.layers.preprocessing import BilinearResize, ImageNormalization

JPU_X = JPUX  # the official code's name
DeepLabV3Head = ASPPHead
