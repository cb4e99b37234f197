"""Encoders: ResNets at output stride 8, 16 or 32 returning C2..C5 (see `registry`)."""

from keras_fastfcn.models.encoders.resnet import OUTPUT_STRIDES, build_keras_resnet
from keras_fastfcn.models.encoders.resnet_deepstem import (
    DEEPSTEM_DEPTHS,
    build_resnet_deepstem,
)

__all__ = ["DEEPSTEM_DEPTHS", "OUTPUT_STRIDES", "build_keras_resnet", "build_resnet_deepstem"]
