"""Training configs: the YAML schema, its defaults, and loading with overrides.

A run is described by a YAML file (the bundled ones are in `keras_fastfcn/train/
configs/`, reachable by name: `demo`, `camvid`, `pcontext_encnet_jpu_r50`, ...) with
three sections, `model`, `data` and `train`, merged over `DEFAULTS`. Unknown keys,
values of the wrong type and values out of range raise a `ValueError` naming the key
and the file, before any work starts. Version 0.1 key names (`backbone`,
`backbone_weights`, `jpu_width`, `jpu_remat`) are accepted for the new ones
(`encoder`, `encoder_weights`, `width`, `remat`).
"""

import copy
import difflib
import math
import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

DEFAULTS = {
    "name": None,  # defaults to the config file's stem
    "output_dir": None,  # defaults to runs/<name>
    "model": {
        "head": "encnet",
        "encoder": "resnet50",
        "upsampler": "jpu",
        "width": 512,
        "output_stride": None,
        "encoder_weights": "imagenet",
        "remat": True,
        "align_corners": True,
        "aux": True,
        "se_loss": True,
    },
    "data": {
        "source": "demo",
        "options": {},
        "train_split": "train",
        "val_split": "val",
        "base_size": 520,
        "crop_size": 480,
        "scale_range": [0.5, 2.0],
        # tf.data where TensorFlow is installed (any backend), else the Python
        # PyDataset of data.pyloader (the official PIL transforms); or force either.
        "loader": "auto",
    },
    "train": {
        "epochs": 80,
        "batch_size": 16,
        "lr": 0.001,  # for a batch of lr_reference_batch images (official: 16)
        "lr_reference_batch": 16,  # lr scales with batch_size / this; null: lr as given
        "lr_power": 0.9,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "weight_decay_norm": True,
        "head_lr_mult": 10.0,
        "aux_weight": 0.2,
        "se_weight": 0.2,
        "steps_per_epoch": None,
        "val_batch_size": None,
        "mixed_precision": None,
        "seed": 1,
        "sync_batchnorm": True,  # BatchNorm statistics over all replicas (official SyncBN)
        "checkpoint_every": 100,
        "jit_compile": "auto",
        "verbose": "auto",
    },
}
# 0.1 names of model keys -> today's.
RENAMED = {("model", "backbone"): "encoder", ("model", "backbone_weights"): "encoder_weights",
           ("model", "jpu_width"): "width", ("model", "jpu_remat"): "remat"}
# Keys whose value is a free-form mapping (not checked key by key).
_FREE_FORM = {("data", "options")}
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
LOADERS = ("auto", "tf", "python")


def effective_lr(train):
    """The learning rate for `train.batch_size`: `train.lr` is given for a batch of
    `train.lr_reference_batch` images and scales linearly, as the official `option.py`
    does (`lr = lrs[dataset] / 16 * batch_size`); unscaled when the reference is null.

    Example:
    >>> effective_lr({"lr": 0.001, "batch_size": 8, "lr_reference_batch": 16})
    0.0005
    """
    reference = train.get("lr_reference_batch")
    return train["lr"] * train["batch_size"] / reference if reference else train["lr"]


def resolve_config_path(config):
    """A config path, or the name of a bundled config (`demo`, `camvid`, ...)."""
    if os.path.isfile(config):
        return config
    bundled = os.path.join(CONFIG_DIR, f"{config}.yaml")
    if os.path.isfile(bundled):
        return bundled
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
    raise FileNotFoundError(
        f"Config {config!r} not found: not a file, nor a bundled config ({', '.join(names)})."
    )


def load_config(config, overrides=()):
    """Reads and validates a YAML config; `overrides` are `"section.key=value"` strings.

    Unknown keys and values of the wrong type raise a `ValueError` naming the key
    and the file. Missing keys take the values of `DEFAULTS`.

    Args:
        config: path to a YAML file, or the name of a bundled config.
        overrides: iterable of `"dotted.key=yaml_value"` strings.

    Returns:
        The merged config dict.

    Example:
    >>> cfg = load_config("demo", ["train.epochs=1"])
    >>> cfg["train"]["epochs"]
    1
    """
    path = resolve_config_path(config)
    with open(path, encoding="utf-8") as f:
        try:
            user = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(user, dict):
        raise ValueError(f"{path}: the config must be a mapping, got {type(user).__name__}.")
    user = _renamed(user)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} must look like section.key=value.")
        node = user
        parts = key.strip().split(".")
        if len(parts) == 2 and tuple(parts) in RENAMED:  # a 0.1 name: `model.backbone=...`
            parts[1] = RENAMED[tuple(parts)]
        _check_override_key(parts, item)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part!r} is not a section.")
        node[parts[-1]] = yaml.safe_load(value)
    merged = _merge(DEFAULTS, user, (), path)
    if merged["name"] is None:
        merged["name"] = os.path.splitext(os.path.basename(path))[0]
    if merged["output_dir"] is None:
        merged["output_dir"] = os.path.join("runs", merged["name"])
    _check_values(merged, path)
    return merged


def _renamed(user):
    user = copy.deepcopy(user)
    for (section, old), new in RENAMED.items():
        values = user.get(section)
        if isinstance(values, dict) and old in values:
            values.setdefault(new, values.pop(old))
    return user


def _check_override_key(parts, item):
    """A `ValueError` naming the override (not the config file) for an unknown key."""
    node = DEFAULTS
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or tuple(parts[:depth]) in _FREE_FORM:
            return  # a value's own keys, or a free-form section (data.options)
        if part not in node:
            dotted = ".".join(parts[:depth + 1])
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
            hint = (f" (did you mean {'.'.join(parts[:depth] + [close[0]])!r}?)"
                    if close else "")
            raise ValueError(f"--set {item}: unknown config key {dotted!r}{hint}.")
        node = node[part]


def _merge(defaults, user, prefix, path):
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        dotted = ".".join(prefix + (str(key),))
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean {'.'.join(prefix + (close[0],))!r}?)" if close else ""
            raise ValueError(f"{path}: unknown config key {dotted!r}{hint}.")
        default = defaults[key]
        if isinstance(default, dict) and prefix + (key,) not in _FREE_FORM:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {dotted!r} must be a mapping, got {value!r}.")
            out[key] = _merge(default, value, prefix + (key,), path)
        else:
            out[key] = _check_type(value, default, dotted, path)
    return out


def _check_type(value, default, dotted, path):
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, type(default))
    if not ok and isinstance(default, str) and isinstance(value, (int, float)):
        ok = True  # e.g. jit_compile: true / "auto"
    if not ok:
        raise ValueError(
            f"{path}: {dotted!r} must be of type {type(default).__name__}, got {value!r}."
        )
    return value


# (section, key) -> (lowest allowed, whether the lowest is excluded, None allowed)
_RANGES = {
    ("train", "epochs"): (1, False, False),
    ("train", "batch_size"): (1, False, False),
    ("train", "checkpoint_every"): (1, False, False),
    ("train", "steps_per_epoch"): (1, False, True),
    ("train", "val_batch_size"): (1, False, True),
    ("train", "lr"): (0, True, False),
    ("train", "lr_reference_batch"): (1, False, True),
    ("train", "lr_power"): (0, True, False),
    ("train", "momentum"): (0, False, False),
    ("train", "weight_decay"): (0, False, False),
    ("train", "head_lr_mult"): (0, True, False),
    ("train", "aux_weight"): (0, False, False),
    ("train", "se_weight"): (0, False, False),
    ("data", "base_size"): (8, False, False),
    ("data", "crop_size"): (8, False, False),
    ("model", "width"): (1, False, False),
}


# The official recipe tops out at 2.0 x 520 px; 8192 px a side is a 800 MB float image.
MAX_SCALED_SIDE = 8192


def _check_values(cfg, path):
    """Every numeric option in range, before any work (so no run starts broken)."""
    for (section, key), (low, exclusive, nullable) in _RANGES.items():
        value = cfg[section][key]
        if value is None and nullable:
            continue
        integral = isinstance(DEFAULTS[section][key], int) or nullable
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            raise ValueError(f"{path}: {section}.{key} must be "
                             f"{'an int' if integral else 'a number'}, got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):  # .inf, .nan
            raise ValueError(f"{path}: {section}.{key} must be a finite number, got {value!r}.")
        bad = value <= low if exclusive else value < low
        if bad:
            relation = ">" if exclusive else ">="
            raise ValueError(f"{path}: {section}.{key} must be {relation} {low}"
                             f"{' (or null)' if nullable else ''}, got {value!r}.")
    train, data, model = cfg["train"], cfg["data"], cfg["model"]
    if train["momentum"] >= 1:
        raise ValueError(f"{path}: train.momentum must be < 1, got {train['momentum']}.")
    if train["mixed_precision"] not in MIXED_PRECISION:
        raise ValueError(
            f"{path}: train.mixed_precision must be one of {MIXED_PRECISION}, "
            f"got {train['mixed_precision']!r}."
        )
    if data["loader"] not in LOADERS:
        raise ValueError(f"{path}: data.loader must be one of {LOADERS}, got {data['loader']!r}.")
    if model["output_stride"] not in (None, 8, 16, 32):
        raise ValueError(f"{path}: model.output_stride must be 8, 16, 32 or null, "
                         f"got {model['output_stride']!r}.")
    lo_hi = data["scale_range"]
    numbers = len(lo_hi) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in lo_hi)
    if not numbers or not 0 < lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"{path}: data.scale_range must be [low, high], finite numbers with "
                         f"0 < low <= high, got {lo_hi!r}.")
    # The augmentation resizes the image's short side to base_size x scale: bound it.
    if lo_hi[1] * data["base_size"] > MAX_SCALED_SIDE:
        raise ValueError(
            f"{path}: data.scale_range high {lo_hi[1]:g} x data.base_size {data['base_size']} "
            f"= {lo_hi[1] * data['base_size']:.0f} px on the short side, over the "
            f"{MAX_SCALED_SIDE} px this training resizes to at most; use a smaller high scale "
            "or base size.")
