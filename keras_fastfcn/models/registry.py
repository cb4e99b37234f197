"""The parts a FastFCN model is assembled from, by name: encoders, upsamplers, heads.

`FastFCNBackbone(encoder=..., upsampler=...)` and
`FastFCNImageSegmenter(head=...)` look their parts up here, so adding one is one
module (the layer, or the encoder builder) plus one `register_*` call; the built-in
parts are registered at the bottom of this file, all in one place.

- An **encoder** builder `(output_stride, weights) -> keras.Model` maps normalized
  images to `[c2, c3, c4, c5]` (strides 4, 8, 16, 32; dilated for output stride 16
  or 8), and names the input normalization its weights expect.
- An **upsampler** builder `(width, align_corners, remat, name) -> Layer` maps
  `[c3, c4, c5]` of a stride-32 encoder to stride-8 features (the JPU).
- A **head** builder `(num_classes, *, se_loss, upsampled, align_corners, name) ->
  Layer` maps the stride-8 features to logits at stride 8 (with `se_loss`, a pair
  `(logits, se_logits)`); `upsampled` says whether the features come from an
  upsampler (EncNet's conv5 is 1x1 then, as the official code).

Example:
>>> from keras_fastfcn.layers import FCNHead
>>> from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter, registry
>>> registry.register_head("fcn_wide", lambda num_classes, **kw: FCNHead(
...     num_classes, inter_channels=1024, name=kw["name"]))
>>> seg = FastFCNImageSegmenter(FastFCNBackbone(width=64), num_classes=5, head="fcn_wide")
>>> seg.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape
(1, 64, 64, 5)
"""

import dataclasses
import difflib
import functools
from typing import Callable, Optional

from keras_fastfcn import layers as L
from keras_fastfcn.models.encoders import resnet, resnet_deepstem
from keras_fastfcn.models.encoders.resnet import OUTPUT_STRIDES, check_weights


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A registered encoder: its builder and the normalization of its weights."""

    name: str
    builder: Callable
    preprocessing: str


@dataclasses.dataclass(frozen=True)
class Head:
    """A registered head: its builder and whether it has the SE (class presence) branch."""

    name: str
    builder: Callable
    se_loss: bool = False


ENCODERS = {}
UPSAMPLERS = {}
HEADS = {}
_BUILTIN = set()  # (kind, name) of the parts registered below; not replaceable
_ALIASES = {"encoder": {}, "upsampler": {}, "head": {}}
# Spellings of "no upsampler": the encoder itself is dilated (the DilatedFCN baseline).
NO_UPSAMPLER = (None, "none", "dilated")


def with_hints(unknown, known):
    """`'num_clases' (did you mean 'num_classes'?), ...`: the names `unknown`, each
    with the closest of `known` where one is close, for an error message."""
    return ", ".join(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                     for key in unknown
                     for close in [difflib.get_close_matches(key, list(known), 1)])


def register_encoder(name, builder, preprocessing, aliases=()):
    """Registers an encoder builder `(output_stride, weights) -> keras.Model`.

    Args:
        name: the name `FastFCNBackbone(encoder=...)` accepts.
        builder: callable `(output_stride, weights)` returning a functional
            `keras.Model` from normalized images to `[c2, c3, c4, c5]` (256 / 512 /
            1024 / 2048 channels for the built-in heads' widths), named
            `{name}_os{output_stride}`.
        preprocessing: the `ImageNormalization` mode its weights expect.
        aliases: other accepted names.
    """
    _register(ENCODERS, "encoder", name, Encoder(name, builder, preprocessing), aliases)


def register_upsampler(name, builder, aliases=()):
    """Registers an upsampler builder `(width, align_corners, remat, name) -> Layer`."""
    _register(UPSAMPLERS, "upsampler", name, builder, aliases)


def register_head(name, builder, se_loss=False, aliases=()):
    """Registers a head builder `(num_classes, *, se_loss, upsampled, align_corners, name)`.

    Args:
        name: the name `FastFCNImageSegmenter(head=...)` accepts.
        builder: callable returning a Keras layer, see the module docstring.
        se_loss: whether the head can return SE class-presence logits.
        aliases: other accepted names.
    """
    _register(HEADS, "head", name, Head(name, builder, se_loss), aliases)


def _register(table, kind, name, entry, aliases):
    name = str(name).lower()
    if (kind, name) in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in {kind}; register yours under another name.")
    table[name] = entry
    for alias in aliases:
        _ALIASES[kind][str(alias).lower()] = name


def _lookup(table, kind, name):
    key = str(name).lower()
    key = _ALIASES[kind].get(key, key)
    if key not in table:
        raise ValueError(f"Unknown {kind} {name!r}: expected one of {tuple(sorted(table))}.")
    return key


def encoder(name) -> Encoder:
    """The registered `Encoder` called `name` (or an alias); a clear error otherwise."""
    return ENCODERS[_lookup(ENCODERS, "encoder", name)]


def build_encoder(name, output_stride=32, weights=None):
    """Builds a registered encoder: images (normalized for its weights) -> `[c2, c3, c4, c5]`.

    Args:
        name: a registered encoder name (`available("encoder")`).
        output_stride: 32 (plain), 16 or 8 (last stages dilated).
        weights: None, `"imagenet"` (keras.applications ResNets) or a weights file.

    Example:
    >>> encoder = build_encoder("resnet50", output_stride=8)
    >>> [f.shape[-1] for f in encoder(keras.ops.zeros((1, 64, 64, 3)))]
    [256, 512, 1024, 2048]
    """
    spec = encoder(name)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}.")
    check_weights(weights)
    return spec.builder(output_stride, weights)


def upsampler_name(name) -> Optional[str]:
    """The canonical upsampler name, or None for a dilated encoder (no upsampler)."""
    if name is None or (isinstance(name, str) and name.lower() in NO_UPSAMPLER):
        return None
    return _lookup(UPSAMPLERS, "upsampler", name)


def head(name) -> Head:
    """The registered `Head` called `name` (or an alias); a clear error otherwise."""
    return HEADS[_lookup(HEADS, "head", name)]


def available(kind):
    """Registered names of `kind`: `"encoder"`, `"upsampler"` or `"head"`."""
    return tuple(sorted({"encoder": ENCODERS, "upsampler": UPSAMPLERS, "head": HEADS}[kind]))


# --------------------------------------------------------------------------- built-ins


def _register_builtins():
    for name in resnet.KERAS_RESNETS:
        register_encoder(name, functools.partial(resnet.build_keras_resnet, name), "caffe")
    for name, depth in resnet_deepstem.DEEPSTEM_DEPTHS.items():
        def deepstem(output_stride, weights, _depth=depth, _name=name):
            return resnet_deepstem.build_resnet_deepstem(
                _depth, output_stride, weights, name=f"{_name}_os{output_stride}")
        register_encoder(name, deepstem, "torch")
    for name, depth in resnet_deepstem.V1C_DEPTHS.items():
        # mmsegmentation's mean/std (RGB 123.675, 116.28, 103.53 / 58.395, 57.12,
        # 57.375) is the ImageNet mean/std times 255: "torch" normalization.
        def v1c(output_stride, weights, _depth=depth, _name=name):
            return resnet_deepstem.build_resnet_v1c(
                _depth, output_stride, weights, name=f"{_name}_os{output_stride}")
        register_encoder(name, v1c, "torch")

    register_upsampler("jpu", lambda width, align_corners, remat, name: L.JPU(
        width, align_corners=align_corners, remat=remat, name=name))
    register_upsampler("jpu_x", lambda width, align_corners, remat, name: L.JPUX(
        width, align_corners=align_corners, remat=remat, name=name), aliases=("jpux",))

    register_head("encnet", lambda num_classes, *, se_loss, upsampled, align_corners, name:
                  L.EncHead(num_classes, se_loss=se_loss, jpu=upsampled, name=name),
                  se_loss=True, aliases=("enc",))
    register_head("psp", lambda num_classes, *, se_loss, upsampled, align_corners, name:
                  L.PSPHead(num_classes, align_corners=align_corners, name=name),
                  aliases=("pspnet",))
    register_head("deeplab", lambda num_classes, *, se_loss, upsampled, align_corners, name:
                  L.ASPPHead(num_classes, name=name), aliases=("deeplabv3", "aspp"))
    register_head("fcn", lambda num_classes, *, se_loss, upsampled, align_corners, name:
                  L.FCNHead(num_classes, name=name))
    # mmsegmentation's FastFCN heads (its PSPHead is "psp" with align_corners=False).
    register_head("mmseg_aspp", lambda num_classes, *, se_loss, upsampled, align_corners, name:
                  L.MMSegASPPHead(num_classes, name=name))
    register_head("mmseg_encnet", lambda num_classes, *, se_loss, upsampled, align_corners,
                  name: L.EncHead(num_classes, se_loss=se_loss, jpu=False, name=name),
                  se_loss=True, aliases=("mmseg_enc",))
    for kind, table in (("encoder", ENCODERS), ("upsampler", UPSAMPLERS), ("head", HEADS)):
        _BUILTIN.update((kind, name) for name in table)


_register_builtins()
