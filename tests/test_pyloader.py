"""The Python input pipeline (no TensorFlow): the official transforms, deterministic."""

import numpy as np
import pytest

from keras_fastfcn import data
from keras_fastfcn.data.pyloader import EvalBatches, TrainBatches, train_example, val_example


def test_train_batches_are_a_deterministic_stream():
    source = data.get_source("demo", size=64, num_train=10)
    a = TrainBatches(source, "train", crop_size=48, base_size=64, batch_size=4, seed=3)
    b = TrainBatches(source, "train", crop_size=48, base_size=64, batch_size=4, seed=3)
    resumed = TrainBatches(source, "train", crop_size=48, base_size=64, batch_size=4, seed=3,
                           skip_batches=2)
    images, labels = a[2]
    assert images.shape == (4, 48, 48, 3) and images.dtype == np.float32
    assert labels.shape == (4, 48, 48) and labels.dtype == np.int32
    # The same batch whichever object (thread) builds it, and after a resume.
    for other in (b[2], resumed[0]):
        np.testing.assert_array_equal(other[0], images)
        np.testing.assert_array_equal(other[1], labels)
    assert not np.array_equal(a[0][0], a[1][0])
    assert a.num_batches is None  # endless: fit() takes steps_per_epoch of it
    assert set(np.unique(labels)) <= set(range(source.num_classes)) | {255}


def test_train_example_pads_with_ignore_and_scales_the_short_side():
    image = np.full((30, 40, 3), 200, np.uint8)
    label = np.ones((30, 40), np.int32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, lab = train_example(image, label, rng, crop_size=64, base_size=30,
                                 scale_range=(0.5, 1.0))
        # The short side is at most 30 < 64: padding right/bottom, label 255, image 0.
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert lab[-1, -1] == 255 and img[-1, -1].max() == 0
        assert lab[0, 0] == 1


def test_val_example_is_the_official_centre_crop():
    image = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    label = np.tile(np.arange(60, dtype=np.int32) % 5, (40, 1))
    img, lab = val_example(image, label, crop_size=20)  # short side 40 -> 20, width 30
    assert img.shape == (20, 20, 3) and lab.shape == (20, 20)
    # Centre crop of the 30-wide resize: columns 5..24 (round((30 - 20) / 2) = 5), nearest.
    expected = label[0, ((np.arange(5, 25) + 0.5) * 2).astype(int)]
    np.testing.assert_array_equal(lab[0], expected)
    whole, whole_label = val_example(image, label, crop_size=None)
    assert whole.shape == (40, 60, 3) and whole_label.dtype == np.int32


def test_eval_batches_and_their_errors():
    source = data.get_source("demo", size=64, num_val=5)
    batches = EvalBatches(source, "val", batch_size=2, crop_size=32)
    assert batches.num_batches == 3 and len(batches) == 3
    assert batches[2][0].shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="batch_size=1"):
        EvalBatches(source, "val", batch_size=2, crop_size=None)


@pytest.mark.parametrize("loader", ["python", "tf"])
def test_last_validation_batch_padded_for_even_device_split(loader):
    from keras_fastfcn import train

    cfg = train.load_config("demo", ["data.options.size=64", "data.options.num_val=7",
                                     "data.crop_size=32", f"data.loader={loader}"])
    source = data.get_source("demo", **cfg["data"]["options"])
    _, val = train.datasets(cfg, source, 4, val_multiple=2)
    batches = [tuple(np.asarray(t) for t in b) for b in (val if loader == "tf" else
                                                         (val[i] for i in range(len(val))))]
    assert [b[0].shape[0] for b in batches] == [4, 4]  # 7 images: 4 + 3 padded to 4
    assert (batches[-1][1][3] == 255).all() and (batches[-1][0][3] == 0).all()
    assert not (batches[-1][1][2] == 255).all()


def test_sources_without_random_access_name_the_fix():
    class Streaming(data.Source):
        def dataset(self, split):
            raise AssertionError

        def num_examples(self, split):
            return 1

    with pytest.raises(ValueError, match="install tensorflow"):
        Streaming("s", 2, splits=("train",)).example("train", 0)
