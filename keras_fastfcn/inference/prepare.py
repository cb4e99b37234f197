"""`prepare`: the one step that turns a segmenter into the model that runs.

`predict` and `evaluate` (`Predictor(fold_batchnorm=True)`, the CLI), every export
(SavedModel, ONNX, TFLite) and the benchmark run what this returns; freezing the
weights into the traced graph is the one step left to tracing (`Predictor(freeze=True)`,
`trace(freeze=True)`), since it needs the input shape.
"""

import warnings

import keras

from keras_fastfcn._keras_private import is_functional
from keras_fastfcn.inference import fold
from keras_fastfcn.models.segmentation_model import logits_model, model_info
from keras_fastfcn.precision import with_precision


def prepare(model, fold_bn=True, precision="fp32", pad_dilations=False, native_resizes=False):
    """`(net, info)`: the logits-only model that runs, and its `ModelInfo`.

    The steps, in order, each on a copy (the caller's model is never modified):

    1. `precision` `"bf16"` / `"fp16"`: rebuilt under Keras mixed precision
       (`keras_fastfcn.precision.with_precision`);
    2. the logits only (no auxiliary head or SE branch: `logits_model`);
    3. `fold_bn`: BatchNorm folded into the convolutions (`fold.fold_batchnorm`);
    4. `pad_dilations` (the ONNX export): dilated convs (the JPU's depthwise ones, the
       ASPP heads', a dilated encoder's) as explicit padding and a valid conv
       (`fold.pad_dilated_convs`), which tf2onnx turns into dilated `Conv` nodes;
    5. `native_resizes` (the exports): every align_corners resize (the JPU's
       upsampling, the logits resize) as TensorFlow's own bilinear resize op
       (`fold.native_resizes`), which every export format has a kernel for. In
       process the package's `keras.ops` resize runs (every backend).

    With `fold_bn=False` a subclassed model runs as it is, without the rewrites, and
    a functional one that cannot be cloned from its layers' configs with a warning
    and the logits resize swapped only.

    Any Keras model from 0-255 RGB images `(B, H, W, 3)` to logits `(B, H, W, C)` is
    taken: a `FastFCNImageSegmenter`, a 0.1 `FastFCN`, or a model of your own around
    `keras_fastfcn.layers.JPU`.

    Args:
        model: the model.
        fold_bn: bool.
        precision: `"fp32"`, `"bf16"` or `"fp16"`.
        pad_dilations: bool.
        native_resizes: bool (TensorFlow only).

    Returns:
        `(net, info)`.

    Raises:
        ValueError: `model` is not such a model.

    Example:
    >>> net, info = prepare(keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn"))
    >>> info.num_classes
    3
    """
    info = model_info(model)
    net = logits_model(with_precision(model, precision))
    if fold_bn:
        net = fold.fold_batchnorm(net)  # a copy
    elif not (pad_dilations or native_resizes):
        return net, info
    elif is_functional(net) or isinstance(net, keras.Sequential):
        try:
            net = fold.inference_copy(net)  # the rewrites below swap layers of a copy
        except Exception as err:  # a layer of your own whose config does not round-trip
            warnings.warn(
                f"Could not copy the model for the export's layer rewrites "
                f"({type(err).__name__}: {err}); exporting its layers as they are (the "
                "same values; only the logits resize becomes the runtime's own op).",
                stacklevel=2)
            return (fold.native_resizes(net, sublayers=False) if native_resizes else net), info
    else:  # a subclassed model of your own (it cannot be copied): run as it is
        return net, info
    if pad_dilations:
        net = fold.pad_dilated_convs(net)
    return (fold.native_resizes(net) if native_resizes else net), info
