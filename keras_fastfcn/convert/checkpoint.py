"""Reading official checkpoints: the state dict, and what model it describes.

Checkpoints are read with `torch.load(..., weights_only=True)`: tensors only, no code
is unpickled. PyTorch is needed for this step only, not by the converted model.
"""

import contextlib
import os

import numpy as np

from keras_fastfcn.data import palettes
from keras_fastfcn.data.palettes import canonical_dataset
from keras_fastfcn.models.encoders import resnet_deepstem

CLASSIFIER_BIAS = {
    "encnet": "head.conv6.1.bias",
    "psp": "head.conv5.5.bias",
    "deeplab": "head.block.4.bias",
    "fcn": "head.conv5.4.bias",
}
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
    return load_checkpoint(path)[0]


def load_checkpoint(path):
    """Reads a checkpoint into its state dict (as `load_state_dict`) and its metadata.

    Args:
        path: `.pth` / `.pth.tar` file: a bare state dict, or a dict with
            `"state_dict"` and optionally `"meta"` (mmsegmentation and mmcv/mmengine
            checkpoints keep the class names there).

    Returns:
        `(state_dict, meta)`: `{key: np.ndarray}` and the `"meta"` dict (`{}` when
        the file has none).

    Example:
    >>> sd, meta = load_checkpoint("fastfcn_r50-d32_jpu_psp.pth")  # doctest: +SKIP
    >>> meta.get("CLASSES")[:2]  # doctest: +SKIP
    ('road', 'sidewalk')
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
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
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
    return out, meta


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
    bias_key = CLASSIFIER_BIAS.get(head)
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


def normalize_dataset(dataset):
    """Official dataset names (`pcontext`, `ade20k`) -> ours (`pascal_context`, `ade20k`):
    the one table of `keras_fastfcn.data.palettes.canonical_dataset`."""
    return canonical_dataset(dataset)


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
        names = palettes.class_names(dataset)
    except (KeyError, ValueError):
        return None
    return list(names) if names is not None else None
