"""`cityscapes:PATH` over the official leftImg8bit/gtFine layout (a tiny copy made
here), its labelId -> trainId mapping, its errors, the CLI accepting the spec, and
tfds `cityscapes` (the real builder prepared from local files)."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from harness import assert_one_line_error, run_cli
from keras_fastfcn import data
from keras_fastfcn.data.errors import DataError

H, W = 32, 64
# trainId of labelId 0..33, the `trainId` column of cityscapesScripts' helpers/labels.py
# (written out here, not taken from the module under test).
OFFICIAL_TRAIN_IDS = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255,
                      255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]
OFFICIAL_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                  "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                  "truck", "bus", "train", "motorcycle", "bicycle")
# Every labelId, plus 255: the license plate (id -1) is never drawn into a labelIds PNG
# (json2labelImg skips negative ids); -1 stored as uint8 would read 255.
RAW_VALUES = np.array(list(range(34)) + [255], np.uint8)
FILES = {"train": {"aachen": ["000000_000019", "000001_000019"], "bochum": ["000000_000313"]},
         "val": {"frankfurt": ["000000_000294"], "lindau": ["000000_000019"]}}


def _raw_label(shift=0):
    """A labelIds map holding all 35 raw values in column stripes."""
    return np.resize(np.roll(RAW_VALUES, shift), W)[None, :].repeat(H, 0)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_cityscapes(root):
    """root/leftImg8bit/{train,val,test}/CITY/... and root/gtFine/{train,val,test}/CITY/..."""
    rng = np.random.RandomState(0)
    shift = 0
    for split, cities in FILES.items():
        for city, frames in cities.items():
            for frame in frames:
                prefix = f"{city}_{frame}"
                _png(root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png",
                     rng.randint(0, 256, (H, W, 3)).astype(np.uint8))
                _png(root / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png",
                     _raw_label(shift))
                # The archives' other gtFine files sit next to the labelIds: not labels.
                _png(root / "gtFine" / split / city / f"{prefix}_gtFine_color.png",
                     np.zeros((H, W, 3), np.uint8))
                shift += 1
    # test: images and placeholder labels (no public annotations): not a split.
    _png(root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png",
         np.zeros((H, W, 3), np.uint8))
    _png(root / "gtFine" / "test" / "berlin" / "berlin_000000_000019_gtFine_labelIds.png",
         np.zeros((H, W), np.uint8))
    return root


def _expected(raw):
    lut = np.full(256, -1, np.int64)
    lut[:34] = OFFICIAL_TRAIN_IDS
    lut[255] = 255
    return lut[raw]


@pytest.fixture
def root(tmp_path):
    return _make_cityscapes(tmp_path / "cityscapes")




# ------------------------------------------------------------------------ mapping
def test_every_label_id_maps_to_its_official_train_id(root):
    src = data.get_source(f"cityscapes:{root}")
    assert (src.name, src.num_classes, src.ignore_label) == ("cityscapes", 19, 255)
    assert src.class_names == OFFICIAL_NAMES
    assert src.palette.shape == (19, 3)
    assert src.palette[0].tolist() == [128, 64, 128] and src.palette[18].tolist() == [119, 11, 32]
    assert data.palettes.class_names("citys") == OFFICIAL_NAMES
    seen = set()
    for split in src.splits:
        for index, (image_path, label_path) in enumerate(src.files(split)):
            raw = np.asarray(Image.open(label_path))
            image, label = src.example(split, index)           # the Python reader
            assert image.shape == (H, W, 3) and label.dtype == np.int32
            np.testing.assert_array_equal(label, _expected(raw))
            seen |= set(np.unique(raw).tolist())
        for (_, got), (_, want) in zip(src.dataset(split), src.examples(split)):
            np.testing.assert_array_equal(got.numpy(), want)  # tf.data reads the same
    assert seen == set(RAW_VALUES.tolist())
    # Ignored ids (void, parking, rail track, guard rail, bridge, tunnel, polegroup,
    # caravan, trailer) and 255 all read as ignore.
    assert [i for i, t in enumerate(OFFICIAL_TRAIN_IDS) if t == 255] == \
        [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]


def test_pairs_by_prefix_splits_and_counts(root, tmp_path):
    src = data.get_source(f"cityscapes:{root}")
    assert src.splits == ("train", "val")                       # test: no labels
    assert (src.num_examples("train"), src.num_examples("val")) == (3, 2)
    for split in src.splits:
        for image_path, label_path in src.files(split):
            prefix = os.path.basename(image_path)[:-len("_leftImg8bit.png")]
            city = prefix.split("_")[0]
            assert label_path == str(root / "gtFine" / split / city /
                                     f"{prefix}_gtFine_labelIds.png")
    assert [os.path.basename(p) for p, _ in src.files("train")] == [
        "aachen_000000_000019_leftImg8bit.png", "aachen_000001_000019_leftImg8bit.png",
        "bochum_000000_000313_leftImg8bit.png"]
    # The parent of cityscapes/ works too; only val extracted: one split.
    assert data.get_source(f"cityscapes:{tmp_path}").num_examples("train") == 3
    shutil.rmtree(root / "leftImg8bit" / "train")
    assert data.get_source(f"cityscapes:{root}", name="cs").splits == ("val",)


# ------------------------------------------------------------------------ errors
def test_label_of_wrong_size_or_value_names_the_file(root):
    bad = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    _png(bad, np.zeros((H // 2, W // 2), np.uint8))
    src = data.get_source(f"cityscapes:{root}")
    with pytest.raises(DataError, match=r"lindau_000000_000019_gtFine_labelIds.png is 32x16"):
        src.example("val", 1)
    with pytest.raises(DataError, match=r"lindau_000000_000019_gtFine_labelIds.png is 32x16"):
        src.verify("val")
    # 34..254 are no labelIds.
    _png(bad, np.full((H, W), 34, np.uint8))
    with pytest.raises(DataError, match=r"lindau_000000_000019_gtFine_labelIds.png: label "
                                        r"values \[34\]"):
        src.verify("val")


def test_missing_folders_and_labels(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="Cityscapes folder not found: .*absent"):
        data.get_source(f"cityscapes:{tmp_path / 'absent'}")
    with pytest.raises(FileNotFoundError, match="no Cityscapes folder .with leftImg8bit"):
        data.get_source(f"cityscapes:{root / 'gtFine'}")
    with pytest.raises(ValueError, match="unknown option.*label_dir"):
        data.get_source(f"cityscapes:{root}", label_dir="gtCoarse")
    label = root / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(ValueError, match=r"1 images in .*leftImg8bit/train have no label in "
                                         r".*gtFine/train: bochum/bochum_000000_000313_gtFine"):
        data.get_source(f"cityscapes:{root}")
    shutil.rmtree(root / "gtFine" / "train")
    with pytest.raises(FileNotFoundError, match=r"label folder not found: .*gtFine/train"):
        data.get_source(f"cityscapes:{root}")
    shutil.rmtree(root / "gtFine")
    with pytest.raises(FileNotFoundError, match=r"label folder not found: .*cityscapes/gtFine "
                                                r"\(extract gtFine_trainvaltest.zip"):
        data.get_source(f"cityscapes:{root}")


# ------------------------------------------------------------------------ CLI
def test_cli_evaluate_and_train_accept_the_spec(capsys, root, tmp_path, tiny_backbone):
    import keras_fastfcn

    model = keras_fastfcn.FastFCN(num_classes=19, head="fcn", backbone=tiny_backbone,
                                  jpu_width=16)
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    report = tmp_path / "results.json"
    rc, out, err = run_cli(capsys, "evaluate", "--model", model_path, "--data",
                           f"cityscapes:{root}", "--split", "val", "--output", report)
    assert rc == 0, err
    assert "traffic light" in out and "bicycle" in out
    result = json.loads(report.read_text())
    assert result["images"] == 2
    # Every pixel whose labelId has a train id is scored: 19 of each 35 stripes.
    assert result["labeled_pixels"] == sum(
        int((_expected(np.asarray(Image.open(lbl))) != 255).sum())
        for _, lbl in data.get_source(f"cityscapes:{root}").files("val"))

    # train: the spec is read (3 training images) and the run stops before any work.
    out_dir = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", "--config", "cityscapes_encnet_jpu_r50",
                         "--set", f"data.source=cityscapes:{root}",
                         "--set", "train.steps_per_epoch=null", "--output-dir", out_dir)
    assert_one_line_error(rc, err, "Cannot infer steps per epoch: 3 training images for a "
                                   "batch of 8")
    assert not out_dir.exists()

    shutil.rmtree(root / "gtFine")
    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data",
                         f"cityscapes:{root}")
    assert_one_line_error(rc, err, "label folder not found", "gtFine")


def test_bundled_config_follows_mmsegmentation():
    from keras_fastfcn.train import load_config
    from keras_fastfcn.train.config import effective_lr

    cfg = load_config("cityscapes_encnet_jpu_r50")
    t, d = cfg["train"], cfg["data"]
    assert d["source"].startswith("cityscapes:")
    assert t["epochs"] * t["steps_per_epoch"] == 80000 and t["batch_size"] == 8
    assert effective_lr(t) == 0.01 and t["weight_decay"] == 5e-4
    assert (d["base_size"], d["scale_range"]) == (1024, [0.5, 2.0])
    assert cfg["model"]["align_corners"] is False and t["head_lr_mult"] == 1.0


# ------------------------------------------------------------------------ tfds
def test_tfds_cityscapes_maps_label_ids(tmp_path):
    """tfds `cityscapes/semantic_segmentation` (its real `_info` and
    `_generate_examples`; images are fixed at 2048x1024) read as `tfds:cityscapes`."""
    tfds = pytest.importorskip("tensorflow_datasets")
    files = tmp_path / "files"
    raw = np.resize(RAW_VALUES, 2048)[None, :].repeat(1024, 0)
    for split, city in (("train", "aachen"), ("val", "frankfurt"), ("test", "berlin")):
        prefix = f"{city}_000000_000019"
        _png(files / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png",
             np.zeros((1024, 2048, 3), np.uint8))
        _png(files / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png", raw)
    real = tfds.builder_cls("cityscapes")

    class LocalCityscapes(real, skip_registration=True):
        name = "cityscapes"

        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator(name=name, gen_kwargs=dict(
                images_left=str(files / "leftImg8bit" / split),
                segmentation_labels=str(files / "gtFine" / split)))
                for name, split in (("train", "train"), ("validation", "val"),
                                    ("test", "test"))]

    data_dir = tmp_path / "tfds"
    LocalCityscapes(data_dir=str(data_dir)).download_and_prepare()
    src = data.get_source("tfds:cityscapes", data_dir=str(data_dir), download=False)
    assert (src.name, src.num_classes, src.class_names) == ("cityscapes", 19, OFFICIAL_NAMES)
    assert "val" in src.splits and "test" not in src.splits
    assert src.num_examples("val") == 1
    image, label = next(iter(src.dataset("val")))
    assert image.shape == (1024, 2048, 3)
    np.testing.assert_array_equal(label.numpy()[::256], _expected(raw)[::256])


def test_tfds_cityscapes_not_prepared_is_one_error(tmp_path, monkeypatch):
    """The builder asserts when the manual-download zips are missing: one clear error."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class Unprepared(tfds.builder_cls("cityscapes"), skip_registration=True):
        name = "cityscapes"

    monkeypatch.setattr(tfds, "builder", lambda spec, data_dir=None: Unprepared(
        data_dir=data_dir))
    with pytest.raises(FileNotFoundError, match=r"tfds:cityscapes is not prepared: Manual "
                                                r"directory .* does not exist or is empty") \
            as info:
        data.get_source("tfds:cityscapes", data_dir=str(tmp_path / "tfds"))
    assert "\n" not in str(info.value) and "leftImg8bit_trainvaltest.zip" in str(info.value)
    assert not (tmp_path / "tfds" / "cityscapes" / "semantic_segmentation" / "1.0.0").exists()
