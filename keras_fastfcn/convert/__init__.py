"""Official FastFCN PyTorch checkpoints -> Keras models (`keras-fastfcn convert`).

The official models (wuhuikai/FastFCN: EncNet / PSP / DeepLabV3 / FCN heads on a
deep-stem ResNet, with JPU, JPU_X or a dilated backbone) map one to one onto
`FastFCNImageSegmenter`s on the `resnet50s` / `resnet101s` encoders: every tensor of
the state dict has exactly one Keras variable (`mapping.py`), and the model's
configuration is read off the checkpoint's keys (`checkpoint.py`).

mmsegmentation's FastFCN models (ResNetV1c + JPU + its PSP / ASPP / Enc heads) have a
converter of their own, `keras_fastfcn.convert.mmseg.convert_mmseg_checkpoint`
(`keras-fastfcn convert --format mmseg`, preset checkpoint format `"mmseg"`).

Example:
>>> from keras_fastfcn.convert import convert_checkpoint
>>> model = convert_checkpoint("encnet_res50_pcontext.pth.tar", dataset="pcontext",
...                            output="encnet_jpu_res50_pcontext.keras")   # doctest: +SKIP
"""

import os
import warnings

from keras_fastfcn.convert.checkpoint import (CLASSIFIER_BIAS, DATASET_NUM_CLASSES,
                                              CheckpointMismatchError, dataset_class_names,
                                              infer_backbone, infer_config, load_state_dict,
                                              normalize_dataset, read_class_names)
from keras_fastfcn.convert.mapping import (HEAD_MAPPINGS, _backbone_targets, _match,
                                           load_official_weights, weight_mapping)
from keras_fastfcn.fileio import atomic_path
from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter, presets, registry
from keras_fastfcn.models.encoders import resnet_deepstem

__all__ = ["CheckpointMismatchError", "convert_backbone_checkpoint", "convert_checkpoint",
           "infer_config", "load_official_weights", "load_state_dict", "read_class_names",
           "weight_mapping"]


def _save(model, output):
    """A `.keras` model or a `.weights.h5` file, written atomically."""
    with atomic_path(output) as tmp:
        if os.fspath(output).endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)


def convert_checkpoint(checkpoint, output=None, head=None, encoder=None, num_classes=None,
                       upsampler="auto", aux=None, se_loss=None, dataset=None,
                       class_names=None, width=None, *, backbone=None, jpu_width=None):
    """Builds the segmenter of an official checkpoint and loads its weights.

    Anything left as None (or `upsampler="auto"`) is read from the checkpoint's
    keys (`infer_config`); values given explicitly must agree with the
    checkpoint, or `CheckpointMismatchError` names the keys that disagree.

    Args:
        checkpoint: path of the official `.pth` / `.pth.tar`, or a state dict
            (`{key: array}`).
        output: optional `.keras` (full model) or `.weights.h5` path, written
            atomically.
        head: "encnet", "psp", "deeplab" or "fcn".
        encoder: "resnet50s", "resnet101s", "resnet152s" (or another registered
            deep-stem encoder); default: from the checkpoint's block counts.
        num_classes: int.
        upsampler: "jpu", "jpu_x", None (dilated backbone, output stride 8) or
            "auto".
        aux: build the auxiliary FCN head (default: if the checkpoint has
            `auxlayer.*`). `False` drops those weights on purpose.
        se_loss: EncNet SE branch (default: if the checkpoint has `selayer`).
        dataset: dataset name carried by the model ("pascal_context", "ade20k";
            the official "pcontext" is accepted).
        class_names: list of names; default: the dataset's, when known.
        width: the upsampler's width (default: from the checkpoint, 512 officially).
        backbone, jpu_width: the 0.2 names of `encoder` and `width` (deprecated).

    Returns:
        The converted `FastFCNImageSegmenter`.

    Example:
    >>> model = convert_checkpoint("encnet_res50_pcontext.pth.tar",  # doctest: +SKIP
    ...                            output="encnet_jpu_res50_pcontext.keras", dataset="pcontext")
    """
    backbone = _renamed("backbone", backbone, "encoder", encoder)
    jpu_width = _renamed("jpu_width", jpu_width, "width", width)
    state_dict = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint)
    inferred = infer_config(state_dict)
    head = registry.head(head).name if head else inferred["head"]
    if head is not None and head not in HEAD_MAPPINGS:
        raise ValueError(f"Head {head!r} has no official checkpoint mapping (mapped: "
                         f"{', '.join(HEAD_MAPPINGS)}; a head of yours: "
                         "convert.mapping.register_head_mapping).")
    if head is None:
        prefixes = sorted({".".join(k.split(".")[:2]) for k in state_dict if k.startswith("head.")})
        raise ValueError(f"Cannot tell the head from the checkpoint (head keys: {prefixes}); "
                         "pass head= (--head).")
    backbone = backbone or infer_backbone(state_dict)
    upsampler = inferred["upsampler"] if upsampler == "auto" else registry.upsampler_name(upsampler)
    num_classes = num_classes or inferred["num_classes"]
    if num_classes is None:
        raise ValueError("Cannot tell the number of classes from the checkpoint "
                         f"(no {CLASSIFIER_BIAS.get(head)}); pass num_classes= (--num-classes).")
    aux = inferred["aux"] if aux is None else bool(aux)
    se_loss = inferred["se_loss"] if se_loss is None else bool(se_loss)
    jpu_width = jpu_width or inferred["jpu_width"] or 512
    dataset = normalize_dataset(dataset)
    if DATASET_NUM_CLASSES.get(dataset, num_classes) != num_classes:
        raise ValueError(
            f"dataset {dataset!r} has {DATASET_NUM_CLASSES[dataset]} classes in the official "
            f"code, but the checkpoint has {num_classes}: wrong --dataset?"
        )
    if class_names is None:
        class_names = dataset_class_names(dataset)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"keras_fastfcn.data.palettes has {len(class_names)} class names "
                             f"for {dataset!r}, the checkpoint {num_classes} classes.")
    elif len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a {num_classes}-class "
                         "checkpoint.")
    skip = []
    if not aux:
        skip.append("auxlayer.")
    if not se_loss:
        skip.append("head.encmodule.selayer.")
    model = FastFCNImageSegmenter(
        FastFCNBackbone(encoder=backbone, upsampler=upsampler, width=jpu_width,
                        preprocessing="torch", align_corners=True),
        num_classes=num_classes, head=head, aux=aux, se_loss=se_loss and head == "encnet",
        class_names=class_names, dataset=dataset, name=f"fastfcn_{head}")
    description = (f"FastFCNImageSegmenter(num_classes={num_classes}, head={head!r}, "
                   f"encoder={backbone!r}, upsampler={upsampler!r}, aux={aux}, "
                   f"se_loss={se_loss}, width={jpu_width})")
    chosen = {"head": head, "backbone": backbone, "upsampler": upsampler,
              "num_classes": num_classes}
    # None is a real answer for the upsampler (no jpu.* keys), not "unknown".
    differ = [f"{_OPTION_NAMES.get(k, k)}={inferred[k]!r}" for k, v in chosen.items()
              if (inferred[k] is not None or k == "upsampler") and inferred[k] != v]
    hint = (f"Hint: the checkpoint's keys suggest {', '.join(differ)}; leave those options "
            "out to use what the checkpoint holds.") if differ else ""
    load_official_weights(model, state_dict, skip_prefixes=skip, description=description,
                          hint=hint)
    if output is not None:
        _save(model, output)
    return model


# What `infer_config` calls "backbone" is the `encoder=` option.
_OPTION_NAMES = {"backbone": "encoder"}


def _renamed(old, old_value, new, new_value):
    """`new_value`, or a value given under the deprecated name `old` (with a warning)."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{old}= is the old name of {new}=: pass only {new}=.")
    warnings.warn(f"convert_checkpoint({old}=...) is deprecated: use {new}=.",
                  DeprecationWarning, stacklevel=3)
    return old_value


def convert_backbone_checkpoint(checkpoint, backbone=None, output=None):
    """The deep-stem backbone of an official checkpoint as a Keras weights file.

    Takes either the official ImageNet classification checkpoint of the deep-stem
    ResNet (keys `conv1.0.weight`, `layer1.0.conv1.weight`, ..., `fc.*`; e.g.
    `resnet50-ebb6acbb.pth` of the PyTorch-Encoding model store) or a full
    segmentation checkpoint (keys `pretrained.*`, the rest ignored), so that
    `FastFCNBackbone(encoder="resnet50s", encoder_weights=output)` starts from it.

    Args:
        checkpoint: path or state dict.
        backbone: "resnet50s", ... (default: from the block counts).
        output: optional `.weights.h5` path, written atomically.

    Returns:
        The backbone `keras.Model` (output stride 32; the weights file also loads
        into the output stride 8 and 16 variants, which share layer names).
    """
    if output is not None and not os.fspath(output).endswith(".weights.h5"):
        raise ValueError(f"Backbone weights are written as .weights.h5, got {output}.")
    state_dict = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint)
    prefix = "pretrained." if any(k.startswith("pretrained.") for k in state_dict) else ""
    if prefix:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    backbone = backbone or infer_backbone(state_dict, prefix)
    if backbone not in resnet_deepstem.DEEPSTEM_DEPTHS:
        raise ValueError(f"backbone must be one of {tuple(resnet_deepstem.DEEPSTEM_DEPTHS)}, "
                         f"got {backbone!r}.")
    model = registry.build_encoder(backbone, output_stride=32)
    targets = _backbone_targets(model, prefix)
    missing, unexpected, mismatched = _match(targets, state_dict,
                                             skip_prefixes=(f"{prefix}fc.",))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"backbone {backbone!r}", missing, unexpected, mismatched)
    for t in targets:
        t.variable.assign(t.to_keras(state_dict[t.key]).astype(t.variable.dtype))
    if output is not None:
        _save(model, output)
    return model


def _convert_preset(checkpoint, entry):
    """A released model's checkpoint (a `presets.PRESETS` entry) as its segmenter."""
    return convert_checkpoint(
        checkpoint, head=entry["head"], encoder=entry["encoder"],
        upsampler=entry.get("upsampler", "jpu"), num_classes=entry["num_classes"],
        dataset=entry.get("dataset"))


presets.register_checkpoint_reader("official", _convert_preset)
