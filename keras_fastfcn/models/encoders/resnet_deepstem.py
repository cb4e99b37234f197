"""The "deep stem" ResNets of the official FastFCN code (`resnet50s`, `resnet101s`, ...).

The official checkpoints (wuhuikai/FastFCN, inherited from PyTorch-Encoding) use
`encoding/dilated/resnet.py` with `deep_base=True`: the 7x7 stem conv is replaced
by three 3x3 convs (64, 64, 128 channels, stride 2 on the first), so `layer1`
takes 128 channels; bottleneck blocks stride in their 3x3 conv (`conv2`), and the
shortcut is conv1x1 (with the stride) + BN. keras.applications has no such
network, so it is built here from Keras layers, layer by layer.

Layer names are the PyTorch module paths with "." replaced by "_", so the layer
`layer3_0_downsample_1` holds `pretrained.layer3.0.downsample.1.*` of an official
state dict (`torch_module_path` undoes the renaming).

PyTorch pads symmetrically (`padding=1` on both sides); Keras' `padding="same"`
pads `(0, 1)` when a stride-2 window does not fit evenly, which shifts every
feature map by one pixel. Each strided 3x3 conv and the stride-2 max pool is
therefore an explicit `ZeroPadding2D(1)` followed by a "valid" conv/pool.

mmsegmentation's `ResNetV1c` (the encoder of its FastFCN models, registered as
`resnet50_v1c`) is the same network with two differences, both options here: a
narrower deep stem (`stem_widths=(32, 32, 64)`, so `layer1` takes 64 channels) and,
at output stride 32, dilated stages that keep their strides (`dilations=(1, 1, 2, 4)`,
mmsegmentation's "r50-d32": stages 3 and 4 stride by 2 *and* dilate their 3x3 convs,
the first block of each by half, as its `contract_dilation=True`). The first block
of stage 4 then has a stride-2 3x3 conv with dilation 2, which Keras' `Conv2D` does
not take: on the padded input it equals an undilated conv on every second row and
column (`out[i] = sum_k w[k] x[2i + 2k]`), so it is built as that (`MaxPooling2D(1,
strides=2)`, a plain subsampling, then the conv), with the same weights.
"""

import keras

from keras_fastfcn.layers.conv import BN_EPSILON, BN_MOMENTUM

# name -> blocks per stage (Bottleneck, expansion 4), as the official constructors.
DEEPSTEM_DEPTHS = {
    "resnet50s": (3, 4, 6, 3),
    "resnet101s": (3, 4, 23, 3),
    "resnet152s": (3, 8, 36, 3),
}
# mmsegmentation's ResNetV1c (name -> blocks per stage); see `build_resnet_v1c`.
V1C_DEPTHS = {"resnet50_v1c": (3, 4, 6, 3)}
OFFICIAL_STEM = (64, 64, 128)
V1C_STEM = (32, 32, 64)
# mmsegmentation's FastFCN backbone ("r50-d32"): stages 3 and 4 keep stride 2 and dilate.
V1C_D32_DILATIONS = (1, 1, 2, 4)
_STAGE_WIDTHS = (64, 128, 256, 512)
_EXPANSION = 4

# The official init: normal(0, sqrt(2 / (k * k * out_channels))), i.e. He fan-out.
_KERNEL_INIT = {"class_name": "VarianceScaling",
                "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}


def torch_module_path(layer_name):
    """The official module path of a deep-stem layer, e.g. `layer1_0_conv1` -> `layer1.0.conv1`."""
    return layer_name.replace("_", ".")


def stage_dilations(output_stride):
    """`(stride, dilation)` of stages 3 and 4 for an output stride, as the official code.

    The official `ResNet(dilated=True, output_size=...)` replaces the stride of
    `layer3` (output stride 8) and `layer4` (8 or 16) with dilation 2, then 4.
    """
    if output_stride == 8:
        return [(1, 2), (1, 4)]
    if output_stride == 16:
        return [(2, 1), (1, 2)]
    if output_stride == 32:
        return [(2, 1), (2, 1)]
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}.")


def block_dilations(dilation, blocks):
    """Dilation of each block's 3x3 conv in a stage dilated by `dilation`.

    As the official `_make_layer`: the first block uses 1 when the stage
    dilation is 1 or 2, and 2 when it is 4; the other blocks use the stage
    dilation. (The first block's input still has the previous stage's
    resolution, so it keeps the previous, smaller dilation.)
    """
    if dilation in (1, 2):
        first = 1
    elif dilation == 4:
        first = 2
    else:
        raise ValueError(
            f"Unsupported stage dilation {dilation!r} (the official code knows 1, 2, 4).")
    return [first] + [dilation] * (blocks - 1)


def _conv(filters, kernel, name, stride=1, dilation=1, padding=None):
    # Strided convs get an explicit ZeroPadding2D (PyTorch semantics), see the module doc.
    if padding is None:
        padding = "valid" if (stride > 1 or kernel == 1) else "same"
    return keras.layers.Conv2D(
        filters, kernel, strides=stride, dilation_rate=dilation,
        padding=padding, use_bias=False,
        kernel_initializer=keras.initializers.get(_KERNEL_INIT), name=name,
    )


def _bn(name):
    return keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                           name=name)


def _strided_conv3x3(x, filters, name, stride, dilation=1):
    """PyTorch's `Conv2d(3, stride, padding=dilation, dilation)` for stride > 1.

    With dilation > 1 (a multiple of the stride) the conv reads only every
    `stride`-th padded row and column: those are taken first (a 1x1 max pool is a
    plain subsampling) and the conv runs undilated on them (see the module doc).
    """
    if stride > 1:
        x = keras.layers.ZeroPadding2D(dilation, name=f"{name}_pad")(x)
    if stride > 1 and dilation > 1:
        if dilation % stride:
            raise ValueError(f"{name}: a stride-{stride} conv needs a dilation that is a "
                             f"multiple of it, got {dilation}.")
        x = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_subsample")(x)
        return _conv(filters, 3, name, dilation=dilation // stride, padding="valid")(x)
    return _conv(filters, 3, name, stride=stride)(x)


def _bottleneck(x, planes, stride, dilation, downsample, prefix):
    """The official `Bottleneck`: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4) + shortcut."""
    out = _conv(planes, 1, f"{prefix}_conv1")(x)
    out = keras.layers.ReLU(name=f"{prefix}_relu1")(_bn(f"{prefix}_bn1")(out))
    if stride > 1:
        out = _strided_conv3x3(out, planes, f"{prefix}_conv2", stride, dilation)
    else:
        out = _conv(planes, 3, f"{prefix}_conv2", dilation=dilation)(out)
    out = keras.layers.ReLU(name=f"{prefix}_relu2")(_bn(f"{prefix}_bn2")(out))
    out = _bn(f"{prefix}_bn3")(_conv(planes * _EXPANSION, 1, f"{prefix}_conv3")(out))
    shortcut = x
    if downsample:
        shortcut = _conv(planes * _EXPANSION, 1, f"{prefix}_downsample_0", stride=stride)(x)
        shortcut = _bn(f"{prefix}_downsample_1")(shortcut)
    out = keras.layers.Add(name=f"{prefix}_add")([out, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(out)


def build_resnet_deepstem(blocks=(3, 4, 6, 3), output_stride=32, weights=None, name=None,
                          stem_widths=OFFICIAL_STEM, dilations=None):
    """Builds a deep-stem (official "resnetXXs") ResNet returning `[c2, c3, c4, c5]`.

    The network of the official FastFCN checkpoints: stem conv3x3(64, stride 2) ->
    BN -> ReLU -> conv3x3(64) -> BN -> ReLU -> conv3x3(128) -> BN -> ReLU ->
    maxpool 3x3 stride 2, then four stages of bottleneck blocks (64, 128, 256, 512
    planes; 256 .. 2048 output channels). For output stride 16 or 8 the last
    stages trade their stride for dilation exactly as the official `_make_layer`.
    `stem_widths` and `dilations` give mmsegmentation's `ResNetV1c` instead (see
    `build_resnet_v1c`).

    Args:
        blocks: blocks per stage; `(3, 4, 6, 3)` is ResNet-50s, `(3, 4, 23, 3)`
            101s, `(3, 8, 36, 3)` 152s. Any positive counts work (small ones are
            handy in tests).
        output_stride: 32, 16 or 8.
        weights: `None` (random init, the official He fan-out init) or a path to a
            `.weights.h5` file saved from this network (e.g. by
            `keras-fastfcn convert --backbone-only` from the official ImageNet
            `.pth`). ImageNet weights are not downloaded.
        name: model name (default `resnet_deepstem_os{output_stride}`).
        stem_widths: channels of the three stem convs: `(64, 64, 128)` officially,
            `(32, 32, 64)` in mmsegmentation's ResNetV1c.
        dilations: None (the official layout: the strides that `output_stride`
            removes become dilations), or, with `output_stride=32`, the dilation of
            each of the four stages while all keep their strides (mmsegmentation's
            "d32" FastFCN backbone: `(1, 1, 2, 4)`). Each takes 1, 2 or 4; the first
            block of a stage dilated by 2 or 4 uses half (`block_dilations`).

    Returns:
        A functional `keras.Model` from images normalized with the ImageNet
        mean/std ("torch" preprocessing) to four feature maps with 256, 512, 1024
        and 2048 channels.

    Example:
    >>> model = build_resnet_deepstem(blocks=(1, 1, 1, 1), output_stride=8)
    >>> [tuple(f.shape[1:]) for f in model(keras.ops.zeros((1, 64, 64, 3)))]
    [(16, 16, 256), (8, 8, 512), (8, 8, 1024), (8, 8, 2048)]
    """
    blocks = tuple(int(b) for b in blocks)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be 4 positive ints (one per stage), got {blocks!r}.")
    stem_widths = tuple(int(w) for w in stem_widths)
    if len(stem_widths) != 3 or min(stem_widths) < 1:
        raise ValueError(f"stem_widths must be 3 positive ints, got {stem_widths!r}.")
    (s3, d3), (s4, d4) = stage_dilations(output_stride)
    stage_cfg = [(1, 1), (2, 1), (s3, d3), (s4, d4)]
    if dilations is not None:
        dilations = tuple(int(d) for d in dilations)
        if output_stride != 32 or len(dilations) != 4:
            raise ValueError(
                "dilations= takes four stage dilations for a stride-32 network (all "
                f"stages keep their strides); got dilations={dilations!r} at "
                f"output_stride={output_stride}.")
        stage_cfg = [(stride, d) for (stride, _), d in zip(stage_cfg, dilations)]
    if weights == "imagenet":
        raise ValueError(
            "No ImageNet download for the deep-stem ResNets. Convert the official "
            "ImageNet checkpoint (e.g. resnet50-ebb6acbb.pth of the PyTorch-Encoding model "
            "store) with `keras-fastfcn convert --backbone-only --checkpoint FILE.pth "
            "--backbone resnet50s --output FILE.weights.h5` and pass that file, or use "
            "weights=None."
        )

    images = keras.Input(shape=(None, None, 3), name="images")
    x = _strided_conv3x3(images, stem_widths[0], "conv1_0", stride=2)
    x = keras.layers.ReLU(name="conv1_2")(_bn("conv1_1")(x))
    x = _conv(stem_widths[1], 3, "conv1_3")(x)
    x = keras.layers.ReLU(name="conv1_5")(_bn("conv1_4")(x))
    x = _conv(stem_widths[2], 3, "conv1_6")(x)
    x = keras.layers.ReLU(name="relu")(_bn("bn1")(x))
    # Zero padding equals PyTorch's -inf padding here: the input is post-ReLU (>= 0)
    # and every window holds at least one real value.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)

    in_channels = stem_widths[2]
    outputs = []
    for stage, ((stride, dilation), planes, count) in enumerate(
            zip(stage_cfg, _STAGE_WIDTHS, blocks), start=1):
        for index, rate in enumerate(block_dilations(dilation, count)):
            first = index == 0
            x = _bottleneck(
                x, planes, stride=stride if first else 1, dilation=rate,
                downsample=first and (stride != 1 or in_channels != planes * _EXPANSION),
                prefix=f"layer{stage}_{index}",
            )
            in_channels = planes * _EXPANSION
        outputs.append(x)
    model = keras.Model(images, outputs, name=name or f"resnet_deepstem_os{output_stride}")
    if weights is not None:
        model.load_weights(weights)
    return model


def build_resnet_v1c(blocks=(3, 4, 6, 3), output_stride=32, weights=None, name=None):
    """mmsegmentation's `ResNetV1c` as its FastFCN models use it, returning `[c2, c3, c4, c5]`.

    Not the official FastFCN encoder (`resnet50s`): mmsegmentation's deep stem is
    half as wide (three 3x3 convs of 32, 32, 64 channels; 64 into `layer1`), and at
    output stride 32 (what JPU takes) stages 3 and 4 stride by 2 and also dilate
    their 3x3 convs by 2 and 4 (first blocks 1 and 2), its "r50-d32" configuration
    (`strides=(1, 2, 2, 2), dilations=(1, 1, 2, 4), contract_dilation=True`). At
    output stride 16 or 8 it is mmsegmentation's "d16" / "d8" layout, which is the
    official one. Everything else (pytorch-style bottlenecks striding in the 3x3
    conv, conv1x1 + BN shortcuts, BN epsilon 1e-5) is `build_resnet_deepstem`'s, so
    layer names and conversion are shared.

    Args:
        blocks: blocks per stage; `(3, 4, 6, 3)` is ResNet-50.
        output_stride: 32 (mmsegmentation's d32), 16 or 8.
        weights: None or a `.weights.h5` file of this network.
        name: model name (default `resnet_v1c_os{output_stride}`).

    Returns:
        A functional `keras.Model` from images normalized with mmsegmentation's
        mean/std (RGB mean 123.675, 116.28, 103.53, std 58.395, 57.12, 57.375: the
        ImageNet mean/std times 255, i.e. "torch" preprocessing) to C2..C5.

    Example:
    >>> model = build_resnet_v1c((1, 1, 1, 1))
    >>> [tuple(f.shape[1:]) for f in model(keras.ops.zeros((1, 64, 64, 3)))]
    [(16, 16, 256), (8, 8, 512), (4, 4, 1024), (2, 2, 2048)]
    """
    return build_resnet_deepstem(
        blocks, output_stride, weights, name=name or f"resnet_v1c_os{output_stride}",
        stem_widths=V1C_STEM, dilations=V1C_D32_DILATIONS if output_stride == 32 else None)
