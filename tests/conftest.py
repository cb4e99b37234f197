import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"


@pytest.fixture(scope="session")
def tiny_backbone():
    """Registers `tiny_resnet`: the official deep-stem ResNet with one block per stage
    (the real channel widths, 256/512/1024/2048, so every head and JPU fits), for
    tests whose point is not the encoder: a ~10x smaller graph to trace and export."""
    from keras_fastfcn import backbones
    from keras_fastfcn.resnet_deepstem import build_resnet_deepstem

    name = "tiny_resnet"
    if name not in backbones.available_backbones():
        backbones.register_backbone(
            name, lambda output_stride, weights: build_resnet_deepstem(
                (1, 1, 1, 1), output_stride, weights, name=f"{name}_os{output_stride}"),
            "torch")
    return name


@pytest.fixture
def camvid_dir():
    """The CamVid copy in ../shared/data (present in CI, absent in a user's clone)."""
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (it lives in ../shared/data, next to the repo)")
    return CAMVID


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def make_confident(model, images, peak=300.0):
    """Scales the classifier of `model`'s head so that its logits on `images` reach
    +-`peak`: large and confident like a trained network's, where a random model's
    are small (and hide bugs that only large logits show). Returns `model`."""
    classifier = model.get_layer("head").classifier
    logits = np.asarray(model(np.asarray(images, np.float32), training=False))
    if isinstance(logits, dict):  # pragma: no cover - training models
        logits = np.asarray(logits["logits"])
    factor = peak / np.abs(logits).max()
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * factor, bias * factor])
    return model
