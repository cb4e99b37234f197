"""Image/label file pairs: your folders, CamVid, Pascal VOC and ADE20K as extracted."""

import functools
import os
import pathlib
import warnings

import numpy as np

from keras_fastfcn.data import palettes
from keras_fastfcn.data.errors import DataError, tagged
from keras_fastfcn.data.exit_guard import guarded
from keras_fastfcn.data.sources.base import (Source, _attach_lazy, _bad_values_message,
                                           duplicate_names, label_lut)
from keras_fastfcn.images import IMAGE_EXTENSIONS, ImageError, read_image, read_label

_REPO = pathlib.Path(__file__).resolve().parents[3]
DEFAULT_CAMVID = _REPO.parent / "shared" / "data" / "camvid"


class FileSource(Source):
    """Image/label file pairs, read with PIL inside tf.data.

    Reading in Python lets every problem name its file: unreadable images or labels,
    size mismatches and label values that are not class ids raise `DataError` (from
    iteration: a `tf.errors.InvalidArgumentError` that `translate_errors()` turns back
    into `DataError`). Bad files are never skipped silently.

    Args:
        name: dataset name.
        pairs: dict split -> list of `(image_path, label_path)`, or a function that
            returns it (called when the split is first used: its problems stop only
            what reads it).
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
        self._pairs = {split: items if callable(items) else _as_strings(items)
                       for split, items in pairs.items()}
        self._lut = label_lut(num_classes) if lut is None else np.asarray(lut, np.int32)
        self._noted = set()  # converted images named so far (`_note_conversion`)

    def _split_pairs(self, split):
        split = self._split(split)
        if callable(self._pairs[split]):
            self._pairs[split] = _as_strings(self._pairs[split]())
        return self._pairs[split]

    def files(self, split):
        """The `(image_path, label_path)` pairs of `split`, in dataset order."""
        return list(self._split_pairs(split))

    def num_examples(self, split):
        return len(self._split_pairs(split))

    def load_example(self, image_path, label_path):
        """`(image uint8 (H, W, 3), label int32 (H, W))`, mapped and checked."""
        try:
            image, note = read_image(image_path)
            raw = read_label(label_path)
        except ImageError as err:
            raise DataError(str(err)) from None
        if note:
            self._note_conversion(image_path, note)
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

    # How many converted images are named (a warning each) before the rest go quiet.
    _NOTES_SHOWN = 3

    def _note_conversion(self, image_path, note):
        """Warns (as `predict` does) that an image was not 8-bit RGB, for the first few
        such files of the source, then once that further ones are not named."""
        noted = self._noted
        if image_path in noted or len(noted) > self._NOTES_SHOWN:
            return
        noted.add(image_path)
        if len(noted) > self._NOTES_SHOWN:
            warnings.warn(f"{self.name}: more images are not 8-bit RGB and are converted "
                          "the same way; they are not named.", stacklevel=2)
        else:
            warnings.warn(f"{image_path}: {note}.", stacklevel=2)

    def _load_numpy(self, image_path, label_path):
        try:
            return self.load_example(image_path.decode(), label_path.decode())
        except DataError as err:
            # TensorFlow reports this as InvalidArgumentError; the tag lets
            # translate_errors() recover the message.
            raise ValueError(tagged(str(err))) from None

    def example(self, split, index):
        return self.load_example(*self._split_pairs(split)[index])

    def dataset(self, split):
        import tensorflow as tf

        pairs = self._split_pairs(split)
        keys = tf.data.Dataset.from_tensor_slices(
            ([p[0] for p in pairs], [p[1] for p in pairs]))

        read = guarded(self._load_numpy)

        @tf.autograph.experimental.do_not_convert
        def load(image_path, label_path):
            # guarded: a data error must not leave the process hanging at exit.
            image, label = tf.numpy_function(read, [image_path, label_path],
                                             (tf.uint8, tf.int32), stateful=False)
            image.set_shape([None, None, 3])
            label.set_shape([None, None])
            return image, label

        ds = keys.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _attach_lazy(ds, keys, load, len(pairs), keys_are_small=True)


def _as_strings(pairs):
    return [(str(image), str(label)) for image, label in pairs]


# ------------------------------------------------------------------ folder layouts
def _list_files(folder, extensions):
    """`{name: path}` of the files under `folder` (subfolders too) whose extension is
    one of `extensions` (any case); `name` is the path relative to `folder` without
    the extension, with `/` between folders (`"seq01/0001"`). Hidden files and
    folders are left out."""
    files = {}
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for entry in sorted(names):
            stem, ext = os.path.splitext(entry)
            if ext.lower() not in extensions or entry.startswith("."):
                continue
            path = os.path.join(here, entry)
            name = pathlib.PurePath(os.path.relpath(path, folder)).with_suffix("").as_posix()
            if name in files:
                raise ValueError(f"{folder}: two files named {name!r} "
                                 f"({os.path.basename(files[name])} and {entry}).")
            files[name] = path
    return files


def _list_images(img_dir):
    return _list_files(img_dir, IMAGE_EXTENSIONS)


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
        raise ValueError(f"no images (*.jpg, *.jpeg, *.png) in {img_dir} or its subfolders")
    labels = _list_files(lbl_dir, (".png",))
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
        if stem not in labels:
            missing.append(f"{stem}.png")
        pairs.append((images[stem], labels.get(stem)))
    if missing:
        raise ValueError(f"{len(missing)} images in {img_dir} have no label in {lbl_dir}: "
                         f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return pairs


def _folder_splits(root):
    split_dirs = sorted(d.name for d in root.iterdir()
                        if d.is_dir() and (d / "images").is_dir())
    flat = (root / "images").is_dir()
    if not split_dirs and not flat:
        raise FileNotFoundError(
            f"no images folder in {root}: expected {root}/images + {root}/labels, or "
            f"{root}/SPLIT/images + {root}/SPLIT/labels (e.g. train/, val/)")
    split_lists = []
    for f in sorted(root.glob("*.txt")):
        if f.name.lower() in ("classes.txt", "readme.txt", "license.txt"):
            continue
        if f.stem in split_dirs or flat:
            split_lists.append(f.stem)
        else:  # e.g. CVAT's labelmap.txt beside train/ and val/: not a split list
            warnings.warn(f"{f} is not read as a split list: there is neither "
                          f"{root / f.stem / 'images'} nor {root / 'images'} to select from.",
                          stacklevel=3)
    # Each split's files are listed and checked when it is first used: an unlabelled
    # test/ beside train/ and val/ stops only what reads test/.
    pairs = {}
    for split in sorted(set(split_dirs) | set(split_lists)):
        base = root / split if split in split_dirs else root
        if split in split_lists:
            list_file = root / f"{split}.txt"
            pairs[split] = functools.partial(_pairs_for, base, _read_lines(list_file),
                                             list_file)
        else:
            pairs[split] = functools.partial(_pairs_for, base)
    if not pairs:  # one folder, no split lists: all training data
        pairs["train"] = functools.partial(_pairs_for, root)
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

    NAME may include subfolders (`images/seq01/0001.jpg` with `labels/seq01/0001.png`,
    listed as `seq01/0001`); extensions are matched in any case (`.JPG`, `.PNG`). A
    split's files are listed and checked when the split is first used, so an
    unlabelled `test/` beside `train/` and `val/` stops only what reads it.

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
        repeated = duplicate_names(class_names)
        if repeated:
            raise ValueError(f"{classes_file} names a class more than once: {repeated}; "
                             "each line names one class, class id = line number - 1")
    if class_names is not None:
        if num_classes is not None and int(num_classes) != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class "
                             f"names (from {names_from})")
        num_classes = len(class_names)
    if num_classes is None:
        raise ValueError(f"{root} has no classes.txt: pass num_classes=N (command line: "
                         "--set data.options.num_classes=N to train, --data-option "
                         f"num_classes=N to evaluate), or write {classes_file} with one "
                         "class name per line")
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
