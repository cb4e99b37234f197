"""Joint Pyramid Upsampling (Wu et al., 2019, arXiv:1903.11816).

Mirrors `JPU`, `JUM` and `JPU_X` of the official code (wuhuikai/FastFCN,
`encoding/nn/customize.py`): same widths, order of operations and parameter
counts, with sublayer names matching the official module names so checkpoints
convert one to one.
"""

import keras
from keras import ops

from keras_fastfcn.layers.conv import ConvBNReLU, SeparableConvBN, make_norm
from keras_fastfcn.layers.resize import BilinearResize

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")

# Default of the `remat` option of JPU, JUM and JPUX (see `JPU`): on, because it
# changes no result and costs little (about +4% of a ResNet-50 training step on CPU)
# for much less training memory (about -0.5 GB of peak RSS at crop 480, batch 2).
REMAT_DEFAULT = True


def _branches_output(branches, feat, training, leading=()):
    """The parallel branches on `feat`, concatenated after `leading` maps, with the
    branches' ReLU (see `DilatedBranch`).

    In training the ReLU is applied once, to the concatenation: the same values, but
    the backward pass then keeps one copy (the concatenation) instead of each
    branch's output too. At inference it is applied per branch, where it fuses with
    the branch's last convolution (oneDNN, ONNX Runtime and TFLite all fuse a conv's
    bias and ReLU) instead of another pass over the `len(branches) * width` maps at
    stride 8. `leading` maps must be ReLU outputs already.

    The branches are chained (see `SeparableConvBN`), so that under remat their
    recomputations run one after another. Same values either way.
    """
    per_branch = not training
    outputs = list(leading)
    for i, branch in enumerate(branches):
        if i == len(branches) - 1:
            # The last one passes nothing on (see `SeparableConvBN`): its backward
            # pass starts the chain.
            outputs.append(branch(feat, training=training, activation=per_branch))
        else:
            out, feat = branch(feat, training=training, chain=True, activation=per_branch)
            outputs.append(out)
    out = ops.concatenate(outputs, axis=-1)
    return out if per_branch else ops.relu(out)


def _as_feature_list(inputs, name):
    single = isinstance(inputs, (list, tuple)) and any(
        v is None or isinstance(v, int) for v in inputs)  # one shape, not a list of them
    if single or not isinstance(inputs, (list, tuple)) or len(inputs) < 3:
        raise ValueError(
            f"{name} expects a list of 3 feature maps [C3, C4, C5] (strides 8, 16, 32); "
            f"got {type(inputs).__name__}"
            + (f" of length {len(inputs)}" if isinstance(inputs, (list, tuple)) and not single
               else f" of shape {tuple(inputs)}" if single else "")
            + "."
        )
    return list(inputs)[-3:]


def _check_feature_shapes(shapes, name):
    for i, shape in enumerate(shapes):
        if len(shape) != 4:
            raise ValueError(f"{name}: feature {i} must be 4-D (B, H, W, C), got shape {shape}.")
        if shape[-1] is None:
            raise ValueError(f"{name}: feature {i} needs a known channel count, got shape {shape}.")


def _check_stride_order(shapes, name):
    """Refuses taps given finest last (e.g. `[C5, C4, C3]`): each feature map must be
    at most as large as the one before it. Checked wherever the sizes are known
    (fixed-size inputs, eager calls, JAX tracing)."""
    for axis in (1, 2):
        sizes = [shape[axis] for shape in shapes]
        for before, after in zip(sizes, sizes[1:]):
            if before is not None and after is not None and after > before:
                raise ValueError(
                    f"{name} takes its feature maps finest first ([C3, C4, C5]: strides 8, "
                    f"16, 32), got spatial sizes {[tuple(s[1:3]) for s in shapes]}: reversed?")


class _BranchRemat:
    """`remat` of a layer with `dilation_branches` (JPU, JUM): settable after building."""

    @property
    def remat(self):
        return all(branch.remat for branch in self.dilation_branches)

    @remat.setter
    def remat(self, value):
        for branch in self.dilation_branches:
            branch.remat = value


@_register
class DilatedBranch(keras.layers.Layer):
    """SeparableConvBN -> norm -> ReLU: one `dilationK` branch of JPU / JUM.

    `remat` is passed to the `SeparableConvBN` (see there).
    """

    def __init__(self, filters, dilation_rate, norm="batch", remat=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.dilation_rate = int(dilation_rate)
        self.norm = norm
        self.sep = SeparableConvBN(filters, 3, dilation_rate, norm=norm, remat=remat,
                                   dtype=self.dtype_policy, name="sep")
        self.bn = make_norm(norm, "bn", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.sep.build(input_shape)
        self.bn.build(self.sep.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None, chain=False, activation=True):
        # Used by JPU / JUM: `chain` also returns the input, as SeparableConvBN does;
        # `activation=False` leaves the ReLU to the caller (see `_branches_output`).
        x, passed = self.sep(inputs, training=training, chain=True) if chain else (
            self.sep(inputs, training=training), inputs)
        out = self.bn(x, training=training)
        if activation:
            out = ops.relu(out)
        return (out, passed) if chain else out

    @property
    def remat(self):
        return self.sep.remat

    @remat.setter
    def remat(self, value):
        self.sep.remat = bool(value)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def compute_output_spec(self, inputs, training=None, chain=False, activation=True):
        out = keras.KerasTensor(self.compute_output_shape(inputs.shape), self.compute_dtype)
        return (out, keras.KerasTensor(inputs.shape, self.compute_dtype)) if chain else out

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, dilation_rate=self.dilation_rate, norm=self.norm,
                      remat=self.remat)
        return config


@_register
class JPU(_BranchRemat, keras.layers.Layer):
    """Joint Pyramid Upsampling: stride-8 features from a stride-32 backbone.

    Projects C3, C4, C5 (strides 8, 16, 32) with conv3x3 + BN + ReLU to `width`
    channels, upsamples the C4 and C5 projections to C3's size (bilinear), concatenates
    them (3 * width channels) and applies parallel separable 3x3 convs with the given
    dilations (depthwise -> BN -> pointwise, then BN + ReLU), whose outputs are
    concatenated: `len(dilations) * width` channels at stride 8.

    With `width=512` and inputs of 512, 1024 and 2048 channels it has 19,735,552
    trainable parameters, as the official module.

    Training memory: the branches' depthwise outputs and their normalized copies
    (`3 * width` channels each, at stride 8) dominate what the layer would keep for
    the backward pass. With `remat=True` (the default) they are recomputed there
    instead, one branch at a time (see `SeparableConvBN`): the same outputs,
    gradients and BatchNorm statistics, for about 0.5 GB less at crop 480, batch 2
    (width 512) and about 4% more time per ResNet-50 training step on CPU. Set
    `remat=False` for the plain computation. In training the branches' ReLU is
    applied once, after their concatenation (same values, one saved copy less); at
    inference per branch, where it fuses with the pointwise conv. The upsampling is
    the layer's `upsample` (a weightless `BilinearResize`): in training the
    interpolation-matrix form of `resize_bilinear`, whose gradient needs no full-size
    temporaries, at inference the gather form; the exports swap it for the runtime's
    own bilinear op (`keras_fastfcn.inference.fold.native_resizes`). Inference is the
    same computation with either setting.

    Args:
        width: int, channels of each projection and of each dilated branch.
        dilations: tuple of ints, dilation rates of the parallel branches.
        align_corners: bool, resize semantics (the official code uses True).
        remat: bool, rematerialize the separable convs' intermediates in training
            (default True, see above).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: list `[c3, c4, c5]` of NHWC tensors (a longer list, e.g.
            `[c2, c3, c4, c5]`, uses its last three).

    Example:
    >>> jpu = JPU(width=32)
    >>> c3, c4, c5 = (keras.ops.ones((1, 16, 16, 8)), keras.ops.ones((1, 8, 8, 16)),
    ...               keras.ops.ones((1, 4, 4, 32)))
    >>> jpu([c3, c4, c5]).shape
    (1, 16, 16, 128)
    """

    def __init__(self, width=512, dilations=(1, 2, 4, 8), align_corners=True,
                 remat=REMAT_DEFAULT, **kwargs):
        super().__init__(**kwargs)
        if int(width) < 1:
            raise ValueError(f"JPU width must be a positive int, got {width!r}.")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"JPU dilations must be positive ints, got {dilations!r}.")
        self.width = int(width)
        self.dilations = dilations
        self.align_corners = bool(align_corners)
        kw = dict(dtype=self.dtype_policy)
        self.conv5 = ConvBNReLU(self.width, 3, name="conv5", **kw)
        self.conv4 = ConvBNReLU(self.width, 3, name="conv4", **kw)
        self.conv3 = ConvBNReLU(self.width, 3, name="conv3", **kw)
        self.upsample = BilinearResize(self.align_corners, name="upsample", **kw)
        self.dilation_branches = [
            DilatedBranch(self.width, d, remat=remat, name=f"dilation{i + 1}", **kw)
            for i, d in enumerate(self.dilations)
        ]

    def build(self, input_shape):
        shapes = _as_feature_list(input_shape, "JPU")
        _check_feature_shapes(shapes, "JPU")
        _check_stride_order(shapes, "JPU")
        self.conv3.build(shapes[0])
        self.conv4.build(shapes[1])
        self.conv5.build(shapes[2])
        fused = tuple(shapes[0][:-1]) + (3 * self.width,)
        for branch in self.dilation_branches:
            branch.build(fused)
        self.built = True

    def call(self, inputs, training=None):
        c3, c4, c5 = _as_feature_list(inputs, "JPU")
        _check_stride_order([tuple(c.shape) for c in (c3, c4, c5)], "JPU")
        f3 = self.conv3(c3, training=training)
        f4 = self.upsample([self.conv4(c4, training=training), f3], training=training)
        f5 = self.upsample([self.conv5(c5, training=training), f3], training=training)
        # Official order: [conv5, conv4, conv3].
        feat = ops.concatenate([f5, f4, f3], axis=-1)
        return _branches_output(self.dilation_branches, feat, training)

    def compute_output_shape(self, input_shape):
        c3 = _as_feature_list(input_shape, "JPU")[0]
        return tuple(c3[:-1]) + (len(self.dilations) * self.width,)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, dilations=list(self.dilations),
                      align_corners=self.align_corners, remat=self.remat)
        return config


@_register
class JUM(_BranchRemat, keras.layers.Layer):
    """Joint Upsampling Module, the building block of JPU_X.

    Projects a low-resolution map `x_l` and a high-resolution map `x_h` with
    conv3x3 + BN + ReLU to `width`, upsamples the first to the second's size,
    concatenates them and applies three separable convs with dilations
    `dilation * (1, 2, 4)`; unlike JPU, the norms inside and after the separable
    convs are GroupNorm(32) (as the official `JUM`). Output: the upsampled `x_l`
    projection followed by the three branches, `4 * width` channels.

    Args:
        width: int, channels of the projections and branches (a multiple of 32).
        dilation: int, base dilation of the three branches.
        align_corners: bool, resize semantics.
        remat: bool, rematerialize the separable convs' intermediates in training
            (default True, see `JPU`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> jum = JUM(width=32, dilation=1)
    >>> jum([keras.ops.ones((1, 4, 4, 16)), keras.ops.ones((1, 8, 8, 8))]).shape
    (1, 8, 8, 128)
    """

    def __init__(self, width, dilation=1, align_corners=True, remat=REMAT_DEFAULT, **kwargs):
        super().__init__(**kwargs)
        if int(width) % 32:
            raise ValueError(f"JUM width must be a multiple of 32 (GroupNorm(32)), got {width}.")
        self.width = int(width)
        self.dilation = int(dilation)
        self.align_corners = bool(align_corners)
        kw = dict(dtype=self.dtype_policy)
        self.conv_l = ConvBNReLU(self.width, 3, name="conv_l", **kw)
        self.conv_h = ConvBNReLU(self.width, 3, name="conv_h", **kw)
        self.upsample = BilinearResize(self.align_corners, name="upsample", **kw)
        self.dilation_branches = [
            DilatedBranch(self.width, self.dilation * m, norm="group", remat=remat,
                          name=f"dilation{i + 1}", **kw)
            for i, m in enumerate((1, 2, 4))
        ]

    def build(self, input_shape):
        shape_l, shape_h = input_shape
        _check_feature_shapes([shape_l, shape_h], "JUM")
        self.conv_l.build(shape_l)
        self.conv_h.build(shape_h)
        fused = tuple(shape_h[:-1]) + (2 * self.width,)
        for branch in self.dilation_branches:
            branch.build(fused)
        self.built = True

    def call(self, inputs, training=None):
        x_l, x_h = inputs
        f_h = self.conv_h(x_h, training=training)
        f_l = self.upsample([self.conv_l(x_l, training=training), f_h], training=training)
        feat = ops.concatenate([f_l, f_h], axis=-1)
        return _branches_output(self.dilation_branches, feat, training, leading=[f_l])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1][:-1]) + (4 * self.width,)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, dilation=self.dilation,
                      align_corners=self.align_corners, remat=self.remat)
        return config


@_register
class JPUX(keras.layers.Layer):
    """The official "JPU_X" variant: two chained JUM blocks.

    `jum_1` fuses C4 into C3 (width // 2, dilations 1, 2, 4); `jum_2` fuses C5
    into that result (width, dilations 2, 4, 8). Output: `4 * width` channels at
    C3's stride. With `width=512` and inputs of 512, 1024 and 2048 channels it has
    19,719,168 trainable parameters, as the official module.

    Args:
        width: int, a multiple of 64 (both JUMs use GroupNorm(32)).
        align_corners: bool, resize semantics.
        remat: bool, rematerialize the separable convs' intermediates in training
            (default True, see `JPU`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> jpux = JPUX(width=64)
    >>> c3, c4, c5 = (keras.ops.ones((1, 16, 16, 8)), keras.ops.ones((1, 8, 8, 16)),
    ...               keras.ops.ones((1, 4, 4, 32)))
    >>> jpux([c3, c4, c5]).shape
    (1, 16, 16, 256)
    """

    def __init__(self, width=512, align_corners=True, remat=REMAT_DEFAULT, **kwargs):
        super().__init__(**kwargs)
        if int(width) % 64:
            raise ValueError(f"JPUX width must be a multiple of 64, got {width}.")
        self.width = int(width)
        self.align_corners = bool(align_corners)
        kw = dict(align_corners=self.align_corners, remat=remat, dtype=self.dtype_policy)
        self.jum_1 = JUM(self.width // 2, 1, name="jum_1", **kw)
        self.jum_2 = JUM(self.width, 2, name="jum_2", **kw)

    def build(self, input_shape):
        c3, c4, c5 = _as_feature_list(input_shape, "JPUX")
        _check_feature_shapes([c3, c4, c5], "JPUX")
        self.jum_1.build([c4, c3])
        self.jum_2.build([c5, self.jum_1.compute_output_shape([c4, c3])])
        self.built = True

    def call(self, inputs, training=None):
        c3, c4, c5 = _as_feature_list(inputs, "JPUX")
        feat = self.jum_1([c4, c3], training=training)
        return self.jum_2([c5, feat], training=training)

    @property
    def remat(self):
        return self.jum_1.remat and self.jum_2.remat

    @remat.setter
    def remat(self, value):
        self.jum_1.remat = value
        self.jum_2.remat = value

    def compute_output_shape(self, input_shape):
        c3 = _as_feature_list(input_shape, "JPUX")[0]
        return tuple(c3[:-1]) + (4 * self.width,)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, align_corners=self.align_corners, remat=self.remat)
        return config
