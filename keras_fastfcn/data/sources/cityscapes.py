"""Cityscapes (19 train classes) from the extracted leftImg8bit and gtFine archives."""

from keras_fastfcn.data import palettes
from keras_fastfcn.data.sources.base import label_lut
from keras_fastfcn.data.sources.files import FileSource, _existing_dir

# (name, labelId, trainId): the `name`, `id` and `trainId` columns of cityscapesScripts'
# helpers/labels.py. The 19 evaluated classes have train ids 0..18; the others 255.
LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)
# labelId -> trainId. The license plate (id -1) has no entry: json2labelImg skips
# labels with a negative id, so a plate's pixels keep the id drawn below them (the
# car's, 26) and -1 never appears in a *_gtFine_labelIds.png; were it stored in a uint8
# PNG it would read 255, which label_lut keeps as ignore. 34..254 are refused.
LABEL_ID_TO_TRAIN_ID = {label_id: train_id for _, label_id, train_id in LABELS
                        if label_id >= 0}

SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _split_pairs(root, split):
    img_dir, lbl_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not img_dir.is_dir():
        return None
    if not lbl_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {lbl_dir} (the gtFine labels of "
                                f"the images in {img_dir})")
    pairs, missing = [], []
    for city in sorted(d for d in img_dir.iterdir() if d.is_dir()):
        for image in sorted(city.glob(f"*{IMAGE_SUFFIX}")):
            # CITY_SEQ_FRAME_leftImg8bit.png pairs with CITY_SEQ_FRAME_gtFine_labelIds.png.
            prefix = image.name[:-len(IMAGE_SUFFIX)]
            label = lbl_dir / city.name / f"{prefix}{LABEL_SUFFIX}"
            if not label.is_file():
                missing.append(f"{city.name}/{label.name}")
            pairs.append((image, label))
    if not pairs:
        raise ValueError(f"no images in {img_dir}: expected CITY/*{IMAGE_SUFFIX} "
                         f"(e.g. {img_dir}/aachen/aachen_000000_000019{IMAGE_SUFFIX})")
    if missing:
        raise ValueError(f"{len(missing)} images in {img_dir} have no label in {lbl_dir}: "
                         f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return pairs


def cityscapes_source(path, **options):
    """Cityscapes (19 classes) from the extracted leftImg8bit_trainvaltest.zip and
    gtFine_trainvaltest.zip.

    Layout (`PATH` is the folder holding both, or its parent with `cityscapes/`):

        PATH/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
        PATH/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png

    Splits `train` (2,975 images) and `val` (500), images paired with labels by their
    `CITY_SEQ_FRAME` prefix. The labelIds (0..33) map to the 19 train ids as
    cityscapesScripts' `helpers/labels.py` defines them (`LABEL_ID_TO_TRAIN_ID`:
    road 7 -> 0, ..., bicycle 33 -> 18; void and the classes not evaluated, such as
    parking, guard rail or caravan, -> 255 = ignore), so the labelTrainIds PNGs that
    `createTrainIdLabelImgs.py` writes are not needed. The `test` images (1,525) have
    no public labels (gtFine/test holds placeholders) and are not a split: predict
    them with `keras-fastfcn predict`.

    Args:
        path: see above.
        **options: `name` (default `"cityscapes"`).

    Returns:
        A `FileSource`.

    Example:
    >>> src = cityscapes_source("~/datasets/cityscapes")  # doctest: +SKIP
    >>> src.num_examples("train"), src.num_examples("val")  # doctest: +SKIP
    (2975, 500)
    """
    given = _existing_dir(path, "Cityscapes")
    name = options.pop("name", "cityscapes")
    if options:
        raise ValueError(f"cityscapes: unknown options {sorted(options)}; valid: name")
    for root in (given, given / "cityscapes"):
        if (root / "leftImg8bit").is_dir():
            break
    else:
        raise FileNotFoundError(f"no Cityscapes folder (with leftImg8bit/ and gtFine/) at "
                                f"{given} or {given}/cityscapes")
    if not (root / "gtFine").is_dir():
        raise FileNotFoundError(f"label folder not found: {root / 'gtFine'} (extract "
                                f"gtFine_trainvaltest.zip into {root}, next to leftImg8bit/)")
    pairs = {}
    for split in SPLITS:
        found = _split_pairs(root, split)
        if found is not None:
            pairs[split] = found
    if not pairs:
        raise FileNotFoundError(f"no {' or '.join(SPLITS)} images in {root / 'leftImg8bit'}: "
                                f"expected leftImg8bit/train/CITY/*{IMAGE_SUFFIX}")
    return FileSource(name, pairs, 19, palettes.CITYSCAPES_CLASSES,
                      palettes.get_palette("cityscapes", 19),
                      label_lut(19, label_map=LABEL_ID_TO_TRAIN_ID))
