import keras
import numpy as np
import pytest

import keras_fastfcn as kf


@pytest.fixture(scope="module")
def encnet_r50():
    return kf.FastFCN(num_classes=59, head="encnet", backbone="resnet50", upsampler="jpu")


def test_public_api_example(encnet_r50, rng):
    images = rng.uniform(0, 255, (1, 97, 131, 3)).astype("float32")
    logits = encnet_r50(images)
    assert tuple(logits.shape) == (1, 97, 131, 59)
    jpu = kf.layers.JPU(width=512, dilations=(1, 2, 4, 8))
    c3, c4, c5 = (np.zeros((1, 8, 8, 512), "float32"), np.zeros((1, 4, 4, 1024), "float32"),
                  np.zeros((1, 2, 2, 2048), "float32"))
    assert tuple(jpu([c3, c4, c5]).shape) == (1, 8, 8, 2048)


@pytest.mark.slow
def test_encnet_r50_builds_at_512(encnet_r50):
    out = encnet_r50.predict(np.zeros((1, 512, 512, 3), "uint8"), verbose=0)
    assert out.shape == (1, 512, 512, 59)
    jpu = encnet_r50.get_layer("jpu")
    assert sum(int(np.prod(w.shape)) for w in jpu.trainable_weights) == 19_735_552
    head = encnet_r50.get_layer("head")
    assert sum(int(np.prod(w.shape)) for w in head.trainable_weights) == 1_652_438 - 30_267  # no SE layer


@pytest.mark.parametrize("head", ["encnet", "psp", "deeplab", "fcn"])
@pytest.mark.parametrize("upsampler", ["jpu", "jpu_x", None])
def test_heads_and_upsamplers_build(head, upsampler):
    model = kf.FastFCN(num_classes=3, head=head, upsampler=upsampler, jpu_width=64)
    out = model(np.zeros((1, 64, 80, 3), "float32"))
    assert tuple(out.shape) == (1, 64, 80, 3)


def test_training_outputs_and_inference_model(rng):
    model = kf.FastFCN(num_classes=4, head="encnet", aux=True, se_loss=True, jpu_width=64)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    out = model(x)
    assert set(out) == {"logits", "aux_logits", "se_logits"}
    assert tuple(out["aux_logits"].shape) == (2, 64, 64, 4)
    assert tuple(out["se_logits"].shape) == (2, 4)
    inference = model.inference_model()
    np.testing.assert_allclose(np.asarray(inference(x)), np.asarray(out["logits"]), atol=1e-5)
    # Model.fit with one loss per output.
    model.compile(optimizer="sgd", loss={
        "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "aux_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "se_logits": keras.losses.BinaryCrossentropy(from_logits=True)},
        loss_weights={"logits": 1.0, "aux_logits": 0.2, "se_logits": 0.2})
    y = rng.randint(0, 4, (2, 64, 64))
    presence = np.stack([np.bincount(m.ravel(), minlength=4) > 0 for m in y]).astype("float32")
    hist = model.fit(x, {"logits": y, "aux_logits": y, "se_logits": presence}, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_dilated_baseline_output_stride():
    model = kf.FastFCN(num_classes=3, head="fcn", upsampler=None)
    assert model.output_stride == 8
    head_input = model.get_layer("head").input
    backbone = model.get_layer("resnet50_os8")
    assert backbone.output[-1].shape[-1] == head_input.shape[-1] == 2048
    model16 = kf.FastFCN(num_classes=3, head="fcn", upsampler=None, output_stride=16)
    assert model16.get_layer("resnet50_os16") is not None


def test_save_load_round_trip(tmp_path, rng):
    model = kf.FastFCN(num_classes=5, head="psp", upsampler="jpu_x", aux=True, jpu_width=64,
                       jpu_remat=False, class_names=["a", "b", "c", "d", "e"], dataset="demo")
    x = rng.uniform(0, 255, (1, 72, 56, 3)).astype("float32")
    before = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored, kf.FastFCN)
    assert restored.class_names == ["a", "b", "c", "d", "e"] and restored.dataset == "demo"
    assert restored.jpu_remat is False and restored.get_layer("jpu").remat is False
    after = restored.predict(x, verbose=0)
    for key in before:
        np.testing.assert_allclose(before[key], after[key], atol=1e-5)


def test_weights_argument_loads_whole_model(tmp_path, rng):
    model = kf.FastFCN(num_classes=2, head="fcn", jpu_width=64)
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    other = kf.FastFCN(num_classes=2, head="fcn", jpu_width=64, weights=path)
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), other.predict(x, verbose=0), atol=1e-5)


def test_preprocessing_is_in_the_graph():
    caffe = kf.FastFCN(num_classes=2, head="fcn", jpu_width=64)
    assert caffe.get_layer("preprocessing").mode == "caffe"
    norm = kf.layers.ImageNormalization("torch")
    out = np.asarray(norm(np.full((1, 1, 1, 3), 255.0, "float32")))[0, 0, 0]
    np.testing.assert_allclose(out, (1 - np.array([.485, .456, .406])) / np.array([.229, .224, .225]),
                               rtol=1e-5)
    caffe_out = np.asarray(kf.layers.ImageNormalization("caffe")(
        np.array([[[[10.0, 20.0, 30.0]]]], "float32")))[0, 0, 0]
    np.testing.assert_allclose(caffe_out, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((64, 64), "float32"), "4-D"),
    (np.zeros((64, 64, 3), "float32"), "batch axis"),
    (np.zeros((1, 64, 64, 1), "float32"), "3 channels"),
    (np.zeros((1, 64, 64, 4), "float32"), "3 channels"),
])
def test_bad_images(encnet_r50, bad, match):
    with pytest.raises(ValueError, match=match):
        encnet_r50(bad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=3, head="unet"), "Unknown head 'unet'"),
    (dict(num_classes=3, backbone="vgg16"), "Unknown backbone 'vgg16'"),
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
        kf.FastFCN(**kwargs)
