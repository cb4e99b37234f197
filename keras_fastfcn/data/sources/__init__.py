"""Dataset sources: where (image, label) pairs come from.

`get_source(spec, **options)` turns a spec string into a `Source`:

| spec | what |
|---|---|
| `"demo"` | the generated shapes dataset (`keras_fastfcn.data.demo`), in memory |
| `"camvid"`, `"camvid:PATH"` | CamVid 11 classes in the folder layout below (void 11 -> ignore) |
| `"folder:PATH"` | your data: `PATH/[SPLIT/]images/*.jpg|png` + `PATH/[SPLIT/]labels/*.png` |
| `"voc:PATH"` | Pascal VOC 2012 segmentation as extracted (`VOCdevkit/VOC2012`) |
| `"ade20k:PATH"` | ADE20K / SceneParse150 as extracted (`ADEChallengeData2016`) |
| `"cityscapes:PATH"` | Cityscapes 19 classes as extracted (`leftImg8bit/` + `gtFine/`) |
| `"tfds:NAME[/CONFIG]"` | a tensorflow-datasets dataset (`data_dir=`, `download=`) |
| `"tfds:DIR"` | an already prepared tfds dataset folder (no builder code needed) |

Every source has `name`, `num_classes`, `class_names`, `palette` (`uint8 (C, 3)`),
`ignore_label` (255), `splits`, `dataset(split)` -> `tf.data.Dataset` of full-size
`(image uint8 (H, W, 3), label int32 (H, W))`, and `num_examples(split)`. Labels hold
class ids `0..C-1` and 255 (ignore); a source maps its raw label values to these
(e.g. ADE20K's 0 = "other" -> 255 and 1..150 -> 0..149, as the official
encoding/datasets/ade20k.py does; Cityscapes' labelIds 0..33 -> the 19 train ids of
cityscapesScripts' labels.py) and rejects any other value with a `DataError` naming
the file.

Example:
>>> from keras_fastfcn import data
>>> src = data.get_source("demo")
>>> src.num_classes, src.splits
(5, ('train', 'val'))
"""

import inspect
import os

from keras_fastfcn.data.sources.demo import DemoSource
from keras_fastfcn.data.sources.base import IGNORE_LABEL, Source, label_lut, lazy_parts
from keras_fastfcn.data.sources.cityscapes import cityscapes_source
from keras_fastfcn.data.sources.files import (FileSource, ade20k_source, camvid_source,
                                              folder_source, voc_source)

__all__ = ["Source", "FileSource", "TfdsSource", "DemoSource", "get_source", "folder_source",
           "camvid_source", "voc_source", "ade20k_source", "cityscapes_source", "SPECS",
           "IGNORE_LABEL", "label_lut", "lazy_parts", "register_source"]

SPECS = ("demo", "camvid", "camvid:PATH", "folder:PATH", "voc:PATH", "ade20k:PATH",
         "cityscapes:PATH", "tfds:NAME[/CONFIG]", "tfds:PREPARED_DIR")


# spec kind -> (factory, whether it takes ":ARG": True, False, or None = optional)
_FACTORIES = {
    "demo": (DemoSource, False),
    "camvid": (camvid_source, None),
    "folder": (folder_source, True),
    "voc": (voc_source, True),
    "ade20k": (ade20k_source, True),
    "cityscapes": (cityscapes_source, True),
    "tfds": (None, True),  # TfdsSource, imported on use
}


_BUILTIN_KINDS = frozenset(_FACTORIES)


def register_source(kind, factory, takes_argument=True, spec=None):
    """Adds a data source `kind[:ARG]` of your own: `get_source`, the configs'
    `data.source`, `keras-fastfcn train/evaluate --data` (with `--import MODULE`) and
    int8 calibration then accept it.

    Args:
        kind: the spec's name (lower case), not a built-in one.
        factory: `factory(arg, **options) -> Source` (or `factory(**options)` without
            an argument).
        takes_argument: True (`kind:ARG` required), False (no argument) or None
            (optional).
        spec: how `--help` and errors list it (default `kind:PATH` or `kind`).

    Example:
    >>> register_source("mydata", lambda path, **options: folder_source(path, **options))
    >>> get_source("mydata:/data/mine").name  # doctest: +SKIP
    """
    global SPECS
    kind = str(kind).strip().lower()
    if kind in _BUILTIN_KINDS:
        raise ValueError(f"{kind!r} is a built-in data source; register yours under another "
                         "name.")
    if kind not in _FACTORIES:
        SPECS = SPECS + (spec or (f"{kind}:PATH" if takes_argument else kind),)
    _FACTORIES[kind] = (factory, takes_argument)


def _tfds_source():
    # tensorflow-datasets (and TensorFlow) load only for tfds specs: the file and demo
    # sources also serve hosts without TensorFlow (JAX training, data.pyloader).
    from keras_fastfcn.data.sources.tfds import TfdsSource

    return TfdsSource


def __getattr__(name):
    if name == "TfdsSource":
        return _tfds_source()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _accepted_options(factory):
    params = inspect.signature(factory).parameters
    return [p for p in params if p not in ("self", "path", "spec", "options")]


def get_source(spec, **options):
    """Builds a `Source` from a spec string (see the module docstring for the specs).

    Args:
        spec: `"demo"`, `"camvid"`, `"camvid:PATH"`, `"folder:PATH"`, `"voc:PATH"`,
            `"ade20k:PATH"`, `"cityscapes:PATH"`, `"tfds:NAME[/CONFIG]"`,
            `"tfds:PREPARED_DIR"`, or a `Source` (returned as is).
        **options: passed to the source (e.g. `num_classes=`, `ignore_index=` for
            folders; `data_dir=`, `download=` for tfds; `size=`, `seed=` for demo).

    Returns:
        A `Source`.

    Raises:
        ValueError: unknown spec or option, bad metadata.
        FileNotFoundError: missing folders.

    Example:
    >>> get_source("demo").class_names
    ('background', 'circle', 'rectangle', 'triangle', 'ring')
    """
    if isinstance(spec, Source):
        if options:
            raise ValueError("options cannot be applied to an existing Source.")
        return spec
    if isinstance(spec, os.PathLike):
        spec = f"folder:{os.fspath(spec)}"
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, got {type(spec).__name__}.")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _FACTORIES:
        raise ValueError(f"unknown dataset {spec!r}: expected one of {', '.join(SPECS)}.")
    factory, needs_arg = _FACTORIES[kind]
    factory = factory or _tfds_source()
    if needs_arg and not arg:
        raise ValueError(f"dataset {spec!r} needs an argument: {kind}:"
                         f"{'NAME' if kind == 'tfds' else 'PATH'}.")
    if needs_arg is False and sep:
        raise ValueError(f"dataset {spec!r}: {kind} takes no argument.")
    accepted = _accepted_options(factory)
    if kind == "camvid":
        accepted = sorted(set(accepted) | set(_accepted_options(folder_source)))
    elif kind == "voc":
        accepted = ["label_dir", "name"]
    elif kind in ("ade20k", "cityscapes"):
        accepted = ["name"]
    # A factory that takes **options checks them itself.
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                    for p in inspect.signature(factory).parameters.values())
    unknown = [] if takes_any else sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {kind}: unknown option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(accepted)}.")
    if needs_arg or (kind == "camvid" and arg):
        return factory(arg, **options)
    return factory(**options)
