"""The model an export serves: its logits graph (BatchNorm folded) and what it carries."""

import warnings

import keras

from keras_fastfcn import inference


def prepare(model, fold_bn=True, precision="fp32", pad_dilations=False):
    """`(net, info)`: the logits-only functional model (folded) and its `ModelInfo`.

    With `precision` `"bf16"` / `"fp16"` the model is first rebuilt under Keras mixed
    precision (`keras_fastfcn.precision.with_precision`). With `pad_dilations` (the
    ONNX export) its dilated depthwise convs are written as explicit padding and a
    valid conv (`fold.pad_dilated_depthwise`), which tf2onnx turns into dilated
    `Conv` nodes. Every align_corners resize (the JPU's upsampling, the logits resize)
    runs as TensorFlow's own bilinear resize op (`fold.native_resizes`), which every
    format has a kernel for. The caller's model is never modified; with `fold_bn=False`
    a subclassed model is served as it is, without these rewrites, and a functional one
    that cannot be cloned from its layers' configs with a warning and the logits
    resize swapped only.

    Any Keras model from 0-255 RGB images `(B, H, W, 3)` to logits `(B, H, W, C)` is
    served: a `FastFCNImageSegmenter` (its training-only outputs are left out), a 0.1
    `FastFCN`, or a model of your own around `keras_fastfcn.layers.JPU`.

    Raises:
        ValueError: `model` is not such a model.
    """
    from keras_fastfcn._keras_private import is_functional
    from keras_fastfcn.precision import with_precision
    from keras_fastfcn.serving import fold

    info = inference.model_info(model)
    net = inference.logits_model(with_precision(model, precision))
    if fold_bn:
        net = fold.fold_batchnorm(net)  # a copy
    elif is_functional(net) or isinstance(net, keras.Sequential):
        try:
            net = fold.inference_copy(net)  # the rewrites below swap layers of a copy
        except Exception as err:  # a layer of your own whose config does not round-trip
            warnings.warn(
                f"Could not copy the model for the export's layer rewrites "
                f"({type(err).__name__}: {err}); exporting its layers as they are (the "
                "same values; only the logits resize becomes the runtime's own op).",
                stacklevel=2)
            return fold.native_resizes(net, sublayers=False), info
    else:  # a subclassed model of your own (it cannot be copied): exported as it is
        return net, info
    if pad_dilations:
        fold.pad_dilated_depthwise(net)
    return fold.native_resizes(net), info
