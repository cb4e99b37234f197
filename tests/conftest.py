import gc
import os
import pathlib

# Keras builds and traces make millions of short-lived objects: at Python's default
# thresholds the cycle collector ran ~900 times per fit test and took 9% of its time
# (2.7 of 29 s for two of them; 1.5 s at these thresholds). Rarer collections free the
# same cycles: CI minutes, not behaviour.
gc.set_threshold(20000, 20, 20)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"


@pytest.fixture(scope="session")
def tiny_backbone():
    """The name of `tiny_resnet` (tests/tiny_encoder.py), registered: a small encoder
    for tests whose point is not the encoder."""
    import tiny_encoder

    return tiny_encoder.register()


@pytest.fixture
def camvid_dir():
    """The CamVid copy in ../shared/data (present in CI, absent in a user's clone)."""
    if not (CAMVID / "train" / "images").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (it lives in ../shared/data, next to the repo)")
    return CAMVID


@pytest.fixture
def rng():
    return np.random.RandomState(0)


# For subprocesses on Keras' JAX backend whose checks do not compare values with
# TensorFlow (shapes, finiteness, "the weights moved"): eager JAX compiles every
# primitive once per shape, and at XLA's lowest backend optimization level that takes
# a third less time (a model's build and first call: 22 s -> 14.5 s). The tests that
# compare JAX's numbers with TensorFlow's keep the default level.
JAX_QUICK_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0"}


def make_confident(model, images, peak=300.0):
    """Scales the classifier of `model`'s head so that its logits on `images` reach
    +-`peak`: large and confident like a trained network's, where a random model's
    are small (and hide bugs that only large logits show). Returns `model`."""
    classifier = model.head_layer.classifier
    logits = np.asarray(model(np.asarray(images, np.float32), training=False))
    if isinstance(logits, dict):  # pragma: no cover - training models
        logits = np.asarray(logits["logits"])
    factor = peak / np.abs(logits).max()
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel * factor, bias * factor])
    return model


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores, at most 4 (pytest.ini). The
    end-to-end tests spend much of their time in single-threaded phases (interpreter
    and TensorFlow start-up, XLA compilation) that a spare worker fills."""
    return min(4, (os.cpu_count() or 1) + 1)



def _cpu_line():
    from keras_fastfcn.benchmark import cpu_info

    info = cpu_info()
    return (f"cpu: {info['model']}, {info['cores']} cores; "
            f"flags: {' '.join(info['flags']) or 'none of the SIMD ones'}")


def pytest_report_header(config):
    """The CPU in the run's header: float rounding (and so a test near its tolerance)
    depends on the kernels oneDNN picks for it, so a red run must say which CPU it was."""
    return _cpu_line()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The same line at the end, where `-q` (which hides the header) still shows it."""
    if not hasattr(config, "workerinput"):
        terminalreporter.write_line(_cpu_line())
