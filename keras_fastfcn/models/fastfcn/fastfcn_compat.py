"""`FastFCN(...)`: the one-call constructor of version 0.1, and loading 0.1 `.keras` files.

Version 0.1 had one functional class, `keras_fastfcn.FastFCN`, registered as
`keras_fastfcn>FastFCN`. Its `.keras` files name that class and hold its config (head,
backbone, upsampler, ...); `_FastFCN01` takes that registered name, so
`keras.models.load_model` builds a `FastFCNImageSegmenter` from such a config. The
segmenter's layers carry the names 0.1 used (`preprocessing`, `resnet50_os32`,
`jpu`, `head`, `auxlayer`, ...), so the saved weights, and the optimizer state of a
compiled file, load into it unchanged.
"""

import os
import warnings

import keras

from keras_fastfcn.models.fastfcn.fastfcn_backbone import FastFCNBackbone
from keras_fastfcn.models.fastfcn.fastfcn_image_segmenter import FastFCNImageSegmenter


def FastFCN(num_classes, head="encnet", backbone="resnet50", upsampler="jpu", aux=False,  # noqa: N802
            se_loss=False, output_stride=None, weights=None, backbone_weights=None,
            preprocessing="auto", jpu_width=512, jpu_remat=True, align_corners=True,
            class_names=None, dataset=None, input_shape=(None, None, 3), name=None):
    """A `FastFCNImageSegmenter` in one call, with the 0.1 argument names (deprecated).

    Accepted as 0.1 code and files wrote it, with a `DeprecationWarning`: build a
    `FastFCNImageSegmenter` on a `FastFCNBackbone` instead (`backbone=` is the backbone's
    `encoder=`, `jpu_width=` its `width=`, `backbone_weights=` its `encoder_weights=`).

    Args:
        num_classes: int >= 1.
        head: `"encnet"`, `"psp"`, `"deeplab"` or `"fcn"`.
        backbone: the encoder's name (`"resnet50"`, `"resnet101s"`, ...).
        upsampler: `"jpu"`, `"jpu_x"` or None (dilated encoder).
        aux: bool, train with the auxiliary head.
        se_loss: bool, train with EncNet's SE loss.
        output_stride: encoder output stride (see `FastFCNBackbone`).
        weights: None or a `.weights.h5` file of this whole model.
        backbone_weights: None, `"imagenet"` or a weights file of the encoder.
        preprocessing: `"auto"` or an `ImageNormalization` mode.
        jpu_width: the JPU width (512 in the paper).
        jpu_remat: rematerialize the JPU in training (see `JPU`).
        align_corners: resize semantics (True officially).
        class_names: optional class names.
        dataset: optional dataset name (palette lookup).
        input_shape: `(H, W, 3)`.
        name: model name.

    Returns:
        A `FastFCNImageSegmenter` (not compiled).

    Example:
    >>> model = FastFCN(num_classes=5, head="fcn", jpu_width=64)
    >>> model(keras.ops.zeros((1, 97, 131, 3))).shape
    (1, 97, 131, 5)
    """
    warnings.warn(
        "keras_fastfcn.FastFCN(...) is the 0.1 constructor: use FastFCNImageSegmenter("
        "FastFCNBackbone(encoder=..., upsampler=..., width=...), num_classes=..., head=...).",
        DeprecationWarning, stacklevel=2)
    model = FastFCNImageSegmenter(
        FastFCNBackbone(encoder=backbone, upsampler=upsampler, width=jpu_width,
                        output_stride=output_stride, encoder_weights=backbone_weights,
                        preprocessing=preprocessing, align_corners=align_corners,
                        remat=jpu_remat, input_shape=input_shape),
        num_classes=num_classes, head=head, aux=aux, se_loss=se_loss,
        class_names=class_names, dataset=dataset, name=name or f"fastfcn_{head}")
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"Model weights file not found: {weights}")
        model.load_weights(weights)
    return model


@keras.saving.register_keras_serializable(package="keras_fastfcn", name="FastFCN")
class _FastFCN01(FastFCNImageSegmenter):
    """Loads the config of a 0.1 `FastFCN` as a `FastFCNImageSegmenter` (module docstring)."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        trainable = config.pop("trainable", True)
        model = FastFCN(**{k: v for k, v in config.items() if k != "weights"})
        model.trainable = trainable
        return model
