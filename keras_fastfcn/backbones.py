"""ResNet backbones as multi-output feature extractors (C2..C5 at strides 4..32).

`keras.applications` ResNets are used as they are for output stride 32 (what JPU
needs). For the DilatedFCN baselines (output stride 16 or 8) the model is rebuilt
from the same config with the stage strides turned into dilations, then given the
original model's weights, so ImageNet (or any compatible) weights load unchanged.
The dilation pattern follows the official `encoding/dilated/resnet.py`: in a stage
dilated by `d`, the first block uses `d / 2` and the others `d`.

The official FastFCN checkpoints use "deep stem" ResNets (three 3x3 stem convs,
stride in the bottleneck's 3x3 conv): they are `resnet50s`, `resnet101s` and
`resnet152s`, built in `keras_fastfcn.resnet_deepstem` and registered here, with
the ImageNet mean/std ("torch") preprocessing of those checkpoints.

ResNet V2 is not offered: keras.applications' V2 strides in the *last* block of
each stage, so its stage outputs already sit at the next stride and there is no
faithful C2..C5 tap without restructuring the network.
"""

import os

import keras

# name -> (keras.applications constructor name, preprocessing mode of its weights)
_KERAS_RESNETS = {
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "resnet152": ("ResNet152", "caffe"),
}
OUTPUT_STRIDES = (8, 16, 32)


def available_backbones():
    """Names accepted by `build_backbone` and `FastFCN(backbone=...)`."""
    return tuple(_KERAS_RESNETS) + tuple(_EXTRA_BACKBONES)


# Backbones defined elsewhere in the package (e.g. the official deep-stem ResNets)
# register here as name -> (builder(output_stride, weights) -> keras.Model, preprocessing).
_EXTRA_BACKBONES = {}


def register_backbone(name, builder, preprocessing):
    """Adds a backbone builder `builder(output_stride, weights)` under `name`.

    Args:
        name: the name `build_backbone` and `FastFCN(backbone=...)` will accept.
        builder: callable `(output_stride, weights) -> keras.Model` returning
            `[c2, c3, c4, c5]` (256/512/1024/2048 channels for the heads' widths).
        preprocessing: the `ImageNormalization` mode its weights expect.

    Example:
    >>> import functools
    >>> from keras_fastfcn.resnet_deepstem import build_resnet_deepstem
    >>> register_backbone("tiny_s", functools.partial(build_resnet_deepstem, (1, 1, 1, 1)),
    ...                   "torch")
    """
    if name in _KERAS_RESNETS:
        raise ValueError(f"{name!r} is a built-in keras.applications backbone name.")
    _EXTRA_BACKBONES[name] = (builder, preprocessing)


def backbone_preprocessing(name):
    """The `ImageNormalization` mode matching the backbone's pretrained weights."""
    _check_name(name)
    if name in _KERAS_RESNETS:
        return _KERAS_RESNETS[name][1]
    return _EXTRA_BACKBONES[name][1]


def _check_name(name):
    if name not in _KERAS_RESNETS and name not in _EXTRA_BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}: expected one of {available_backbones()}."
        )


def _check_weights(weights):
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"backbone weights must be None, 'imagenet' or a file path, got {weights!r}."
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Backbone weights file not found: {weights}")


def build_backbone(name="resnet50", output_stride=32, weights=None):
    """Builds a ResNet that returns `[c2, c3, c4, c5]`.

    Args:
        name: one of `available_backbones()`.
        output_stride: 32 (plain), 16 or 8 (last stages dilated).
        weights: `None` (random init), `"imagenet"` (downloaded by
            keras.applications), or a path to a `.h5`/`.weights.h5` file of the
            matching `include_top=False` keras.applications model. The deep-stem
            ResNets (`resnet50s`, ...) take `None` or a `.weights.h5` file of the
            same network (see `keras-fastfcn convert --backbone-only`); they have no
            ImageNet download.

    Returns:
        A functional `keras.Model` from images (already normalized for the
        weights, see `backbone_preprocessing`) to four feature maps with 256, 512,
        1024 and 2048 channels at strides 4, 8, 16 and 32 (or the dilated
        equivalent).

    Example:
    >>> backbone = build_backbone("resnet50", output_stride=8)
    >>> [f.shape[-1] for f in backbone(keras.ops.zeros((1, 64, 64, 3)))]
    [256, 512, 1024, 2048]
    """
    _check_name(name)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}.")
    _check_weights(weights)
    if name in _EXTRA_BACKBONES:
        return _EXTRA_BACKBONES[name][0](output_stride=output_stride, weights=weights)
    return _keras_resnet(name, output_stride, weights)


def _keras_resnet(name, output_stride, weights):
    constructor = getattr(keras.applications, _KERAS_RESNETS[name][0])
    try:
        base = constructor(include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:  # keras.applications reports download errors loosely
        if weights == "imagenet":
            raise RuntimeError(
                f"Could not load ImageNet weights for {name} (they are downloaded from "
                "storage.googleapis.com on first use; is there internet access?). Pass "
                "backbone_weights=None for a random init or a path to a local weights file."
            ) from err
        raise
    if output_stride != 32:
        config = _dilate_config(base.get_config(), output_stride)
        dilated = keras.Model.from_config(config)
        dilated.set_weights(base.get_weights())
        base = dilated
    taps = [_last_block_output(base, stage) for stage in (2, 3, 4, 5)]
    return keras.Model(base.input, taps, name=f"{name}_os{output_stride}")


def _last_block_output(model, stage):
    prefix = f"conv{stage}_block"
    names = [layer.name for layer in model.layers
             if layer.name.startswith(prefix) and layer.name.endswith("_out")]
    return model.get_layer(names[-1]).output


def _dilate_config(config, output_stride):
    """Returns a copy of a keras.applications ResNet config with dilated stages."""
    stage_dilation = {4: 2, 5: 4} if output_stride == 8 else {5: 2}
    config = dict(config, layers=[dict(layer) for layer in config["layers"]])
    for layer in config["layers"]:
        name = layer["config"]["name"]
        for stage, dilation in stage_dilation.items():
            prefix = f"conv{stage}_block"
            if not name.startswith(prefix):
                continue
            block = int(name[len(prefix):].split("_")[0])
            layer["config"] = dict(layer["config"])
            if name.endswith(("_1_conv", "_0_conv")) and block == 1:
                layer["config"]["strides"] = (1, 1)
            if name.endswith("_2_conv"):
                rate = dilation // 2 if block == 1 else dilation
                layer["config"]["dilation_rate"] = (rate, rate)
    return config


def _register_deepstem():
    from keras_fastfcn import resnet_deepstem

    for name, depth in resnet_deepstem.DEEPSTEM_DEPTHS.items():
        def builder(output_stride, weights, _depth=depth, _name=name):
            return resnet_deepstem.build_resnet_deepstem(
                _depth, output_stride, weights, name=f"{_name}_os{output_stride}")
        register_backbone(name, builder, "torch")


_register_deepstem()
