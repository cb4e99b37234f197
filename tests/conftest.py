import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"


@pytest.fixture
def camvid_dir():
    """The CamVid copy in ../shared/data (present in CI, absent in a user's clone)."""
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (it lives in ../shared/data, next to the repo)")
    return CAMVID


@pytest.fixture
def rng():
    return np.random.RandomState(0)
