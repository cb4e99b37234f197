"""The one-to-one map from official state-dict keys to Keras variables.

The official models (wuhuikai/FastFCN: EncNet / PSP / DeepLabV3 / FCN heads on a
deep-stem ResNet, with JPU, JPU_X or a dilated backbone) map one to one onto
`FastFCNImageSegmenter` on `FastFCNBackbone(encoder="resnet50s")`: every tensor of the state
dict has exactly one Keras variable, found from the module structure:

| official key | Keras variable |
|---|---|
| `pretrained.layer1.0.conv1.weight` | backbone layer `layer1_0_conv1` kernel |
| `jpu.conv5.0.weight`, `jpu.conv5.1.*` | `jpu.conv5.conv`, `jpu.conv5.bn` |
| `jpu.dilation1.0.{conv1,bn,pointwise}`, `jpu.dilation1.1` | `jpu.dilation_branches[0].sep.*`, `.bn` |
| `jpu.jum_1.{conv_l,conv_h,dilationK}` (JPU_X) | `jpu.jum_1.*` |
| `head.encmodule.encoding.{0,1,3,4}` | `head.encmodule.{conv.conv, conv.bn, encoding, encoding_bn}` |
| `head.encmodule.fc.0`, `head.encmodule.selayer`, `head.conv6.1` | `fc`, `selayer`, `head.classifier` |
| `head.conv5.0.convK`, `head.conv5.{1,2,5}` (PSP) | `head.pyramid.convs[K-1]`, `head.conv`, `head.classifier` |
| `head.aspp.b0..b3`, `head.aspp.b4.gap.{1,2}`, `head.aspp.project`, `head.block.{0,1,4}` | `head.aspp.*`, `head.block`, `head.classifier` |
| `head.conv5.{0,1,4}` (FCN), `auxlayer.conv5.{0,1,4}` | `conv5`, `classifier` |

Layouts: conv OIHW -> HWIO, depthwise `(C, 1, kh, kw)` -> `(kh, kw, C, 1)`,
linear `(out, in)` -> `(in, out)`; BatchNorm `weight, bias, running_mean,
running_var` -> `gamma, beta, moving_mean, moving_variance` (`num_batches_tracked`
is ignored). The backbone's ImageNet classifier (`pretrained.fc.*`), which the
official models carry but never use, is skipped.

Checkpoints are read with `torch.load(..., weights_only=True)`: tensors only, no
code is unpickled. PyTorch is needed for conversion only, not by the converted
model.
"""

import keras
import numpy as np

from keras_fastfcn import layers as L
from keras_fastfcn.convert.checkpoint import CheckpointMismatchError
from keras_fastfcn.models.encoders import resnet_deepstem

# Official keys that have no Keras counterpart on purpose.
_UNUSED_PREFIXES = ("pretrained.fc.",)


class _Target:
    """One Keras variable and the official key (and layout) that fills it.

    `permutation`: optional `(axis, index)` in the PyTorch layout, applied first:
    `array.take(index, axis)` (a checkpoint whose channels come in another order,
    e.g. mmsegmentation's JPU concatenation, see `convert.mmseg`).
    """

    __slots__ = ("key", "variable", "layout", "permutation")

    def __init__(self, key, variable, layout, permutation=None):
        self.key, self.variable, self.layout = key, variable, layout
        self.permutation = permutation

    def to_keras(self, array):
        if self.permutation is not None:
            axis, index = self.permutation
            array = np.take(array, index, axis=axis)
        if self.layout == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
            return np.transpose(array, (2, 3, 1, 0))
        if self.layout == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            return np.transpose(array, (2, 3, 0, 1))
        if self.layout == "dense":  # (out, in) -> (in, out)
            return np.transpose(array)
        return array

    def torch_shape(self):
        shape = tuple(self.variable.shape)
        if self.layout == "conv":
            return (shape[3], shape[2], shape[0], shape[1])
        if self.layout == "depthwise":
            return (shape[2], shape[3], shape[0], shape[1])
        if self.layout == "dense":
            return (shape[1], shape[0])
        return shape


def _conv(prefix, layer):
    layout = "depthwise" if isinstance(layer, keras.layers.DepthwiseConv2D) else "conv"
    out = [_Target(f"{prefix}.weight", layer.kernel, layout)]
    if layer.use_bias:
        out.append(_Target(f"{prefix}.bias", layer.bias, "copy"))
    return out


def _dense(prefix, layer):
    return [_Target(f"{prefix}.weight", layer.kernel, "dense"),
            _Target(f"{prefix}.bias", layer.bias, "copy")]


def _norm(prefix, layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = [("weight", layer.gamma), ("bias", layer.beta),
                 ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)]
    elif isinstance(layer, keras.layers.GroupNormalization):
        pairs = [("weight", layer.gamma), ("bias", layer.beta)]
    else:
        raise TypeError(f"Unsupported normalization layer {type(layer).__name__} at {prefix}.")
    return [_Target(f"{prefix}.{name}", var, "copy") for name, var in pairs]


def _cbr(prefix, block):
    """`ConvBNReLU` <-> official `Sequential(Conv2d, Norm, ReLU)`."""
    return _conv(f"{prefix}.0", block.conv) + _norm(f"{prefix}.1", block.bn)


def _branch(prefix, branch):
    """`DilatedBranch` <-> `Sequential(SeparableConv2d(conv1, bn, pointwise), Norm, ReLU)`."""
    sep = branch.sep
    return (_conv(f"{prefix}.0.conv1", sep.conv1) + _norm(f"{prefix}.0.bn", sep.bn)
            + _conv(f"{prefix}.0.pointwise", sep.pointwise) + _norm(f"{prefix}.1", branch.bn))


def _backbone_targets(backbone, prefix):
    targets = []
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            targets += _conv(prefix + resnet_deepstem.torch_module_path(layer.name), layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            targets += _norm(prefix + resnet_deepstem.torch_module_path(layer.name), layer)
        elif layer.weights:
            raise TypeError(f"Backbone layer {layer.name} ({type(layer).__name__}) has "
                            "weights the converter does not know.")
    return targets


def _jpu_targets(jpu):
    if isinstance(jpu, L.JPUX):
        targets = []
        for name in ("jum_1", "jum_2"):
            jum = getattr(jpu, name)
            targets += (_cbr(f"jpu.{name}.conv_l", jum.conv_l)
                        + _cbr(f"jpu.{name}.conv_h", jum.conv_h))
            for i, branch in enumerate(jum.dilation_branches):
                targets += _branch(f"jpu.{name}.dilation{i + 1}", branch)
        return targets
    targets = (_cbr("jpu.conv5", jpu.conv5) + _cbr("jpu.conv4", jpu.conv4)
               + _cbr("jpu.conv3", jpu.conv3))
    for i, branch in enumerate(jpu.dilation_branches):
        targets += _branch(f"jpu.dilation{i + 1}", branch)
    return targets


def _fcn_targets(prefix, head):
    return _cbr(f"{prefix}.conv5", head.conv5) + _conv(f"{prefix}.conv5.4", head.classifier)


def _enc_head_targets(head):
    enc = head.encmodule
    codes = "head.encmodule.encoding.3"
    targets = (_cbr("head.conv5", head.conv5) + _cbr("head.encmodule.encoding", enc.conv)
               + [_Target(f"{codes}.codewords", enc.encoding.codewords, "copy"),
                  _Target(f"{codes}.scale", enc.encoding.scale, "copy")]
               + _norm("head.encmodule.encoding.4", enc.encoding_bn)
               + _dense("head.encmodule.fc.0", enc.fc))
    if enc.selayer is not None:
        targets += _dense("head.encmodule.selayer", enc.selayer)
    return targets + _conv("head.conv6.1", head.classifier)


def _psp_head_targets(head):
    targets = []
    for i, conv in enumerate(head.pyramid.convs):
        targets += _cbr(f"head.conv5.0.conv{i + 1}", conv)
    return (targets + _conv("head.conv5.1", head.conv.conv)
            + _norm("head.conv5.2", head.conv.bn) + _conv("head.conv5.5", head.classifier))


def _aspp_head_targets(head):
    aspp = head.aspp
    targets = []
    for i, branch in enumerate(aspp.branches):
        targets += _cbr(f"head.aspp.b{i}", branch)
    n = len(aspp.branches)
    targets += (_conv(f"head.aspp.b{n}.gap.1", aspp.pool_conv.conv)
                + _norm(f"head.aspp.b{n}.gap.2", aspp.pool_conv.bn)
                + _cbr("head.aspp.project", aspp.project) + _cbr("head.block", head.block))
    return targets + _conv("head.block.4", head.classifier)


# A head's official checkpoint keys, by its registry name (`models.registry`): the
# heads `convert_checkpoint` and `keras-fastfcn convert --head` accept.
HEAD_MAPPINGS = {
    "encnet": _enc_head_targets,
    "psp": _psp_head_targets,
    "deeplab": _aspp_head_targets,
    "fcn": lambda head: _fcn_targets("head", head),
}


def register_head_mapping(name, targets):
    """Maps a registered head of your own onto checkpoint keys:
    `targets(head_layer) -> [_Target]` (see the built-in ones above)."""
    HEAD_MAPPINGS[name] = targets


def _head_targets(name, head):
    if name not in HEAD_MAPPINGS:
        raise TypeError(f"No official mapping for head {name!r} "
                        f"(mapped: {', '.join(HEAD_MAPPINGS)}).")
    return HEAD_MAPPINGS[name](head)


def weight_mapping(model):
    """Every variable of a FastFCN segmenter with the official key that fills it.

    Args:
        model: a `FastFCNImageSegmenter` on a deep-stem encoder (`resnet50s`, ...).

    Returns:
        list of `(official_key, keras_variable, layout)`, `layout` one of "conv",
        "depthwise", "dense", "copy".

    Example:
    >>> m = FastFCNImageSegmenter(FastFCNBackbone(encoder="resnet50s", width=64),  # doctest: +SKIP
    ...                           num_classes=5, head="fcn")
    >>> weight_mapping(m)[0][0]  # doctest: +SKIP
    'pretrained.conv1.0.weight'
    """
    return [(t.key, t.variable, t.layout) for t in _targets(model)]


def _targets(model):
    encoder = model.backbone.encoder
    if not _is_deepstem(encoder):
        raise ValueError(
            f"The official checkpoints use deep-stem ResNets; this model's encoder is "
            f"{model.backbone.encoder_name!r}. Build it with encoder='resnet50s' (or 101s/152s)."
        )
    targets = _backbone_targets(encoder, "pretrained.")
    if model.backbone.upsampler is not None:
        targets += _jpu_targets(model.backbone.upsampler)
    targets += _head_targets(model.head_name, model.head_layer)
    if model.aux_layer is not None:
        targets += _fcn_targets("auxlayer", model.aux_layer)
    return check_coverage(model, targets)


def check_coverage(model, targets, what="official"):
    """`targets`, after checking that they fill every variable of `model` exactly once
    (otherwise the mapping has a bug: `RuntimeError`)."""
    seen = {id(t.variable) for t in targets}
    left = [v.path for v in model.weights if id(v) not in seen]
    if left or len(seen) != len(targets):
        raise RuntimeError(f"Internal error: the {what} mapping does not cover {left}.")
    return targets


def _is_deepstem(backbone):
    names = {layer.name for layer in backbone.layers}
    return {"conv1_0", "conv1_3", "conv1_6", "bn1"} <= names


def _ignored(key, mapped_prefixes):
    if key.startswith(_UNUSED_PREFIXES):
        return True
    if key.endswith(".num_batches_tracked"):
        return key[: -len(".num_batches_tracked")] in mapped_prefixes
    return False


def _match(targets, state_dict, skip_prefixes=()):
    """Missing, unexpected and mismatched keys for `targets` against `state_dict`."""
    expected = {t.key for t in targets}
    mapped_prefixes = {t.key.rsplit(".", 1)[0] for t in targets}
    missing = [t.key for t in targets if t.key not in state_dict]
    unexpected = sorted(
        k for k in state_dict
        if k not in expected and not _ignored(k, mapped_prefixes)
        and not k.startswith(tuple(skip_prefixes))
    )
    mismatched = [(t.key, state_dict[t.key].shape, t.torch_shape()) for t in targets
                  if t.key in state_dict and tuple(state_dict[t.key].shape) != t.torch_shape()]
    return missing, unexpected, mismatched


def _hint(unexpected):
    if any(k.startswith(("head.connect.", "head.fusion.")) for k in unexpected):
        return ("Hint: head.connect/head.fusion are the EncHead 'lateral' (FPN) option, "
                "which keras_fastfcn does not implement (no FastFCN+JPU checkpoint uses it).")
    return ""


def load_official_weights(model, state_dict, skip_prefixes=(), description=None, hint=""):
    """Copies an official state dict into a FastFCN segmenter, all or nothing.

    Checks every key first; on any missing key, unexpected key or shape mismatch
    it raises `CheckpointMismatchError` listing all of them, and leaves the model
    untouched.

    Args:
        model: a `FastFCNImageSegmenter` built on a deep-stem encoder.
        state_dict: `{key: array}` as returned by `load_state_dict`.
        skip_prefixes: checkpoint key prefixes to drop on purpose (e.g.
            `("auxlayer.",)` for a model built without the auxiliary head).
        description: how the model is named in error messages.
        hint: extra line(s) for the error message.

    Returns:
        The number of tensors copied.

    Example:
    >>> model = FastFCNImageSegmenter(FastFCNBackbone(encoder="resnet50s"),  # doctest: +SKIP
    ...                               num_classes=59, head="encnet")
    >>> load_official_weights(model, load_state_dict("encnet.pth"),  # doctest: +SKIP
    ...                       skip_prefixes=("auxlayer.", "head.encmodule.selayer."))
    """
    targets = _targets(model)
    return load_targets(targets, state_dict, skip_prefixes,
                        description or f"model {model.name!r}", hint)


def load_targets(targets, state_dict, skip_prefixes=(), description="the model", hint=""):
    """Copies `state_dict` into the variables of `targets` (`_Target`s), all or nothing:
    any missing or unexpected key or shape mismatch raises `CheckpointMismatchError`
    naming all of them first. Returns the number of tensors copied."""
    missing, unexpected, mismatched = _match(targets, state_dict, skip_prefixes)
    if missing or unexpected or mismatched:
        hint = "\n".join(h for h in (hint, _hint(unexpected)) if h)
        raise CheckpointMismatchError(description, missing, unexpected, mismatched, hint)
    for t in targets:
        t.variable.assign(t.to_keras(state_dict[t.key]).astype(t.variable.dtype))
    return len(targets)
