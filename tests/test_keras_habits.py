"""A Keras user's script, run as written on TensorFlow and JAX: every `fit` trains (a
frozen backbone, a loaded model), bad labels fail clearly, the preprocessor works in
tf.data, presets build offline, the dtype policy survives saving, and misuses that
Keras itself accepts (a loss that reads logits as probabilities, reversed JPU taps, a
single image given as a batch) are answered."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

import keras
import keras_fastfcn as kf
from conftest import JAX_QUICK_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a child process per backend (Keras picks its backend once per process).
SCRIPT = r"""
import json, os, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import numpy as np, keras, tensorflow as tf
import keras_fastfcn as kf
import tiny_encoder
tiny_encoder.register()

results = {}
rng = np.random.RandomState(0)
x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
y = rng.randint(0, 3, (4, 64, 64)).astype("int32")
y[0, :4, :4] = 255

def weights(layers):
    return [w.copy() for layer in layers for w in layer.get_weights()]

def change(before, after):
    return max(float(np.abs(a - b).max()) for a, b in zip(before, after))

keras.utils.set_random_seed(0)
seg = kf.models.FastFCNImageSegmenter(
    kf.models.FastFCNBackbone(encoder="tiny_resnet", width=16), num_classes=3, head="fcn")
seg.compile()
seg.fit(x, y, batch_size=2, epochs=1, verbose=0)
results["lr_after_first_fit"] = float(seg.optimizer.learning_rate)
results["compiled_lr"] = seg._poly_schedule.initial_learning_rate
head, encoder = weights([seg.head_layer]), weights([seg.backbone.encoder])
seg.backbone.trainable = False  # the README's "fine-tune the head only"
seg.fit(x, y, batch_size=2, epochs=1, verbose=0)
results["second_fit_head"] = change(head, weights([seg.head_layer]))
results["second_fit_encoder"] = change(encoder, weights([seg.backbone.encoder]))

path = os.path.join(tempfile.mkdtemp(), "m.keras")
seg.save(path)
loaded = keras.models.load_model(path)
before = [w.copy() for w in loaded.get_weights()]
loaded.fit(x, y, batch_size=2, epochs=1, verbose=0)
results["loaded_fit"] = max(float(np.abs(a - b).max())
                            for a, b in zip(before, loaded.get_weights()))

history = seg.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y))
results["history_keys"] = sorted(history.history)
results["evaluate"] = [float(v) for v in seg.evaluate(x, y, verbose=0)]
results["label_errors"] = {}
for value in (7, -1, 254):
    bad = y.copy()
    bad[1, 5, 5] = value
    for call in ("fit", "evaluate"):
        try:
            getattr(seg, call)(x, bad, batch_size=2, verbose=0)
            message = None
        except ValueError as err:
            message = str(err)
        results["label_errors"][f"{call} {value}"] = message
# The model still works after an error inside fit (JAX holds its state outside).
results["after_errors"] = [float(v) for v in seg.evaluate(x, y, verbose=0)]

pre = kf.models.FastFCNImageSegmenterPreprocessor(kf.models.FastFCNImageConverter((32, 48)))
ds = tf.data.Dataset.from_tensor_slices((x.astype("uint8"), y)).map(pre).batch(2)
xb, yb = next(iter(ds))
eager_x, eager_y = pre(x[:2].astype("uint8"), y[:2])
results["preprocessor"] = [list(xb.shape), list(yb.shape), str(yb.dtype.name),
                           float(np.abs(np.asarray(xb) - np.asarray(eager_x)).max()),
                           float(np.mean(np.asarray(yb) != np.asarray(eager_y)))]
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_keras_users_script(backend):
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[test]' installs jax[cpu])")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":
        env.update(JAX_QUICK_COMPILE)  # no value is compared with TensorFlow's
    proc = subprocess.run([sys.executable, "-c", SCRIPT, REPO], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    r = json.loads(line[len("RESULTS "):])
    # Each fit decays from the compiled rate to 0 over its own steps
    # (test_the_decay_spans_the_steps_fit_runs); outside a fit the rate is the compiled
    # one again ...
    assert r["lr_after_first_fit"] == pytest.approx(r["compiled_lr"])
    # ... so the second one trains: the head moves, the frozen encoder does not.
    assert r["second_fit_head"] > 1e-3, r
    assert r["second_fit_encoder"] == 0.0, r
    assert r["loaded_fit"] > 1e-3, r
    assert r["history_keys"] == ["loss", "mean_iou", "pixel_accuracy", "val_loss",
                                 "val_mean_iou", "val_pixel_accuracy"]
    assert len(r["evaluate"]) == 3 and len(r["after_errors"]) == 3
    assert np.isfinite(r["after_errors"]).all()
    for case, message in r["label_errors"].items():
        value = case.split()[1]
        assert message is not None, f"{case}: no error"
        assert f"values {value}," in message and "num_classes=3" in message, (case, message)
    shape_x, shape_y, dtype_y, x_diff, y_diff = r["preprocessor"]
    assert shape_x == [2, 32, 48, 3] and shape_y == [2, 32, 48] and dtype_y == "int32"
    # The tf.data path resizes with TensorFlow's kernel, the eager one with keras.ops:
    # the same bilinear formula, float rounding apart (0-255 values).
    assert x_diff <= 255 * 1e-5 and y_diff == 0.0


def test_from_preset_without_weights_never_touches_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    name = "fastfcn_psp_jpu_resnet50_pcontext"
    seg = kf.models.FastFCNImageSegmenter.from_preset(name, load_weights=False)
    assert (seg.num_classes, seg.head_name, seg.backbone.encoder_name) == (59, "psp", "resnet50s")
    assert seg.class_names[0] == "aeroplane"
    backbone = kf.models.FastFCNBackbone.from_preset(name, load_weights=False)
    assert backbone.upsampler is not None
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or cached

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    # With weights, offline: one error naming the URL and the manual step.
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(kf.models.presets.PresetError) as err:
        kf.models.FastFCNImageSegmenter.from_preset(name)
    text = str(err.value)
    assert "https://drive.google.com/uc?export=download" in text
    assert f"from_preset({name!r}, checkpoint='path/to/{name}.pth.tar')" in text
    assert "NAME" not in text


def test_presets_are_described_on_the_classes():
    listed = kf.models.FastFCNImageSegmenter.presets
    assert listed == kf.models.FastFCNBackbone.presets == kf.models.list_presets()
    entry = listed["fastfcn_encnet_jpu_resnet50_pcontext"]
    assert entry["metrics"]["mIoU"] == 51.05 and entry["dataset"] == "pascal_context"
    assert entry["source"].startswith("wuhuikai/FastFCN") and entry["license"]
    assert "drive_id" not in entry and entry["url"].startswith("https://")


def test_mixed_bfloat16_model_reloads_as_mixed_bfloat16(tmp_path, tiny_backbone):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        seg = kf.models.FastFCNImageSegmenter(
            kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3,
            head="encnet")
    finally:
        keras.config.set_dtype_policy(previous)
    x = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    expected = seg.predict(x, verbose=0)
    seg.save(tmp_path / "m.keras")
    assert keras.config.dtype_policy().name == "float32"
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    policies = {layer.dtype_policy.name for layer in loaded.backbone.encoder.layers
                if layer.weights} | {loaded.head_layer.dtype_policy.name}
    assert policies == {"mixed_bfloat16"}
    assert keras.config.dtype_policy().name == "float32"  # the global one is restored
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_reversed_jpu_taps_are_refused():
    c3, c4, c5 = (np.zeros((1, 16 // 2 ** i, 16 // 2 ** i, 8 * 2 ** i), "float32")
                  for i in range(3))
    assert tuple(kf.layers.JPU(width=8)([c3, c4, c5]).shape) == (1, 16, 16, 32)
    with pytest.raises(ValueError, match=r"finest first .*reversed"):
        kf.layers.JPU(width=8)([c5, c4, c3])
    with pytest.raises(ValueError, match=r"finest first .*reversed"):
        kf.layers.JPU(width=8)([keras.Input(c.shape[1:]) for c in (c5, c4, c3)])


def test_compile_warns_about_a_loss_that_reads_logits_as_probabilities(tiny_backbone):
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn")
    cases = {
        "sparse_categorical_crossentropy": ("from_logits=False", "ignore_class=None"),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True): ("ignore_class=None",),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255): (),
        "auto": (),
    }
    for loss, expected in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg.compile("adam", loss)
        text = " ".join(str(w.message) for w in caught)
        for part in expected:
            assert part in text, (loss, text)
        if not expected:
            assert "from_logits" not in text, (loss, text)


def test_a_schedule_that_has_run_out_is_warned_about(tiny_backbone, rng):
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn")
    seg.compile(optimizer=kf.optimizers.SegmentationSGD(kf.optimizers.PolyDecay(0.01, 2)))
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 64, 64))
    seg.fit(x, y, batch_size=2, verbose=0)
    with pytest.warns(UserWarning, match="learning rate is 0.0 at optimizer step 2"):
        seg.fit(x, y, batch_size=2, verbose=0)


def test_callbacks_that_set_the_rate_get_a_constant_rate(tiny_backbone, rng):
    """`ReduceLROnPlateau` with compile()'s poly decay failed with Keras' TypeError at
    its first plateau, after that epoch's training; it is refused before training,
    and `compile(poly_decay=False)` gives the constant rate that it reduces."""
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn")
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 64, 64))
    # Never an improvement after the first epoch: a reduction at each later one.
    plateau = keras.callbacks.ReduceLROnPlateau("loss", factor=0.5, patience=1,
                                                mode="max", min_delta=1e9)
    seg.compile()
    for callback in (plateau, keras.callbacks.LearningRateScheduler(lambda epoch: 0.1)):
        with pytest.raises(ValueError, match=r"compile\(poly_decay=False\)"):
            seg.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[callback])
    assert int(seg.optimizer.iterations) == 0
    seg.compile(learning_rate=0.02, poly_decay=False)
    history = seg.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[plateau])
    # Each epoch's rate, then the one after the last reduction.
    rates = history.history["learning_rate"] + [float(seg.optimizer.learning_rate)]
    np.testing.assert_allclose(rates, [0.02, 0.02, 0.01, 0.005], rtol=1e-6)


def test_a_single_image_is_named_by_its_own_shape(tiny_backbone):
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn")
    with pytest.raises(ValueError, match=r"got shape \(48, 64, 3\)\. Add a batch axis"):
        seg.predict(np.zeros((48, 64, 3), "float32"), verbose=0)


def test_the_preprocessor_lets_fit_and_predict_take_images_of_any_size(tiny_backbone, rng):
    import tensorflow as tf

    pre = kf.models.FastFCNImageSegmenterPreprocessor(kf.models.FastFCNImageConverter((64, 64)))
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn",
        preprocessor=pre)
    seg.compile()
    sizes = [(40, 56), (64, 64), (72, 50), (33, 81)]

    def examples():
        for h, w in sizes:
            yield (rng.randint(0, 255, (h, w, 3)).astype("uint8"),
                   rng.randint(0, 3, (h, w)).astype("int32"))

    pairs = tf.data.Dataset.from_generator(examples, output_signature=(
        tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((None, None), tf.int32)))
    pairs = pairs.apply(tf.data.experimental.assert_cardinality(len(sizes)))
    before = [w.copy() for w in seg.get_weights()]
    history = seg.fit(pairs, batch_size=2, epochs=1, verbose=0, validation_data=pairs)
    assert np.isfinite(history.history["val_loss"]).all()
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, seg.get_weights())) > 0
    assert len(seg.evaluate(pairs, batch_size=2, verbose=0)) == 3
    images = pairs.map(lambda image, mask: image)
    assert seg.predict(images, batch_size=2, verbose=0).shape == (4, 64, 64, 3)
    arrays = rng.uniform(0, 255, (2, 48, 40, 3)).astype("float32")
    assert seg.predict(arrays, verbose=0).shape == (2, 64, 64, 3)

    # A keras.utils.PyDataset and a generator of batches of other sizes (Keras refused
    # them: "Only input tensors may be passed as positional arguments").
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            h, w = sizes[index]
            return (np.full((2, h, w, 3), 100, "uint8"),
                    np.ones((2, h, w), "int32"), np.ones((2,), "float32"))

    assert len(seg.fit(Batches(), epochs=1, verbose=0).history["loss"]) == 1
    assert len(seg.evaluate(Batches(), verbose=0)) == 3
    assert seg.predict(Batches(), verbose=0).shape == (4, 64, 64, 3)
    batches = (batch[:2] for batch in Batches())
    assert np.isfinite(seg.evaluate(batches, steps=2, verbose=0, return_dict=True)["loss"])
    batches = (batch[:1] for batch in Batches())
    assert seg.predict(batches, steps=2, verbose=0).shape == (4, 64, 64, 3)
    # Saved with the model: a reloaded segmenter preprocesses the same way.
    assert seg.get_config()["preprocessor"]["config"]["image_converter"]["config"][
        "image_size"] == (64, 64)


class _Rates(keras.callbacks.Callback):
    """The learning rate of every training step."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _habits_segmenter(tiny_backbone):
    keras.utils.set_random_seed(0)
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=16), num_classes=3, head="fcn")
    seg.compile()
    return seg


def test_lists_of_logs_keep_keras_order_and_train_on_batch_trains_after_fit(tiny_backbone,
                                                                           rng):
    """`loss, acc, miou = seg.evaluate(...)` got the metrics alphabetically (mean_iou
    first), `train_on_batch` after a `fit` ran at the finished decay's rate 0, and
    after freezing the encoder it still trained it (its step was traced before).
    On TensorFlow, the first `fit` traces its step once, not twice (the optimizer's
    slots were created inside the first trace), and a second `fit` trains (its own
    decay) on that trace: it traced again for its decay's window."""
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 64, 64)).astype("int32")
    seg = _habits_segmenter(tiny_backbone)
    traces, train_step = [], seg.train_step
    seg.train_step = lambda data: (traces.append(1), train_step(data))[1]
    seg.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert len(traces) == 1
    before = [w.copy() for w in seg.get_weights()]
    seg.fit(x, y, batch_size=2, epochs=1, verbose=0)
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == 1
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, seg.get_weights())) > 0
    logs = seg.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    values = seg.evaluate(x, y, batch_size=2, verbose=0)
    names = ["loss", "pixel_accuracy", "mean_iou"]  # compile order, as Keras lists it
    np.testing.assert_allclose(values[:3], [logs[n] for n in names], rtol=1e-6)
    assert float(keras.ops.convert_to_numpy(seg.optimizer.learning_rate)) == pytest.approx(
        seg._poly_schedule.initial_learning_rate)
    before = [w.copy() for w in seg.get_weights()]
    seg.train_on_batch(x[:2], y[:2])
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, seg.get_weights())) > 0
    seg.backbone.encoder.trainable = False
    encoder, head = seg.backbone.encoder.get_weights(), seg.head_layer.get_weights()
    seg.train_on_batch(x[:2], y[:2])
    assert all(np.array_equal(a, b) for a, b in zip(encoder, seg.backbone.encoder.get_weights()))
    assert max(float(np.abs(a - b).max()) for a, b in zip(head, seg.head_layer.get_weights())) > 0


def test_the_decay_spans_the_steps_fit_runs(tiny_backbone, rng):
    """`validation_split` was ignored when sizing the per-fit decay: 4 steps decayed
    as if 8 (ending at 0.4x the rate, not near 0)."""
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (8, 64, 64)).astype("int32")
    seg, rates = _habits_segmenter(tiny_backbone), _Rates()
    seg.fit(x, y, batch_size=1, epochs=1, validation_split=0.5, verbose=0, callbacks=[rates])
    lr = seg._poly_schedule.initial_learning_rate
    assert len(rates.rates) == 4
    np.testing.assert_allclose(rates.rates, [lr * (1 - k / 4) ** 0.9 for k in range(4)],
                               rtol=1e-5)


def test_backup_and_restore_in_the_same_process_continues_the_decay(tiny_backbone, rng,
                                                                   tmp_path):
    """Keras' documented resume, `fit` again with `BackupAndRestore` on the same model,
    restarted the decay from the compiled rate (a fresh model resumed it right). The
    resumed fit takes a `CallbackList` of the user's, which fit uses as it is: it must
    not keep fit's decay window afterwards (a later fit with it would carry it)."""
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 64, 64)).astype("int32")
    seg, first, resumed = _habits_segmenter(tiny_backbone), _Rates(), _Rates()
    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="interrupted"):
        seg.fit(x, y, batch_size=2, epochs=4, shuffle=False, verbose=0,
                callbacks=[keras.callbacks.BackupAndRestore(backup), _StopAt(2), first])
    theirs = keras.callbacks.CallbackList(
        [keras.callbacks.BackupAndRestore(backup), resumed], model=seg)
    seg.fit(x, y, batch_size=2, epochs=4, shuffle=False, verbose=0, callbacks=theirs)
    assert [type(c).__name__ for c in theirs.callbacks] == [
        "LabelCheck", "BackupAndRestore", "_Rates"]
    assert (len(first.rates), len(resumed.rates)) == (4, 4), (first.rates, resumed.rates)
    lr = seg._poly_schedule.initial_learning_rate  # the uninterrupted fit's 8 steps:
    np.testing.assert_allclose(first.rates + resumed.rates,
                               [lr * (1 - k / 8) ** 0.9 for k in range(8)], rtol=1e-5)


def test_class_weight_and_per_image_sample_weight_weigh_the_pixels(tiny_backbone, rng):
    """Keras' `class_weight` failed on masks ("only 0-dimensional arrays can be
    converted"), and a per-image `sample_weight` `(B,)` with a TensorFlow graph error
    (shapes [2] and [2,64,64]): they weigh the pixels of a class / of an image."""
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    y = rng.randint(0, 3, (4, 64, 64)).astype("int32")
    y[0, :8] = 255
    seg = _habits_segmenter(tiny_backbone)  # FCN head with the auxiliary head, no SE
    logits = seg(x, training=False)
    per_image = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    per_pixel = np.broadcast_to(per_image[:, None, None], y.shape)
    np.testing.assert_allclose(
        float(seg.compute_loss(x, y, logits, sample_weight=per_image, training=False)),
        float(seg.compute_loss(x, y, logits, sample_weight=per_pixel, training=False)),
        rtol=1e-6)
    history = seg.fit(x, y, batch_size=2, epochs=1, verbose=0, sample_weight=per_image)
    assert np.isfinite(history.history["loss"]).all()

    # Every class weighed 0: nothing left of the training loss (main and auxiliary);
    # the validation loss is unweighted, as in Keras.
    history = seg.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y),
                      class_weight={0: 0.0, 1: 0.0, 2: 0.0})
    assert history.history["loss"] == [0.0] and history.history["val_loss"][0] > 0.1
    # The step traced with those weights is not reused without them.
    assert seg.fit(x, y, batch_size=2, epochs=1, verbose=0).history["loss"][0] > 0.1
    with pytest.raises(ValueError, match=r"class_weight has keys \[7\] that are not class ids"):
        seg.fit(x, y, batch_size=2, verbose=0, class_weight={7: 1.0})
