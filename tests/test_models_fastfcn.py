"""The Keras-native model API: FastFCNBackbone, FastFCNImageSegmenter, compile/fit/predict,
freezing, saving, presets, and the `FastFCN(...)` shortcut."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_fastfcn as kf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _tiny(tiny_backbone):
    """Registers the one-block-per-stage encoder `tiny_segmenter` uses."""


def tiny_segmenter(num_classes=4, head="encnet", **kwargs):
    backbone = kf.models.FastFCNBackbone(encoder="tiny_resnet", upsampler="jpu", width=16)
    return kf.models.FastFCNImageSegmenter(backbone=backbone, num_classes=num_classes,
                                           head=head, **kwargs)


def toy_data(rng, n=4, size=64, num_classes=4):
    images = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    masks = rng.randint(0, num_classes, (n, size, size)).astype("int32")
    masks[:, :4] = 255
    return images, masks


SNIPPET = r"""
import os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
import keras, keras_fastfcn as kf
sys.path.insert(0, sys.argv[2] + "/tests")
import tiny_encoder  # the one-block-per-stage ResNet: the point here is the strategy

tiny_encoder.register()
rng = np.random.RandomState(0)
images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
masks = rng.randint(0, 11, (4, 64, 64)).astype("int32")
train_ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
val_ds = train_ds
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    backbone = kf.models.FastFCNBackbone(encoder="tiny_resnet", upsampler="jpu", width=64)
    seg = kf.models.FastFCNImageSegmenter(backbone=backbone, num_classes=11, head="encnet")
    seg.compile()
seg.fit(train_ds, validation_data=val_ds, epochs=2, verbose=0)
n = len(seg.trainable_weights)
seg.backbone.trainable = False
assert len(seg.trainable_weights) < n and not any(
    any(w is v for v in seg.trainable_weights) for w in seg.backbone.weights)
logits = seg.predict(images, verbose=0)
assert logits.shape == (4, 64, 64, 11), logits.shape
seg.save(sys.argv[1] + "/m.keras")
again = keras.models.load_model(sys.argv[1] + "/m.keras")
np.testing.assert_allclose(again.predict(images, verbose=0), logits, rtol=1e-5,
                           atol=1e-5 * np.abs(logits).max())
print("SNIPPET OK", strategy.num_replicas_in_sync)
"""


@pytest.mark.slow
def test_issue_snippet_runs_under_mirrored_strategy(tmp_path):
    """The README / issue snippet as written (small width and the one-block-per-stage
    ResNet, whose layers are ResNet-50's), built and compiled in
    `MirroredStrategy(["/cpu:0", "/cpu:1"]).scope()`, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SNIPPET, str(tmp_path), REPO], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SNIPPET OK 2" in proc.stdout


def test_fit_on_images_and_masks_with_auto_compile(rng):
    seg = tiny_segmenter()
    assert seg.aux and seg.se_loss  # the official training heads by default
    seg.compile()
    images, masks = toy_data(rng)

    class Window(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            schedule = self.model.optimizer.schedule
            self.window = schedule.fit_window
            self.rate = float(schedule(self.model.optimizer.iterations))

    window = Window()
    history = seg.fit(images, masks, batch_size=2, epochs=2, verbose=0, callbacks=[window])
    assert np.isfinite(history.history["loss"]).all()
    assert {"pixel_accuracy", "mean_iou"} <= set(history.history)
    # compile()'s poly schedule decays over each fit: 2 epochs x 2 steps from step 0,
    # to 0 at its end; outside a fit the rate is the compiled one.
    assert seg.optimizer.schedule.per_fit and window.window == (0, 4) and window.rate == 0.0
    assert seg.optimizer.schedule.fit_window is None
    assert float(seg.optimizer.learning_rate) == pytest.approx(
        seg.optimizer.schedule.initial_learning_rate)
    assert set(seg.optimizer.lr_multipliers) == {"jpu", "head", "auxlayer"}


def test_training_outputs_only_in_training(rng):
    seg = tiny_segmenter()
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    logits = seg(x)
    assert tuple(logits.shape) == (2, 64, 64, 4)
    out = seg(x, training=True)
    assert set(out) == {"logits", "aux_logits", "se_logits"}
    assert tuple(out["aux_logits"].shape) == (2, 64, 64, 4) and tuple(out["se_logits"].shape) == (2, 4)
    symbolic = seg(keras.Input((None, None, 3)))
    assert tuple(symbolic.shape) == (None, None, None, 4)


def test_compute_loss_is_the_official_sum(rng):
    seg = tiny_segmenter(aux_weight=0.4, se_weight=0.2)
    seg.compile(optimizer="sgd")
    images, masks = toy_data(rng, n=2)
    out = seg(images, training=True)
    total = float(seg.compute_loss(images, masks, out))
    ce = kf.losses.segmentation_loss()
    presence = kf.losses.class_presence(masks, 4)
    expected = (float(ce(masks, out["logits"])) + 0.4 * float(ce(masks, out["aux_logits"]))
                + 0.2 * float(kf.losses.se_loss()(presence, out["se_logits"])))
    assert total == pytest.approx(expected, rel=1e-5)


def test_backbone_handle_and_freezing():
    seg = tiny_segmenter()
    assert isinstance(seg.backbone, kf.models.FastFCNBackbone)
    assert seg.get_layer("backbone") is seg.backbone
    assert isinstance(seg.backbone.encoder, keras.Model)
    assert isinstance(seg.backbone.upsampler, kf.layers.JPU)
    n = len(seg.trainable_weights)
    seg.backbone.trainable = False
    frozen = {id(w) for w in seg.backbone.weights}
    assert len(seg.trainable_weights) < n
    assert not any(id(w) in frozen for w in seg.trainable_weights)
    seg.backbone.trainable = True
    assert len(seg.trainable_weights) == n


def test_backbone_pyramid_outputs():
    backbone = kf.models.FastFCNBackbone(encoder="resnet50", upsampler="jpu", width=16)
    assert tuple(backbone(np.zeros((1, 64, 96, 3), "float32")).shape) == (1, 8, 12, 64)
    assert [backbone.pyramid_outputs[k].shape[-1] for k in ("P2", "P3", "P4", "P5")] == [
        256, 512, 1024, 2048]
    dilated = kf.models.FastFCNBackbone(encoder="resnet50", upsampler=None)
    assert dilated.output_stride == 8 and dilated.upsampler is None
    assert tuple(dilated(np.zeros((1, 64, 64, 3), "float32")).shape) == (1, 8, 8, 2048)


@pytest.mark.slow
def test_encnet_r50_parameter_counts_are_the_official_ones():
    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder="resnet50"), num_classes=59, head="encnet")
    out = seg.predict(np.zeros((1, 512, 512, 3), "uint8"), verbose=0)
    assert out.shape == (1, 512, 512, 59)

    def count(layer):
        return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)

    assert count(seg.backbone.upsampler) == 19_735_552
    assert count(seg.head_layer) == 1_652_438
    assert count(seg.aux_layer) == 2_374_971


@pytest.mark.parametrize("head", ["encnet", "psp", "deeplab", "fcn"])
@pytest.mark.parametrize("upsampler", ["jpu", "jpu_x", None])
def test_heads_and_upsamplers_build(head, upsampler):
    backbone = kf.models.FastFCNBackbone(encoder="tiny_resnet", upsampler=upsampler, width=64)
    seg = kf.models.FastFCNImageSegmenter(backbone, num_classes=3, head=head, aux=False)
    out = seg(np.zeros((1, 64, 80, 3), "float32"))
    assert tuple(out.shape) == (1, 64, 80, 3)


def test_frozen_backbone_stays_frozen_through_save_and_load(tmp_path, rng):
    """A model saved after `fit` with its backbone frozen loads with the same trainable
    variables and its optimizer state (Keras' functional init would otherwise leave
    the rebuilt backbone's layers trainable: the resumed run would fine-tune it)."""
    import warnings

    seg = tiny_segmenter(num_classes=4, head="fcn")
    seg.compile()
    seg.backbone.trainable = False
    images, masks = toy_data(rng, n=2)
    seg.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    path = tmp_path / "frozen.keras"
    seg.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        restored = keras.models.load_model(path)
    assert restored.backbone.trainable is False
    assert ([v.path for v in restored.trainable_variables]
            == [v.path for v in seg.trainable_variables])
    assert len(restored.optimizer.variables) == len(seg.optimizer.variables)
    assert kf.models.FastFCNBackbone.from_config(
        seg.backbone.get_config()).trainable_variables == []


@pytest.mark.parametrize("frozen", ["backbone", "upsampler"])
def test_frozen_layers_train_under_mixed_precision(frozen, rng):
    """The README's fine-tuning (backbone frozen) under mixed_bfloat16: the rest
    trains. The JPU's rematerialized convs failed there when frozen (AddN of bfloat16
    and float32 gradients in TensorFlow's recompute_grad)."""
    backbone = kf.models.FastFCNBackbone(encoder="tiny_resnet", width=16,
                                         dtype="mixed_bfloat16")
    seg = kf.models.FastFCNImageSegmenter(backbone, num_classes=3, head="fcn", aux=False,
                                          dtype="mixed_bfloat16")
    layer = seg.backbone if frozen == "backbone" else seg.backbone.upsampler
    layer.trainable = False
    seg.compile()
    images, masks = toy_data(rng, n=2, num_classes=3)
    before = [np.array(v) for v in seg.trainable_variables]
    seg.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    assert all(not np.array_equal(a, np.array(b))
               for a, b in zip(before, seg.trainable_variables))


def test_layers_frozen_one_by_one_stay_frozen_through_save_and_load(tmp_path, rng):
    """Freezing single layers (the encoder, a head's sublayer) survives `.keras` save /
    load and `save_to_preset`, with the optimizer state, as it does for a functional
    Keras model: the models rebuild their layers from arguments, so the config lists
    the frozen layers (`frozen_layers`)."""
    import warnings

    seg = tiny_segmenter(num_classes=4, head="encnet")
    seg.backbone.encoder.trainable = False
    seg.head_layer.encmodule.trainable = False
    seg.compile()
    images, masks = toy_data(rng, n=2)
    seg.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    trainable = [v.path for v in seg.trainable_variables]
    assert 0 < len(trainable) < len(seg.weights)
    seg.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        restored = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert [v.path for v in restored.trainable_variables] == trainable
    assert restored.backbone.encoder.trainable is False
    assert len(restored.optimizer.variables) == len(seg.optimizer.variables)
    frozen = [np.array(v) for v in restored.backbone.encoder.weights]
    restored.fit(images, masks, epochs=1, batch_size=2, verbose=0)
    assert all(np.array_equal(a, np.array(b))
               for a, b in zip(frozen, restored.backbone.encoder.weights))
    again = kf.models.FastFCNImageSegmenter.from_preset(seg.save_to_preset(tmp_path / "p"))
    assert [v.path for v in again.trainable_variables] == trainable
    backbone = kf.models.FastFCNBackbone.from_config(seg.backbone.get_config())
    assert backbone.encoder.trainable is False and backbone.trainable_variables


def test_channels_first_global_setting_is_not_used(rng):
    """The models and layers are NHWC whatever `keras.config.image_data_format()` says
    (they pin channels_last; the encoder is built channels-last): the same weights
    give the same logits under a channels_first global setting."""
    x = rng.uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    ref_model = tiny_segmenter(num_classes=3, head="psp")
    ref = np.asarray(ref_model(x, training=False))
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = tiny_segmenter(num_classes=3, head="psp")
        model.set_weights(ref_model.get_weights())
        got = np.asarray(model(x, training=False))
        head = kf.layers.FCNHead(3)
        assert head(np.ones((1, 9, 7, 16), "float32")).shape == (1, 9, 7, 3)
    finally:
        keras.config.set_image_data_format(previous)
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_save_load_round_trip(tmp_path, rng):
    backbone = kf.models.FastFCNBackbone(encoder="tiny_resnet", upsampler="jpu_x", width=64,
                                         remat=False)
    seg = kf.models.FastFCNImageSegmenter(backbone, num_classes=5, head="psp",
                                          class_names=list("abcde"), dataset="demo")
    seg.compile()
    x = rng.uniform(0, 255, (1, 72, 56, 3)).astype("float32")
    before = seg.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    seg.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored, kf.models.FastFCNImageSegmenter) and restored.compiled
    assert restored.class_names == list("abcde") and restored.dataset == "demo"
    assert restored.backbone.remat is False and restored.backbone.upsampler.remat is False
    np.testing.assert_allclose(restored.predict(x, verbose=0), before, atol=1e-5)
    plain = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(plain.predict(x, verbose=0), before, atol=1e-5)


def test_save_to_preset_and_from_preset(tmp_path, rng):
    seg = tiny_segmenter(num_classes=3, head="fcn", class_names=["x", "y", "z"])
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    before = seg.predict(x, verbose=0)
    folder = seg.save_to_preset(tmp_path / "preset")
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]
    again = kf.models.FastFCNImageSegmenter.from_preset(folder)
    np.testing.assert_allclose(again.predict(x, verbose=0), before, atol=1e-5)
    assert again.class_names == ["x", "y", "z"]
    backbone = kf.models.FastFCNBackbone.from_preset(folder)
    assert isinstance(backbone, kf.models.FastFCNBackbone)
    with pytest.raises(ValueError, match="Unknown preset 'nope'"):
        kf.models.FastFCNImageSegmenter.from_preset("nope")
    with pytest.raises(ValueError, match="not a preset folder"):
        kf.models.FastFCNImageSegmenter.from_preset(tmp_path)


def test_save_to_preset_into_a_folder_keeps_its_other_files(tmp_path, monkeypatch, rng):
    """keras-hub's habit: a preset saved into the folder that will be uploaded, next
    to its README. The folder was replaced whole (README and all deleted, and the
    working directory with it when the folder was `.`)."""
    folder = tmp_path / "my_model"
    (folder / "notes").mkdir(parents=True)
    (folder / "README.md").write_text("# my model")
    (folder / "notes" / "train.txt").write_text("lr 0.01")
    monkeypatch.chdir(folder)
    first = tiny_segmenter(num_classes=3, head="fcn")
    first.save_to_preset(".")
    second = tiny_segmenter(num_classes=4, head="fcn")
    second.save_to_preset(".")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "metadata.json",
                                          "model.weights.h5", "notes"]
    assert (folder / "notes" / "train.txt").read_text() == "lr 0.01"
    assert os.getcwd() == str(folder)
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    again = kf.models.FastFCNImageSegmenter.from_preset(".")
    assert again.num_classes == 4
    np.testing.assert_allclose(again.predict(x, verbose=0), second.predict(x, verbose=0),
                               atol=1e-5)


def test_preset_folder_loads_where_a_model_file_does_and_broken_ones_are_named(tmp_path, rng):
    """`inference.load_model` and the commands' `--model` take a folder written by
    `save_to_preset` (they said "is a folder"); a broken config.json or weights file
    is named, not h5py's or json's bare error."""
    from keras_fastfcn.cli.common import check_model_file

    seg = tiny_segmenter(num_classes=3, head="fcn")
    folder = seg.save_to_preset(tmp_path / "p")
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(kf.inference.load_model(folder).predict(x, verbose=0),
                               seg.predict(x, verbose=0), atol=1e-5)
    check_model_file(folder)
    with pytest.raises(ValueError, match="neither a .keras model file nor a preset folder"):
        kf.inference.load_model(tmp_path)
    with pytest.raises(ValueError, match="neither a .keras model file nor a preset folder"):
        check_model_file(str(tmp_path))
    weights = tmp_path / "p" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.weights.h5 does not hold the weights .*broken"):
        kf.models.FastFCNImageSegmenter.from_preset(folder)
    (tmp_path / "p" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is broken"):
        kf.models.FastFCNImageSegmenter.from_preset(folder)


def test_unknown_keyword_arguments_are_refused(tmp_path, tiny_backbone):
    """Keras' functional init drops unknown keywords: a misspelt `num_clases=5`
    silently gave the model with the preset's or the default classes."""
    backbone = kf.models.FastFCNBackbone(encoder=tiny_backbone, width=32)
    with pytest.raises(TypeError, match="'bogus'"):
        kf.models.FastFCNImageSegmenter(backbone, num_classes=3, bogus=1)
    with pytest.raises(TypeError, match="'widht' \\(did you mean 'width'\\?\\)"):
        kf.models.FastFCNBackbone(encoder=tiny_backbone, widht=32)
    folder = tiny_segmenter(num_classes=3, head="fcn").save_to_preset(tmp_path / "p")
    with pytest.raises(TypeError, match="'num_clases' \\(did you mean 'num_classes'\\?\\)"):
        kf.models.FastFCNImageSegmenter.from_preset(folder, num_clases=5)
    assert kf.models.FastFCNImageSegmenter.from_preset(
        folder, load_weights=False, num_classes=5).num_classes == 5


def test_fastfcn_shortcut_and_weights_argument(tmp_path, rng):
    model = kf.FastFCN(num_classes=2, head="fcn", backbone="tiny_resnet", jpu_width=16)
    assert isinstance(model, kf.models.FastFCNImageSegmenter)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    other = kf.FastFCN(num_classes=2, head="fcn", backbone="tiny_resnet", jpu_width=16,
                       weights=path)
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), other.predict(x, verbose=0), atol=1e-5)


def test_preprocessing_is_in_the_graph():
    seg = tiny_segmenter()
    assert seg.get_layer("preprocessing").mode == "torch"  # the deep-stem encoder's
    norm = kf.layers.ImageNormalization("torch")
    out = np.asarray(norm(np.full((1, 1, 1, 3), 255.0, "float32")))[0, 0, 0]
    np.testing.assert_allclose(out, (1 - np.array([.485, .456, .406])) / np.array([.229, .224, .225]),
                               rtol=1e-5)


def test_preprocessor_resizes_images_and_masks():
    pre = kf.models.FastFCNImageSegmenterPreprocessor(
        kf.models.FastFCNImageConverter(image_size=(32, 48)))
    x, y = pre(np.zeros((2, 20, 30, 3), "uint8"), np.ones((2, 20, 30, 1), "int32"))
    assert tuple(x.shape) == (2, 32, 48, 3) and tuple(y.shape) == (2, 32, 48)
    assert np.unique(np.asarray(y)).tolist() == [1]
    clone = kf.models.FastFCNImageSegmenterPreprocessor.from_config(pre.get_config())
    assert clone.image_converter.image_size == (32, 48)


@pytest.mark.parametrize("align_corners", [True, False])
def test_preprocessor_masks_stay_on_their_pixels(align_corners):
    """Each label lands where the image's bilinear resize samples its pixel: on a
    column ramp (image value = mask value = source column) the two differ by at most
    half a column. Half-pixel nearest neighbour against `align_corners=True` images
    was off by up to a whole column at 20 -> 512."""
    ramp = np.broadcast_to(np.arange(20, dtype="int32"), (1, 4, 20))
    pre = kf.models.FastFCNImageSegmenterPreprocessor(
        kf.models.FastFCNImageConverter((8, 512), align_corners=align_corners))
    x, y = pre(np.repeat(ramp[..., None], 3, axis=-1).astype("float32"), ramp)
    image, mask = np.asarray(x)[..., 0], np.asarray(y)
    assert np.abs(mask - image).max() <= 0.5 + 1e-4
    if keras.backend.backend() == "tensorflow":  # tf.data's kernel on other backends
        tf = pytest.importorskip("tensorflow")
        for size in ((8, 512), (3, 7), (1, 1)):
            for source in (ramp, np.arange(4 * 20, dtype="int32").reshape(1, 4, 20)):
                want = tf.raw_ops.ResizeNearestNeighbor(
                    images=source[..., None], size=size, align_corners=align_corners,
                    half_pixel_centers=not align_corners)
                got = kf.layers.resize_nearest(source[..., None], size, align_corners)
                np.testing.assert_array_equal(np.asarray(got), want.numpy())


@pytest.mark.parametrize("bad,match", [
    (np.zeros((64, 64), "float32"), "4-D"),
    (np.zeros((64, 64, 3), "float32"), "batch axis"),
    (np.zeros((1, 64, 64, 1), "float32"), "3 channels"),
    (np.zeros((1, 64, 64, 4), "float32"), "3 channels"),
    (np.full((1, 64, 64, 3), "a"), "real-valued"),
    (np.zeros((1, 64, 64, 3), "complex64"), "real-valued"),
])
def test_bad_images(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_segmenter()(bad)


@pytest.mark.parametrize("shape,match", [
    ((2, 32, 32), "masks are 32x32 but the images are 64x64"),
    ((2, 64, 64, 4), "one-hot masks"),
    ((2, 64), "masks must be class ids"),
])
def test_fit_names_masks_of_the_wrong_shape(shape, match, rng):
    """Masks of another size, one-hot or of the wrong rank are refused by name
    (Keras' cross-entropy failed with a graph error on its SelectV2)."""
    seg = tiny_segmenter(num_classes=4, head="fcn")
    seg.compile()
    images, _ = toy_data(rng, n=2)
    with pytest.raises(ValueError, match=match):
        seg.fit(images, np.zeros(shape, "int32"), epochs=1, verbose=0)


def test_channels_unknown_when_traced_still_must_be_three():
    """A graph traced with every dimension unknown (tf.function after retracing, as
    `predict` on varying image sizes does) refuses 1 or 4 channels when it runs,
    instead of broadcasting a grayscale image into three channels."""
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a TensorFlow graph with unknown channels")
    model = tiny_segmenter(num_classes=3, head="fcn")
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    assert fn(tf.zeros((1, 32, 32, 3))).shape == (1, 32, 32, 3)
    for channels in (1, 4):
        with pytest.raises(tf.errors.InvalidArgumentError, match="preprocessing"):
            fn(tf.zeros((1, 32, 32, channels)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=3, head="unet"), "Unknown head 'unet'"),
    (dict(num_classes=3, backbone="vgg16"), "Unknown encoder 'vgg16'"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=-2), "num_classes"),
    (dict(num_classes=2.5), "num_classes"),
    (dict(num_classes=3, upsampler="bilinear"), "Unknown upsampler"),
    (dict(num_classes=3, upsampler="jpu", output_stride=8), "stride-32"),
    (dict(num_classes=3, head="psp", se_loss=True), "se_loss"),
    (dict(num_classes=3, class_names=["a"]), "class_names"),
    (dict(num_classes=3, preprocessing="bgr"), "preprocessing mode"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kf.FastFCN(**{"backbone": "tiny_resnet", **kwargs})


def test_numpy_integer_num_classes():
    seg = kf.FastFCN(num_classes=np.int64(3), head="fcn", backbone="tiny_resnet", jpu_width=16)
    assert seg.num_classes == 3 and isinstance(seg.num_classes, int)
    head = kf.layers.FCNHead(np.int64(5))  # the layers take numpy integers too
    assert head.num_classes == 5 and isinstance(head.num_classes, int)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2.*got 0"):
        tiny_segmenter(num_classes=0)
