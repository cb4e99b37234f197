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

# How SeparableConvBN computes its depthwise conv: as `keras.layers.DepthwiseConv2D`
# calls it (False), as kernel_size**2 shifted multiply-adds (`depthwise_shifted`,
# True), or "auto": shifted on the JAX backend, the conv elsewhere. XLA's CPU
# depthwise conv is slow: on (1, 64, 64, 1536), 2 shared cores of an AMD EPYC (Zen 4),
# it took 270-330 ms where the shifted form took 15-40 ms (dilations 1-8), and forward
# + gradients 7.4-10.1 s against 0.27-0.33 s; a whole JPU (width 512, 64x64 at stride
# 8, batch 1) 2.5 s against 1.3 s at inference, 41 s against 9.2 s in training. On
# TensorFlow the conv is the faster form (JPU 0.67 s against 0.87 s, training 2.4 s
# against 2.7 s). Medians of interleaved runs, benchmarks/depthwise_jax.py. Same
# weights (`conv1`'s kernel) and serialization either way; the values differ by float
# rounding only (another summation order). Read when a call is traced.
SHIFTED_DEPTHWISE = "auto"


def _shifted_depthwise():
    """Whether SeparableConvBN uses `depthwise_shifted` (`SHIFTED_DEPTHWISE`)."""
    if SHIFTED_DEPTHWISE == "auto":
        return keras.backend.backend() == "jax"  # faster in training too
    return bool(SHIFTED_DEPTHWISE)


def depthwise_shifted(inputs, kernel, dilation_rate=1, bias=None):
    """A stride-1, `"same"`, channels-last depthwise conv (depth multiplier 1) as a sum
    of shifted copies of the input times the kernel's taps.

    `keras.ops.depthwise_conv`'s values up to float rounding. XLA on CPU (the JAX
    backend) runs a dilated depthwise conv far slower than these fused
    multiply-adds; see `SHIFTED_DEPTHWISE`.

    Args:
        inputs: NHWC tensor.
        kernel: `(kh, kw, channels, 1)`, a `DepthwiseConv2D` kernel.
        dilation_rate: int or `(rate_h, rate_w)`.
        bias: optional `(channels,)` tensor, added.

    Example:
    >>> x = keras.ops.ones((1, 8, 8, 4))
    >>> depthwise_shifted(x, keras.ops.ones((3, 3, 4, 1)), 2).shape
    (1, 8, 8, 4)
    """
    rates = ((dilation_rate, dilation_rate) if isinstance(dilation_rate, int)
             else tuple(dilation_rate))
    kh, kw = kernel.shape[0], kernel.shape[1]
    # "same" for stride 1: the odd pixel of padding at the bottom / right, as
    # TensorFlow and XLA split it.
    total = (rates[0] * (kh - 1), rates[1] * (kw - 1))
    padded = keras.ops.pad(inputs, [[0, 0], [total[0] // 2, total[0] - total[0] // 2],
                                    [total[1] // 2, total[1] - total[1] // 2], [0, 0]])
    dtype = keras.backend.standardize_dtype(padded.dtype)
    if dtype in ("float16", "bfloat16"):
        # Accumulate in float32, as the convolutions do: nine 16-bit roundings would
        # be several ulps off them.
        padded, kernel = (keras.ops.cast(t, "float32") for t in (padded, kernel))
    out = None
    for i in range(kh):
        # Each tap's window ends `total - offset` before the padded end (None: at it),
        # so no slice needs the (possibly dynamic) input size.
        rows = slice(i * rates[0], (i * rates[0] - total[0]) or None)
        for j in range(kw):
            cols = slice(j * rates[1], (j * rates[1] - total[1]) or None)
            tap = padded[:, rows, cols, :] * kernel[i, j, :, 0]
            out = tap if out is None else out + tap
    if bias is not None:
        out = out + keras.ops.cast(bias, out.dtype)
    return keras.ops.cast(out, dtype)


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
            kernel_initializer="he_normal", data_format="channels_last",
            dtype=self.dtype_policy, name="conv",
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

    With `remat=True`, a training call keeps only its input and output for the
    backward pass and recomputes the depthwise output and its normalization there
    (`keras.remat`). In JPU these intermediates are `3 * width` channels at stride 8
    (plus, for dilated depthwise convs on TensorFlow, their padded space-to-batch
    copy), so this is most of the JPU's activation memory. The recomputation is
    cheap: the depthwise conv and the norm; the pointwise conv's output is not
    needed by its own gradient, so TensorFlow and JAX drop that recomputation (the
    PyTorch backend's checkpointing does redo it). Outputs, gradients and
    BatchNorm moving statistics are the same as without remat (moving statistics
    are updated once per call, from the first forward pass). Inference, and a
    frozen layer (`trainable=False`), run without it.

    On the JAX backend the depthwise conv runs as nine shifted multiply-adds on
    `conv1`'s kernel (`depthwise_shifted`; the module's `SHIFTED_DEPTHWISE` says
    when): XLA's own CPU depthwise conv is several times slower.

    Call arguments:
        inputs: NHWC tensor.
        training: bool, training mode (batch statistics; remat applies).
        chain: bool, also return the input, as `(outputs, inputs)`. With remat in
            training the returned input is routed through the rematerialized
            function, so that a following rematerialized call made on it runs its
            backward pass (and recomputation) before this one's instead of at the
            same time: JPU chains its parallel branches this way, so that only one
            branch's intermediates are rebuilt at a time (a dataflow executor such
            as TensorFlow's would otherwise recompute all of them at once).

    Args:
        filters: int, output channels of the pointwise conv.
        kernel_size: int, depthwise kernel size (3 in the paper).
        dilation_rate: int, depthwise dilation.
        norm: `"batch"` (JPU) or `"group"` (GroupNorm(32), JPU_X's JUM blocks).
        remat: bool, rematerialize the intermediates in training (see above).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> sep = SeparableConvBN(32, dilation_rate=2)
    >>> sep(keras.ops.ones((1, 16, 16, 64))).shape
    (1, 16, 16, 32)
    """

    def __init__(self, filters, kernel_size=3, dilation_rate=1, norm="batch", remat=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.norm = norm
        self.remat = bool(remat)
        # Names mirror the official module (conv1, bn, pointwise) for conversion.
        self.conv1 = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", dilation_rate=self.dilation_rate,
            use_bias=False, data_format="channels_last", dtype=self.dtype_policy,
            name="conv1",
        )
        self.bn = make_norm(norm, "bn", dtype=self.dtype_policy)
        self.pointwise = keras.layers.Conv2D(
            self.filters, 1, use_bias=False, kernel_initializer="he_normal",
            data_format="channels_last", dtype=self.dtype_policy, name="pointwise",
        )

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.bn.build(input_shape)
        self.pointwise.build(input_shape)
        self.built = True

    def call(self, inputs, training=None, chain=False):
        # A frozen layer (a frozen backbone) runs plainly: it keeps no weight
        # gradients to make room for, and TensorFlow's recompute_grad of a function
        # with only frozen weights failed under mixed precision (AddN of bfloat16
        # and float32 gradients).
        if self.remat and training and self.trainable:
            out, passed = self._rematerialized_call(inputs, chain)
        else:
            out, passed = self._forward(inputs, training=training), inputs
        return (out, passed) if chain else out

    def _forward(self, inputs, training=None):
        x = self._depthwise(inputs)
        x = self.bn(x, training=training)
        return self.pointwise(x)

    def _depthwise(self, inputs):
        """`conv1` on `inputs`, in the form `SHIFTED_DEPTHWISE` picks. `conv1` may be
        another layer by now (BN folding: a new one with the BN's scale in its kernel;
        the ONNX export: a padded subclass): only a plain `"same"`, stride-1
        `DepthwiseConv2D` is rewritten, on its own kernel, bias and activation."""
        conv = self.conv1
        if not (_shifted_depthwise() and type(conv) is keras.layers.DepthwiseConv2D
                and conv.padding == "same" and tuple(conv.strides) == (1, 1)
                and conv.depth_multiplier == 1 and conv.data_format == "channels_last"):
            return conv(inputs)
        out = depthwise_shifted(inputs, conv.kernel, conv.dilation_rate,
                                conv.bias if conv.use_bias else None)
        return conv.activation(out)

    def _rematerialized_call(self, inputs, chain=False):
        # The rematerialized function must be pure: it runs twice (forward and
        # backward), and a BatchNorm called normally would update its moving
        # statistics both times. So the sublayers run in a StatelessScope on
        # explicitly passed weights (which also makes the gradients flow through
        # the arguments on every backend), the new moving statistics come out as
        # extra outputs, and they are assigned once, here.
        trainable = list(self.trainable_variables)
        frozen = list(self.non_trainable_variables)

        # With `chain`, the input also comes out, first: TensorFlow's recompute_grad
        # starts the recomputation once the gradient of the first output is ready,
        # which for the passed input is when the next chained call's backward pass is
        # done. (Without chain the first output is the result, whose gradient is the
        # trigger; an unused passed input would have a zero gradient at once.)
        def forward(x, *values):
            mapping = list(zip(trainable + frozen, values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                y = self._forward(x, training=True)
            stats = tuple(scope.get_current_value(v) for v in frozen)
            return ((x, y) if chain else (y,)) + stats

        # The moving statistics are copied: they are assigned below, and PyTorch's
        # checkpointing rejects inputs changed in place before the recomputation.
        values = [v.value for v in trainable] + [keras.ops.copy(v.value) for v in frozen]
        results = keras.remat(forward)(inputs, *values)
        if chain:
            passed, out, *updates = results
        else:
            (out, *updates), passed = results, inputs
        for variable, value in zip(frozen, updates):
            variable.assign(value)
        return out, passed

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def compute_output_spec(self, inputs, training=None, chain=False):
        out = keras.KerasTensor(self.compute_output_shape(inputs.shape), self.compute_dtype)
        return (out, keras.KerasTensor(inputs.shape, self.compute_dtype)) if chain else out

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      dilation_rate=self.dilation_rate, norm=self.norm, remat=self.remat)
        return config
