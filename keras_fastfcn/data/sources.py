"""Dataset sources: where (image, label) pairs come from.

`get_source(spec, **options)` turns a spec string into a `Source`:

| spec | what |
|---|---|
| `"demo"` | the generated shapes dataset (`keras_fastfcn.data.demo`), in memory |
| `"camvid"`, `"camvid:PATH"` | CamVid 11 classes in the folder layout below (void 11 -> ignore) |
| `"folder:PATH"` | your data: `PATH/[SPLIT/]images/*.jpg|png` + `PATH/[SPLIT/]labels/*.png` |
| `"voc:PATH"` | Pascal VOC 2012 segmentation as extracted (`VOCdevkit/VOC2012`) |
| `"ade20k:PATH"` | ADE20K / SceneParse150 as extracted (`ADEChallengeData2016`) |
| `"tfds:NAME[/CONFIG]"` | a tensorflow-datasets dataset (`data_dir=`, `download=`) |
| `"tfds:DIR"` | an already prepared tfds dataset folder (no builder code needed) |

Every source has `name`, `num_classes`, `class_names`, `palette` (`uint8 (C, 3)`),
`ignore_label` (255), `splits`, `dataset(split)` -> `tf.data.Dataset` of full-size
`(image uint8 (H, W, 3), label int32 (H, W))`, and `num_examples(split)`. Labels hold
class ids `0..C-1` and 255 (ignore); a source maps its raw label values to these
(e.g. ADE20K's 0 = "other" -> 255 and 1..150 -> 0..149, as the official
encoding/datasets/ade20k.py does) and rejects any other value with a `DataError`
naming the file.

Example:
>>> from keras_fastfcn import data
>>> src = data.get_source("demo")
>>> src.num_classes, src.splits
(5, ('train', 'val'))
"""

import abc
import inspect
import os
import pathlib

import numpy as np
import tensorflow as tf

from keras_fastfcn.data import palettes
from keras_fastfcn.data.errors import DataError, tagged, translate_errors

__all__ = ["Source", "FileSource", "TfdsSource", "get_source", "folder_source",
           "camvid_source", "voc_source", "ade20k_source", "SPECS", "IGNORE_LABEL"]

IGNORE_LABEL = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPECS = ("demo", "camvid", "camvid:PATH", "folder:PATH", "voc:PATH", "ade20k:PATH",
         "tfds:NAME[/CONFIG]", "tfds:PREPARED_DIR")
_REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CAMVID = _REPO.parent / "shared" / "data" / "camvid"


def _attach_lazy(ds, keys, load, num_keys, keys_are_small):
    # train_pipeline shuffles `keys` (file names, encoded records) before `load`
    # decodes them, instead of buffering decoded images. Only the untransformed
    # dataset carries this attribute: any transformation returns a new object.
    ds._keras_fastfcn_lazy = (keys, load, num_keys, keys_are_small)
    return ds


def lazy_parts(ds):
    """`(keys, load, num_keys, keys_are_small)` of a `Source.dataset`, else None."""
    return getattr(ds, "_keras_fastfcn_lazy", None)


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
                             f"{', '.join(self.splits) or 'none'}.")
        return split

    @abc.abstractmethod
    def dataset(self, split):
        """Full-size `(image uint8 (H, W, 3), label int32 (H, W))` examples, in order."""

    @abc.abstractmethod
    def num_examples(self, split):
        """Number of examples in `split` (None if unknown)."""

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
            f"(ignore); check num_classes or map them with ignore_index=/label_map=")


# ---------------------------------------------------------------------- file reading
def read_image(path):
    """RGB `uint8 (H, W, 3)` from an image file; `DataError` naming it if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def read_label(path):
    """Raw class-index map `(H, W)` from a single-channel PNG (mode L, P, 1 or I;16)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("L", "P"):
                return np.asarray(img)  # P: palette indices, not colours (VOC)
            if mode == "1":
                return np.asarray(img).astype(np.uint8)
            if mode.startswith("I"):
                return np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"label file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read label {path}: {err}") from None
    raise DataError(f"label {path} is a {mode} image; labels must be single-channel "
                    f"class-index PNGs (mode L or P), not colour-coded")


class FileSource(Source):
    """Image/label file pairs, read with PIL inside tf.data.

    Reading in Python lets every problem name its file: unreadable images or labels,
    size mismatches and label values that are not class ids raise `DataError` (from
    iteration: a `tf.errors.InvalidArgumentError` that `translate_errors()` turns back
    into `DataError`). Bad files are never skipped silently.

    Args:
        name: dataset name.
        pairs: dict split -> list of `(image_path, label_path)`.
        num_classes: number of classes.
        class_names: names or None.
        palette: colours or None.
        lut: raw value -> class id table from `label_lut` (default: identity).

    Example:
    >>> src = FileSource("mine", {"train": [("a.jpg", "a.png")]}, num_classes=2)
    >>> src.num_examples("train")
    1
    """

    def __init__(self, name, pairs, num_classes, class_names=None, palette=None, lut=None):
        super().__init__(name, num_classes, class_names, palette, splits=tuple(pairs))
        self._pairs = {split: [(str(i), str(l)) for i, l in items]
                       for split, items in pairs.items()}
        self._lut = label_lut(num_classes) if lut is None else np.asarray(lut, np.int32)

    def files(self, split):
        """The `(image_path, label_path)` pairs of `split`, in dataset order."""
        return list(self._pairs[self._split(split)])

    def num_examples(self, split):
        return len(self._pairs[self._split(split)])

    def load_example(self, image_path, label_path):
        """`(image uint8 (H, W, 3), label int32 (H, W))`, mapped and checked."""
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                f"{label_path} is {raw.shape[1]}x{raw.shape[0]} (W x H)")
        if raw.size and (raw.min() < 0 or raw.max() >= len(self._lut)):
            out = raw[(raw < 0) | (raw >= len(self._lut))]
            raise DataError(f"label {label_path}: values {np.unique(out)[:10].tolist()} "
                            f"are outside 0..{len(self._lut) - 1}")
        label = self._lut[raw]
        if raw.size and label.min() < 0:
            raise DataError(f"label {label_path}: "
                            f"{_bad_values_message(raw, label, self.num_classes)}")
        return image, label

    def _load_numpy(self, image_path, label_path):
        try:
            return self.load_example(image_path.decode(), label_path.decode())
        except DataError as err:
            # TensorFlow reports this as InvalidArgumentError; the tag lets
            # translate_errors() recover the message.
            raise ValueError(tagged(str(err))) from None

    def dataset(self, split):
        pairs = self._pairs[self._split(split)]
        keys = tf.data.Dataset.from_tensor_slices(
            ([p[0] for p in pairs], [p[1] for p in pairs]))

        @tf.autograph.experimental.do_not_convert
        def load(image_path, label_path):
            image, label = tf.numpy_function(self._load_numpy, [image_path, label_path],
                                             (tf.uint8, tf.int32), stateful=False)
            image.set_shape([None, None, 3])
            label.set_shape([None, None])
            return image, label

        ds = keys.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _attach_lazy(ds, keys, load, len(pairs), keys_are_small=True)


# ------------------------------------------------------------------ folder layouts
def _list_images(img_dir):
    images = {}
    for entry in sorted(os.listdir(img_dir)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in IMAGE_EXTENSIONS or entry.startswith("."):
            continue
        if stem in images:
            raise ValueError(f"{img_dir}: two images named {stem!r} "
                             f"({os.path.basename(images[stem])} and {entry}).")
        images[stem] = os.path.join(img_dir, entry)
    return images


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _pairs_for(base, stems=None, list_file=None):
    img_dir, lbl_dir = base / "images", base / "labels"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {img_dir}")
    if not lbl_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {lbl_dir} (class-index PNGs "
                                f"named like the images)")
    images = _list_images(img_dir)
    if not images:
        raise ValueError(f"no images (*.jpg, *.jpeg, *.png) in {img_dir}")
    if stems is None:
        stems = sorted(images)
    else:
        if not stems:
            raise ValueError(f"split list {list_file} is empty")
        missing = [s for s in stems if s not in images]
        if missing:
            raise ValueError(f"split list {list_file}: {len(missing)} names have no image "
                             f"in {img_dir}: {', '.join(missing[:5])}"
                             f"{', ...' if len(missing) > 5 else ''}")
    pairs, missing = [], []
    for stem in stems:
        label = lbl_dir / f"{stem}.png"
        if not label.is_file():
            missing.append(label.name)
        pairs.append((images[stem], str(label)))
    if missing:
        raise ValueError(f"{len(missing)} images in {img_dir} have no label in {lbl_dir}: "
                         f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return pairs


def _folder_splits(root):
    split_dirs = sorted(d.name for d in root.iterdir()
                        if d.is_dir() and (d / "images").is_dir())
    split_lists = sorted(f.stem for f in root.glob("*.txt")
                         if f.name.lower() not in ("classes.txt", "readme.txt",
                                                   "license.txt"))
    flat = (root / "images").is_dir()
    if not split_dirs and not flat:
        raise FileNotFoundError(
            f"no images folder in {root}: expected {root}/images + {root}/labels, or "
            f"{root}/SPLIT/images + {root}/SPLIT/labels (e.g. train/, val/)")
    pairs = {}
    for split in sorted(set(split_dirs) | set(split_lists)):
        base = root / split if split in split_dirs else root
        if split in split_lists:
            list_file = root / f"{split}.txt"
            if base == root and not flat:
                raise FileNotFoundError(f"split list {list_file} refers to {root}/images, "
                                        f"which does not exist")
            pairs[split] = _pairs_for(base, _read_lines(list_file), list_file)
        else:
            pairs[split] = _pairs_for(base)
    if not pairs:
        pairs["train"] = _pairs_for(root)  # one folder, no split lists: all training data
    # Conventional order first so splits reads (train, val, test, ...).
    order = {"train": 0, "trainval": 1, "val": 2, "validation": 2, "test": 3}
    return dict(sorted(pairs.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])))


def _existing_dir(path, what):
    root = pathlib.Path(os.path.expanduser(str(path)))
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {root}")
    return root


def folder_source(path, num_classes=None, class_names=None, ignore_index=(),
                  reduce_zero_label=False, label_map=None, name=None, palette=None):
    """Your own data in the folder layout.

    Layout (`SPLIT/` optional):

        PATH/[SPLIT/]images/NAME.jpg|.jpeg|.png    RGB images
        PATH/[SPLIT/]labels/NAME.png               class ids 0..C-1, 255 = ignore
        PATH/classes.txt                           optional: one class name per line
        PATH/SPLIT.txt                             optional: NAMEs (no extension) of a split

    Splits are the `SPLIT/` subfolders that hold `images/`, plus one per `SPLIT.txt`
    list (any `.txt` but `classes.txt`; a list selects from `PATH/SPLIT/images` if that
    exists, else from `PATH/images`). With neither, all of `PATH/images` is `"train"`.

    Args:
        path: dataset root.
        num_classes: required without `classes.txt` (must match it otherwise).
        class_names: override `classes.txt`.
        ignore_index: raw label value(s) to treat as ignore (255), e.g. a void class.
        reduce_zero_label: raw 0 -> ignore and 1..C -> 0..C-1 (ADE20K-style labels).
        label_map: dict raw value -> class id, for other remappings.
        name: dataset name (default: the folder name); palette lookup key.
        palette: `(C, 3)` colours (default: `palettes.get_palette(name, C)`).

    Returns:
        A `FileSource`.

    Example:
    >>> src = folder_source("../shared/data/camvid", ignore_index=11)  # doctest: +SKIP
    """
    root = _existing_dir(path, "dataset")
    pairs = _folder_splits(root)
    classes_file = root / "classes.txt"
    names_from = "class_names"
    if class_names is None and classes_file.is_file():
        class_names, names_from = _read_lines(classes_file), str(classes_file)
        if not class_names:
            raise ValueError(f"{classes_file} is empty")
    if class_names is not None:
        if num_classes is not None and int(num_classes) != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class "
                             f"names (from {names_from})")
        num_classes = len(class_names)
    if num_classes is None:
        raise ValueError(f"{root} has no classes.txt: pass num_classes=N, or write "
                         f"{classes_file} with one class name per line")
    name = name or root.name
    lut = label_lut(int(num_classes), ignore_index, reduce_zero_label, label_map)
    return FileSource(name, pairs, num_classes, class_names, palette, lut)


def camvid_source(path=None, root=None, **options):
    """CamVid (SegNet version, 11 classes) in the folder layout; void (11) -> ignore.

    Args:
        path: CamVid root with `train/`, `val/` and `classes.txt`. Default: the
            `KERAS_FASTFCN_CAMVID` environment variable, else `../shared/data/camvid`
            next to the repository.
        root: same as `path` (for configs: `options: {root: PATH}`).
        **options: `folder_source` options (`ignore_index` defaults to 11).

    Example:
    >>> src = camvid_source()  # doctest: +SKIP
    >>> src.num_examples("train"), src.num_examples("val")  # doctest: +SKIP
    (367, 101)
    """
    if path is not None and root is not None:
        raise ValueError("camvid: give the folder once, as camvid:PATH or root=PATH")
    path = path if path is not None else root
    if path is None:
        path = os.environ.get("KERAS_FASTFCN_CAMVID") or DEFAULT_CAMVID
        if not pathlib.Path(path).is_dir():
            raise FileNotFoundError(
                f"CamVid not found at {path}: pass 'camvid:PATH' or set "
                f"KERAS_FASTFCN_CAMVID to the folder with train/ and val/")
    options.setdefault("ignore_index", 11)
    options.setdefault("name", "camvid")  # also selects the CamVid palette
    return folder_source(path, **options)


def voc_source(path, **options):
    """Pascal VOC 2012 segmentation from the extracted VOCtrainval tar.

    `PATH` is `VOC2012`, `VOCdevkit` or a folder holding `VOCdevkit/VOC2012`. Images
    `JPEGImages/ID.jpg`, labels `SegmentationClass/ID.png` (palette PNGs: the pixel
    values are the class ids, 255 = object boundaries -> ignore), splits from
    `ImageSets/Segmentation/*.txt` (`train` 1464, `val` 1449, `trainval`). The official
    FastFCN code trains its VOC models on `trainval`. 21 classes incl. background.

    Args:
        path: see above.
        **options: `label_dir` (default `"SegmentationClass"`, e.g.
            `"SegmentationClassAug"` for the SBD-augmented labels), `name`.

    Example:
    >>> src = voc_source("~/data/VOCdevkit")  # doctest: +SKIP
    """
    given = _existing_dir(path, "Pascal VOC")
    label_dir = options.pop("label_dir", "SegmentationClass")
    name = options.pop("name", "pascal_voc")
    if options:
        raise ValueError(f"voc: unknown options {sorted(options)}; valid: label_dir, name")
    for root in (given, given / "VOC2012", given / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / label_dir).is_dir():
            break
    else:
        raise FileNotFoundError(f"no VOC2012 folder (with JPEGImages/ and {label_dir}/) "
                                f"at {given}, {given}/VOC2012 or {given}/VOCdevkit/VOC2012")
    lists = root / "ImageSets" / "Segmentation"
    if not lists.is_dir():
        raise FileNotFoundError(f"split lists not found: {lists}")
    pairs = {}
    for list_file in sorted(lists.glob("*.txt")):
        ids = _read_lines(list_file)
        labels = [root / label_dir / f"{i}.png" for i in ids]
        present = [p.is_file() for p in labels]
        if not any(present):
            continue  # e.g. test.txt: images without public labels
        if not all(present):
            missing = [p.name for p, ok in zip(labels, present) if not ok]
            raise ValueError(f"{list_file}: {len(missing)} ids have no label in "
                             f"{root / label_dir}: {', '.join(missing[:5])}")
        pairs[list_file.stem] = [(root / "JPEGImages" / f"{i}.jpg", lbl)
                                 for i, lbl in zip(ids, labels)]
    if not pairs:
        raise ValueError(f"no split list in {lists} has labels in {root / label_dir}")
    return FileSource(name, pairs, 21, palettes.VOC_CLASSES,
                      palettes.get_palette("pascal_voc", 21), label_lut(21))


def ade20k_source(path, **options):
    """ADE20K / SceneParse150 (150 classes) from the extracted ADEChallengeData2016.zip.

    `PATH` is `ADEChallengeData2016` or its parent. Splits `train`
    (`images/training`, `annotations/training`, 20,210 images) and `val`
    (`images/validation`, 2,000). Labels are mapped as in the official
    encoding/datasets/ade20k.py (`target = mask - 1`, with -1 its ignore index):
    0 ("other") -> 255 (ignore), 1..150 -> 0..149.

    Args:
        path: see above.
        **options: `name`.

    Example:
    >>> src = ade20k_source("~/data/ADEChallengeData2016")  # doctest: +SKIP
    """
    given = _existing_dir(path, "ADE20K")
    name = options.pop("name", "ade20k")
    if options:
        raise ValueError(f"ade20k: unknown options {sorted(options)}; valid: name")
    for root in (given, given / "ADEChallengeData2016"):
        if (root / "images").is_dir() and (root / "annotations").is_dir():
            break
    else:
        raise FileNotFoundError(f"no ADEChallengeData2016 folder (with images/ and "
                                f"annotations/) at {given}")
    pairs = {}
    for split, sub in (("train", "training"), ("val", "validation")):
        img_dir, ann_dir = root / "images" / sub, root / "annotations" / sub
        if not img_dir.is_dir():
            continue
        images = _list_images(img_dir)
        missing = [s for s in images if not (ann_dir / f"{s}.png").is_file()]
        if missing:
            raise ValueError(f"{len(missing)} images in {img_dir} have no annotation in "
                             f"{ann_dir}: {', '.join(missing[:5])}")
        if images:
            pairs[split] = [(images[s], ann_dir / f"{s}.png") for s in sorted(images)]
    if not pairs:
        raise ValueError(f"no images in {root}/images/training or {root}/images/validation")
    return FileSource(name, pairs, 150, palettes.ADE20K_CLASSES,
                      palettes.get_palette("ade20k", 150),
                      label_lut(150, reduce_zero_label=True))


# --------------------------------------------------------------------------- tfds
# How to read a segmentation dataset from tensorflow-datasets. Keys checked against
# the builders of tensorflow-datasets 4.9 (datasets/scene_parse150 and
# object_detection/voc.py).
_TFDS_KNOWN = {
    # FeaturesDict(image: Image(None, None, 3) jpeg, annotation: Image(None, None, 3)
    # png); splits train (20,210) and test (2,000: the ADE20K validation images).
    # The builder reads ChallengeData2017/annotations_instance: R = category id of the
    # 100 instance classes (0 = no instance: stuff or unlabelled), G = instance id.
    # So this is a 100-class "things" dataset, not the 150-class benchmark (for that,
    # use ade20k:PATH). Mapping as the official ADE20K code: 0 -> ignore, v -> v - 1.
    "scene_parse150": dict(image_key="image", label_key="annotation", label_channel=0,
                           reduce_zero_label=True, num_classes=100,
                           class_names=palettes.ADE20K_INSTANCE_CLASSES,
                           split_aliases={"val": "test"}),
}
# Builders without segmentation masks, with where to go instead.
_TFDS_NO_MASKS = {
    "voc": "tfds 'voc' holds boxes and image-level labels only (no segmentation "
           "masks); for Pascal VOC segmentation use 'voc:PATH' with the extracted "
           "VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ImageSets/Segmentation)",
}


def _prepared_tfds_dir(spec):
    """The prepared-dataset folder `spec` points to, or None if `spec` is a name."""
    looks_like_path = spec.startswith(("/", "~", "./", "../")) or os.path.isdir(spec)
    if not looks_like_path:
        return None
    root = pathlib.Path(os.path.expanduser(spec))
    if not root.is_dir():
        raise FileNotFoundError(f"tfds dataset folder not found: {root}")
    if (root / "dataset_info.json").is_file():
        return root
    # DATA_DIR/NAME or DATA_DIR/NAME/CONFIG given: find the VERSION folder below.
    found = sorted(p.parent for p in list(root.glob("*/dataset_info.json")) +
                   list(root.glob("*/*/dataset_info.json")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no prepared tfds dataset (dataset_info.json) in {root} "
                                f"or the two folder levels below it")
    raise ValueError(f"several prepared tfds datasets under {root}: "
                     f"{', '.join(str(p) for p in found)}; pass one of them")


class TfdsSource(Source):
    """A tensorflow-datasets dataset (downloaded and prepared by tfds, or already on disk).

    `spec` is a registered name (`"scene_parse150"`, `"NAME/CONFIG"`, `"NAME:1.0.0"`)
    built with `tfds.builder(spec, data_dir=...)`, or the folder of an already prepared
    dataset (`DATA_DIR/NAME/VERSION`, holding `dataset_info.json`), opened with
    `tfds.builder_from_directory` so neither the builder code nor a download is needed.
    Not yet prepared data is downloaded and prepared when `download=True` (the
    `tfds.load` default).

    Known datasets need no options: `scene_parse150` (see `_TFDS_KNOWN` notes: 100
    ADE20K instance categories, split `val` = tfds `test`). Others need `label_key`
    (an image feature of class ids) and `num_classes`.

    Args:
        spec: name or prepared folder.
        data_dir: tfds data folder (default: tfds's, `~/tensorflow_datasets`).
        download: download and prepare when not prepared yet.
        image_key, label_key, label_channel: features to read (label channel index
            for multi-channel label images).
        num_classes, class_names, ignore_index, reduce_zero_label, label_map: as in
            `folder_source`.
        name: dataset name (default: the tfds name).
        palette: colours.

    Example:
    >>> src = TfdsSource("scene_parse150", data_dir="~/tensorflow_datasets")  # doctest: +SKIP
    """

    def __init__(self, spec, data_dir=None, download=True, image_key=None, label_key=None,
                 label_channel=None, num_classes=None, class_names=None, ignore_index=(),
                 reduce_zero_label=None, label_map=None, name=None, palette=None):
        import tensorflow_datasets as tfds

        spec = str(spec)
        data_dir = os.path.expanduser(str(data_dir)) if data_dir is not None else None
        prepared_dir = _prepared_tfds_dir(spec)
        if prepared_dir is not None:
            builder = tfds.builder_from_directory(str(prepared_dir))
        else:
            try:
                builder = tfds.builder(spec, data_dir=data_dir)
            except tfds.core.DatasetNotFoundError as err:
                raise ValueError(f"tfds:{spec}: {str(err).splitlines()[0]}") from None
        tfds_name = builder.info.name
        if tfds_name in _TFDS_NO_MASKS and label_key is None:
            features = ", ".join(sorted(builder.info.features.keys()))
            raise ValueError(f"tfds:{spec}: {_TFDS_NO_MASKS[tfds_name]} (features: {features})")
        known = _TFDS_KNOWN.get(tfds_name, {})
        image_key = image_key or known.get("image_key", "image")
        label_key = label_key or known.get("label_key")
        features = builder.info.features
        if label_key is None:
            raise ValueError(f"tfds:{spec}: no built-in mapping for {tfds_name!r}; pass "
                             f"label_key= (one of {', '.join(sorted(features.keys()))}) "
                             f"and num_classes=")
        for key in (image_key, label_key):
            if key not in features:
                raise ValueError(f"tfds:{spec}: no feature {key!r}; features: "
                                 f"{', '.join(sorted(features.keys()))}")
        if num_classes is None:
            num_classes = known.get("num_classes")
            if class_names is not None:
                num_classes = len(class_names)
        if num_classes is None:
            raise ValueError(f"tfds:{spec}: pass num_classes= for {tfds_name!r}")
        if class_names is None and int(num_classes) == known.get("num_classes"):
            class_names = known.get("class_names")
        if reduce_zero_label is None:
            reduce_zero_label = known.get("reduce_zero_label", False)
        self._label_channel = label_channel if label_channel is not None else \
            known.get("label_channel", 0)
        self._split_aliases = dict(known.get("split_aliases", {}))
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(
                    f"tfds:{spec} is not prepared in {builder.data_dir}; pass "
                    f"download=True or data_dir= where it is prepared")
            builder.download_and_prepare()
        splits = tuple(builder.info.splits.keys())
        splits += tuple(a for a, s in self._split_aliases.items()
                        if s in splits and a not in splits)
        super().__init__(name or tfds_name, num_classes, class_names, palette, splits)
        self.builder = builder
        self._image_key, self._label_key = image_key, label_key
        dtype = getattr(features[label_key], "np_dtype", np.uint8)
        size = 65536 if np.dtype(dtype).itemsize > 1 else 256
        self._lut = label_lut(self.num_classes, ignore_index, reduce_zero_label, label_map,
                              size=size)

    def _tfds_split(self, split):
        return self._split_aliases.get(self._split(split), split)

    def num_examples(self, split):
        return int(self.builder.info.splits[self._tfds_split(split)].num_examples)

    def dataset(self, split):
        import tensorflow_datasets as tfds

        tfds_split = self._tfds_split(split)
        features = self.builder.info.features
        image_feature, label_feature = features[self._image_key], features[self._label_key]
        # Keep images encoded until after shuffling (train_pipeline shuffles records).
        decoders = {k: tfds.decode.SkipDecoding() for k in (self._image_key, self._label_key)
                    if isinstance(features[k], tfds.features.Image)}
        records = self.builder.as_dataset(
            split=tfds_split, shuffle_files=False, decoders=decoders,
            read_config=tfds.ReadConfig(add_tfds_id=True))
        image_key, label_key = self._image_key, self._label_key

        def select(example):
            return example["tfds_id"], example[image_key], example[label_key]

        keys = records.map(select)
        lut = tf.constant(self._lut)
        channel, source = self._label_channel, f"tfds {self.builder.info.full_name} {split}"
        num_classes = self.num_classes

        def decode(feature, key, value):
            return feature.decode_example(value) if key in decoders else value

        @tf.autograph.experimental.do_not_convert
        def load(record_id, image, label):
            image = decode(image_feature, self._image_key, image)
            label = decode(label_feature, self._label_key, label)
            if image.shape.rank == 2:
                image = tf.expand_dims(image, -1)
            image = tf.cast(image, tf.uint8)
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            if label.shape.rank == 3:
                label = label[..., channel]
            raw = tf.cast(label, tf.int32)
            mapped = tf.gather(lut, tf.clip_by_value(raw, 0, lut.shape[0] - 1))
            bad = tf.boolean_mask(raw, (mapped < 0) | (raw < 0) | (raw >= lut.shape[0]))
            same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(raw)))
            where = tagged(f"{source} record ") + record_id
            checks = [
                tf.debugging.Assert(same_size, [where + tf.strings.format(
                    ": image is {} but label is {} (H, W)",
                    (tf.shape(image)[:2], tf.shape(raw)))]),
                tf.debugging.Assert(tf.size(bad) == 0, [where + tf.strings.format(
                    ": label values {} are not class ids 0..%d nor 255 (ignore)"
                    % (num_classes - 1), tf.sort(tf.unique(bad)[0])[:10])]),
            ]
            with tf.control_dependencies(checks):
                mapped = tf.identity(mapped)
            image.set_shape([None, None, 3])
            mapped.set_shape([None, None])
            return image, mapped

        ds = keys.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _attach_lazy(ds, keys, load, self.num_examples(split), keys_are_small=False)


# ---------------------------------------------------------------------- get_source
def _demo_source(**options):
    from keras_fastfcn.data.demo import DemoSource

    return DemoSource(**options)


_FACTORIES = {
    "demo": (_demo_source, False),
    "camvid": (camvid_source, None),
    "folder": (folder_source, True),
    "voc": (voc_source, True),
    "ade20k": (ade20k_source, True),
    "tfds": (TfdsSource, True),
}


def _accepted_options(factory):
    if factory is _demo_source:
        from keras_fastfcn.data.demo import DemoSource

        factory = DemoSource
    params = inspect.signature(factory).parameters
    return [p for p in params if p not in ("self", "path", "spec", "options")]


def get_source(spec, **options):
    """Builds a `Source` from a spec string (see the module docstring for the specs).

    Args:
        spec: `"demo"`, `"camvid"`, `"camvid:PATH"`, `"folder:PATH"`, `"voc:PATH"`,
            `"ade20k:PATH"`, `"tfds:NAME[/CONFIG]"`, `"tfds:PREPARED_DIR"`, or a
            `Source` (returned as is).
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
    elif kind == "ade20k":
        accepted = ["name"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {kind}: unknown option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(accepted)}.")
    if needs_arg or (kind == "camvid" and arg):
        return factory(arg, **options)
    return factory(**options)
