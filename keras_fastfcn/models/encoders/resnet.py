"""keras.applications ResNets as FastFCN encoders (C2..C5 at strides 4..32).

The ResNet is rebuilt from its own config, then given the original model's weights,
so ImageNet (or any compatible) weights load unchanged: with PyTorch's BatchNorm
momentum (as the official fine-tuning) and, for the DilatedFCN baselines (output
stride 16 or 8), the stage strides turned into dilations. Output stride 32 is what
JPU needs. The dilation pattern follows the official `encoding/dilated/resnet.py`:
in a stage dilated by `d`, the first block uses `d / 2` and the others `d`.

ResNet V2 is not offered: keras.applications' V2 strides in the *last* block of
each stage, so its stage outputs already sit at the next stride and there is no
faithful C2..C5 tap without restructuring the network.
"""

import os

import keras

from keras_fastfcn.layers.conv import BN_MOMENTUM

# name -> keras.applications constructor name (their weights expect "caffe" inputs).
KERAS_RESNETS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
OUTPUT_STRIDES = (8, 16, 32)


def check_weights(weights):
    """Raises a clear error unless `weights` is None, "imagenet" or an existing file."""
    if weights is None or weights == "imagenet":
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"encoder weights must be None, 'imagenet' or a file path, got {weights!r}."
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"Encoder weights file not found: {weights}")


def build_keras_resnet(name="resnet50", output_stride=32, weights=None):
    """A keras.applications ResNet that returns `[c2, c3, c4, c5]`.

    Args:
        name: `"resnet50"`, `"resnet101"` or `"resnet152"`.
        output_stride: 32 (plain), 16 or 8 (last stages dilated).
        weights: `None` (random init), `"imagenet"` (downloaded by
            keras.applications), or a path to a `.h5`/`.weights.h5` file of the
            matching `include_top=False` keras.applications model.

    Returns:
        A functional `keras.Model` named `{name}_os{output_stride}` from
        caffe-normalized images to four feature maps with 256, 512, 1024 and 2048
        channels at strides 4, 8, 16 and 32 (or the dilated equivalent).

    Example:
    >>> encoder = build_keras_resnet("resnet50", output_stride=8)
    >>> [f.shape[-1] for f in encoder(keras.ops.zeros((1, 64, 64, 3)))]
    [256, 512, 1024, 2048]
    """
    if name not in KERAS_RESNETS:
        raise ValueError(f"Unknown keras.applications ResNet {name!r}: expected one of "
                         f"{tuple(KERAS_RESNETS)}.")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}.")
    check_weights(weights)
    constructor = getattr(keras.applications, KERAS_RESNETS[name])
    try:
        base = constructor(include_top=False, weights=weights, input_shape=(None, None, 3))
    except Exception as err:  # keras.applications reports download errors loosely
        if weights == "imagenet":  # an OSError: a fetch that failed, as urllib's
            raise OSError(
                f"Could not load ImageNet weights for {name} (they are downloaded from "
                "storage.googleapis.com on first use; is there internet access?). Pass "
                "encoder_weights=None for a random init or a path to a local weights file."
            ) from err
        raise
    # Rebuilt from its own config (same layers, same weight shapes) with the
    # official fine-tuning setup: PyTorch's BatchNorm momentum (0.1, Keras 0.9,
    # instead of keras.applications' 0.99, whose moving statistics lag far behind
    # a fine-tuned network for thousands of steps) and, for output stride 16 or 8,
    # dilated last stages.
    config = _finetune_config(base.get_config(), output_stride)
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(base.get_weights())
    base = rebuilt
    taps = [_last_block_output(base, stage) for stage in (2, 3, 4, 5)]
    return keras.Model(base.input, taps, name=f"{name}_os{output_stride}")


def _last_block_output(model, stage):
    prefix = f"conv{stage}_block"
    names = [layer.name for layer in model.layers
             if layer.name.startswith(prefix) and layer.name.endswith("_out")]
    return model.get_layer(names[-1]).output


def _finetune_config(config, output_stride):
    """A copy of a keras.applications ResNet config with BN momentum 0.9 and dilated stages."""
    stage_dilation = {8: {4: 2, 5: 4}, 16: {5: 2}, 32: {}}[output_stride]
    config = dict(config, layers=[dict(layer) for layer in config["layers"]])
    for layer in config["layers"]:
        name = layer["config"]["name"]
        if layer["class_name"] == "BatchNormalization":
            layer["config"] = dict(layer["config"], momentum=BN_MOMENTUM)
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
