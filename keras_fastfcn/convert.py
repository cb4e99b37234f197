"""Official FastFCN PyTorch checkpoints -> Keras models (`keras-fastfcn convert`).

The official models (wuhuikai/FastFCN: EncNet / PSP / DeepLabV3 / FCN heads on a
deep-stem ResNet, with JPU, JPU_X or a dilated backbone) map one to one onto
`keras_fastfcn.FastFCN(backbone="resnet50s", ...)`: every tensor of the state
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

import contextlib
import os

import keras
import numpy as np

from keras_fastfcn import backbones as backbones_lib
from keras_fastfcn import layers as L
from keras_fastfcn import resnet_deepstem

# Official keys that have no Keras counterpart on purpose.
_UNUSED_PREFIXES = ("pretrained.fc.",)
_CLASSIFIER_BIAS = {
    "encnet": "head.conv6.1.bias",
    "psp": "head.conv5.5.bias",
    "deeplab": "head.block.4.bias",
    "fcn": "head.conv5.4.bias",
}
_DATASET_ALIASES = {"pcontext": "pascal_context", "pascal-context": "pascal_context",
                    "ade": "ade20k", "ade20k": "ade20k"}
# Official dataset sizes (encoding/datasets/*.py NUM_CLASS).
DATASET_NUM_CLASSES = {"pascal_context": 59, "ade20k": 150}


class CheckpointMismatchError(ValueError):
    """A state dict that does not fit the Keras model: names every offending key.

    Attributes:
        missing: keys the model needs that the checkpoint lacks.
        unexpected: checkpoint keys nothing in the model uses.
        mismatched: `(key, checkpoint_shape, expected_shape)` in PyTorch layout.
    """

    def __init__(self, description, missing, unexpected, mismatched, hint=""):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = [f"The checkpoint does not match {description}:"]
        if self.missing:
            lines.append(f"  {len(self.missing)} missing key(s) "
                         "(in the model, not in the checkpoint):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected key(s) "
                         "(in the checkpoint, unused by the model):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} shape mismatch(es) (PyTorch layout):")
            lines += [f"    {k}: checkpoint {tuple(a)}, model expects {tuple(b)}"
                      for k, a, b in self.mismatched]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------ loading


def load_state_dict(path):
    """Reads an official checkpoint into `{key: numpy array}`.

    Accepts a bare state dict or a training checkpoint (`{"state_dict": ...,
    "epoch": ..., "optimizer": ...}` as the official `train.py` saves), and strips
    the `module.` prefix that `DataParallel` adds. Uses
    `torch.load(path, map_location="cpu", weights_only=True)`, so a file that
    needs arbitrary code to unpickle is refused, not executed.

    Args:
        path: `.pth` / `.pth.tar` file.

    Returns:
        dict of key -> `np.ndarray` (floating tensors as float32).

    Example:
    >>> sd = load_state_dict("encnet_jpu_res50_pcontext.pth.tar")  # doctest: +SKIP
    >>> sd["head.conv6.1.bias"].shape  # doctest: +SKIP
    (59,)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        import torch
    except ImportError as err:
        raise RuntimeError(
            "Converting a PyTorch checkpoint needs PyTorch (CPU is enough): "
            "pip install torch"
        ) from err
    try:
        # safe_globals exists from torch 2.5 on; without it numpy scalars stay refused.
        safe = getattr(torch.serialization, "safe_globals", None)
        with safe(_numpy_scalar_globals()) if safe else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... loosely
        raise ValueError(
            f"Could not read {path} as a PyTorch checkpoint with weights_only=True "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "If it pickles objects other than tensors, re-save just the weights in a "
            "trusted environment: torch.save(torch.load(f)['state_dict'], 'weights.pth')."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(
            f"{path} is not a state dict: entries {not_tensors} are not tensors "
            "(expected a state dict or a dict with a 'state_dict' entry)."
        )
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    out = {}
    for key, tensor in obj.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        out[key] = tensor.numpy()
    return out


def _numpy_scalar_globals():
    """numpy scalar reconstruction, for `torch.load(weights_only=True)`.

    The official `train.py` stores `best_pred` as a numpy float64 next to the state
    dict, which the weights-only unpickler refuses by default. Rebuilding a numpy
    scalar from its dtype and bytes runs no user code, so these few globals are
    allowed (also under numpy 1.x's module name `numpy.core.multiarray`, which old
    checkpoints reference); everything else stays refused.
    """
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(code)) for code in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


# ------------------------------------------------------------------ inference of the config


def _stage_blocks(state_dict, prefix):
    blocks = []
    for stage in range(1, 5):
        stem = f"{prefix}layer{stage}."
        idx = {int(k[len(stem):].split(".")[0]) for k in state_dict if k.startswith(stem)}
        blocks.append(max(idx) + 1 if idx else 0)
    return tuple(blocks)


def infer_backbone(state_dict, prefix="pretrained."):
    """The deep-stem backbone name (`resnet50s`, ...) from the block counts of the keys."""
    if f"{prefix}conv1.weight" in state_dict:
        raise ValueError(
            f"The checkpoint's backbone has a single 7x7 stem conv ({prefix}conv1.weight); "
            "the converter supports the official deep-stem ResNets (three 3x3 stem convs, "
            f"keys {prefix}conv1.0/3/6.weight) only."
        )
    blocks = _stage_blocks(state_dict, prefix)
    for name, depth in resnet_deepstem.DEEPSTEM_DEPTHS.items():
        if depth == blocks:
            return name
    raise ValueError(
        f"Cannot tell the backbone from the checkpoint: blocks per stage {blocks} (from the "
        f"{prefix}layerN.* keys) match none of "
        f"{dict(resnet_deepstem.DEEPSTEM_DEPTHS)}. Pass backbone= (--backbone) explicitly."
    )


def infer_config(state_dict):
    """Guesses the `FastFCN` arguments of an official checkpoint from its keys.

    Returns:
        dict with `head`, `backbone`, `upsampler`, `jpu_width`, `num_classes`,
        `aux` and `se_loss`; a value is None when the keys do not tell.
    """
    keys = set(state_dict)
    if any(k.startswith("head.encmodule.") for k in keys):
        head = "encnet"
    elif any(k.startswith("head.aspp.") for k in keys):
        head = "deeplab"
    elif any(k.startswith("head.conv5.0.conv1.") for k in keys):
        head = "psp"
    elif "head.conv5.4.weight" in keys:
        head = "fcn"
    else:
        head = None
    if any(k.startswith("jpu.jum_1.") for k in keys):
        upsampler, width_key = "jpu_x", "jpu.jum_2.conv_l.0.weight"
    elif any(k.startswith("jpu.") for k in keys):
        upsampler, width_key = "jpu", "jpu.conv5.0.weight"
    else:
        upsampler, width_key = None, None
    jpu_width = int(state_dict[width_key].shape[0]) if width_key in keys else None
    bias_key = _CLASSIFIER_BIAS.get(head)
    num_classes = int(state_dict[bias_key].shape[0]) if bias_key in keys else None
    try:
        backbone = infer_backbone(state_dict)
    except ValueError:
        backbone = None
    return {
        "head": head,
        "backbone": backbone,
        "upsampler": upsampler,
        "jpu_width": jpu_width,
        "num_classes": num_classes,
        "aux": any(k.startswith("auxlayer.") for k in keys),
        "se_loss": any(k.startswith("head.encmodule.selayer.") for k in keys),
    }


# ------------------------------------------------------------------ the mapping


class _Target:
    """One Keras variable and the official key (and layout) that fills it."""

    __slots__ = ("key", "variable", "layout")

    def __init__(self, key, variable, layout):
        self.key, self.variable, self.layout = key, variable, layout

    def to_keras(self, array):
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


def _head_targets(head):
    if isinstance(head, L.EncHead):
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
    if isinstance(head, L.PSPHead):
        targets = []
        for i, conv in enumerate(head.pyramid.convs):
            targets += _cbr(f"head.conv5.0.conv{i + 1}", conv)
        return (targets + _conv("head.conv5.1", head.conv.conv)
                + _norm("head.conv5.2", head.conv.bn) + _conv("head.conv5.5", head.classifier))
    if isinstance(head, L.ASPPHead):
        aspp = head.aspp
        targets = []
        for i, branch in enumerate(aspp.branches):
            targets += _cbr(f"head.aspp.b{i}", branch)
        n = len(aspp.branches)
        targets += (_conv(f"head.aspp.b{n}.gap.1", aspp.pool_conv.conv)
                    + _norm(f"head.aspp.b{n}.gap.2", aspp.pool_conv.bn)
                    + _cbr("head.aspp.project", aspp.project) + _cbr("head.block", head.block))
        return targets + _conv("head.block.4", head.classifier)
    if isinstance(head, L.FCNHead):
        return _fcn_targets("head", head)
    raise TypeError(f"No official mapping for head {type(head).__name__}.")


def _find_backbone(model):
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise TypeError(f"Expected one backbone sub-model in {model.name}, found {len(nested)}.")
    return nested[0]


def weight_mapping(model):
    """Every variable of a `FastFCN` model with the official key that fills it.

    Args:
        model: a `keras_fastfcn.FastFCN` on a deep-stem backbone (`resnet50s`, ...).

    Returns:
        list of `(official_key, keras_variable, layout)`, `layout` one of "conv",
        "depthwise", "dense", "copy".

    Example:
    >>> m = FastFCN(5, head="fcn", backbone="resnet50s", jpu_width=64)  # doctest: +SKIP
    >>> weight_mapping(m)[0][0]  # doctest: +SKIP
    'pretrained.conv1.0.weight'
    """
    return [(t.key, t.variable, t.layout) for t in _targets(model)]


def _targets(model):
    backbone_name = getattr(model, "backbone", None)
    if backbone_name not in resnet_deepstem.DEEPSTEM_DEPTHS and not _is_deepstem(
            _find_backbone(model)):
        raise ValueError(
            f"The official checkpoints use deep-stem ResNets; this model's backbone is "
            f"{backbone_name!r}. Build it with backbone='resnet50s' (or 101s/152s)."
        )
    targets = _backbone_targets(_find_backbone(model), "pretrained.")
    layer_names = {layer.name for layer in model.layers}
    if "jpu" in layer_names:
        targets += _jpu_targets(model.get_layer("jpu"))
    targets += _head_targets(model.get_layer("head"))
    if "auxlayer" in layer_names:
        targets += _fcn_targets("auxlayer", model.get_layer("auxlayer"))
    # Every variable must be filled exactly once, or the mapping has a bug.
    seen = {id(t.variable) for t in targets}
    left = [v.path for v in model.weights if id(v) not in seen]
    if left or len(seen) != len(targets):
        raise RuntimeError(f"Internal error: the official mapping does not cover {left}.")
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
    """Copies an official state dict into a `FastFCN` model, all or nothing.

    Checks every key first; on any missing key, unexpected key or shape mismatch
    it raises `CheckpointMismatchError` listing all of them, and leaves the model
    untouched.

    Args:
        model: a `keras_fastfcn.FastFCN` built with a deep-stem backbone.
        state_dict: `{key: array}` as returned by `load_state_dict`.
        skip_prefixes: checkpoint key prefixes to drop on purpose (e.g.
            `("auxlayer.",)` for a model built without the auxiliary head).
        description: how the model is named in error messages.
        hint: extra line(s) for the error message.

    Returns:
        The number of tensors copied.

    Example:
    >>> model = FastFCN(59, head="encnet", backbone="resnet50s")  # doctest: +SKIP
    >>> load_official_weights(model, load_state_dict("encnet.pth"),  # doctest: +SKIP
    ...                       skip_prefixes=("auxlayer.", "head.encmodule.selayer."))
    """
    targets = _targets(model)
    missing, unexpected, mismatched = _match(targets, state_dict, skip_prefixes)
    if missing or unexpected or mismatched:
        hint = "\n".join(h for h in (hint, _hint(unexpected)) if h)
        raise CheckpointMismatchError(description or f"model {model.name!r}", missing,
                                      unexpected, mismatched, hint)
    for t in targets:
        t.variable.assign(t.to_keras(state_dict[t.key]).astype(t.variable.dtype))
    return len(targets)


# ------------------------------------------------------------------ end to end


def normalize_dataset(dataset):
    """Official dataset names (`pcontext`, `ade20k`) -> ours (`pascal_context`, `ade20k`)."""
    if dataset is None:
        return None
    key = str(dataset).lower()
    return _DATASET_ALIASES.get(key, key)


def read_class_names(path):
    """One class name per line (blank lines and `#` comments skipped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class names file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def dataset_class_names(dataset):
    """The class names of a known dataset from `keras_fastfcn.data.palettes`, or None."""
    if dataset is None:
        return None
    try:
        from keras_fastfcn.data import palettes
    except ImportError:
        return None
    try:
        names = palettes.class_names(dataset)
    except (KeyError, ValueError):
        return None
    return list(names) if names is not None else None


def _save_atomic(model, output, weights_only=False):
    output = os.fspath(output)
    suffix = ".weights.h5" if weights_only else ".keras"
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(output)}.{os.getpid()}.tmp{suffix}")
    try:
        if weights_only:
            model.save_weights(tmp)
        else:
            model.save(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert_checkpoint(checkpoint, output=None, head=None, backbone=None, num_classes=None,
                       upsampler="auto", aux=None, se_loss=None, dataset=None,
                       class_names=None, jpu_width=None):
    """Builds the `FastFCN` model of an official checkpoint and loads its weights.

    Anything left as None (or `upsampler="auto"`) is read from the checkpoint's
    keys (`infer_config`); values given explicitly must agree with the
    checkpoint, or `CheckpointMismatchError` names the keys that disagree.

    Args:
        checkpoint: path of the official `.pth` / `.pth.tar`, or a state dict
            (`{key: array}`).
        output: optional `.keras` (full model) or `.weights.h5` path, written
            atomically.
        head: "encnet", "psp", "deeplab" or "fcn".
        backbone: "resnet50s", "resnet101s", "resnet152s" (or another registered
            deep-stem backbone).
        num_classes: int.
        upsampler: "jpu", "jpu_x", None (dilated backbone, output stride 8) or
            "auto".
        aux: build the auxiliary FCN head (default: if the checkpoint has
            `auxlayer.*`). `False` drops those weights on purpose.
        se_loss: EncNet SE branch (default: if the checkpoint has `selayer`).
        dataset: dataset name carried by the model ("pascal_context", "ade20k";
            the official "pcontext" is accepted).
        class_names: list of names; default: the dataset's, when known.
        jpu_width: JPU width (default: from the checkpoint, 512 officially).

    Returns:
        The converted `keras_fastfcn.FastFCN` model.

    Example:
    >>> model = convert_checkpoint("encnet_res50_pcontext.pth.tar",  # doctest: +SKIP
    ...                            output="encnet_jpu_res50_pcontext.keras", dataset="pcontext")
    """
    from keras_fastfcn.models import FastFCN, _normalize_head, _normalize_upsampler

    state_dict = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint)
    inferred = infer_config(state_dict)
    head = _normalize_head(head) if head else inferred["head"]
    if head is None:
        prefixes = sorted({".".join(k.split(".")[:2]) for k in state_dict if k.startswith("head.")})
        raise ValueError(f"Cannot tell the head from the checkpoint (head keys: {prefixes}); "
                         "pass head= (--head).")
    backbone = backbone or infer_backbone(state_dict)
    upsampler = inferred["upsampler"] if upsampler == "auto" else _normalize_upsampler(upsampler)
    num_classes = num_classes or inferred["num_classes"]
    if num_classes is None:
        raise ValueError("Cannot tell the number of classes from the checkpoint "
                         f"(no {_CLASSIFIER_BIAS.get(head)}); pass num_classes= (--num-classes).")
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
    model = FastFCN(num_classes, head=head, backbone=backbone, upsampler=upsampler, aux=aux,
                    se_loss=se_loss and head == "encnet", jpu_width=jpu_width,
                    preprocessing="torch", align_corners=True, class_names=class_names,
                    dataset=dataset)
    description = (f"FastFCN(num_classes={num_classes}, head={head!r}, backbone={backbone!r}, "
                   f"upsampler={upsampler!r}, aux={aux}, se_loss={se_loss}, jpu_width={jpu_width})")
    chosen = {"head": head, "backbone": backbone, "upsampler": upsampler,
              "num_classes": num_classes}
    # None is a real answer for the upsampler (no jpu.* keys), not "unknown".
    differ = [f"{k}={inferred[k]!r}" for k, v in chosen.items()
              if (inferred[k] is not None or k == "upsampler") and inferred[k] != v]
    hint = (f"Hint: the checkpoint's keys suggest {', '.join(differ)}; leave those options "
            "out to use what the checkpoint holds.") if differ else ""
    load_official_weights(model, state_dict, skip_prefixes=skip, description=description,
                          hint=hint)
    if output is not None:
        _save_atomic(model, output, weights_only=os.fspath(output).endswith(".weights.h5"))
    return model


def convert_backbone_checkpoint(checkpoint, backbone=None, output=None):
    """The deep-stem backbone of an official checkpoint as a Keras weights file.

    Takes either the official ImageNet classification checkpoint of the deep-stem
    ResNet (keys `conv1.0.weight`, `layer1.0.conv1.weight`, ..., `fc.*`; e.g.
    `resnet50-ebb6acbb.pth` of the PyTorch-Encoding model store) or a full
    segmentation checkpoint (keys `pretrained.*`, the rest ignored), so that
    `build_backbone("resnet50s", weights=output)` / `FastFCN(...,
    backbone_weights=output)` start from it.

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
    model = backbones_lib.build_backbone(backbone, output_stride=32)
    targets = _backbone_targets(model, prefix)
    missing, unexpected, mismatched = _match(targets, state_dict,
                                             skip_prefixes=(f"{prefix}fc.",))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"backbone {backbone!r}", missing, unexpected, mismatched)
    for t in targets:
        t.variable.assign(t.to_keras(state_dict[t.key]).astype(t.variable.dtype))
    if output is not None:
        _save_atomic(model, output, weights_only=True)
    return model


# ------------------------------------------------------------------ CLI


def add_arguments(parser):
    """Options of `keras-fastfcn convert`."""
    parser.add_argument("--checkpoint", required=True,
                        help="official PyTorch checkpoint (.pth / .pth.tar; a state dict or "
                             "a training checkpoint with 'state_dict')")
    parser.add_argument("--output", required=True,
                        help="output .keras model (or .weights.h5; with --backbone-only a "
                             ".weights.h5 backbone file)")
    parser.add_argument("--head", choices=("encnet", "psp", "deeplab", "fcn"),
                        help="head (default: from the checkpoint's keys)")
    parser.add_argument("--backbone", choices=tuple(resnet_deepstem.DEEPSTEM_DEPTHS),
                        help="deep-stem backbone (default: from the checkpoint's block counts)")
    parser.add_argument("--num-classes", type=int,
                        help="classes (default: from the classifier's shape)")
    parser.add_argument("--upsampler", default="auto",
                        choices=("auto", "jpu", "jpu_x", "none"),
                        help="JPU variant; 'none' for a dilated-backbone model "
                             "(default: from the checkpoint's keys)")
    parser.add_argument("--dataset",
                        help="dataset the model was trained on, carried by the model for "
                             "labels and colours: pascal_context (or pcontext), ade20k, ...")
    parser.add_argument("--class-names",
                        help="text file with one class name per line (default: the "
                             "dataset's names, when keras_fastfcn knows them)")
    parser.add_argument("--inference-only", action="store_true",
                        help="drop the auxiliary head and SE branch (training-only outputs): "
                             "the model returns logits only")
    parser.add_argument("--backbone-only", action="store_true",
                        help="write only the deep-stem backbone's weights (.weights.h5), from "
                             "a segmentation checkpoint or the official ImageNet .pth")


def run(args):
    """Runs `keras-fastfcn convert`; returns the exit code."""
    from keras_fastfcn.cli import CommandError

    try:
        state_dict = load_state_dict(args.checkpoint)
    except RuntimeError as err:  # PyTorch missing
        raise CommandError(str(err)) from err
    if args.backbone_only:
        backbone = convert_backbone_checkpoint(state_dict, backbone=args.backbone,
                                               output=args.output)
        print(f"Wrote the backbone weights ({backbone.name.rsplit('_os', 1)[0]}) to "
              f"{args.output}")
        return 0
    if not args.output.endswith((".keras", ".weights.h5")):
        raise ValueError(f"--output must end with .keras or .weights.h5, got {args.output}.")
    class_names = read_class_names(args.class_names) if args.class_names else None
    upsampler = None if args.upsampler == "none" else args.upsampler
    model = convert_checkpoint(
        state_dict, output=args.output, head=args.head, backbone=args.backbone,
        num_classes=args.num_classes, upsampler=upsampler,
        aux=False if args.inference_only else None,
        se_loss=False if args.inference_only else None,
        dataset=args.dataset, class_names=class_names,
    )
    labels = "with class names" if model.class_names else "without class names"
    print(f"Converted {args.checkpoint}: {model.head} head, {model.backbone}, "
          f"upsampler={model.upsampler}, {model.num_classes} classes, aux={model.aux}, "
          f"se_loss={model.se_loss} ({labels}); wrote {args.output}")
    return 0

