"""keras_fastfcn: FastFCN (JPU) semantic segmentation for Keras 3.

Example:
>>> import keras_fastfcn as kf
>>> model = kf.FastFCN(num_classes=59, head="encnet", backbone="resnet50", upsampler="jpu")
"""

from keras_fastfcn import backbones, layers, ops
from keras_fastfcn.backbones import build_backbone
from keras_fastfcn.models import FastFCN

__version__ = "0.1.0"
