"""tfds sources, without a download: the real tensorflow-datasets builders prepared
from small local files (their `_info` and `_generate_examples` are the real ones; only
the download step is replaced), then read back through `get_source("tfds:...")`."""

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from keras_fastfcn import data  # noqa: E402
from keras_fastfcn.data.errors import DataError, translate_errors  # noqa: E402

# R channel: ADE20K instance category id (0 = none), G channel: instance id.
RAW_R = np.array([[0, 1, 4, 100], [0, 0, 50, 100]], np.uint8)


def _prepare_scene_parse150(tmp_path, r_channel=RAW_R):
    """Prepares tfds `scene_parse150` in tmp_path/tfds from local ADE-style files."""
    files = tmp_path / "ade_files"
    for sub, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (files / "images" / sub).mkdir(parents=True)
        (files / "annotations_instance" / sub).mkdir(parents=True)
        for i in range(2):
            image = np.full(r_channel.shape + (3,), 40 * i, np.uint8)
            Image.fromarray(image).save(files / "images" / sub / f"{prefix}_{i}.jpg")
            annotation = np.stack([r_channel, np.full_like(r_channel, 7 + i),
                                   np.zeros_like(r_channel)], -1)
            Image.fromarray(annotation).save(files / "annotations_instance" / sub /
                                             f"{prefix}_{i}.png")
    real = tfds.builder_cls("scene_parse150")

    class LocalSceneParse150(real, skip_registration=True):
        name = "scene_parse150"

        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator(name=split, gen_kwargs=dict(
                images_dir_path=str(files / "images" / sub),
                annotations_dir_path=str(files / "annotations_instance" / sub)))
                for split, sub in (("train", "training"), ("test", "validation"))]

    data_dir = tmp_path / "tfds"
    LocalSceneParse150(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.fixture(scope="module")
def scene_parse_dir(tmp_path_factory):
    return _prepare_scene_parse150(tmp_path_factory.mktemp("sp150"))


def test_scene_parse150_mapping(scene_parse_dir):
    src = data.get_source("tfds:scene_parse150", data_dir=str(scene_parse_dir), download=False)
    assert (src.name, src.num_classes) == ("scene_parse150", 100)
    assert src.class_names[0] == "bed" and src.class_names[99] == "flag"
    assert src.palette.shape == (100, 3)
    assert src.splits == ("train", "test", "val")
    assert src.num_examples("train") == 2 and src.num_examples("val") == 2  # val = tfds test
    examples = list(src.dataset("val"))
    assert len(examples) == 2
    for image, label in examples:
        assert image.dtype == "uint8" and image.shape == (2, 4, 3)
        assert label.dtype == "int32"
        # R channel, official ADE20K rule: 0 -> ignore, v -> v - 1; G is ignored.
        assert label.numpy().tolist() == [[255, 0, 3, 99], [255, 255, 49, 99]]
    batch = next(iter(data.train_pipeline(src.dataset("train"), 4, 4, 2, seed=0)))
    assert batch[0].shape == (2, 4, 4, 3)


def test_prepared_directory_without_builder(scene_parse_dir):
    """`tfds:DIR` opens prepared data with builder_from_directory (no builder code)."""
    version_dir = scene_parse_dir / "scene_parse150" / "1.0.0"
    by_name = data.get_source("tfds:scene_parse150", data_dir=str(scene_parse_dir))
    for spec in (f"tfds:{version_dir}", f"tfds:{scene_parse_dir / 'scene_parse150'}"):
        src = data.get_source(spec)
        assert src.num_classes == 100 and src.num_examples("train") == 2
        for (_, a), (_, b) in zip(src.dataset("train"), by_name.dataset("train")):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(FileNotFoundError, match="no prepared tfds dataset"):
        data.get_source(f"tfds:{scene_parse_dir.parent / 'ade_files'}")


def test_out_of_range_tfds_label_names_the_record(tmp_path):
    bad = RAW_R.copy()
    bad[0, 0] = 120                      # -> 119, not one of the 100 classes
    data_dir = _prepare_scene_parse150(tmp_path, bad)
    src = data.get_source("tfds:scene_parse150", data_dir=str(data_dir))
    with pytest.raises(DataError, match=r"scene_parse150/1.0.0 train record "
                                        r"scene_parse150-train.tfrecord-\d+-of-\d+__\d+: "
                                        r"label values \[120\] are not class ids 0..99"):
        with translate_errors():
            list(src.dataset("train"))


def test_tfds_not_prepared_and_no_masks(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared in .*download=True"):
        data.get_source("tfds:scene_parse150", data_dir=str(tmp_path), download=False)
    # The real tfds voc/2012 builder (no download needed to read its features).
    with pytest.raises(ValueError, match="no segmentation masks.*voc:PATH.*features: image, "
                                         "image/filename, labels"):
        data.get_source("tfds:voc/2012", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="tfds:no_such_dataset_xyz"):
        data.get_source("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_generic_tfds_dataset_needs_label_key(scene_parse_dir):
    """Any tfds dataset with an image-like label feature can be read with options."""
    version_dir = scene_parse_dir / "scene_parse150" / "1.0.0"
    src = data.get_source(f"tfds:{version_dir}", label_key="annotation", label_channel=1,
                          num_classes=9, reduce_zero_label=False, name="instances")
    assert src.name == "instances" and src.class_names is None
    _, label = next(iter(src.dataset("train")))
    assert set(np.unique(label.numpy()).tolist()) <= {7, 8}      # the G channel
    with pytest.raises(ValueError, match="no feature 'mask'; features: annotation, image"):
        data.get_source(f"tfds:{version_dir}", label_key="mask", num_classes=2)
