"""Training on the JAX backend: the same step as TensorFlow, and the whole command on a
host without TensorFlow (killed, resumed), whose files then load, evaluate and export
in a TensorFlow process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("jax") is None,
    reason="jax is not installed (pip install -e '.[test]' installs jax[cpu])")

def one_step(init, out, distribution=None):
    """One training step of the demo EncNet (test encoder, JPU width 32, aux + SE
    losses, the official SGD) from the weights in `init` (written first if absent) on
    one fixed batch; saves the loss, the weights before and after to `out` (.npz).
    Dropout is off: its random masks differ between backends."""
    import contextlib

    import keras

    import tiny_encoder
    from keras_fastfcn import data, train

    tiny_encoder.register()
    cfg = train.load_config("demo", ["model.encoder=tiny_resnet", "model.width=32",
                                     "data.options.size=64", "train.batch_size=4"])
    source = data.get_source("demo", size=64)
    pairs = [source.example("train", i) for i in range(4)]
    x = np.stack([p[0] for p in pairs]).astype("float32")
    y = np.stack([p[1] for p in pairs])
    with distribution.scope() if distribution else contextlib.nullcontext():
        model = train.build_segmenter(cfg, source)
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        if os.path.exists(init):
            model.load_weights(init)
        else:
            model.save_weights(init)
        before = [keras.ops.convert_to_numpy(w) for w in model.weights]
        train.compile_segmenter(model, cfg, total_steps=10)
        logs = model.train_on_batch(x, y, return_dict=True)
    after = [keras.ops.convert_to_numpy(w) for w in model.weights]
    np.savez(out, loss=float(logs["loss"]), names=np.array([w.path for w in model.weights]),
             **{f"w{i}": v for i, v in enumerate(after)},
             **{f"b{i}": v for i, v in enumerate(before)})


# One JAX compilation cache for the file's processes: the killed and the resumed run
# (and the one-step test, whose training step is the same program) compile once.
_XLA_CACHE = os.path.join(tempfile.gettempdir(), f"keras_fastfcn_tests_xla_{os.getpid()}")


@pytest.fixture(scope="module", autouse=True)
def _remove_xla_cache():
    yield
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def _env(backend, **extra):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=_XLA_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(extra)
    return env


def _load(path):
    with np.load(path) as f:
        names = list(f["names"])
        before = {n: f[f"b{i}"] for i, n in enumerate(names)}
        return float(f["loss"]), {n: f[f"w{i}"] for i, n in enumerate(names)}, before


@pytest.mark.slow
def test_one_step_on_jax_equals_tensorflow(tmp_path):
    """The same step on TensorFlow (here, one device) and on JAX with two CPU devices
    (DataParallel, each with half the batch, statistics over the whole batch)."""
    init = str(tmp_path / "init.weights.h5")
    one_step(init, str(tmp_path / "tf.npz"))  # this process: TensorFlow; writes init
    script = ("import sys, keras; sys.path.insert(0, 'tests'); import test_train_jax as t; "
              "dist = keras.distribution.DataParallel(devices=['cpu:0', 'cpu:1']); "
              f"t.one_step({init!r}, {str(tmp_path / 'jax.npz')!r}, dist)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_env("jax"), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loss_tf, w_tf, before = _load(tmp_path / "tf.npz")
    loss_jax, w_jax, _ = _load(tmp_path / "jax.npz")
    assert list(w_jax) == list(w_tf)
    assert loss_jax == pytest.approx(loss_tf, rel=1e-4)
    # The step's update (new - old weights, BatchNorm statistics included) is the
    # same: over the whole model within 0.1% (measured: 1e-5 to 2e-5), and per tensor
    # within 25% of that tensor's update (the deepest layers of this small model see
    # BatchNorm over 2x2 maps, where float32 rounding of the two backends shows most:
    # measured up to 12% of the largest element of an update). A tensor whose update
    # is only rounding noise (BatchNorm moving means of zero-mean inputs, betas before
    # a BatchNorm: updates ~1e-8, as large as their TF/JAX difference) is held to a
    # floor from the model's scale, not its own: 1e-4 of the RMS update per element
    # (a tenth of the 0.1% budget), besides the rounding of the weights themselves.
    step_tf = {k: w_tf[k] - before[k] for k in w_tf}
    diff = sum(float(((w_jax[k] - w_tf[k]) ** 2).sum()) for k in w_tf)
    size = sum(float((step_tf[k] ** 2).sum()) for k in w_tf)
    assert size > 0 and (diff / size) ** 0.5 <= 1e-3, (diff / size) ** 0.5
    rms_step = (size / sum(w.size for w in w_tf.values())) ** 0.5
    for key in w_tf:
        tol = (0.25 * np.linalg.norm(step_tf[key]) + 1e-6 * np.linalg.norm(w_tf[key])
               + 1e-4 * rms_step * w_tf[key].size ** 0.5)
        assert np.linalg.norm(w_jax[key] - w_tf[key]) <= tol, key
    # Not vacuous: the step moved most tensors.
    moved = sum(np.abs(step_tf[k]).max() > 1e-6 for k in w_tf)
    assert moved > len(w_tf) // 2, moved


def _train_cmd(out, *extra):
    return [sys.executable, os.path.join(REPO, "tests", "fault_train.py"), "train",
            "--config", "demo", "--output-dir", str(out), "--set", "train.verbose=2",
            "--set", "model.encoder=tiny_resnet", "--set", "model.width=32",
            "--set", "data.crop_size=64", "--set", "data.base_size=64",
            "--set", "data.options.size=64", "--set", "data.options.num_val=7",
            "--set", "train.batch_size=4", "--epochs", "1", "--steps-per-epoch", "4",
            "--set", "train.checkpoint_every=2", "--cpu-devices", "2", *extra]


@pytest.mark.slow
def test_jax_train_without_tensorflow_resumes_after_kill_then_tensorflow_loads_it(tmp_path,
                                                                              tiny_backbone):
    """`KERAS_BACKEND=jax keras-fastfcn train` where `import tensorflow` fails (the Python
    loader feeds it) on two CPU devices: SIGKILL at the epoch-end checkpoint, after the
    mid-epoch one (the step-4 checkpoint folder is written, `latest` still names step 2);
    the rerun resumes at step 2 and finishes. Then, in this TensorFlow process, the final
    model loads, scores what the JAX run reported, and exports a SavedModel."""
    out = tmp_path / "run"
    env = _env("jax", KERAS_FASTFCN_TEST_NO_TF="1")
    killed = subprocess.run(_train_cmd(out), capture_output=True, text=True, cwd=REPO,
                            env=dict(env, KERAS_FASTFCN_TEST_KILL=r"^latest$@2"), timeout=600)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout[-2000:], killed.stderr[-3000:])
    assert "on jax with DataParallel (2 replica(s))" in killed.stdout
    assert "global batch of 2 devices" in killed.stdout
    resumed = subprocess.run(_train_cmd(out), capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming demo at epoch 1, step 2/4" in resumed.stdout, resumed.stdout[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4
    assert not (out / "backup").exists()

    import keras

    from keras_fastfcn import data, inference, serving
    from keras_fastfcn.evaluation import evaluate_dataset

    model = keras.models.load_model(out / "model.keras")
    source = data.get_source("demo", size=64, num_val=7)  # last val batch padded 3 -> 4
    scores = evaluate_dataset(inference.Predictor(model), source.examples("val"),
                              model.num_classes, verbose=0)
    assert scores["pixAcc"] == pytest.approx(results["val_pixAcc"], abs=1e-4)
    assert scores["mIoU"] == pytest.approx(results["val_mIoU"], abs=1e-4)

    import tensorflow as tf

    image = source.example("val", 0)[0]
    path = serving.export(model, str(tmp_path / "saved" / "1"), format="saved_model")
    served = tf.saved_model.load(path).signatures["serving_default"](
        image_tensor=tf.constant(image[None], tf.uint8))
    expected = np.argmax(np.asarray(model.predict_on_batch(image[None].astype("float32"))), -1)
    assert (np.asarray(served["class_map"]) == expected).mean() >= 0.9999


@pytest.mark.slow
def test_evaluate_and_predict_on_jax_equal_tensorflow(tmp_path):
    """`keras-fastfcn evaluate` / `predict` under KERAS_BACKEND=jax give the numbers and
    class maps of the TensorFlow backend, on a model with large (trained-like) logits."""
    from PIL import Image

    from conftest import make_confident
    from keras_fastfcn import data
    from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter

    import tiny_encoder

    tiny_encoder.register()
    source = data.get_source("demo", size=64, num_val=6)
    backbone = FastFCNBackbone("tiny_resnet", width=32)
    model = FastFCNImageSegmenter(backbone, num_classes=source.num_classes, head="fcn",
                                  aux=False, se_loss=False, dataset="demo")
    images = np.stack([source.example("val", i)[0] for i in range(2)])
    make_confident(model, images)
    path = tmp_path / "m.keras"
    model.save(path)
    Image.fromarray(images[0]).save(tmp_path / "a.png")

    # Both commands in one JAX process (one start-up and model load, CI minutes).
    report = tmp_path / "jax.json"
    commands = [["evaluate", "--model", str(path), "--data", "demo", "--split", "val",
                 "--limit", "6", "--scales", "0.75,1.0", "--flip", "--quiet",
                 "--output", str(report)],
                ["predict", "--model", str(path), "--input", str(tmp_path / "a.png"),
                 "--output", str(tmp_path / "pred")]]
    script = ("import sys; sys.path.insert(0, 'tests'); import tiny_encoder; "
              "tiny_encoder.register(); from keras_fastfcn.cli import main; "
              f"sys.exit(max(main(c) for c in {commands!r}))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=_env("jax"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_jax = json.loads(report.read_text())

    # The same on TensorFlow, in this process.
    from keras_fastfcn import inference
    from keras_fastfcn.evaluation import evaluate_dataset

    loaded = inference.load_model(path)
    predictor = inference.Predictor(loaded, scales=(0.75, 1.0), flip=True)
    val = data.get_source("demo")
    on_tf = evaluate_dataset(predictor, val.examples("val"), loaded.num_classes, limit=6,
                             verbose=0)
    assert on_jax["pixAcc"] == pytest.approx(on_tf["pixAcc"], abs=1e-4)
    assert on_jax["mIoU"] == pytest.approx(on_tf["mIoU"], abs=1e-4)
    expected = np.argmax(np.asarray(inference.predict(loaded, images[0])), -1)
    maps = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "pred").iterdir())
            if np.asarray(Image.open(p)).ndim == 2]
    assert maps, sorted((tmp_path / "pred").iterdir())
    assert (maps[0] == expected).mean() >= 0.999


def test_jax_bad_options_fail_in_one_line_before_writing(tmp_path):
    """On JAX, `--strategy multiworker` (TensorFlow's) and a batch that does not split
    evenly over the devices are one-line errors before the output folder is made."""
    script = (
        "import sys\n"
        "from keras_fastfcn.cli import main\n"
        "out = sys.argv[1]\n"
        "for extra in (['--strategy', 'multiworker'],\n"
        "              ['--cpu-devices', '2', '--set', 'train.batch_size=3']):\n"
        "    code = main(['train', '--config', 'demo', '--output-dir', out, *extra])\n"
        "    print('CODE', code, flush=True)\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, env=_env("jax"), cwd=REPO, timeout=300)
    assert proc.stdout.split().count("CODE") == 2, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("CODE")] == [
        "CODE 1", "CODE 1"]
    errors = [line for line in proc.stderr.splitlines() if " error: " in line]
    assert len(errors) == 2, proc.stderr[-2000:]
    assert "MultiWorkerMirroredStrategy" in errors[0] and "drop --strategy" in errors[0]
    assert "train.batch_size=3 does not split evenly over the 2 devices" in errors[1]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
