"""mmsegmentation's heads where they differ in structure from the official FastFCN ones.

mmsegmentation (open-mmlab/mmsegmentation, `configs/fastfcn/`) trains FastFCN with
its own decode heads. Its `PSPHead` and `FCNHead` are the official ones
(`keras_fastfcn.layers.PSPHead` with `align_corners=False`, `FCNHead`) and its
`EncHead` is `EncHead(jpu=False)` (a 3x3 bottleneck); only its `ASPPHead` is a
different network from the official DeepLabV3 head, so it is here.
"""

import keras
from keras import ops

from keras_fastfcn.layers.conv import ConvBNReLU
from keras_fastfcn.layers.heads import _channels, _check_num_classes, _ClassifierMixin

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")


@_register
class MMSegASPPHead(_ClassifierMixin, keras.layers.Layer):
    """mmsegmentation's `ASPPHead` (DeepLabV3 as in its FastFCN models).

    Image pooling (global average -> conv1x1 + BN + ReLU, broadcast back) and one
    branch per dilation (conv1x1 for dilation 1, else a dilated conv3x3; each + BN
    + ReLU), all `channels` wide, concatenated in that order (pooling first) ->
    bottleneck conv3x3 (`channels`) + BN + ReLU -> Dropout2d(0.1) -> conv1x1.

    Deviates from the official FastFCN DeepLabV3 head (`ASPPHead`), so that
    mmsegmentation's checkpoints run as trained: there the branches are `C // 8`
    (256) wide with the pooling branch last, and a conv1x1 projection + BN + ReLU +
    Dropout2d(0.5) sits between the ASPP and the 3x3 block. Here there is no
    projection: the 3x3 bottleneck reads the `(len(dilations) + 1) * channels`
    concatenation directly, and the widths are fixed (512 in every mmsegmentation
    FastFCN config), not derived from the input.

    Args:
        num_classes: int, output channels.
        dilations: tuple of ints, one branch each (1: a 1x1 conv); mmsegmentation's
            FastFCN configs use `(1, 12, 24, 36)`.
        channels: int, width of every branch and of the bottleneck.
        dropout: float, Dropout2d rate before the classifier.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> head = MMSegASPPHead(5, dilations=(1, 2), channels=16)
    >>> head(keras.ops.ones((1, 9, 9, 32))).shape
    (1, 9, 9, 5)
    """

    def __init__(self, num_classes, dilations=(1, 12, 24, 36), channels=512, dropout=0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.dilations = tuple(int(d) for d in dilations)
        if not self.dilations or min(self.dilations) < 1:
            raise ValueError(f"dilations must be positive ints, got {dilations!r}.")
        self.channels = int(channels)
        if self.channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}.")
        self.dropout_rate = float(dropout)
        kw = dict(dtype=self.dtype_policy)
        # Names follow mmsegmentation's modules (image_pool, aspp_modules, bottleneck).
        self.image_pool = ConvBNReLU(self.channels, 1, name="image_pool", **kw)
        self.aspp_modules = [
            ConvBNReLU(self.channels, 1 if d == 1 else 3, dilation_rate=d,
                       name=f"aspp_modules_{i}", **kw)
            for i, d in enumerate(self.dilations)
        ]
        self.bottleneck = ConvBNReLU(self.channels, 3, name="bottleneck", **kw)
        self._make_classifier(self.dropout_rate)

    def build(self, input_shape):
        _channels(input_shape, "MMSegASPPHead")
        self.image_pool.build((input_shape[0], 1, 1, input_shape[-1]))
        for branch in self.aspp_modules:
            branch.build(input_shape)
        fused = tuple(input_shape[:-1]) + ((len(self.dilations) + 1) * self.channels,)
        self.bottleneck.build(fused)
        self._build_classifier(self.bottleneck.compute_output_shape(fused))
        self.built = True

    def call(self, inputs, training=None):
        pooled = self.image_pool(ops.mean(inputs, axis=(1, 2), keepdims=True),
                                 training=training)
        feats = [branch(inputs, training=training) for branch in self.aspp_modules]
        # Bilinear resizing of a 1x1 map (align_corners or not) is a broadcast.
        feats.insert(0, ops.zeros_like(feats[0]) + pooled)
        x = self.bottleneck(ops.concatenate(feats, axis=-1), training=training)
        return self._classify(x, training)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dilations=list(self.dilations),
                      channels=self.channels, dropout=self.dropout_rate)
        return config
