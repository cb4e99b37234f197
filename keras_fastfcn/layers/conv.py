"""Convolution blocks shared by the JPU and the heads.

All layers are channels-last. Normalization defaults follow the official PyTorch
code (`torch.nn.BatchNorm2d`: epsilon 1e-5, momentum 0.1, which is Keras momentum
0.9) so that converted checkpoints reproduce its outputs.
"""

import keras

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
GN_EPSILON = 1e-5

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")


def make_norm(norm, name, axis=-1, groups=32, dtype=None):
    """A BatchNorm (PyTorch defaults) or GroupNorm layer, by name."""
    if norm == "batch":
        return keras.layers.BatchNormalization(
            axis=axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name, dtype=dtype
        )
    if norm == "group":
        return keras.layers.GroupNormalization(
            groups=groups, axis=axis, epsilon=GN_EPSILON, name=name, dtype=dtype
        )
    raise ValueError(f"Unknown norm {norm!r}: expected 'batch' or 'group'.")


@_register
class ConvBNReLU(keras.layers.Layer):
    """Conv2D (no bias, 'same' padding) -> normalization -> optional ReLU.

    The `nn.Sequential(Conv2d(..., bias=False), norm_layer(c), ReLU())` block that
    the official FastFCN code repeats everywhere.

    Args:
        filters: int, output channels.
        kernel_size: int, square kernel size.
        dilation_rate: int, dilation of the convolution.
        activation: bool, whether to apply ReLU after the normalization.
        norm: `"batch"` or `"group"` (GroupNorm with 32 groups).
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> block = ConvBNReLU(64, 3)
    >>> block(keras.ops.ones((1, 16, 16, 8))).shape
    (1, 16, 16, 64)
    """

    def __init__(self, filters, kernel_size=3, dilation_rate=1, activation=True,
                 norm="batch", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.activation = bool(activation)
        self.norm = norm
        self.conv = keras.layers.Conv2D(
            self.filters, self.kernel_size, padding="same",
            dilation_rate=self.dilation_rate, use_bias=False,
            kernel_initializer="he_normal", dtype=self.dtype_policy, name="conv",
        )
        self.bn = make_norm(norm, "bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        x = self.bn(self.conv(inputs), training=training)
        return keras.ops.relu(x) if self.activation else x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      dilation_rate=self.dilation_rate, activation=self.activation,
                      norm=self.norm)
        return config


@_register
class SeparableConvBN(keras.layers.Layer):
    """The paper's separable conv: depthwise 3x3 (dilated) -> norm -> pointwise 1x1.

    `keras.layers.SeparableConv2D` has no normalization between the depthwise and
    the pointwise convolution, so it is only equivalent once that norm is folded
    into the depthwise kernel (inference). Both convolutions have no bias, as in
    the official `SeparableConv2d(..., bias=False)`.

    Args:
        filters: int, output channels of the pointwise conv.
        kernel_size: int, depthwise kernel size (3 in the paper).
        dilation_rate: int, depthwise dilation.
        norm: `"batch"` (JPU) or `"group"` (GroupNorm(32), JPU_X's JUM blocks).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> sep = SeparableConvBN(32, dilation_rate=2)
    >>> sep(keras.ops.ones((1, 16, 16, 64))).shape
    (1, 16, 16, 32)
    """

    def __init__(self, filters, kernel_size=3, dilation_rate=1, norm="batch", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.norm = norm
        # Names mirror the official module (conv1, bn, pointwise) for conversion.
        self.conv1 = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", dilation_rate=self.dilation_rate,
            use_bias=False, dtype=self.dtype_policy, name="conv1",
        )
        self.bn = make_norm(norm, "bn", dtype=self.dtype_policy)
        self.pointwise = keras.layers.Conv2D(
            self.filters, 1, use_bias=False, kernel_initializer="he_normal",
            dtype=self.dtype_policy, name="pointwise",
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.bn.build(input_shape)
        self.pointwise.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        x = self.conv1(inputs)
        x = self.bn(x, training=training)
        return self.pointwise(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      dilation_rate=self.dilation_rate, norm=self.norm)
        return config
