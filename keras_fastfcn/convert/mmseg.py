"""mmsegmentation's FastFCN checkpoints -> Keras models (`keras-fastfcn convert --format mmseg`).

mmsegmentation (open-mmlab/mmsegmentation, `configs/fastfcn/`: twelve models, PSP,
ASPP and EncNet heads on Cityscapes and ADE20K) trains FastFCN with its own
modules, which map one to one onto a `FastFCNImageSegmenter`:

| mmsegmentation | keras_fastfcn |
|---|---|
| `ResNetV1c`, depth 50, "d32" (`backbone.*`) | encoder `"resnet50_v1c"` |
| `JPU`, `align_corners=False` (`neck.*`) | `JPU(width=512)`, `FastFCNBackbone(align_corners=False)` |
| `PSPHead` (`decode_head.psp_modules`, ...) | head `"psp"` |
| `ASPPHead` (`decode_head.aspp_modules`, `image_pool`) | head `"mmseg_aspp"` (`MMSegASPPHead`) |
| `EncHead` (`decode_head.enc_module`, `se_layer`) | head `"mmseg_encnet"` (`EncHead(jpu=False)`) |
| `FCNHead` on C4 (`auxiliary_head.*`) | the auxiliary `FCNHead` |
| `SegDataPreProcessor` (RGB, mean 123.675, 116.28, 103.53, std 58.395, 57.12, 57.375) | `"torch"` normalization (the same: ImageNet mean/std x 255) |

Key by key: `backbone.stem.{0,1,3,4,6,7}` are the deep stem's `conv1_0`, `conv1_1`,
`conv1_3`, `conv1_4`, `conv1_6`, `bn1`; `backbone.layerN.*` have the same names as
in the official checkpoints; a `ConvModule`'s `.conv` / `.bn` are a `ConvBNReLU`'s
`conv` / `bn`. One reordering: mmsegmentation's JPU concatenates its projections as
`[C3, C4, C5]`, the official one (ours) as `[C5, C4, C3]`. The separable convs after
the concatenation are per channel up to the pointwise conv (depthwise conv, BN), so
the same network with the channel blocks permuted in the depthwise kernels, their BN
and the pointwise conv's input channels computes exactly the same function: that is
how `neck.dilation_layers.*` are converted.

Checkpoints are read with `torch.load(..., weights_only=True)` (tensors, numbers and
strings only); the class names come from the checkpoint's `meta` (mmengine:
`meta["dataset_meta"]["classes"]`; mmcv 1.x, which wrote the released files:
`meta["CLASSES"]`).

Example:
>>> from keras_fastfcn.convert.mmseg import convert_mmseg_checkpoint
>>> model = convert_mmseg_checkpoint(  # doctest: +SKIP
...     "fastfcn_r50-d32_jpu_psp_512x1024_80k_cityscapes_20210928_053722-57749bed.pth",
...     output="fastfcn_psp_cityscapes.keras")
"""

import keras
import numpy as np

from keras_fastfcn.convert import _save
from keras_fastfcn.convert.checkpoint import (CheckpointMismatchError, dataset_class_names,
                                              load_checkpoint, normalize_dataset)
from keras_fastfcn.convert.mapping import (_conv, _dense, _norm, _Target, check_coverage,
                                           load_targets)
from keras_fastfcn.data import palettes
from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter, presets, registry
from keras_fastfcn.models.encoders import resnet_deepstem

__all__ = ["CheckpointMismatchError", "build_mmseg_segmenter", "convert_mmseg_checkpoint",
           "infer_mmseg_config", "mmseg_weight_mapping"]

# Registry head name <- the decode_head submodule that only that head has.
_HEAD_MARKERS = (("decode_head.psp_modules.", "psp"),
                 ("decode_head.aspp_modules.", "mmseg_aspp"),
                 ("decode_head.enc_module.", "mmseg_encnet"))
# mmsegmentation's loss weights in its FastFCN configs (auxiliary FCN head, SE loss).
AUX_WEIGHT = 0.4
SE_WEIGHT = 0.2
# The deep stem's layers (official names) <- mmsegmentation's `stem` Sequential.
_STEM = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
         "conv1.6": "stem.6", "bn1": "stem.7"}


# ------------------------------------------------------------------ the model


def build_mmseg_segmenter(head, num_classes, encoder="resnet50_v1c", width=512, aux=True,
                          se_loss=None, class_names=None, dataset=None):
    """The architecture of an mmsegmentation FastFCN model, with random weights.

    Args:
        head: `"psp"`, `"mmseg_aspp"` or `"mmseg_encnet"` (mmsegmentation's `PSPHead`,
            `ASPPHead`, `EncHead`).
        num_classes: int.
        encoder: a registered mmsegmentation encoder (`"resnet50_v1c"`).
        width: the JPU's `mid_channels` (512 in every config).
        aux: the auxiliary FCN head on C4 (as trained; used in training only).
        se_loss: EncHead's SE branch (default: for `"mmseg_encnet"`).
        class_names: optional names, one per class.
        dataset: optional dataset name (palette lookup).

    Returns:
        A `FastFCNImageSegmenter` (align_corners=False throughout, "torch"
        normalization, aux weight 0.4 and SE weight 0.2 as mmsegmentation's losses).

    Example:
    >>> seg = build_mmseg_segmenter("psp", 19, dataset="cityscapes")
    >>> seg.backbone.encoder_name, seg.align_corners
    ('resnet50_v1c', False)
    """
    head = registry.head(head).name
    if head not in _HEAD_TARGETS:
        raise ValueError(f"head must be one of {tuple(_HEAD_TARGETS)} for an mmsegmentation "
                         f"model, got {head!r}.")
    if registry.encoder(encoder).name not in resnet_deepstem.V1C_DEPTHS:
        raise ValueError(f"encoder must be one of {tuple(resnet_deepstem.V1C_DEPTHS)} for an "
                         f"mmsegmentation FastFCN model, got {encoder!r}.")
    se_loss = (head == "mmseg_encnet") if se_loss is None else bool(se_loss)
    backbone = FastFCNBackbone(encoder=encoder, upsampler="jpu", width=width,
                               preprocessing="torch", align_corners=False)
    return FastFCNImageSegmenter(
        backbone, num_classes=num_classes, head=head, aux=aux, se_loss=se_loss,
        aux_weight=AUX_WEIGHT, se_weight=SE_WEIGHT, class_names=class_names,
        dataset=dataset, name=f"fastfcn_{head}")


# ------------------------------------------------------------------ the key mapping


def _cm(prefix, block):
    """`ConvBNReLU` <-> mmcv `ConvModule` (`.conv`, `.bn`)."""
    return _conv(f"{prefix}.conv", block.conv) + _norm(f"{prefix}.bn", block.bn)


def _backbone_targets(encoder):
    targets = []
    for layer in encoder.layers:
        path = resnet_deepstem.torch_module_path(layer.name)
        path = "backbone." + _STEM.get(path, path)
        if isinstance(layer, keras.layers.Conv2D):
            targets += _conv(path, layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            targets += _norm(path, layer)
        elif layer.weights:
            raise TypeError(f"Encoder layer {layer.name} ({type(layer).__name__}) has "
                            "weights the mmsegmentation converter does not know.")
    return targets


def _jpu_targets(jpu):
    # neck.conv_layers[i] projects the i-th input, C3 first.
    targets = []
    for i, conv in enumerate((jpu.conv3, jpu.conv4, jpu.conv5)):
        targets += _cm(f"neck.conv_layers.{i}.0", conv)
    # mmseg concatenates [C3, C4, C5], ours [C5, C4, C3] (module docstring): our
    # channel block j is mmseg's block 2 - j.
    w = jpu.width
    order = np.concatenate([np.arange(w) + (2 - j) * w for j in range(3)])
    for i, branch in enumerate(jpu.dilation_branches):
        sep, p = branch.sep, f"neck.dilation_layers.{i}.0"
        dw = _conv(f"{p}.depthwise_conv.conv", sep.conv1) + _norm(f"{p}.depthwise_conv.bn",
                                                                 sep.bn)
        for t in dw:
            t.permutation = (0, order)
        pw = _conv(f"{p}.pointwise_conv.conv", sep.pointwise)
        pw[0].permutation = (1, order)
        targets += dw + pw + _norm(f"{p}.pointwise_conv.bn", branch.bn)
    return targets


def _classifier(prefix, head):
    return _conv(f"{prefix}.conv_seg", head.classifier)


def _psp_targets(head):
    targets = []
    for i, conv in enumerate(head.pyramid.convs):
        targets += _cm(f"decode_head.psp_modules.{i}.1", conv)
    return targets + _cm("decode_head.bottleneck", head.conv) + _classifier("decode_head", head)


def _aspp_targets(head):
    targets = _cm("decode_head.image_pool.1", head.image_pool)
    for i, branch in enumerate(head.aspp_modules):
        targets += _cm(f"decode_head.aspp_modules.{i}", branch)
    return (targets + _cm("decode_head.bottleneck", head.bottleneck)
            + _classifier("decode_head", head))


def _enc_targets(head):
    enc, p = head.encmodule, "decode_head.enc_module"
    targets = (_cm("decode_head.bottleneck", head.conv5) + _cm(f"{p}.encoding_project", enc.conv)
               + [_Target(f"{p}.encoding.0.codewords", enc.encoding.codewords, "copy"),
                  _Target(f"{p}.encoding.0.scale", enc.encoding.scale, "copy")]
               + _norm(f"{p}.encoding.1", enc.encoding_bn) + _dense(f"{p}.fc.0", enc.fc))
    if enc.selayer is not None:
        targets += _dense("decode_head.se_layer", enc.selayer)
    return targets + _classifier("decode_head", head)


_HEAD_TARGETS = {"psp": _psp_targets, "mmseg_aspp": _aspp_targets,
                 "mmseg_encnet": _enc_targets}


def mmseg_weight_mapping(model):
    """Every variable of an mmsegmentation-structured segmenter with its checkpoint key.

    Args:
        model: a `FastFCNImageSegmenter` as `build_mmseg_segmenter` makes.

    Returns:
        list of `(mmseg_key, keras_variable, layout)`.

    Example:
    >>> mmseg_weight_mapping(build_mmseg_segmenter("psp", 19))[0][0]
    'backbone.stem.0.weight'
    """
    return [(t.key, t.variable, t.layout) for t in _targets(model)]


def _targets(model):
    backbone = model.backbone
    if backbone.encoder_name not in resnet_deepstem.V1C_DEPTHS or backbone.upsampler_name != "jpu":
        raise ValueError(f"mmsegmentation's FastFCN models are ResNetV1c + JPU; this model has "
                         f"encoder={backbone.encoder_name!r}, "
                         f"upsampler={backbone.upsampler_name!r}.")
    if model.head_name not in _HEAD_TARGETS:
        raise ValueError(f"No mmsegmentation mapping for head {model.head_name!r} "
                         f"(mapped: {', '.join(_HEAD_TARGETS)}).")
    targets = (_backbone_targets(backbone.encoder) + _jpu_targets(backbone.upsampler)
               + _HEAD_TARGETS[model.head_name](model.head_layer))
    if model.aux_layer is not None:
        targets += (_cm("auxiliary_head.convs.0", model.aux_layer.conv5)
                    + _classifier("auxiliary_head", model.aux_layer))
    return check_coverage(model, targets, "mmsegmentation")


# ------------------------------------------------------------------ reading a checkpoint


def _stage_blocks(state_dict):
    blocks = []
    for stage in range(1, 5):
        stem = f"backbone.layer{stage}."
        idx = {int(k[len(stem):].split(".")[0]) for k in state_dict if k.startswith(stem)}
        blocks.append(max(idx) + 1 if idx else 0)
    return tuple(blocks)


def infer_mmseg_config(state_dict):
    """What an mmsegmentation FastFCN checkpoint holds, read off its keys and shapes.

    Returns:
        dict with `head` (registry name or None), `encoder` (None when the
        block counts match no registered mmsegmentation encoder), `blocks`, `width`,
        `num_classes`, `aux` and `se_loss`.

    Example:
    >>> infer_mmseg_config(state_dict)["head"]  # doctest: +SKIP
    'psp'
    """
    keys = set(state_dict)
    head = next((name for marker, name in _HEAD_MARKERS
                 if any(k.startswith(marker) for k in keys)), None)
    blocks = _stage_blocks(state_dict)
    encoder = next((name for name, depth in resnet_deepstem.V1C_DEPTHS.items()
                    if depth == blocks), None)
    width_key, bias_key = "neck.conv_layers.0.0.conv.weight", "decode_head.conv_seg.bias"
    return {
        "head": head,
        "encoder": encoder,
        "blocks": blocks,
        "width": int(state_dict[width_key].shape[0]) if width_key in keys else None,
        "num_classes": int(state_dict[bias_key].shape[0]) if bias_key in keys else None,
        "aux": any(k.startswith("auxiliary_head.") for k in keys),
        "se_loss": any(k.startswith("decode_head.se_layer.") for k in keys),
    }


def _check_structure(state_dict, inferred):
    """Clear errors for a checkpoint that is not an mmsegmentation FastFCN model."""
    keys = set(state_dict)
    tops = sorted({k.split(".")[0] for k in keys})
    if not {"backbone", "decode_head"} <= set(tops):
        raise ValueError(
            f"Not an mmsegmentation checkpoint: its keys start with {tops}, expected "
            "backbone.*, neck.*, decode_head.* (and auxiliary_head.*). An official FastFCN "
            "checkpoint (pretrained.*, jpu.*, head.*) converts with format 'official'.")
    if "backbone.conv1.weight" in keys:
        raise ValueError(
            "The checkpoint's backbone has a 7x7 stem conv (backbone.conv1.weight), a "
            "ResNetV1b; mmsegmentation's FastFCN models use ResNetV1c (deep stem, "
            "backbone.stem.*), the only one the converter maps.")
    if not any(k.startswith("neck.") for k in keys):
        raise ValueError("The checkpoint has no neck.* keys: not a FastFCN (JPU) model. Only "
                         "mmsegmentation's FastFCN models convert to keras_fastfcn.")
    if inferred["head"] is None:
        heads = sorted({".".join(k.split(".")[:2]) for k in keys
                        if k.startswith("decode_head.")})
        raise ValueError(
            f"Cannot tell the decode head from the checkpoint (its modules: {heads}); the "
            "converter maps mmsegmentation's PSPHead (psp_modules), ASPPHead (aspp_modules) "
            "and EncHead (enc_module).")
    if inferred["encoder"] is None:
        raise ValueError(
            f"The checkpoint's backbone has {inferred['blocks']} blocks per stage (from "
            f"backbone.layerN.*), which no registered mmsegmentation encoder has: "
            f"{dict(resnet_deepstem.V1C_DEPTHS)}.")
    if inferred["num_classes"] is None:
        raise ValueError("The checkpoint has no decode_head.conv_seg.bias: cannot tell the "
                         "number of classes.")


def _meta_class_names(meta):
    names = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    # mmsegmentation spells one ADE20K class "bed " (trailing space).
    return [str(n).strip() for n in names] if names else None


def _dataset_of(names):
    """The known dataset whose class names are `names` (case aside), or None."""
    wanted = [n.strip().lower() for n in names]
    for dataset in palettes.known_datasets():
        known = palettes.class_names(dataset)
        if known is not None and [n.strip().lower() for n in known] == wanted:
            return dataset
    return None


def _as_state_dict(checkpoint):
    """`(state_dict, meta)` from a path, or from a dict as mmseg saves (or its state dict)."""
    if not isinstance(checkpoint, dict):
        return load_checkpoint(checkpoint)
    meta = {}
    if isinstance(checkpoint.get("state_dict"), dict):
        meta = checkpoint.get("meta") or {}
        checkpoint = checkpoint["state_dict"]

    def numpy(value):
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float() if value.is_floating_point() else value
            return value.numpy()
        return np.asarray(value)

    return {k: numpy(v) for k, v in checkpoint.items()}, meta


def convert_mmseg_checkpoint(checkpoint, output=None, num_classes=None, class_names=None,
                             dataset=None, *, head=None, encoder=None, aux=None, se_loss=None):
    """Builds the segmenter of an mmsegmentation FastFCN checkpoint and loads its weights.

    The head, encoder, JPU width and number of classes are read off the
    checkpoint's keys and shapes (`infer_mmseg_config`); arguments given
    explicitly must agree with it, or `CheckpointMismatchError` names the keys
    that disagree. All or nothing: on any missing or unexpected key or shape
    mismatch nothing is loaded (or written).

    Args:
        checkpoint: path of an mmsegmentation `.pth` (`{"meta": ..., "state_dict":
            ...}` or a bare state dict), or such a dict.
        output: optional `.keras` or `.weights.h5` path, written atomically.
        num_classes: int (default: from `decode_head.conv_seg`).
        class_names: list of names (default: the checkpoint's `meta`, else the
            dataset's).
        dataset: dataset name carried by the model (`"cityscapes"`, `"ade20k"`;
            default: the known dataset whose class names the checkpoint has).
        head: `"psp"`, `"mmseg_aspp"` or `"mmseg_encnet"`, checked against the
            checkpoint (default: from it).
        encoder: checked against the checkpoint (default: from it).
        aux: keep the auxiliary head (default: if the checkpoint has one); False
            drops its weights on purpose.
        se_loss: keep EncHead's SE branch (default: if the checkpoint has one).

    Returns:
        The converted `FastFCNImageSegmenter`.

    Example:
    >>> model = convert_mmseg_checkpoint(  # doctest: +SKIP
    ...     "fastfcn_r50-d32_jpu_enc_512x512_80k_ade20k_20210930_225214-65aef6dd.pth",
    ...     output="fastfcn_enc_ade20k.keras")
    >>> model.head_name, model.num_classes  # doctest: +SKIP
    ('mmseg_encnet', 150)
    """
    state_dict, meta = _as_state_dict(checkpoint)
    inferred = infer_mmseg_config(state_dict)
    _check_structure(state_dict, inferred)
    if head is not None and registry.head(head).name != inferred["head"]:
        raise ValueError(f"head={head!r} was asked for, but the checkpoint holds a "
                         f"{inferred['head']!r} head.")
    if encoder is not None and registry.encoder(encoder).name != inferred["encoder"]:
        raise ValueError(f"encoder={encoder!r} was asked for, but the checkpoint's backbone is "
                         f"{inferred['encoder']!r}.")
    num_classes = num_classes or inferred["num_classes"]
    dataset = normalize_dataset(dataset)
    known = dataset_class_names(dataset)
    if known is not None and len(known) != num_classes:  # its palette would be wrong too
        raise ValueError(f"dataset {dataset!r} has {len(known)} classes, but the checkpoint "
                         f"has {num_classes}: wrong --dataset?")
    if class_names is None:
        class_names = _meta_class_names(meta)
        if class_names is not None and dataset is None:
            dataset = _dataset_of(class_names)
        if class_names is None:
            class_names = dataset_class_names(dataset)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names (from the checkpoint's meta or "
                             f"the dataset {dataset!r}) for a {num_classes}-class model.")
    elif len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a {num_classes}-class "
                         "checkpoint.")
    aux = inferred["aux"] if aux is None else bool(aux)
    se_loss = inferred["se_loss"] if se_loss is None else bool(se_loss)
    head = inferred["head"]
    model = build_mmseg_segmenter(head, num_classes, encoder=inferred["encoder"],
                                  width=inferred["width"] or 512, aux=aux,
                                  se_loss=se_loss and head == "mmseg_encnet",
                                  class_names=class_names, dataset=dataset)
    skip = [] if aux else ["auxiliary_head."]
    if not se_loss:
        skip.append("decode_head.se_layer.")
    description = (f"mmsegmentation FastFCN(head={head!r}, encoder={inferred['encoder']!r}, "
                   f"num_classes={num_classes}, width={inferred['width']}, aux={aux}, "
                   f"se_loss={se_loss})")
    load_targets(_targets(model), state_dict, skip_prefixes=skip, description=description)
    if output is not None:
        _save(model, output)
    return model


def _read_preset(checkpoint, entry):
    """A preset's mmsegmentation checkpoint (entry `"format": "mmseg"`) as its segmenter."""
    return convert_mmseg_checkpoint(
        checkpoint, num_classes=entry["num_classes"], dataset=entry.get("dataset"),
        head=entry["head"], encoder=entry.get("encoder", "resnet50_v1c"))


presets.register_checkpoint_reader("mmseg", _read_preset, module="keras_fastfcn.convert.mmseg")
