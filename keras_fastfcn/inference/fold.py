"""BatchNorm folding: an inference copy of a model with BN merged into its convs.

At inference a BatchNormalization is a per-channel affine map `y = s * x + t`
with `s = gamma / sqrt(var + eps)` and `t = beta - mean * s`. After a linear
convolution it can be merged into the convolution's kernel (scaled by `s`) and
bias (`t`), which removes one multiply and lets TensorFlow's graph optimizer fuse
the remaining bias add (and a following ReLU) into the convolution kernel.

What is folded:
- `ConvBNReLU` (JPU projections, heads, EncModule's conv): BN into the conv,
  which gains a bias.
- `SeparableConvBN`: the inner BN into the depthwise kernel; its shift is pushed
  through the (linear, 1x1) pointwise conv into that conv's bias.
- `DilatedBranch` (JPU): the inner BN as above, and the outer BN (after the
  pointwise conv) into the pointwise conv.
- Functional sub-models (the keras.applications ResNet): every `Conv2D` /
  `DepthwiseConv2D` -> `BatchNormalization` pair where the conv's output feeds
  only that BN; the BN node is dropped from the rebuilt graph.

What is left alone: GroupNorm (JPU_X's JUM blocks: statistics depend on the
input), the Encoding BN of EncNet (`axis=1`, over codewords, not after a conv),
and any BN whose input is not a single-use linear conv.

The folded model is for inference and export only: its BN-free sublayers do not
match the layer configs any more, so do not train it or save it as `.keras`
(save the original instead and fold again after loading).

Two more export-only rewrites live here for the same reason (they swap layers of a
copy): `pad_dilated_convs`, which the ONNX export applies so that the dilated
convolutions (the JPU's branches, the ASPP heads, a dilated encoder) become single
dilated ONNX `Conv` nodes, and
`native_resizes`, which every export applies so that each align_corners resize (the
logits; the upsampling of the JPU, JUM and pyramid pooling) runs as the runtime's own
bilinear resize op.
"""

import numpy as np
import keras

from keras_fastfcn._keras_private import all_layers, is_functional, replace_sublayer
from keras_fastfcn.layers.conv import ConvBNReLU, SeparableConvBN
from keras_fastfcn.layers.jpu import DilatedBranch
from keras_fastfcn.layers.resize import BilinearResize
from keras_fastfcn.models.segmentation_model import logits_model

_CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def fold_batchnorm(model):
    """Returns an inference copy of `model` with BatchNorms folded into convs.

    The original model is not modified. For a model with training-only outputs (a
    `FastFCNImageSegmenter`) the logits-only graph is folded. Outputs agree with the
    original's inference outputs (`training=False`) up to float32 rounding
    (about 1e-6 relative).

    Args:
        model: a functional `keras.Model` (e.g. a `FastFCNImageSegmenter`), built.

    Returns:
        A functional `keras.Model` with the same inputs and outputs. Its class is
        plain `keras.Model` (not a segmenter): it is meant for prediction and
        export, not training or `.keras` saving.

    Example:
    >>> import keras_fastfcn as kf
    >>> model = kf.models.FastFCNImageSegmenter(
    ...     kf.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> folded = fold_batchnorm(model)
    >>> len(batchnorm_layers(folded)) < len(batchnorm_layers(model))
    True
    """
    if not is_functional(model):
        raise ValueError(
            "fold_batchnorm expects a functional keras.Model (such as a FastFCN segmenter), "
            f"got {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            "fold_batchnorm needs a built model (call it once or give it an input shape).")
    copy = inference_copy(logits_model(model))
    _fold_custom_layers(copy)
    return _fold_functional(copy)


def inference_copy(model):
    """An independent copy of a functional or Sequential model (same weights), so that
    the swaps of this module mutate layers of the copy, never the caller's."""
    copy = keras.models.clone_model(model, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def batchnorm_layers(model):
    """All `BatchNormalization` layers in `model`, nested ones included.

    Example:
    >>> import keras_fastfcn as kf
    >>> len(batchnorm_layers(kf.models.FastFCNImageSegmenter(
    ...     kf.models.FastFCNBackbone(width=64), num_classes=3, head="fcn"))) > 50
    True
    """
    return [layer for layer in all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


# --- the arithmetic -----------------------------------------------------------


def _bn_affine(bn):
    """`(s, t)` (float64) such that `bn(x) == s * x + t` at inference."""
    mean = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), np.float64)
    var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), np.float64)
    gamma = (np.asarray(keras.ops.convert_to_numpy(bn.gamma), np.float64)
             if bn.scale else np.ones_like(mean))
    beta = (np.asarray(keras.ops.convert_to_numpy(bn.beta), np.float64)
            if bn.center else np.zeros_like(mean))
    s = gamma / np.sqrt(var + bn.epsilon)
    return s, beta - mean * s


def _is_foldable_bn(bn):
    if not isinstance(bn, keras.layers.BatchNormalization) or not bn.built:
        return False
    axis = bn.axis if isinstance(bn.axis, int) else None
    # Channels-last only: the BN must scale the conv's output channels.
    return axis in (-1, 3)


def _is_linear_conv(conv):
    act = getattr(conv, "activation", None)
    return (isinstance(conv, _CONV_TYPES) and conv.built
            and conv.data_format == "channels_last"
            and (act is None or act is keras.activations.linear
                 or getattr(act, "__name__", "") == "linear"))


def _weights(layer):
    return [np.asarray(w, np.float64) for w in layer.get_weights()]


def _scale_kernel(conv, kernel, s):
    """The kernel with output channel `o` multiplied by `s[o]`."""
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        # (kh, kw, in, multiplier); output channel = in * multiplier + m.
        return kernel * s.reshape(kernel.shape[2], kernel.shape[3])
    return kernel * s  # Conv2D: (kh, kw, in / groups, out)


def _new_conv(conv, kernel, bias, cls=None, **config_updates):
    """A conv like `conv` (of class `cls`, default `conv`'s, with `config_updates`)
    with the given kernel and bias (None: no bias)."""
    config = conv.get_config()
    config.update(config_updates, use_bias=bias is not None)
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                "kernel_constraint", "bias_constraint", "depthwise_regularizer",
                "depthwise_constraint"):
        if key in config:
            config[key] = None
    new = (cls or conv.__class__).from_config(config)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        in_channels = kernel.shape[2]
    else:
        in_channels = kernel.shape[2] * getattr(conv, "groups", 1)
    new.build((None, None, None, in_channels))
    dtype = conv.get_weights()[0].dtype
    weights = [kernel.astype(dtype)] + ([] if bias is None else [bias.astype(dtype)])
    new.set_weights(weights)
    return new


def _fold_conv_bn(conv, bn):
    """A new conv (with bias) computing `bn(conv(x))`."""
    s, t = _bn_affine(bn)
    weights = _weights(conv)
    kernel = _scale_kernel(conv, weights[0], s)
    bias = t + (weights[1] * s if conv.use_bias else 0.0)
    return _new_conv(conv, kernel, bias)


def _identity_like(layer):
    return keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)


def _swap(parent, attr, new):
    """Replaces the sublayer `parent.<attr>` by `new` (`_keras_private.replace_sublayer`),
    with a clear error if this Keras' layer tracking no longer allows it."""
    try:
        replace_sublayer(parent, attr, new)
    except (AttributeError, ValueError) as err:  # Keras internals moved
        raise RuntimeError(
            f"Could not replace {parent.name}.{attr} in the export's copy of the model "
            f"({err}); this Keras version ({keras.__version__}) is not supported by "
            "keras_fastfcn.inference.fold (see keras_fastfcn/_keras_private.py)."
        ) from err


def _swap_sublayers(model, replacement):
    """Swaps, in place, each sublayer `value` held (as a public attribute) by a layer of
    `model` for `replacement(value)` where that is not None; returns how many."""
    count = 0
    for layer in all_layers(model):
        for attr, value in list(vars(layer).items()):
            new = None if attr.startswith("_") else replacement(value)
            if new is not None:
                _swap(layer, attr, new)
                count += 1
    return count


# --- keras_fastfcn's composite layers -------------------------------------------


def _fold_custom_layers(model):
    layers = all_layers(model)
    handled = set()
    for layer in layers:
        if (isinstance(layer, DilatedBranch) and _is_foldable_bn(layer.bn)
                and _is_foldable_bn(layer.sep.bn)):
            _fold_separable(layer.sep, outer_bn=layer.bn)
            _swap(layer, "bn", _identity_like(layer.bn))
            handled.add(id(layer.sep))
    for layer in layers:
        if (isinstance(layer, SeparableConvBN) and id(layer) not in handled
                and _is_foldable_bn(layer.bn)):
            _fold_separable(layer, outer_bn=None)
        elif isinstance(layer, ConvBNReLU) and _is_foldable_bn(layer.bn):
            _swap(layer, "conv", _fold_conv_bn(layer.conv, layer.bn))
            _swap(layer, "bn", _identity_like(layer.bn))


def _fold_separable(sep, outer_bn):
    """depthwise -> bn -> pointwise [-> outer_bn] as depthwise' -> pointwise'(+bias)."""
    s1, t1 = _bn_affine(sep.bn)
    (dw_kernel,) = _weights(sep.conv1)[:1]
    pw = _weights(sep.pointwise)
    pw_kernel = pw[0]  # (1, 1, in, out)
    pw_bias = pw[1] if sep.pointwise.use_bias else np.zeros(pw_kernel.shape[-1])
    if sep.conv1.use_bias:
        # bn(dw(x) + b) = s1 * dw(x) + (s1 * b + t1)
        t1 = t1 + s1 * _weights(sep.conv1)[1]
    # The inner shift t1 is constant over space, so it passes through the 1x1
    # pointwise conv as a bias: pw(dw'(x) + t1) = pw(dw'(x)) + t1 @ W.
    bias = pw_bias + t1 @ pw_kernel[0, 0]
    if outer_bn is not None:
        s2, t2 = _bn_affine(outer_bn)
        pw_kernel = pw_kernel * s2
        bias = bias * s2 + t2
    _swap(sep, "conv1", _new_conv(sep.conv1, _scale_kernel(sep.conv1, dw_kernel, s1), None))
    _swap(sep, "bn", _identity_like(sep.bn))
    _swap(sep, "pointwise", _new_conv(sep.pointwise, pw_kernel, bias))


# --- functional graphs (keras.applications ResNet) ------------------------------


def _producer(layer):
    """The single layer whose output is `layer`'s single input, else None."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    history = getattr(nodes[0].input_tensors[0], "_keras_history", None)
    return history.operation if history is not None else None


def _fold_functional(model):
    """Rebuilds a functional model with conv -> BN node pairs merged (recursively)."""
    replacements = {}
    dropped = set()
    for layer in model.layers:
        if is_functional(layer):
            replacements[id(layer)] = _fold_functional(layer)
    for bn in model.layers:
        if not _is_foldable_bn(bn):
            continue
        conv = _producer(bn)
        if (conv is None or not _is_linear_conv(conv) or len(conv._inbound_nodes) != 1
                or len(conv._outbound_nodes) != 1 or id(conv) in replacements):
            continue
        replacements[id(conv)] = _fold_conv_bn(conv, bn)
        dropped.add(id(bn))
    if not replacements:
        return model

    def call_function(layer, *args, **kwargs):
        if id(layer) in dropped:  # the BN node disappears: its input is its output
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, clone_function=lambda layer: replacements.get(id(layer), layer),
        call_function=call_function)


# --- dilated convolutions, for ONNX ---------------------------------------------


class _ExplicitPadding:
    """A `"same"`, stride-1 dilated convolution as explicit zero padding followed by the
    `"valid"` convolution: the same values, another graph (see `pad_dilated_convs`)."""

    def __init__(self, pad, **kwargs):
        kwargs["padding"] = "valid"
        super().__init__(**kwargs)
        self.pad = tuple(int(p) for p in pad)

    def call(self, inputs):
        top, bottom, left, right = self.pad
        padded = keras.ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        top, bottom, left, right = self.pad

        def grow(size, extra):
            return None if size is None else size + extra

        padded = (input_shape[0], grow(input_shape[1], top + bottom),
                  grow(input_shape[2], left + right), input_shape[3])
        return super().compute_output_shape(padded)

    def get_config(self):
        config = super().get_config()
        config["pad"] = list(self.pad)
        return config


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class PaddedDepthwiseConv2D(_ExplicitPadding, keras.layers.DepthwiseConv2D):
    """A `"same"`, stride-1 dilated `DepthwiseConv2D` as explicit zero padding followed
    by a `"valid"` convolution (the JPU / JUM branches; see `pad_dilated_convs`).

    Args:
        pad: `(top, bottom, left, right)` zero padding, that of `"same"`.
        **kwargs: `keras.layers.DepthwiseConv2D` arguments (`padding="valid"`).

    Example:
    >>> conv = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")
    >>> padded = PaddedDepthwiseConv2D(pad=(2, 2, 2, 2), kernel_size=3, dilation_rate=2)
    """


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class PaddedConv2D(_ExplicitPadding, keras.layers.Conv2D):
    """A `"same"`, stride-1 dilated `Conv2D` as explicit zero padding followed by a
    `"valid"` convolution (the ASPP branches, a dilated encoder's 3x3 convs; see
    `pad_dilated_convs`).

    Args:
        pad: `(top, bottom, left, right)` zero padding, that of `"same"`.
        **kwargs: `keras.layers.Conv2D` arguments (`padding="valid"`).

    Example:
    >>> padded = PaddedConv2D(pad=(12, 12, 12, 12), filters=8, kernel_size=3,
    ...                       dilation_rate=12)
    >>> tuple(padded(keras.ops.ones((1, 20, 20, 4))).shape)
    (1, 20, 20, 8)
    """


def _same_padding(conv):
    """`(top, bottom, left, right)` of `"same"` for a stride-1 conv (TensorFlow's
    split: the odd pixel at the bottom/right)."""
    pads = []
    for size, rate in zip(conv.kernel_size, conv.dilation_rate):
        total = rate * (size - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


_PADDED = {keras.layers.DepthwiseConv2D: PaddedDepthwiseConv2D,
           keras.layers.Conv2D: PaddedConv2D}


def _needs_padding(layer):
    return (type(layer) in _PADDED and layer.built
            and layer.padding == "same" and layer.data_format == "channels_last"
            and tuple(layer.strides) == (1, 1) and max(layer.dilation_rate) > 1)


def pad_dilated_convs(model):
    """`model` with every dilated `"same"` `DepthwiseConv2D` or `Conv2D` written as a
    `PaddedDepthwiseConv2D` / `PaddedConv2D` with its weights: those held by a layer
    (the JPU / JUM separable convs, the ASPP branches) swapped in place, and the nodes
    of functional graphs (a dilated ResNet encoder at output stride 8 or 16) in
    rebuilt graphs that share every other layer.

    Why: TensorFlow runs a dilated convolution as SpaceToBatchND -> convolution ->
    BatchToSpaceND, with paddings computed from the (dynamic) input size. tf2onnx
    folds that pattern back into one dilated ONNX `Conv` only when the convolution is
    `"valid"` (for `"same"` it would need ONNX auto-padding with dilations, which ONNX
    Runtime lacks), so a `"same"` layer exports as Pad / SpaceToDepth / Transpose /
    DepthToSpace nodes around an undilated conv, padded to a multiple of the rate (an
    ASPP branch at rate 36 on the 64x64 map of a 512 px image convolves 144x144). For
    EncNet+JPU R50 that was about a fifth of the ONNX Runtime time; padding the ASPP
    branches too took DeepLab+JPU R50 at 512 px (Zen 4, 2 cores, fp32) from 1.71-1.81 s
    to 0.94-1.00 s in ONNX Runtime and from 2.13-2.29 s to 0.85-0.86 s in OpenVINO,
    with the same class maps; padding a dilated encoder's convs took EncNet R50 at
    output stride 8 from 1.51-1.56 s to 1.32-1.37 s in OpenVINO fp32 and from
    0.81-0.84 s to 0.34-0.36 s in OpenVINO int8, where NNCF had left the
    space-to-batch convolutions in float. TensorFlow and TFLite run both
    forms at the same speed (their graph optimizers fold the pattern), so only the
    ONNX export (and OpenVINO, converted from it) applies this. Training and Keras
    inference keep the plain layers.

    Mutates the layers of `model`: call it on an `inference_copy` (the ONNX export
    does, after BN folding). Outputs are unchanged up to float rounding.

    Args:
        model: a built Keras model.

    Returns:
        The model with the convolutions swapped: `model` itself when none is a node
        of a functional graph.

    Example:
    >>> import keras_fastfcn as kf
    >>> net = inference_copy(kf.models.FastFCNImageSegmenter(
    ...     kf.models.FastFCNBackbone(width=64), num_classes=3, head="deeplab"))
    >>> net = pad_dilated_convs(net)
    >>> sum(isinstance(layer, (PaddedConv2D, PaddedDepthwiseConv2D))
    ...     for layer in all_layers(net))  # three dilated JPU branches, three ASPP ones
    6
    """
    _swap_sublayers(model, _padded)
    return _pad_functional(model) if is_functional(model) else model


def _padded(conv):
    """`conv` as a `PaddedConv2D` / `PaddedDepthwiseConv2D`, or None if it needs none."""
    if not _needs_padding(conv):
        return None
    weights = conv.get_weights()
    return _new_conv(conv, weights[0], weights[1] if conv.use_bias else None,
                     _PADDED[type(conv)], pad=_same_padding(conv))


def _pad_functional(model):
    """Rebuilds a functional model with its dilated conv nodes padded (recursively)."""
    replacements = {}
    for layer in model.layers:
        new = _pad_functional(layer) if is_functional(layer) else _padded(layer)
        if new is not None and new is not layer:
            replacements[id(layer)] = new
    if not replacements:
        return model
    return keras.models.clone_model(
        model, clone_function=lambda layer: replacements.get(id(layer), layer))


# --- the logits resize, for every export ----------------------------------------


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class NativeBilinearResize(BilinearResize):
    """`BilinearResize(align_corners=True)` through TensorFlow's `ResizeBilinear` op: the
    same values (TensorFlow's `align_corners=True` and PyTorch's are one formula), in
    one op that every export format has a kernel for.

    Why: `BilinearResize` is written from `keras.ops` gathers so that it runs on every
    Keras backend, and the exports then carry those gathers: tf2onnx and the TFLite
    converter keep them as Gather / Sub / Mul / Add nodes. For the final logits (59
    classes, 64 -> 512 px) with the argmax after them, the native op took, on the AMX
    Xeon: TensorFlow 30 -> 17 ms, ONNX Runtime 34 -> 20 ms (an ONNX `Resize` with
    `align_corners`), TFLite 41 -> 14 ms (`RESIZE_BILINEAR`), with the same argmax.
    Export-only (`native_resizes`): it is TensorFlow code, and Keras inference keeps
    the portable layer (where XLA fuses its gathers). `method` is accepted (the
    config of the layer it replaces) and unused: there is one native form.

    Example:
    >>> up = NativeBilinearResize()
    >>> tuple(up([keras.ops.ones((1, 4, 4, 2)), keras.ops.ones((1, 15, 9, 3))]).shape)
    (1, 15, 9, 2)
    """

    def __init__(self, align_corners=True, method="auto", **kwargs):
        if not align_corners:
            raise ValueError("NativeBilinearResize is TensorFlow's align_corners=True "
                             "resize; keep BilinearResize for align_corners=False.")
        super().__init__(align_corners=True, method=method, **kwargs)

    def call(self, inputs, training=None):
        import tensorflow as tf

        x, reference = inputs
        x = keras.ops.cast(x, self.compute_dtype)
        out = tf.raw_ops.ResizeBilinear(images=x, size=tf.shape(reference)[1:3],
                                        align_corners=True, half_pixel_centers=False)
        return keras.ops.cast(out, self.compute_dtype)


def native_resizes(model, sublayers=True):
    """Runs the align_corners resizes of `model` as `NativeBilinearResize`: the
    `BilinearResize` sublayers held by its layers (the `upsample` of the JPU, JUM and
    pyramid pooling) are replaced in place, and the `BilinearResize` nodes of its
    top-level functional graph (the logits resize) in a new graph that shares every
    other layer. Resize nodes inside a nested functional model are left as they are.

    Mutates the layers of `model`: call it on an `inference_copy` (every export does,
    after BatchNorm folding), or with `sublayers=False`.

    Args:
        model: a built Keras model.
        sublayers: bool, also swap the sublayers of its layers (in place); False
            swaps only the top-level graph's resizes and leaves `model` untouched.

    Returns:
        The model with the top-level resizes swapped; `model` itself when it has
        none or is not functional.

    Example:
    >>> import keras_fastfcn as kf
    >>> from keras_fastfcn.inference import logits_model
    >>> net = native_resizes(inference_copy(logits_model(
    ...     kf.models.FastFCNImageSegmenter(
    ...     kf.models.FastFCNBackbone(width=64), num_classes=3, head="fcn"))))
    >>> type(net.get_layer("logits")).__name__, type(net.get_layer("jpu").upsample).__name__
    ('NativeBilinearResize', 'NativeBilinearResize')
    """
    def swappable(layer):
        return type(layer) is BilinearResize and layer.align_corners

    def native(layer):
        return NativeBilinearResize.from_config(layer.get_config()) if swappable(layer) else None

    if sublayers:
        _swap_sublayers(model, native)
    if not is_functional(model) or not any(swappable(layer) for layer in model.layers):
        return model
    return keras.models.clone_model(
        model, clone_function=lambda layer: native(layer) if swappable(layer) else layer)
