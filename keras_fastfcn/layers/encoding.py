"""The Context Encoding module of EncNet (Zhang et al., CVPR 2018).

Mirrors `encoding.nn.Encoding` and `EncModule` of the official code.
"""

import math

import keras
from keras import ops

from keras_fastfcn.layers.conv import ConvBNReLU, make_norm

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")


@_register
class Encoding(keras.layers.Layer):
    """Learnable residual encoder with a codebook of `num_codes` codewords.

    For features `x_i` (the `H * W` positions of a `(B, H, W, D)` map), codewords
    `d_k` and smoothing factors `s_k`, it returns for each codeword the aggregated
    residual `e_k = sum_i a_ik (x_i - d_k)` with soft assignments
    `a_ik = softmax_k(s_k * ||x_i - d_k||^2)`, as a `(B, K, D)` tensor. The scales
    start in [-1, 0), so the softmax favours near codewords, as the official init.

    Args:
        num_codes: int, number of codewords K (32 in EncNet).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> enc = Encoding(num_codes=4)
    >>> enc(keras.ops.ones((2, 5, 5, 8))).shape
    (2, 4, 8)
    """

    def __init__(self, num_codes=32, **kwargs):
        super().__init__(**kwargs)
        if int(num_codes) < 1:
            raise ValueError(f"Encoding num_codes must be >= 1, got {num_codes!r}.")
        self.num_codes = int(num_codes)

    def build(self, input_shape):
        if len(input_shape) not in (3, 4) or input_shape[-1] is None:
            raise ValueError(
                "Encoding expects (B, H, W, D) or (B, N, D) with a known D, "
                f"got shape {input_shape}."
            )
        dim = int(input_shape[-1])
        std = 1.0 / math.sqrt(self.num_codes * dim)
        self.codewords = self.add_weight(
            name="codewords", shape=(self.num_codes, dim),
            initializer=keras.initializers.RandomUniform(-std, std),
        )
        self.scale = self.add_weight(
            name="scale", shape=(self.num_codes,),
            initializer=keras.initializers.RandomUniform(-1.0, 0.0),
        )
        self.built = True

    def call(self, inputs):
        dim = self.codewords.shape[-1]
        x = ops.reshape(inputs, (ops.shape(inputs)[0], -1, dim))  # (B, N, D)
        if x.dtype == "float16":
            # float16 tops out at 65504: ||x||^2 over 512 channels and the sums over
            # the H * W positions pass it at 192x256 images already (NaN logits).
            # bfloat16 has float32's range and is left as it is.
            return ops.cast(self._encode(ops.cast(x, "float32")), "float16")
        return self._encode(x)

    def _encode(self, x):
        codewords = ops.cast(self.codewords, x.dtype)
        scale = ops.cast(self.scale, x.dtype)
        # ||x - d||^2 expanded, so no (B, N, K, D) tensor is materialized.
        x_sq = ops.sum(ops.square(x), axis=-1, keepdims=True)  # (B, N, 1)
        c_sq = ops.sum(ops.square(codewords), axis=-1)  # (K,)
        cross = ops.einsum("bnd,kd->bnk", x, codewords)
        dist = x_sq - 2.0 * cross + c_sq
        assign = ops.softmax(scale * dist, axis=-1)  # (B, N, K)
        weighted = ops.einsum("bnk,bnd->bkd", assign, x)
        mass = ops.sum(assign, axis=1)[:, :, None]  # (B, K, 1)
        return weighted - mass * codewords[None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_codes, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_codes=self.num_codes)
        return config


@_register
class EncModule(keras.layers.Layer):
    """EncNet's context encoding module with channel attention and SE output.

    conv1x1 + BN + ReLU -> `Encoding` -> BN over the codewords -> ReLU -> mean over
    codewords gives a global context vector `e`; `x * (1 + sigmoid(fc(e)))` with a
    final ReLU re-weights the channels, and `selayer(e)` predicts which classes are
    present (the SE-loss logits).

    Args:
        num_classes: int, classes of the SE output.
        num_codes: int, codewords of the `Encoding` layer.
        se_loss: bool, whether to return the SE logits.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call returns:
        The re-weighted features `(B, H, W, D)`, and with `se_loss=True` also the SE
        logits `(B, num_classes)`, as a list.

    Example:
    >>> enc = EncModule(num_classes=3, num_codes=4)
    >>> feats, se = enc(keras.ops.ones((2, 5, 5, 8)))
    >>> feats.shape, se.shape
    ((2, 5, 5, 8), (2, 3))
    """

    def __init__(self, num_classes, num_codes=32, se_loss=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.num_codes = int(num_codes)
        self.se_loss = bool(se_loss)
        kw = dict(dtype=self.dtype_policy)
        self.encoding = Encoding(self.num_codes, name="encoding", **kw)
        # BatchNorm1d(ncodes) over a (B, K, D) tensor: per codeword statistics.
        self.encoding_bn = make_norm("batch", "encoding_bn", axis=1, **kw)
        self.conv = None  # built once the channel count is known
        self.fc = None
        self.selayer = None

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"EncModule needs a known channel count, got shape {input_shape}.")
        kw = dict(dtype=self.dtype_policy)
        self.conv = ConvBNReLU(dim, 1, name="conv", **kw)
        self.fc = keras.layers.Dense(dim, activation="sigmoid", name="fc", **kw)
        if self.se_loss:
            self.selayer = keras.layers.Dense(self.num_classes, name="selayer", **kw)
        self.conv.build(input_shape)
        self.encoding.build(input_shape)
        self.encoding_bn.build((input_shape[0], self.num_codes, dim))
        self.fc.build((input_shape[0], dim))
        if self.selayer is not None:
            self.selayer.build((input_shape[0], dim))
        self.built = True

    def call(self, inputs, training=None):
        en = self.encoding(self.conv(inputs, training=training))
        en = ops.relu(self.encoding_bn(en, training=training))
        en = ops.mean(en, axis=1)  # (B, D)
        gamma = self.fc(en)[:, None, None, :]
        out = ops.relu(inputs + inputs * gamma)
        if self.se_loss:
            return [out, self.selayer(en)]
        return out

    def compute_output_shape(self, input_shape):
        if self.se_loss:
            return [tuple(input_shape), (input_shape[0], self.num_classes)]
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_codes=self.num_codes,
                      se_loss=self.se_loss)
        return config
