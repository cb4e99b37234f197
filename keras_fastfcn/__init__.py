"""keras_fastfcn: FastFCN (JPU) semantic segmentation for Keras 3.

Example:
>>> import keras_fastfcn as kf
>>> model = kf.FastFCN(num_classes=59, head="encnet", backbone="resnet50", upsampler="jpu")
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) drowns the
# command-line output; an explicit setting by the user wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_fastfcn import backbones  # noqa: E402, layers, ops
from keras_fastfcn.backbones import build_backbone  # noqa: E402
from keras_fastfcn.models import FastFCN  # noqa: E402

__version__ = "0.1.0"
