"""Precision options: bf16/fp16 Keras models with the same weights, and int8 exports
(TFLite full-integer, ONNX Runtime QDQ) calibrated on a data source."""

import warnings

import numpy as np
import pytest

import keras_fastfcn as kf
from keras_fastfcn.precision import calibration_images, with_precision


@pytest.fixture(scope="module")
def confident(tiny_backbone):
    """A tiny EncNet whose logits reach +-40 on demo images (a trained model's range)."""
    from conftest import make_confident

    import keras

    keras.utils.set_random_seed(3)
    backbone = kf.models.FastFCNBackbone(encoder=tiny_backbone, width=32)
    model = kf.models.FastFCNImageSegmenter(backbone, num_classes=5, head="encnet")
    images = np.stack(calibration_images("demo", 4, size=(64, 64), split="val"))
    make_confident(model, images.astype("float32"), peak=40.0)
    return model, images.astype("float32")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_model_keeps_weights_and_argmax(confident, precision):
    model, images = confident
    fast = with_precision(model, precision)
    assert fast.compute_dtype == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(np.array_equal(a, b) for a, b in zip(fast.get_weights(), model.get_weights()))
    ref = np.asarray(model(images, training=False)).argmax(-1)
    scores = kf.inference.predict(fast, images)
    assert scores.dtype == "float32"
    assert (np.asarray(scores).argmax(-1) == ref).mean() > 0.97


def test_precision_errors(confident):
    model, _ = confident
    with pytest.raises(ValueError, match="post-training quantization of an export"):
        with_precision(model, "int8")
    with pytest.raises(ValueError, match="for a SavedModel"):
        kf.serving.export(model, "unused", precision="int8")
    with pytest.raises(ValueError, match="needs calibration images"):
        kf.serving.export(model, "unused.tflite", format="tflite", input_size=(64, 64),
                          precision="int8")


def test_int8_exports_agree_with_fp32(confident, tmp_path):
    """TFLite full-integer and ONNX Runtime QDQ, calibrated on demo train images: the
    class maps of the val images mostly equal the float model's."""
    import tensorflow as tf

    model, images = confident
    ref = np.asarray(model(images, training=False)).argmax(-1)
    calibration = calibration_images("demo", 16, size=(64, 64))
    path = kf.serving.export(model, str(tmp_path / "m.tflite"), format="tflite",
                             input_size=(64, 64), precision="int8", calibration=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = tf.lite.Interpreter(path).get_signature_runner()
    tfl = np.stack([runner(images=image[None])["class_map"][0] for image in images])
    assert (tfl == ref).mean() > 0.9

    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = kf.serving.export(model, str(tmp_path / "m.onnx"), format="onnx",
                             precision="int8", calibration=calibration)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node)
    class_map = session.run(["class_map"], {"images": images})[0]
    assert (class_map == ref).mean() > 0.9
    assert "class_names" in session.get_modelmeta().custom_metadata_map
