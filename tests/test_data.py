"""keras_fastfcn.data: palettes, demo dataset, folder/CamVid/VOC/ADE20K sources,
augmentation pipelines and bad-input errors. (tfds sources: test_data_tfds.py.)"""

import hashlib
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fastfcn import data
from keras_fastfcn.data import demo, palettes
from keras_fastfcn.data.errors import DataError, translate_errors


# ----------------------------------------------------------------------- helpers
def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def _save_label_p(path, label):
    """A palette-mode (VOC-style) PNG whose pixel values are the class ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("P", (label.shape[1], label.shape[0]))
    img.putpalette(palettes.voc_palette(256).ravel().tolist())
    img.putdata(label.ravel().tolist())
    img.save(path)


def _make_folder(root, splits=("train", "val"), n=3, size=(12, 16), classes=("a", "b", "c"),
                 label_fn=None, flat=False):
    rng = np.random.RandomState(0)
    for split in ([None] if flat else splits):
        base = root if split is None else root / split
        for i in range(n):
            stem = f"{split or 'img'}_{i}"
            image = rng.randint(0, 255, size + (3,)).astype(np.uint8)
            _save(base / "images" / f"{stem}.jpg", image)
            label = label_fn(i) if label_fn else rng.randint(0, 3, size).astype(np.uint8)
            _save(base / "labels" / f"{stem}.png", label)
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def _first(ds):
    image, label = next(iter(ds))
    return image.numpy(), label.numpy()


def _batches(ds, n=None):
    out = []
    for i, (x, y) in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append((x.numpy(), y.numpy()))
    return out


# ---------------------------------------------------------------------- palettes
def test_palettes_known_datasets():
    voc = palettes.get_palette("pascal_voc")
    assert voc.shape == (21, 3) and voc.dtype == np.uint8
    assert voc[0].tolist() == [0, 0, 0] and voc[1].tolist() == [128, 0, 0]
    assert voc[15].tolist() == [192, 128, 128]          # person, bit-shift palette
    assert palettes.class_names("voc")[15] == "person"   # alias
    ade = palettes.get_palette("ade20k")
    assert ade.shape == (150, 3) and ade[0].tolist() == [120, 120, 120]
    assert ade[149].tolist() == [92, 0, 255]
    names = palettes.class_names("ade20k")
    assert len(names) == 150 and names[:3] == ("wall", "building", "sky") and names[-1] == "flag"
    pc = palettes.class_names("pcontext")
    assert len(pc) == 59 and pc[0] == "aeroplane" and pc[-1] == "wood" and list(pc) == sorted(pc)
    assert palettes.get_palette("pcontext").shape == (59, 3)
    # One name per dataset, whatever spelling came in.
    assert palettes.canonical_dataset("pcontext") == palettes.canonical_dataset(
        "Pascal-Context") == "pascal_context"
    assert palettes.canonical_dataset("voc") == "pascal_voc"
    cam = palettes.get_palette("camvid")
    assert cam.shape == (11, 3) and cam[3].tolist() == [128, 64, 128]  # road
    assert palettes.class_names("demo")[0] == "background"
    # tfds scene_parse150 = the 100 instance categories, coloured like the 150-class map.
    inst, inst_pal = palettes.class_names("scene_parse150"), palettes.get_palette("scene_parse150")
    assert len(inst) == 100 and inst[3] == "person"
    assert inst_pal[3].tolist() == ade[names.index("person")].tolist()


def test_palettes_generated_and_resized():
    generated = palettes.get_palette("my_dataset", 40)
    assert generated.shape == (40, 3)
    assert len({tuple(c) for c in generated.tolist()}) == 40          # distinct colours
    assert palettes.get_palette(None, 300).shape == (300, 3)
    assert palettes.class_names("my_dataset") is None and palettes.class_names(None) is None
    longer = palettes.get_palette("camvid", 13)                      # extended
    assert longer[:11].tolist() == palettes.get_palette("camvid").tolist()
    assert palettes.get_palette("ade20k", 5).tolist() == palettes.get_palette("ade20k")[:5].tolist()
    with pytest.raises(ValueError, match="num_classes"):
        palettes.get_palette("my_dataset")
    with pytest.raises(ValueError):
        palettes.get_palette("voc", 0)


# -------------------------------------------------------------------------- demo
def test_demo_is_deterministic_with_fixed_bytes():
    h = hashlib.sha256()
    for split, n in (("train", 240), ("val", 60)):
        images, labels = demo.generate(split, n)
        again = demo._generate_cached.__wrapped__(split, n, 96, 0, True)  # bypass cache
        np.testing.assert_array_equal(images, again[0])
        np.testing.assert_array_equal(labels, again[1])
        h.update(images.tobytes())
        h.update(labels.tobytes())
    # Integer-only drawing: these bytes are the same on every machine and NumPy version.
    assert h.hexdigest() == "a11f62cd4983333a5bfa5834ddf7b25b5a3a88b82706c9dd382a47da064bc542"
    other, _ = demo.generate("train", 4, seed=1)
    assert not np.array_equal(other, demo.generate("train", 4)[0])
    train, _ = demo.generate("train", 4)
    val, _ = demo.generate("val", 4)
    assert not np.array_equal(train, val)


def test_demo_dataset_properties():
    src = data.get_source("demo")
    assert (src.name, src.num_classes, src.splits) == ("demo", 5, ("train", "val"))
    assert (src.num_examples("train"), src.num_examples("val")) == (240, 60)
    assert src.class_names == ("background", "circle", "rectangle", "triangle", "ring")
    images, labels = src.arrays("train")
    assert images.shape == (240, 96, 96, 3) and labels.shape == (240, 96, 96)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4, 255}
    counts = np.bincount(labels.ravel(), minlength=256)
    fractions = counts / labels.size
    assert fractions[0] > 0.6 and all(fractions[c] > 0.01 for c in range(1, 5))
    assert 0.01 < fractions[255] < 0.1                     # thin boundary bands only
    # Ignore pixels are exactly the 1-pixel bands on both sides of every region edge.
    plain_images, plain = demo.generate("train", 240, ignore_border=False)
    np.testing.assert_array_equal(plain_images, images)
    band = np.stack([demo._boundaries(lbl) for lbl in plain])
    np.testing.assert_array_equal(labels == 255, band)
    np.testing.assert_array_equal(labels[~band], plain[~band])
    per_image = [set(np.unique(lbl).tolist()) - {0, 255} for lbl in labels]
    assert all(per_image) and np.mean([len(s) for s in per_image]) > 1.5
    assert images.std(axis=(1, 2, 3)).min() > 5            # textured, not flat
    image, label = _first(src.dataset("val"))
    assert image.dtype == np.uint8 and label.dtype == np.int32 and label.shape == (96, 96)


def test_demo_is_learnable_from_local_colour():
    """A nearest-mean-colour pixel classifier already beats chance by far; a CNN that
    also sees shape does better. Guards against a demo that cannot be learned."""
    (tr_x, tr_y), (va_x, va_y) = demo.generate("train", 240), demo.generate("val", 60)
    means = np.stack([tr_x[tr_y == c].reshape(-1, 3).mean(0) for c in range(5)])
    valid = va_y != 255
    pixels = va_x[valid].reshape(-1, 1, 3).astype(np.float64)
    pred = np.argmin(((pixels - means[None]) ** 2).sum(-1), axis=1)
    truth = va_y[valid]
    ious = [((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum()
            for c in range(5)]
    assert np.mean(ious) > 0.5, ious                        # chance is ~0.1


def test_demo_write_folder_round_trip(tmp_path):
    target = tmp_path / "demo_folder"
    demo.write_folder(target, size=48, num_train=3, num_val=2)
    src = data.get_source(f"folder:{target}")
    assert src.splits == ("train", "val") and src.class_names == demo.CLASSES
    images, labels = demo.generate("train", 3, size=48)
    for (image, label), want_image, want_label in zip(src.dataset("train"), images, labels):
        np.testing.assert_array_equal(image.numpy(), want_image)
        np.testing.assert_array_equal(label.numpy(), want_label)
    with pytest.raises(FileExistsError, match="demo_folder"):
        demo.write_folder(target, size=48, num_train=1, num_val=1)
    demo.write_folder(target, size=48, num_train=1, num_val=1, overwrite=True)
    assert data.get_source(f"folder:{target}").num_examples("train") == 1
    assert sorted(os.listdir(tmp_path)) == ["demo_folder"]  # no temp or old folders left


def test_demo_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        data.get_source("demo", size=8)
    with pytest.raises(ValueError, match="unknown option"):
        data.get_source("demo", colour="red")


# -------------------------------------------------------------------- folder source
def test_folder_source_split_dirs_and_classes(tmp_path):
    root = _make_folder(tmp_path / "ds", label_fn=lambda i: np.full((12, 16), i, np.uint8))
    src = data.get_source(f"folder:{root}")
    assert src.name == "ds" and src.splits == ("train", "val")
    assert src.num_classes == 3 and src.class_names == ("a", "b", "c")
    assert src.palette.shape == (3, 3) and src.ignore_label == 255
    assert src.num_examples("train") == 3
    labels = [int(lbl.numpy()[0, 0]) for _, lbl in src.dataset("train")]
    assert labels == [0, 1, 2]                               # sorted by name, mapped as is
    image, label = _first(src.dataset("val"))
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8 and label.dtype == np.int32
    assert [os.path.basename(p) for p, _ in src.files("val")] == ["val_0.jpg", "val_1.jpg",
                                                                   "val_2.jpg"]
    # Another tool's .txt beside train/ and val/ (CVAT writes labelmap.txt) is not a
    # split list: it has no labelmap/images nor images/ to select from.
    (root / "labelmap.txt").write_text("background:0,0,0::\n")
    with pytest.warns(UserWarning, match="labelmap.txt is not read as a split list"):
        assert data.get_source(f"folder:{root}").splits == ("train", "val")
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*--split"):
        src.dataset("valid")


def test_folder_source_names_images_it_converts(tmp_path):
    """RGBA, grayscale (and 16-bit) training images are converted to 8-bit RGB with a
    warning naming the first few files, as `predict` warns, then one more that the
    rest are not named; RGB images say nothing."""
    root = _make_folder(tmp_path / "ds", label_fn=lambda i: np.zeros((12, 16), np.uint8))
    images = sorted((root / "train" / "images").iterdir())
    for k, path in enumerate(images):
        mode = "RGBA" if k % 2 else "L"
        Image.open(path).convert(mode).save(path.with_suffix(".png"))
        path.unlink()
    src = data.get_source(f"folder:{root}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # a second epoch names nothing again
            for image, _ in src.dataset("train"):
                assert image.shape[-1] == 3
    # (tf.data reads files in parallel: the warnings come in any order)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3, messages
    assert "train_0.png: grayscale image (mode L) converted" in messages[0]
    assert "train_1.png" in messages[1] and "alpha dropped" in messages[1]
    assert "train_2.png: grayscale image (mode L) converted" in messages[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(src.dataset("val"))  # RGB: quiet


def test_folder_source_split_lists_and_ignore_index(tmp_path):
    root = _make_folder(tmp_path / "flat", flat=True, n=4, classes=None,
                        label_fn=lambda i: np.full((12, 16), [0, 1, 7, 2][i], np.uint8))
    (root / "train.txt").write_text("img_3\nimg_0\nimg_2\n")
    (root / "val.txt").write_text("img_1\n")
    src = data.get_source(f"folder:{root}", num_classes=3, ignore_index=7)
    assert src.splits == ("train", "val") and src.class_names is None
    assert [os.path.basename(p) for p, _ in src.files("train")] == ["img_3.jpg", "img_0.jpg",
                                                                     "img_2.jpg"]
    assert [int(lbl.numpy()[0, 0]) for _, lbl in src.dataset("train")] == [2, 0, 255]
    # No split dirs and no lists: everything is "train".
    (root / "train.txt").unlink()
    (root / "val.txt").unlink()
    src = data.get_source(f"folder:{root}", num_classes=3, ignore_index=[7])
    assert src.splits == ("train",) and src.num_examples("train") == 4


def test_folder_source_label_formats(tmp_path):
    """Palette PNGs give indices (not colours), 16-bit PNGs and label_map work."""
    root = tmp_path / "fmt"
    _save(root / "images" / "p.png", np.zeros((4, 5, 3), np.uint8))
    _save(root / "images" / "w.png", np.zeros((4, 5, 3), np.uint8))
    pal = np.array([[0, 1, 2, 3, 255]] * 4, np.uint8)
    _save_label_p(root / "labels" / "p.png", pal)
    Image.fromarray(np.full((4, 5), 1000, np.uint16)).save(root / "labels" / "w.png")
    src = data.get_source(f"folder:{root}", num_classes=4, label_map={1000: 3})
    (_, p), (_, w) = [(i.numpy(), lbl.numpy()) for i, lbl in src.dataset("train")]
    assert p[0].tolist() == [0, 1, 2, 3, 255] and np.all(w == 3)


def test_folder_source_reduce_zero_label(tmp_path):
    root = tmp_path / "ade_like"
    _save(root / "images" / "x.jpg", np.zeros((2, 4, 3), np.uint8))
    _save(root / "labels" / "x.png", np.array([[0, 1, 3, 255], [2, 2, 2, 2]], np.uint8))
    src = data.get_source(f"folder:{root}", num_classes=3, reduce_zero_label=True)
    _, label = _first(src.dataset("train"))
    assert label.tolist() == [[255, 0, 2, 255], [1, 1, 1, 1]]


def test_label_lut_rules():
    lut = data.label_lut(3, reduce_zero_label=True, size=260)
    assert lut[[0, 1, 3, 4, 255, 256]].tolist() == [255, 0, 2, -1, 255, -1]
    lut = data.label_lut(11, ignore_index=11, size=256)
    assert lut[[10, 11, 12, 255]].tolist() == [10, 255, -1, 255]
    with pytest.raises(ValueError, match="label_map"):
        data.label_lut(3, label_map={5: 9})


# ------------------------------------------------------------------ bad inputs
def test_bad_specs_options_and_splits(tmp_path):
    with pytest.raises(ValueError, match="expected one of demo, camvid.*folder:PATH"):
        data.get_source("imagenet")
    with pytest.raises(ValueError, match="needs an argument"):
        data.get_source("folder:")
    with pytest.raises(ValueError, match="unknown option.*numclasses.*valid: .*num_classes"):
        data.get_source(f"folder:{tmp_path}", numclasses=3)
    with pytest.raises(ValueError, match="unknown split 'test'; available: train, val"):
        data.get_source("demo").dataset("test")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        data.get_source(f"folder:{tmp_path / 'nope'}", num_classes=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images folder in .*empty"):
        data.get_source(f"folder:{tmp_path / 'empty'}", num_classes=2)
    (tmp_path / "empty" / "images").mkdir()
    (tmp_path / "empty" / "labels").mkdir()
    # A split's files are checked when it is used (here: the one folder's "train").
    with pytest.raises(ValueError, match=r"no images \(\*.jpg.*empty[/\\]images"):
        data.get_source(f"folder:{tmp_path / 'empty'}", num_classes=2).num_examples("train")
    nolabels = tmp_path / "nolabels"
    _save(nolabels / "images" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="label folder not found: .*nolabels"):
        data.get_source(f"folder:{nolabels}", num_classes=2).dataset("train")
    (nolabels / "labels").mkdir()
    with pytest.raises(ValueError, match="have no label in .*a.png"):
        data.get_source(f"folder:{nolabels}", num_classes=2).files("train")


def test_folder_splits_nested_names_and_upper_case_labels(tmp_path):
    """An unlabelled test/ beside train/ and val/ stopped training and evaluation of
    the other splits; images in subfolders of images/ were left out silently; labels
    named .PNG were "missing"."""
    root = _make_folder(tmp_path / "ds")
    _save(root / "test" / "images" / "t.jpg", np.zeros((4, 4, 3), np.uint8))  # no labels/
    seq = root / "val" / "images" / "seq01"
    _save(seq / "v.JPG", np.zeros((12, 16, 3), np.uint8))
    _save(root / "val" / "labels" / "seq01" / "v.PNG", np.ones((12, 16), np.uint8))
    src = data.get_source(f"folder:{root}")
    assert src.splits == ("train", "val", "test")
    assert src.num_examples("train") == 3
    names = [os.path.relpath(label, root) for _, label in src.files("val")]
    assert names == [os.path.join("val", "labels", "seq01", "v.PNG")] + [
        os.path.join("val", "labels", f"val_{i}.png") for i in range(3)]
    np.testing.assert_array_equal(src.example("val", 0)[1], np.ones((12, 16)))
    with pytest.raises(FileNotFoundError, match="label folder not found: .*test"):
        src.num_examples("test")
    (root / "val.txt").write_text("seq01/v\n")  # a split list names them the same way
    assert data.get_source(f"folder:{root}").num_examples("val") == 1


def test_bad_metadata(tmp_path):
    root = _make_folder(tmp_path / "ds", classes=None)
    with pytest.raises(ValueError, match="no classes.txt: pass num_classes"):
        data.get_source(f"folder:{root}")
    (root / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match="num_classes=4 but 3 class names"):
        data.get_source(f"folder:{root}", num_classes=4)
    (root / "val.txt").write_text("val_0\nghost\n")
    with pytest.raises(ValueError, match="val.txt: 1 names have no image .*ghost"):
        data.get_source(f"folder:{root}").num_examples("val")


def _single(tmp_path, image, label, num_classes=3):
    root = tmp_path / "one"
    root.mkdir(exist_ok=True)
    if isinstance(image, bytes):
        (root / "images").mkdir(exist_ok=True)
        (root / "images" / "bad.jpg").write_bytes(image)
    else:
        _save(root / "images" / "bad.jpg", image)
    _save(root / "labels" / "bad.png", label)
    return data.get_source(f"folder:{root}", num_classes=num_classes)


@pytest.mark.parametrize("case, pattern", [
    ("value", r"label .*bad.png: label values \[7, 9\] are not class ids 0..2 nor 255"),
    ("size", r"image .*bad.jpg is 6x4 but its label .*bad.png is 5x4"),
    ("corrupt", r"cannot read image .*bad.jpg"),
    ("truncated", r"cannot read image .*bad.jpg"),
    ("rgb_label", r"label .*bad.png is a RGB image; labels must be single-channel"),
])
def test_bad_files_name_the_file(tmp_path, case, pattern):
    image, label = np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6), np.uint8)
    if case == "value":
        label[0, :2] = [7, 9]
    elif case == "size":
        label = np.zeros((4, 5), np.uint8)
    elif case == "corrupt":
        image = b"this is not a jpeg"
    elif case == "truncated":
        path = tmp_path / "full.jpg"
        noise = np.random.RandomState(0).randint(0, 255, (64, 64, 3)).astype(np.uint8)
        Image.fromarray(noise).save(path)
        image = path.read_bytes()[:600]
    elif case == "rgb_label":
        label = np.zeros((4, 6, 3), np.uint8)
    src = _single(tmp_path, image, label)
    # Eager, pure Python:
    with pytest.raises(DataError, match=pattern):
        src.load_example(*src.files("train")[0])
    # From inside tf.data: TensorFlow's error carries the file name...
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad"):
        _first(src.dataset("train"))
    # ...and translate_errors() gives back the one-line DataError (a ValueError).
    with pytest.raises(DataError, match=pattern) as info:
        with translate_errors():
            _batches(data.train_pipeline(src.dataset("train"), 4, 4, 1, seed=0))
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(DataError, match=pattern):
        src.verify("train")


# -------------------------------------------------------------------- CamVid
def test_camvid_source(camvid_dir, monkeypatch):
    src = data.get_source(f"camvid:{camvid_dir}")
    assert (src.name, src.num_classes) == ("camvid", 11)
    assert (src.num_examples("train"), src.num_examples("val")) == (367, 101)
    assert src.class_names[:4] == ("sky", "building", "pole", "road")
    assert src.palette.tolist() == palettes.get_palette("camvid").tolist()
    monkeypatch.setenv("KERAS_FASTFCN_CAMVID", str(camvid_dir))
    default = data.get_source("camvid")
    assert default.files("val") == src.files("val")
    assert data.get_source("camvid", root=str(camvid_dir)).files("val") == src.files("val")
    seen = set()
    for (image, label), (_, label_path) in zip(src.dataset("val").take(6), src.files("val")):
        raw = np.asarray(Image.open(label_path))
        label = label.numpy()
        assert image.shape == (360, 480, 3) and label.shape == (360, 480)
        np.testing.assert_array_equal(label == 255, raw == 11)   # void -> ignore
        np.testing.assert_array_equal(label[raw != 11], raw[raw != 11])
        seen |= set(np.unique(label).tolist())
    assert seen <= set(range(11)) | {255} and 255 in seen and len(seen) > 8
    assert src.verify("val") == 101                      # every val file reads and checks


def test_camvid_missing_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_FASTFCN_CAMVID", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="CamVid not found at .*absent.*camvid:PATH"):
        data.get_source("camvid")


# ------------------------------------------------------------ VOC and ADE20K on disk
def test_voc_source_on_disk(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    label = np.zeros((6, 8), np.uint8)
    label[1:5, 1:7] = 255          # boundary
    label[2:4, 2:6] = 15           # person
    for i in ("2007_000032", "2007_000039", "2007_000063"):
        _save(voc / "JPEGImages" / f"{i}.jpg", np.zeros((6, 8, 3), np.uint8))
        _save_label_p(voc / "SegmentationClass" / f"{i}.png", label)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2007_000063\n")
    (lists / "test.txt").write_text("2008_000001\n")   # no public labels: not a split
    src = data.get_source(f"voc:{tmp_path}")
    assert (src.name, src.num_classes, src.splits) == ("pascal_voc", 21, ("train", "val"))
    assert src.class_names[15] == "person" and src.num_examples("train") == 2
    _, got = _first(src.dataset("val"))
    np.testing.assert_array_equal(got, label)
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder"):
        data.get_source(f"voc:{tmp_path / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'}")


def test_ade20k_source_on_disk(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150, 75]], np.uint8)
    for split in ("training", "validation"):
        _save(root / "images" / split / f"ADE_{split}_1.jpg", np.zeros((1, 4, 3), np.uint8))
        _save(root / "annotations" / split / f"ADE_{split}_1.png", raw)
    src = data.get_source(f"ade20k:{tmp_path}")
    assert (src.num_classes, src.splits, src.class_names[0]) == (150, ("train", "val"), "wall")
    _, label = _first(src.dataset("val"))
    assert label.tolist() == [[255, 0, 149, 74]]          # official: mask - 1, 0 -> ignore
    _save(root / "annotations" / "training" / "ADE_training_1.png",
          np.array([[0, 151, 1, 1]], np.uint8))
    with pytest.raises(DataError, match=r"ADE_training_1.png: label values \[151\]"):
        src.verify("train")


# ------------------------------------------------------------------ pipelines
@pytest.fixture(scope="module")
def small_demo():
    return demo.DemoSource(size=64, num_train=12, num_val=4)


def test_train_pipeline_is_deterministic_per_seed(small_demo):
    def run(seed, epochs=2, parallel=tf.data.AUTOTUNE):
        ds = data.train_pipeline(small_demo.dataset("train"), 48, 56, 4, seed=seed,
                                 num_parallel_calls=parallel)
        return [_batches(ds) for _ in range(epochs)]

    # Same seed: same batches, whatever the threading.
    first, again, other = run(7), run(7, parallel=1), run(8)
    for epoch_a, epoch_b in zip(first, again):
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert len(first[0]) == 3                                # 12 examples, batch 4
    assert not np.array_equal(first[0][0][0], first[1][0][0])  # new draw each epoch
    assert not np.array_equal(first[0][0][0], other[0][0][0])


def test_skip_batches_resumes_the_same_stream(small_demo):
    def stream(skip=0):
        return data.train_pipeline(small_demo.dataset("train"), 32, 40, 4, seed=3,
                                   repeat=True, skip_batches=skip)

    full = _batches(stream(), 8)                  # crosses two passes over 12 images
    resumed = _batches(stream(skip=5), 3)
    for (xa, ya), (xb, yb) in zip(full[5:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="skip_batches"):
        data.train_pipeline(small_demo.dataset("train"), 32, 40, 4, skip_batches=-1)


def test_train_pipeline_shapes_ranges_and_padding(small_demo):
    ds = data.train_pipeline(small_demo.dataset("train"), 48, 40, 4, seed=0)
    assert ds.element_spec[0].shape == (4, 48, 48, 3) and ds.element_spec[1].dtype == tf.int32
    for images, labels in _batches(ds):
        assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 255
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4, 255}
    # A plain dataset (not from a Source) works too, shuffled through a buffer.
    plain = tf.data.Dataset.from_tensor_slices(small_demo.arrays("val"))
    images, labels = _batches(data.train_pipeline(plain, 32, 32, 2, seed=0, shuffle_buffer=4))[0]
    assert images.shape == (2, 32, 32, 3) and labels.shape == (2, 32, 32)


def test_padding_is_ignore_at_bottom_right():
    image = tf.fill((30, 40, 3), tf.constant(200, tf.uint8))
    label = tf.ones((30, 40), tf.int32)
    for s in range(20):
        img, lbl = data.train_transform(image, label, tf.constant([s, 1]), crop_size=64,
                                        base_size=20, blur=False)
        img, lbl = img.numpy(), lbl.numpy()
        pad = lbl == 255
        assert pad.any()                                        # short side <= 40 < 64
        np.testing.assert_array_equal(pad, np.all(img == 0, axis=-1))
        assert np.all(img[~pad] > 199) and np.all(lbl[~pad] == 1)
        rows, cols = ~pad.all(1), ~pad.all(0)
        valid_h, valid_w = rows.sum(), cols.sum()
        assert rows[:valid_h].all() and cols[:valid_w].all()    # content top-left
        assert pad[valid_h:].all() and pad[:, valid_w:].all()


@pytest.mark.parametrize("shape", [(40, 60), (60, 40)])
def test_random_scale_follows_official_short_side_rule(shape):
    """Short side ~ randint(int(0.5 base), int(2 base)); long = int(long * short / short0)."""
    h, w = shape
    image, label = tf.fill((h, w, 3), tf.constant(100, tf.uint8)), tf.zeros((h, w), tf.int32)
    shorts = []
    for s in range(40):
        _, lbl = data.train_transform(image, label, tf.constant([s, 3]), crop_size=200,
                                      base_size=50, blur=False)
        valid = lbl.numpy() != 255
        out_h, out_w = valid.any(1).sum(), valid.any(0).sum()
        short, long_ = (out_h, out_w) if w > h else (out_w, out_h)
        assert 25 <= short <= 100 and long_ == int(max(h, w) * short / min(h, w))
        shorts.append(short)
    assert len(set(shorts)) > 15 and min(shorts) < 45 and max(shorts) > 80


def test_flip_and_identity_scale():
    rng = np.random.RandomState(1)
    image = rng.randint(0, 255, (32, 32, 3)).astype(np.uint8)
    label = rng.randint(0, 5, (32, 32)).astype(np.int32)
    flips = 0
    for s in range(16):
        img, lbl = data.train_transform(image, label, tf.constant([s, 9]), crop_size=32,
                                        base_size=32, scale_range=(1.0, 1.0), blur=False)
        img, lbl = img.numpy(), lbl.numpy()
        mirrored = np.array_equal(lbl, label[:, ::-1])
        assert mirrored or np.array_equal(lbl, label)
        np.testing.assert_allclose(img, image[:, ::-1] if mirrored else image, atol=1e-3)
        flips += mirrored
    assert 3 <= flips <= 13


def test_gaussian_blur():
    noise = tf.constant(np.random.RandomState(0).rand(16, 16, 3).astype(np.float32) * 255)
    np.testing.assert_allclose(data.gaussian_blur(noise, 0.0).numpy(), noise.numpy(), atol=1e-3)
    blurred = data.gaussian_blur(noise, 0.9).numpy()
    assert blurred.std() < 0.7 * noise.numpy().std()
    flat = data.gaussian_blur(tf.fill((8, 8, 3), 50.0), 0.9).numpy()
    np.testing.assert_allclose(flat, 50.0, atol=1e-3)


def test_val_transform_matches_official_resize_and_centre_crop():
    h, w = 36, 61
    image = tf.constant(np.random.RandomState(2).randint(0, 255, (h, w, 3)).astype(np.uint8))
    columns = tf.tile(tf.range(w)[None], [h, 1])
    img, lbl = data.val_transform(image, columns, crop_size=36)
    # Short side already 36: no resize; offset round((61 - 36) / 2) = round(12.5) = 12.
    assert lbl.numpy()[0].tolist() == list(range(12, 48))
    np.testing.assert_allclose(img.numpy(), image.numpy()[:, 12:48], atol=1e-3)
    img, _ = data.val_transform(image, columns, crop_size=24)
    resized = tf.image.resize(image, (24, int(w * 24 / h)), antialias=True)
    left = round((int(w * 24 / h) - 24) / 2)
    np.testing.assert_allclose(img.numpy(), resized.numpy()[:, left:left + 24], atol=1e-3)


def test_eval_pipeline_whole_images_and_crops(small_demo):
    sizes = [(20, 30), (24, 18)]
    ds = tf.data.Dataset.from_generator(
        lambda: ((np.zeros(s + (3,), np.uint8), np.ones(s, np.int32)) for s in sizes),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8),
                          tf.TensorSpec((None, None), tf.int32)))
    (images, labels), = _batches(data.eval_pipeline(ds, batch_size=2))
    assert images.shape == (2, 24, 30, 3) and images.dtype == np.float32
    assert labels[0, 20:].tolist() == [[255] * 30] * 4 and np.all(labels[0, :20] == 1)
    whole = _batches(data.eval_pipeline(small_demo.dataset("val"), batch_size=1))
    assert len(whole) == 4 and whole[0][0].shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(whole[0][1][0], small_demo.arrays("val")[1][0])
    cropped = _batches(data.eval_pipeline(small_demo.dataset("val"), batch_size=3, crop_size=32))
    assert [b[0].shape for b in cropped] == [(3, 32, 32, 3), (1, 32, 32, 3)]


def test_pipeline_bad_arguments(small_demo):
    ds = small_demo.dataset("train")
    with pytest.raises(ValueError, match="crop_size"):
        data.train_pipeline(ds, 0, 32, 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.train_pipeline(ds, 32, 32, 2.5)
    with pytest.raises(ValueError, match="scale_range"):
        data.train_pipeline(ds, 32, 32, 2, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop_size"):
        data.eval_pipeline(ds, crop_size=-1)
