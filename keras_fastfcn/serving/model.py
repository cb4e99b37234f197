"""The model an export serves: its logits graph (BatchNorm folded) and what it carries."""

from keras_fastfcn import inference


def prepare(model, fold_bn=True, precision="fp32", pad_dilations=False):
    """`(net, info)`: the logits-only functional model (folded) and its `ModelInfo`.

    With `precision` `"bf16"` / `"fp16"` the model is first rebuilt under Keras mixed
    precision (`keras_fastfcn.precision.with_precision`). With `pad_dilations` (the
    ONNX export) its dilated depthwise convs are written as explicit padding and a
    valid conv (`fold.pad_dilated_depthwise`), which tf2onnx turns into dilated
    `Conv` nodes. The logits resize runs as TensorFlow's own bilinear resize op
    (`fold.native_resizes`), which every format has a kernel for. The caller's model is
    never modified.

    Any Keras model from 0-255 RGB images `(B, H, W, 3)` to logits `(B, H, W, C)` is
    served: a `FastFCNImageSegmenter` (its training-only outputs are left out), a 0.1
    `FastFCN`, or a model of your own around `keras_fastfcn.layers.JPU`.

    Raises:
        ValueError: `model` is not such a model.
    """
    from keras_fastfcn.precision import with_precision

    info = inference.model_info(model)
    net = inference.logits_model(with_precision(model, precision))
    if fold_bn:
        from keras_fastfcn.serving.fold import fold_batchnorm

        net = fold_batchnorm(net)
    if pad_dilations:
        from keras_fastfcn.serving.fold import inference_copy, pad_dilated_depthwise

        if not fold_bn:  # folding made a copy already
            net = inference_copy(net)
        pad_dilated_depthwise(net)
    from keras_fastfcn.serving.fold import native_resizes

    return native_resizes(net), info
