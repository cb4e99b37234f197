"""The package as a user meets it: light imports, registration, the keras pin, 0.1 files."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Version 0.1 as released on main (before the Keras-native layout).
V01_COMMIT = "ed89c5e"


def _python(code, *args, **env):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=900)


def test_light_imports_do_not_load_tensorflow():
    proc = _python(
        "import sys\n"
        "import keras_fastfcn, keras_fastfcn.serving.client, keras_fastfcn.images\n"
        "from keras_fastfcn.data import palettes\n"
        "from keras_fastfcn import cli\n"
        "assert cli.main(['--help']) == 0\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout


def test_classes_registered_whichever_import_comes_first():
    # keras first, keras_fastfcn first, or keras imported by a keras_fastfcn module.
    for code in ("import keras, keras_fastfcn",
                 "import keras_fastfcn; import keras",
                 "import keras_fastfcn.layers; import keras"):
        proc = _python(code + "\nnames = keras.saving.get_custom_objects()\n"
                       "need = ['keras_fastfcn>FastFCNImageSegmenter', 'keras_fastfcn>FastFCN', "
                       "'keras_fastfcn>SegmentationSGD', 'keras_fastfcn>JPU', "
                       "'keras_fastfcn>MeanIoU']\n"
                       "print('MISSING', [n for n in need if n not in names])\n")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "MISSING []" in proc.stdout, (code, proc.stdout)


def test_keras_private_hooks_still_exist():
    """Fails loudly (naming the hook) when a Keras release changes a private API we use."""
    from keras_fastfcn import _keras_private

    _keras_private.check()


def test_tflite_schema_still_has_what_the_metadata_needs():
    """Fails loudly when a TensorFlow release moves the TFLite flatbuffer schema that
    `serving.tflite_metadata` writes and reads class names with."""
    from keras_fastfcn.serving import tflite_metadata

    tflite_metadata.check()


def test_keras_pin_matches_the_tested_version():
    import keras

    from keras_fastfcn import _keras_private

    tested = tuple(int(v) for v in _keras_private.TESTED_KERAS.split("."))
    assert tuple(int(v) for v in keras.__version__.split(".")[:2]) <= tested
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    assert f'"keras>=3.3,<3.{tested[1] + 1}"' in setup


V01_SCRIPT = r"""
import sys
import numpy as np
import keras, keras_fastfcn as kf
from keras_fastfcn import backbones
from keras_fastfcn.resnet_deepstem import build_resnet_deepstem
backbones.register_backbone("tiny_resnet", lambda output_stride, weights: build_resnet_deepstem(
    (1, 1, 1, 1), output_stride, weights, name=f"tiny_resnet_os{output_stride}"), "torch")
keras.utils.set_random_seed(0)
model = kf.FastFCN(3, head="encnet", backbone="tiny_resnet", jpu_width=64, aux=True,
                   se_loss=True, class_names=["a", "b", "c"], dataset="demo")
model.compile(optimizer="sgd", loss={"logits": "sparse_categorical_crossentropy"})
x = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
model.save(sys.argv[1])
np.save(sys.argv[2], np.asarray(model.inference_model()(x)))
"""


@pytest.mark.slow
def test_01_keras_files_load_into_the_new_classes(tmp_path, tiny_backbone):
    """A `.keras` file written by version 0.1 loads with `keras.models.load_model` as a
    `FastFCNImageSegmenter` with the same outputs (the 0.1 code is checked out from git)."""
    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", REPO, "cat-file", "-e", f"{V01_COMMIT}^{{commit}}"],
            capture_output=True).returncode != 0:
        pytest.skip(f"needs git and commit {V01_COMMIT} (version 0.1) in this clone")
    old = tmp_path / "v01"
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", str(old), V01_COMMIT],
                   check=True, capture_output=True)
    try:
        env = dict(os.environ, PYTHONPATH=str(old), TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, "-c", V01_SCRIPT, str(tmp_path / "v01.keras"),
                               str(tmp_path / "logits.npy")], capture_output=True, text=True,
                              env=env, cwd=str(tmp_path), timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", str(old)],
                       capture_output=True)
    import keras
    import numpy as np

    import keras_fastfcn as kf

    model = keras.models.load_model(tmp_path / "v01.keras")
    assert isinstance(model, kf.models.FastFCNImageSegmenter) and model.compiled
    assert model.class_names == ["a", "b", "c"] and model.aux and model.se_loss
    x = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(tmp_path / "logits.npy"),
                               atol=1e-4)


# Version 0.2 as it stood before the one-way layout (inference/, benchmark/ packages).
V02_COMMIT = "6108062"
V02_SCRIPT = r"""
import os, sys
import numpy as np
import keras, keras_fastfcn as kf
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"], "tests"))
import tiny_encoder
tiny_encoder.register()
keras.utils.set_random_seed(0)
seg = kf.models.FastFCNImageSegmenter(
    kf.models.FastFCNBackbone(encoder="tiny_resnet", width=64), num_classes=3, head="encnet",
    class_names=["a", "b", "c"], dataset="demo")
seg.compile()
rng = np.random.RandomState(0)
x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
seg.fit(x, rng.randint(0, 3, (2, 64, 64)), batch_size=2, epochs=1, verbose=0)
seg.save(sys.argv[1])
seg.save_to_preset(sys.argv[2])
np.save(sys.argv[3], seg.predict(x[:1], verbose=0))
"""


def _written_by(commit, script, tmp_path, *outputs):
    """Runs `script` under the package as of `commit` (a git worktree), or skips."""
    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"],
            capture_output=True).returncode != 0:
        pytest.skip(f"needs git and commit {commit} in this clone")
    old = tmp_path / f"at_{commit}"
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", str(old), commit],
                   check=True, capture_output=True)
    try:
        env = dict(os.environ, PYTHONPATH=str(old), TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, "-c", script, *map(str, outputs)],
                              capture_output=True, text=True, env=env, cwd=str(tmp_path),
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", str(old)],
                       capture_output=True)


@pytest.mark.slow
def test_02_keras_files_and_presets_load_unchanged(tmp_path, tiny_backbone):
    """A compiled `.keras` file and a preset folder written by 0.2 (before the one-way
    layout) load with the same logits; the file's poly schedule had run out (0.2 fixed
    its length at the first fit), which the next `fit` warns about."""
    model_file, preset, logits = tmp_path / "v02.keras", tmp_path / "v02_preset", \
        tmp_path / "logits.npy"
    _written_by(V02_COMMIT, V02_SCRIPT, tmp_path, model_file, preset, logits)
    import keras
    import numpy as np

    import keras_fastfcn as kf

    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = np.load(logits)
    model = keras.models.load_model(model_file)
    assert isinstance(model, kf.models.FastFCNImageSegmenter) and model.compiled
    assert model.class_names == ["a", "b", "c"]
    # Two processes, two builds of the same layers: float rounding apart.
    tol = 64 * np.finfo(np.float32).eps * max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(model.predict(x[:1], verbose=0), expected, atol=tol)
    from_preset = kf.models.FastFCNImageSegmenter.from_preset(str(preset))
    np.testing.assert_allclose(from_preset.predict(x[:1], verbose=0), expected, atol=tol)
    with pytest.warns(UserWarning, match="learning rate is 0.0"):
        model.fit(x, np.zeros((2, 64, 64), "int32"), batch_size=2, epochs=1, verbose=0)


def test_every_public_module_is_an_attribute_of_the_package():
    """`kf.precision.with_precision` (deployment.md) raised AttributeError: the
    package's lazy attributes missed the module."""
    import keras_fastfcn as kf

    package = os.path.join(REPO, "keras_fastfcn")
    public = sorted(name.removesuffix(".py") for name in os.listdir(package)
                    if not name.startswith("_") and (name.endswith(".py") or os.path.isfile(
                        os.path.join(package, name, "__init__.py"))) and name != "version.py")
    missing = [name for name in public if name not in kf.__all__]
    assert not missing, missing
    assert callable(kf.precision.with_precision)


def test_atomic_folders_get_the_umask_permissions(tmp_path):
    """An atomically written folder (a SavedModel version, a preset) was left 0700 by
    mkdtemp: unreadable to a TF Serving process of another user."""
    from keras_fastfcn.fileio import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "saved_models" / "m" / "1", is_dir=True) as tmp:
            open(os.path.join(tmp, "saved_model.pb"), "w").close()
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "saved_models" / "m" / "1").st_mode & 0o777) == oct(0o755)
