"""Segmentation heads of the official FastFCN code (`encoding/models/*.py`).

Each head takes the stride-8 features (JPU output or a dilated C5) and returns
logits at that stride. Widths follow the official code, which derives them from
the input channels (2048 for ResNet C5 and for JPU with width 512): FCN and PSP use
`in // 4` = 512, DeepLabV3 uses `in // 8` = 256, EncNet a fixed 512.
`keras.layers.SpatialDropout2D` plays PyTorch's `Dropout2d`.
"""

import numbers

import keras
from keras import ops

from keras_fastfcn.layers.conv import ConvBNReLU
from keras_fastfcn.layers.encoding import EncModule
from keras_fastfcn.layers.resize import BilinearResize

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")


def adaptive_avg_pool2d(x, output_size):
    """PyTorch `AdaptiveAvgPool2d` on NHWC input of any (dynamic) size.

    Bin `i` of `n` over a length `L` averages `[floor(i*L/n), ceil((i+1)*L/n))`,
    the same bins as PyTorch, written as two small averaging matmuls so it works for
    dynamic shapes and exports to ONNX.

    Args:
        x: 4-D tensor `(batch, height, width, channels)`.
        output_size: int or `(out_h, out_w)`.

    Returns:
        Tensor `(batch, out_h, out_w, channels)`.

    Example:
    >>> adaptive_avg_pool2d(keras.ops.ones((1, 7, 5, 3)), 2).shape
    (1, 2, 2, 3)
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    ph = _pool_matrix(ops.shape(x)[1], output_size[0], x.dtype)
    pw = _pool_matrix(ops.shape(x)[2], output_size[1], x.dtype)
    x = ops.einsum("ih,bhwc->biwc", ph, x)
    return ops.einsum("jw,biwc->bijc", pw, x)


def _pool_matrix(length, bins, dtype):
    # `length` is a Python int on JAX (static shapes) and may be a scalar tensor
    # on TensorFlow; arange takes either, but not a traced int on JAX.
    pos = ops.arange(length, dtype="int32")
    length_i = ops.cast(length, "int32")
    idx = ops.arange(bins, dtype="int32")
    start = (idx * length_i) // bins
    end = ((idx + 1) * length_i + bins - 1) // bins
    inside = ops.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None])
    weights = ops.cast(inside, "float32") / ops.cast(end - start, "float32")[:, None]
    return ops.cast(weights, dtype)


def _channels(input_shape, name, divisor=1):
    """The channel count C of `input_shape`; a ValueError unless it is known and its
    branches of `C // divisor` channels have at least one."""
    if len(input_shape) != 4 or input_shape[-1] is None:
        raise ValueError(f"{name} expects (B, H, W, C) with a known C, got shape {input_shape}.")
    channels = int(input_shape[-1])
    if channels // divisor < 1:
        raise ValueError(f"{name} needs at least {divisor} input channels (its branches have "
                         f"C // {divisor}), got C = {channels}.")
    return channels


def _check_num_classes(num_classes):
    """`num_classes` as an int (numpy integers too) if it is >= 1; else ValueError."""
    if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
    return int(num_classes)


class _ClassifierMixin:
    """Dropout2d + 1x1 conv with bias: the last two modules of every official head."""

    def _make_classifier(self, dropout):
        self.dropout = keras.layers.SpatialDropout2D(dropout, name="dropout",
                                                     data_format="channels_last",
                                                     dtype=self.dtype_policy)
        self.classifier = keras.layers.Conv2D(self.num_classes, 1, name="classifier",
                                              data_format="channels_last",
                                              dtype=self.dtype_policy)

    def _classify(self, x, training):
        return self.classifier(self.dropout(x, training=training))

    def _build_classifier(self, shape):
        self.dropout.build(shape)
        self.classifier.build(shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)


@_register
class FCNHead(_ClassifierMixin, keras.layers.Layer):
    """FCN head: conv3x3 (C // 4) + BN + ReLU -> Dropout2d(0.1) -> conv1x1.

    Also the auxiliary head on C4 (1024 channels -> 256) used for the aux loss.

    Args:
        num_classes: int, output channels.
        inter_channels: int or None, width of the 3x3 conv (default `C // 4`).
        dropout: float, Dropout2d rate.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> FCNHead(5)(keras.ops.ones((1, 8, 8, 64))).shape
    (1, 8, 8, 5)
    """

    def __init__(self, num_classes, inter_channels=None, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.inter_channels = inter_channels
        self.dropout_rate = float(dropout)
        self.conv5 = None
        self._make_classifier(self.dropout_rate)

    def build(self, input_shape):
        inter = self.inter_channels or _channels(input_shape, "FCNHead", 4) // 4
        self.conv5 = ConvBNReLU(inter, 3, name="conv5", dtype=self.dtype_policy)
        self.conv5.build(input_shape)
        self._build_classifier(self.conv5.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        return self._classify(self.conv5(inputs, training=training), training)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, inter_channels=self.inter_channels,
                      dropout=self.dropout_rate)
        return config


@_register
class PyramidPooling(keras.layers.Layer):
    """PSPNet's pyramid pooling: the input and its 1, 2, 3, 6-bin pooled versions.

    Each bin size: adaptive average pooling -> conv1x1 (C // 4) + BN + ReLU ->
    bilinear upsampling back to the input size; the four results are concatenated
    after the input (2 * C channels).

    Args:
        bins: tuple of ints, adaptive pooling output sizes.
        align_corners: bool, resize semantics.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> PyramidPooling()(keras.ops.ones((1, 12, 12, 16))).shape
    (1, 12, 12, 32)
    """

    def __init__(self, bins=(1, 2, 3, 6), align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.bins = tuple(int(b) for b in bins)
        self.align_corners = bool(align_corners)
        self.upsample = BilinearResize(self.align_corners, name="upsample",
                                       dtype=self.dtype_policy)
        self.convs = []

    def build(self, input_shape):
        channels = _channels(input_shape, "PyramidPooling", len(self.bins))
        self.convs = [
            ConvBNReLU(channels // len(self.bins), 1, name=f"conv{i + 1}", dtype=self.dtype_policy)
            for i in range(len(self.bins))
        ]
        for conv in self.convs:
            conv.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        feats = [inputs]
        for bins, conv in zip(self.bins, self.convs):
            pooled = conv(adaptive_avg_pool2d(inputs, bins), training=training)
            feats.append(self.upsample([pooled, inputs], training=training))
        return ops.concatenate(feats, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        extra = (channels // len(self.bins)) * len(self.bins)
        return tuple(input_shape[:-1]) + (channels + extra,)

    def get_config(self):
        config = super().get_config()
        config.update(bins=list(self.bins), align_corners=self.align_corners)
        return config


@_register
class PSPHead(_ClassifierMixin, keras.layers.Layer):
    """PSPNet head: PyramidPooling -> conv3x3 (C // 4) + BN + ReLU -> Dropout2d -> conv1x1.

    Args:
        num_classes: int, output channels.
        bins: tuple of ints, pyramid pooling bins.
        dropout: float, Dropout2d rate.
        align_corners: bool, resize semantics.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> PSPHead(5)(keras.ops.ones((1, 12, 12, 16))).shape
    (1, 12, 12, 5)
    """

    def __init__(self, num_classes, bins=(1, 2, 3, 6), dropout=0.1, align_corners=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.bins = tuple(int(b) for b in bins)
        self.dropout_rate = float(dropout)
        self.align_corners = bool(align_corners)
        self.pyramid = PyramidPooling(self.bins, self.align_corners, name="pyramid",
                                      dtype=self.dtype_policy)
        self.conv = None
        self._make_classifier(self.dropout_rate)

    def build(self, input_shape):
        channels = _channels(input_shape, "PSPHead", 4)
        self.pyramid.build(input_shape)
        pooled = self.pyramid.compute_output_shape(input_shape)
        self.conv = ConvBNReLU(channels // 4, 3, name="conv", dtype=self.dtype_policy)
        self.conv.build(pooled)
        self._build_classifier(self.conv.compute_output_shape(pooled))
        self.built = True

    def call(self, inputs, training=None):
        x = self.conv(self.pyramid(inputs, training=training), training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, bins=list(self.bins),
                      dropout=self.dropout_rate, align_corners=self.align_corners)
        return config


@_register
class ASPP(keras.layers.Layer):
    """Atrous Spatial Pyramid Pooling of DeepLabV3 (the official `ASPP_Module`).

    Five branches of `C // 8` channels: conv1x1, three dilated conv3x3 (rates
    12, 24, 36), and global average pooling + conv1x1 broadcast back; each with BN
    + ReLU. They are concatenated and projected by conv1x1 + BN + ReLU, then
    Dropout2d(0.5).

    Args:
        rates: tuple of three ints, atrous rates.
        out_channels: int or None, branch width (default `C // 8`).
        dropout: float, Dropout2d rate after the projection.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> ASPP(rates=(1, 2, 3))(keras.ops.ones((1, 9, 9, 64))).shape
    (1, 9, 9, 8)
    """

    def __init__(self, rates=(12, 24, 36), out_channels=None, dropout=0.5, **kwargs):
        super().__init__(**kwargs)
        self.rates = tuple(int(r) for r in rates)
        self.out_channels = out_channels
        self.dropout_rate = float(dropout)
        self.branches = []
        self.pool_conv = None
        self.project = None
        self.dropout = keras.layers.SpatialDropout2D(self.dropout_rate, name="dropout",
                                                     data_format="channels_last",
                                                     dtype=self.dtype_policy)

    def build(self, input_shape):
        out = self.out_channels or _channels(input_shape, "ASPP", 8) // 8
        kw = dict(dtype=self.dtype_policy)
        self.branches = [ConvBNReLU(out, 1, name="b0", **kw)] + [
            ConvBNReLU(out, 3, dilation_rate=r, name=f"b{i + 1}", **kw)
            for i, r in enumerate(self.rates)
        ]
        self.pool_conv = ConvBNReLU(out, 1, name=f"b{len(self.rates) + 1}", **kw)
        self.project = ConvBNReLU(out, 1, name="project", **kw)
        for layer in self.branches:
            layer.build(input_shape)
        self.pool_conv.build((input_shape[0], 1, 1, input_shape[-1]))
        fused = tuple(input_shape[:-1]) + (out * (len(self.branches) + 1),)
        self.project.build(fused)
        self.dropout.build(tuple(input_shape[:-1]) + (out,))
        self.built = True

    def call(self, inputs, training=None):
        feats = [branch(inputs, training=training) for branch in self.branches]
        pooled = self.pool_conv(ops.mean(inputs, axis=(1, 2), keepdims=True), training=training)
        # Upsampling a 1x1 map (align_corners or not) is a broadcast.
        feats.append(ops.zeros_like(feats[0]) + pooled)
        x = self.project(ops.concatenate(feats, axis=-1), training=training)
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        out = self.out_channels or input_shape[-1] // 8
        return tuple(input_shape[:-1]) + (out,)

    def get_config(self):
        config = super().get_config()
        config.update(rates=list(self.rates), out_channels=self.out_channels,
                      dropout=self.dropout_rate)
        return config


@_register
class ASPPHead(_ClassifierMixin, keras.layers.Layer):
    """DeepLabV3 head: ASPP -> conv3x3 + BN + ReLU -> Dropout2d(0.1) -> conv1x1.

    Args:
        num_classes: int, output channels.
        rates: tuple of three ints, ASPP atrous rates.
        dropout: float, Dropout2d rate before the classifier.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> ASPPHead(5, rates=(1, 2, 3))(keras.ops.ones((1, 9, 9, 64))).shape
    (1, 9, 9, 5)
    """

    def __init__(self, num_classes, rates=(12, 24, 36), dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.rates = tuple(int(r) for r in rates)
        self.dropout_rate = float(dropout)
        self.aspp = ASPP(self.rates, name="aspp", dtype=self.dtype_policy)
        self.block = None
        self._make_classifier(self.dropout_rate)

    def build(self, input_shape):
        self.aspp.build(input_shape)
        shape = self.aspp.compute_output_shape(input_shape)
        self.block = ConvBNReLU(shape[-1], 3, name="block", dtype=self.dtype_policy)
        self.block.build(shape)
        self._build_classifier(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.block(self.aspp(inputs, training=training), training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, rates=list(self.rates),
                      dropout=self.dropout_rate)
        return config


@_register
class EncHead(_ClassifierMixin, keras.layers.Layer):
    """EncNet head: conv5 (512) + BN + ReLU -> EncModule -> Dropout2d(0.1) -> conv1x1.

    conv5 is 1x1 on JPU features (`jpu=True`, as the official EncHead when a JPU
    is used) and 3x3 on a dilated backbone's C5. mmsegmentation's `EncHead` (its
    FastFCN models, registered head `"mmseg_encnet"`) is `jpu=False` on JPU features:
    its bottleneck is 3x3 whatever the input. The official `lateral` (FPN-like)
    option is not implemented: no FastFCN recipe uses it, and with JPU its C4 input
    would sit at stride 16, not 8.

    Args:
        num_classes: int, output channels.
        se_loss: bool, whether to also return the SE (class presence) logits.
        jpu: bool, 1x1 conv5 (JPU) or 3x3 (dilated backbone).
        width: int, channels of conv5 and the EncModule (512 officially).
        num_codes: int, codewords of the Encoding layer (32 officially).
        dropout: float, Dropout2d rate.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call returns:
        Logits `(B, H, W, num_classes)`, or `[logits, se_logits]` with `se_loss`.

    Example:
    >>> logits, se = EncHead(5, width=32, num_codes=4)(keras.ops.ones((2, 8, 8, 64)))
    >>> logits.shape, se.shape
    ((2, 8, 8, 5), (2, 5))
    """

    def __init__(self, num_classes, se_loss=True, jpu=True, width=512, num_codes=32,
                 dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.se_loss = bool(se_loss)
        self.jpu = bool(jpu)
        self.width = int(width)
        if self.width < 1:
            raise ValueError(f"EncHead width must be >= 1, got {width!r}.")
        self.num_codes = int(num_codes)
        self.dropout_rate = float(dropout)
        kw = dict(dtype=self.dtype_policy)
        self.conv5 = ConvBNReLU(self.width, 1 if self.jpu else 3, name="conv5", **kw)
        self.encmodule = EncModule(self.num_classes, self.num_codes, self.se_loss,
                                   name="encmodule", **kw)
        self._make_classifier(self.dropout_rate)

    def build(self, input_shape):
        _channels(input_shape, "EncHead")
        self.conv5.build(input_shape)
        shape = self.conv5.compute_output_shape(input_shape)
        self.encmodule.build(shape)
        self._build_classifier(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.conv5(inputs, training=training)
        outs = self.encmodule(x, training=training)
        if self.se_loss:
            feat, se = outs
            return [self._classify(feat, training), se]
        return self._classify(outs, training)

    def compute_output_shape(self, input_shape):
        logits = tuple(input_shape[:-1]) + (self.num_classes,)
        if self.se_loss:
            return [logits, (input_shape[0], self.num_classes)]
        return logits

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, se_loss=self.se_loss, jpu=self.jpu,
                      width=self.width, num_codes=self.num_codes, dropout=self.dropout_rate)
        return config
