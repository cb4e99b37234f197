"""Class names and colour palettes of the datasets FastFCN is trained on.

A palette is a `uint8` array of shape `(num_classes, 3)`: row `i` is the RGB colour
of class `i`. The ignore label (255) has no row; visualisations draw it black.

Known names (case-insensitive): `pascal_voc` (21 classes, the standard VOC bit-shift
palette), `pcontext` (Pascal Context, 59 classes), `ade20k` (ADE20K / SceneParse150,
150 classes, the standard ADE palette), `ade20k_instance100` (the 100 categories of
the ADE20K instance annotations, which is what tfds `scene_parse150` holds),
`camvid` (11 classes), `cityscapes` (the 19 train classes) and `demo` (the generated
demo dataset, 5 classes). Any other name gets a generated palette of distinct colours.

Example:
>>> from keras_fastfcn.data import palettes
>>> palettes.get_palette("pascal_voc", 21)[15].tolist()   # person
[192, 128, 128]
>>> palettes.class_names("camvid")[:3]
('sky', 'building', 'pole')
"""

import numpy as np

__all__ = ["canonical_dataset", "get_palette", "class_names", "known_datasets", "voc_palette"]


def voc_palette(n=256):
    """The Pascal VOC colour map: class bits spread over the high bits of R, G, B.

    It is also our generated palette for unknown datasets: its first 256 colours are
    all distinct and class 0 is black.

    Args:
        n: number of colours.

    Returns:
        `uint8` array `(n, 3)`.

    Example:
    >>> voc_palette(3).tolist()
    [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    palette = np.zeros((n, 3), np.int64)
    for index in range(n):
        value, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            if value == 0:
                break
        palette[index] = rgb
    if n > 256:
        # Beyond 256 the bit-shift map repeats; fall back to a hashed colour that
        # is deterministic (no RNG) so palettes agree across runs and machines.
        extra = np.arange(256, n, dtype=np.int64)
        palette[256:] = np.stack([(extra * 67 + 31) % 256, (extra * 131 + 71) % 256,
                                  (extra * 197 + 113) % 256], axis=1)
    return palette.astype(np.uint8)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor")

# Pascal Context 59: the 59 classes of the official encoding/datasets/pcontext.py (its
# sorted `_mapping` of Detail-API ids, background dropped); the ids are alphabetical in
# the 459-class label list, so the order is alphabetical.
PCONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower",
    "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep",
    "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
    "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")

# ADE20K / SceneParse150 (objectInfo150 order; ids 1..150 in the annotation PNGs).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag")

# The standard ADE20K palette (as in mmsegmentation's ADE20KDataset), one row per class.
_ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255))

# The 100 categories of the ADE20K instance annotations (CSAILVision/placeschallenge
# instanceInfo100_train.txt, ids 1..100 in the R channel of annotations_instance PNGs).
# tfds `scene_parse150` is built from these annotations, not from the 150-class maps.
ADE20K_INSTANCE_CLASSES = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain", "chair", "car",
    "painting", "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "box", "column", "signboard",
    "chest of drawers", "counter", "sink", "fireplace", "refrigerator", "stairs",
    "case", "pool table", "pillow", "screen door", "bookcase", "coffee table", "toilet",
    "flower", "book", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "arcade machine", "bus", "towel", "light",
    "truck", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "apparel", "pole", "bannister", "ottoman", "bottle", "van", "ship",
    "fountain", "washer", "plaything", "stool", "barrel", "basket", "bag", "minibike",
    "oven", "ball", "food", "step", "trade name", "microwave", "pot", "animal",
    "bicycle", "dishwasher", "screen", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "plate", "monitor", "bulletin board",
    "radiator", "glass", "clock", "flag")

# CamVid (SegNet 11-class version); colours from the dataset's README (id 11 = void).
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist")
_CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
    (0, 128, 192))

# Cityscapes: the 19 classes with a trainId in cityscapesScripts' helpers/labels.py,
# in trainId order, with its colours (the ones mmsegmentation's CityscapesDataset uses).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle")
_CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32))

DEMO_CLASSES = ("background", "circle", "rectangle", "triangle", "ring")
_DEMO_PALETTE = ((0, 0, 0), (220, 20, 60), (0, 170, 80), (30, 90, 230), (240, 200, 0))


def _ade_instance_palette():
    # Give each instance category the colour of the same object in the 150-class map,
    # so the two ADE20K variants look alike.
    index = {name: i for i, name in enumerate(ADE20K_CLASSES)}
    return tuple(_ADE20K_PALETTE[index[name]] for name in ADE20K_INSTANCE_CLASSES)


_DATASETS = {
    "pascal_voc": (VOC_CLASSES, lambda: voc_palette(21)),
    "pascal_context": (PCONTEXT_CLASSES, lambda: _ADE20K_PALETTE[1:60]),
    "ade20k": (ADE20K_CLASSES, lambda: _ADE20K_PALETTE),
    "ade20k_instance100": (ADE20K_INSTANCE_CLASSES, _ade_instance_palette),
    "camvid": (CAMVID_CLASSES, lambda: _CAMVID_PALETTE),
    "cityscapes": (CITYSCAPES_CLASSES, lambda: _CITYSCAPES_PALETTE),
    "demo": (DEMO_CLASSES, lambda: _DEMO_PALETTE),
}
_ALIASES = {
    "voc": "pascal_voc", "voc2012": "pascal_voc", "pascal_aug": "pascal_voc",
    "pcontext": "pascal_context", "pcontext59": "pascal_context",
    "ade": "ade20k", "ade20k150": "ade20k",
    "scene_parse150": "ade20k_instance100",
    "citys": "cityscapes",  # PyTorch-Encoding's name for it
}


def canonical_dataset(name):
    """The one name of a dataset (`"pcontext"` -> `"pascal_context"`, `"voc"` ->
    `"pascal_voc"`, `"ade"` -> `"ade20k"`): what models carry as `dataset`, what the
    palettes, the converter and the presets use. Unknown names come back lower-cased.

    Example:
    >>> canonical_dataset("PContext")
    'pascal_context'
    """
    if name is None:
        return None
    key = str(name).strip().lower().replace("-", "_")
    return _ALIASES.get(key, key)


def known_datasets():
    """Names with built-in class names and palettes (aliases not included).

    Example:
    >>> "ade20k" in known_datasets()
    True
    """
    return tuple(_DATASETS)


def class_names(name):
    """Class names of a known dataset, in class-id order.

    Args:
        name: dataset name (see `known_datasets()`; aliases such as `"voc"` accepted).

    Returns:
        A tuple of strings, or `None` when the name is unknown or `None`.

    Example:
    >>> len(class_names("ade20k"))
    150
    """
    entry = _DATASETS.get(canonical_dataset(name))
    return None if entry is None else tuple(entry[0])


def get_palette(name=None, num_classes=None):
    """Colour palette for a dataset: its known palette, or a generated distinct one.

    Args:
        name: dataset name (known or not; `None` for a generated palette).
        num_classes: number of rows wanted. Defaults to the dataset's class count (a
            known name is required then). A known palette is truncated to fewer rows
            or extended with generated colours for more.

    Returns:
        `uint8` array `(num_classes, 3)`.

    Example:
    >>> get_palette("camvid").shape
    (11, 3)
    >>> get_palette("my_dataset", 4).tolist()[:2]
    [[0, 0, 0], [128, 0, 0]]
    """
    entry = _DATASETS.get(canonical_dataset(name))
    if num_classes is None:
        if entry is None:
            raise ValueError(
                f"No built-in palette for dataset {name!r}: pass num_classes to get a "
                f"generated one (known: {', '.join(_DATASETS)}).")
        num_classes = len(entry[0])
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    generated = voc_palette(num_classes)
    if entry is None:
        return generated
    known = np.asarray(entry[1](), np.uint8).reshape(-1, 3)
    rows = min(num_classes, len(known))
    palette = generated.copy()
    palette[:rows] = known[:rows]
    return palette
