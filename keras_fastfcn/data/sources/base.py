"""The `Source` interface: splits of full-size (image, label) pairs plus class metadata,
and the mapping of raw label values to class ids (`label_lut`)."""

import abc

import numpy as np

from keras_fastfcn.data import palettes
from keras_fastfcn.data.errors import translate_errors

IGNORE_LABEL = 255


def _attach_lazy(ds, keys, load, num_keys, keys_are_small):
    # train_pipeline shuffles `keys` (file names, encoded records) before `load`
    # decodes them, instead of buffering decoded images. Only the untransformed
    # dataset carries this attribute: any transformation returns a new object.
    ds._keras_fastfcn_lazy = (keys, load, num_keys, keys_are_small)
    return ds


def lazy_parts(ds):
    """`(keys, load, num_keys, keys_are_small)` of a `Source.dataset`, else None."""
    return getattr(ds, "_keras_fastfcn_lazy", None)


def duplicate_names(names):
    """`"'road' (lines 2, 5), ..."` for the names that occur more than once, or ""."""
    seen = {}
    for line, name in enumerate(names, 1):
        seen.setdefault(name, []).append(line)
    return ", ".join(f"{name!r} (lines {', '.join(map(str, lines))})"
                     for name, lines in seen.items() if len(lines) > 1)


class Source(abc.ABC):
    """A segmentation dataset: splits of (image, label) pairs plus class metadata.

    Subclasses implement `dataset(split)` and `num_examples(split)`.

    Args:
        name: dataset name; also the palette lookup key stored in model configs.
        num_classes: number of classes (1..255; 255 is the ignore label).
        class_names: sequence of `num_classes` names, or None.
        palette: `(num_classes, 3)` colours, or None for `palettes.get_palette(name)`.
        splits: names of the available splits.

    Example:
    >>> from keras_fastfcn.data import get_source
    >>> get_source("demo").dataset("val").element_spec[1].dtype
    tf.int32
    """

    ignore_label = IGNORE_LABEL

    def __init__(self, name, num_classes, class_names=None, palette=None, splits=()):
        num_classes = int(num_classes)
        if not 1 <= num_classes <= 255:
            raise ValueError(f"num_classes must be in 1..255 (255 is the ignore label), "
                             f"got {num_classes}.")
        if class_names is not None:
            class_names = tuple(str(n) for n in class_names)
            if len(class_names) != num_classes:
                raise ValueError(f"{name}: {len(class_names)} class names for "
                                 f"{num_classes} classes.")
            repeated = duplicate_names(class_names)
            if repeated:
                raise ValueError(f"{name}: class names must differ; repeated: {repeated}.")
        if palette is None:
            palette = palettes.get_palette(name, num_classes)
        palette = np.asarray(palette)
        if palette.shape != (num_classes, 3) or palette.min() < 0 or palette.max() > 255:
            raise ValueError(f"{name}: palette must be {num_classes} RGB rows of 0..255, "
                             f"got shape {palette.shape}.")
        self.name = str(name)
        self.num_classes = num_classes
        self.class_names = class_names
        self.palette = palette.astype(np.uint8)
        self.splits = tuple(splits)

    def _split(self, split):
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; available: "
                             f"{', '.join(self.splits) or 'none'} (training config: "
                             "data.train_split / data.val_split; evaluate: --split).")
        return split

    @abc.abstractmethod
    def dataset(self, split):
        """Full-size `(image uint8 (H, W, 3), label int32 (H, W))` examples, in order."""

    @abc.abstractmethod
    def num_examples(self, split):
        """Number of examples in `split` (None if unknown)."""

    def example(self, split, index):
        """Example `index` of `split` as numpy `(image uint8 (H, W, 3), label int32 (H, W))`.

        Random access without TensorFlow: the Python input pipeline
        (`keras_fastfcn.data.pyloader`, for hosts with JAX or PyTorch and no
        TensorFlow) reads through it. File and demo sources have it; others need
        TensorFlow's `dataset()`.
        """
        raise ValueError(
            f"dataset {self.name!r} ({type(self).__name__}) is read through tf.data only: "
            "install tensorflow, or use a folder, camvid, cityscapes, voc, ade20k or demo source.")

    def examples(self, split):
        """Iterates `split` in order as numpy `(image, label)` pairs: through `example()`
        where the source has it (no TensorFlow needed), else through `dataset()`."""
        if type(self).example is Source.example:
            yield from self.dataset(split).as_numpy_iterator()
            return
        for index in range(self.num_examples(split)):
            yield self.example(split, index)

    def verify(self, split):
        """Reads every example of `split`; raises `DataError` naming the first bad one.

        Returns:
            The number of examples read.
        """
        count = 0
        with translate_errors():
            for _ in self.dataset(split):
                count += 1
        return count

    def __repr__(self):
        return (f"<{type(self).__name__} {self.name!r}: {self.num_classes} classes, "
                f"splits {list(self.splits)}>")


# --------------------------------------------------------------------------- labels
def label_lut(num_classes, ignore_index=(), reduce_zero_label=False, label_map=None,
              size=65536):
    """Lookup table raw label value -> class id, 255 (ignore) or -1 (invalid).

    Raw value `r` maps, in this order: `r` in `ignore_index` -> 255; `label_map[r]`;
    with `reduce_zero_label`, 0 -> 255 and `r` -> `r - 1` (ADE20K, Pascal Context:
    0 is "unlabelled"); else `r`. Raw 255 stays 255. Results outside `0..C-1` that
    are not an explicit ignore are marked -1 so loaders can name the bad values.

    Args:
        num_classes: C.
        ignore_index: int or ints mapped to 255 (e.g. 11 = void in CamVid).
        reduce_zero_label: bool, shift as described.
        label_map: dict raw value -> class id (or 255).
        size: number of raw values covered (65536 covers 16-bit PNGs).

    Returns:
        `int32` array `(size,)`.

    Example:
    >>> label_lut(3, reduce_zero_label=True, size=5).tolist()
    [255, 0, 1, 2, -1]
    """
    raw = np.arange(size, dtype=np.int64)
    lut = raw.copy()
    explicit_ignore = raw == IGNORE_LABEL
    if reduce_zero_label:
        lut = np.where(raw == 0, IGNORE_LABEL, raw - 1)
        lut[raw == IGNORE_LABEL] = IGNORE_LABEL
        explicit_ignore |= raw == 0
    for src, dst in (label_map or {}).items():
        src, dst = int(src), int(dst)
        if not 0 <= src < size or not (0 <= dst < num_classes or dst == IGNORE_LABEL):
            raise ValueError(f"label_map entry {src} -> {dst}: raw values must be in "
                             f"0..{size - 1} and targets in 0..{num_classes - 1} or 255.")
        lut[src] = dst
        explicit_ignore[src] = dst == IGNORE_LABEL
    if ignore_index is None:
        ignore_index = ()
    for value in np.atleast_1d(np.asarray(ignore_index, np.int64)):
        if not 0 <= value < size:
            raise ValueError(f"ignore_index {value} is outside 0..{size - 1}.")
        lut[value] = IGNORE_LABEL
        explicit_ignore[value] = True
    valid = (lut >= 0) & (lut < num_classes) | (explicit_ignore & (lut == IGNORE_LABEL))
    return np.where(valid, lut, -1).astype(np.int32)


def _bad_values_message(raw, mapped, num_classes):
    bad = np.unique(raw[mapped < 0])
    shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
    return (f"label values [{shown}] are not class ids 0..{num_classes - 1} nor 255 "
            f"(ignore); check num_classes or map them with ignore_index=/label_map= "
            "(options of folder sources; a named dataset's files must hold its own ids)")
