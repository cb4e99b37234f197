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


def conv_kernel_types(interpreter):
    """{a TFLite CONV_2D's output tensor name: its kernel's dtype}."""
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    return {tensors[op["outputs"][0]]["name"]: tensors[op["inputs"][1]]["dtype"]
            for op in convs}


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


def test_fp32_of_a_mixed_model_is_a_float32_copy(confident, tmp_path):
    """A model built or trained under a mixed policy runs (and exports) in float32 at
    precision fp32: a float32 copy with the same weights; a float32 model is itself.
    The ONNX export of a mixed_bfloat16 model at its default fp32 failed in tf2onnx."""
    from keras_fastfcn._keras_private import all_layers

    model, images = confident
    assert with_precision(model, "fp32") is model
    mixed = with_precision(model, "bf16")
    plain = with_precision(mixed, "fp32")
    assert {layer.dtype_policy.compute_dtype for layer in all_layers(plain)} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(plain.get_weights(), model.get_weights()))
    ref = np.asarray(model(images, training=False))
    got = np.asarray(plain(images, training=False))
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    path = kf.serving.export(mixed, str(tmp_path / "m.onnx"), format="onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    class_map = session.run(["class_map"], {"images": images})[0]
    assert (class_map == ref.argmax(-1)).mean() > 0.999


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
        interpreter = tf.lite.Interpreter(path)
    # By default the layers measured to lose accuracy stay float (tflite
    # DEFAULT_KEEP_FLOAT): the classifier among them, the other convolutions int8.
    kernels = conv_kernel_types(interpreter)
    assert {name for name, dtype in kernels.items() if dtype == np.float32} == {
        name for name in kernels if "classifier" in name}, kernels
    runner = interpreter.get_signature_runner()
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
    meta = session.get_modelmeta().custom_metadata_map
    assert "class_names" in meta
    # By default the class scores stay float (DEFAULT_KEEP_FLOAT, PRECISION.md).
    assert '"keep_float": ["classifier", "logits"]' in meta["keras_fastfcn_export"]


def test_default_keep_float_names_only_layers_the_model_has(confident):
    import keras

    from keras_fastfcn.serving.onnx import DEFAULT_KEEP_FLOAT, default_keep_float

    model, _ = confident
    assert default_keep_float(model) == DEFAULT_KEEP_FLOAT == ("classifier", "logits")
    inputs = keras.Input((None, None, 3))
    own = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="classifier")(inputs))
    assert default_keep_float(own) == ("classifier",)
    own = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="scores")(inputs))
    assert default_keep_float(own) == ()


def test_onnx_int8_keep_float_leaves_those_layers_unquantized(confident, tmp_path):
    """`keep_float`: the Encoding layer's and the classifier's nodes keep float weights
    and no QuantizeLinear/DequantizeLinear pair sits between two of them (only where a
    quantized layer's output enters them), while the rest of the graph is quantized."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from keras_fastfcn.serving.onnx import float_node_names

    model, images = confident
    calibration = calibration_images("demo", 8, size=(64, 64))
    fp32 = kf.serving.export(model, str(tmp_path / "fp32.onnx"), format="onnx",
                             probabilities=False)
    # Scoped names (`model/head_1/classifier_1/BiasAdd`) are the same in every
    # conversion; tf2onnx numbers its own nodes (`Gather__1553`) per conversion.
    kept = {n for n in float_node_names(onnx.load(fp32), ["encoding", "classifier"])
            if "/" in n}
    assert any("/classifier" in name for name in kept)
    assert any("/encoding" in name for name in kept)
    assert not any("encoding_bn" in name for name in kept)  # a name, not a prefix
    path = kf.serving.export(model, str(tmp_path / "m.onnx"), format="onnx", precision="int8",
                             calibration=calibration, probabilities=False,
                             keep_float=("encoding", "classifier"))
    graph = onnx.load(path).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    # ONNX Runtime folds some shape arithmetic away; the layers' compute nodes remain.
    kept &= set(nodes)
    assert {nodes[n].op_type for n in kept} >= {"Conv", "MatMul", "Softmax"}
    for name in kept:
        for inp in nodes[name].input:
            dq = producer.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            assert dq.input[0] not in initializers, f"{name} has int8 weights"
            # Between two kept nodes no Q/DQ pair: only where a quantized layer feeds one.
            q = producer.get(dq.input[0])
            origin = producer.get(q.input[0]) if q is not None else None
            assert origin is None or origin.name not in kept, f"{origin.name} -> {name}"
    classifier = next(nodes[n] for n in kept if "/classifier" in n and nodes[n].op_type == "Conv")
    assert classifier.input[1] in initializers  # its kernel is a float32 initializer
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 10  # the rest is int8
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    class_map = session.run(["class_map"], {"images": images})[0]
    ref = np.asarray(model(images, training=False)).argmax(-1)
    assert (class_map == ref).mean() > 0.9
    assert '"keep_float": ["encoding", "classifier"]' in \
        session.get_modelmeta().custom_metadata_map["keras_fastfcn_export"]


def test_keep_float_errors(confident, tmp_path):
    pytest.importorskip("onnxruntime")
    model, _ = confident
    calibration = calibration_images("demo", 2, size=(64, 64))
    with pytest.raises(ValueError, match=r"keep_float \['no_such_layer'\] names no layer"):
        kf.serving.export(model, str(tmp_path / "m.onnx"), format="onnx", precision="int8",
                          calibration=calibration, keep_float=["classifier", "no_such_layer"])
    with pytest.raises(ValueError, match="static int8 exports only"):
        kf.serving.export(model, str(tmp_path / "d.onnx"), format="onnx",
                          precision="int8_dynamic", keep_float=["classifier"])
    with pytest.raises(ValueError, match="keep_float must be layer names"):
        kf.serving.export(model, str(tmp_path / "e.onnx"), format="onnx", precision="int8",
                          calibration=calibration, keep_float=[""])
    assert not list(tmp_path.iterdir())  # nothing written


def test_tflite_int8_keep_float_keeps_the_classifier_in_float(confident, tmp_path):
    """Selective TFLite quantization: the classifier's convolution keeps float32
    weights, the other convolutions are int8; the class map and the probabilities
    read the float scores (the probabilities' softmax was quantized: values 1/k of
    k tied classes, their argmax the class map on 69% of a user's pixels)."""
    import tensorflow as tf

    model, images = confident
    calibration = calibration_images("demo", 8, size=(64, 64))
    path = kf.serving.export(model, str(tmp_path / "m.tflite"), format="tflite",
                             input_size=(64, 64), precision="int8", calibration=calibration,
                             keep_float=("classifier",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(path)
    kernel_types = conv_kernel_types(interpreter)
    float_convs = [name for name, dtype in kernel_types.items() if dtype == np.float32]
    assert float_convs and all("classifier" in name for name in float_convs), kernel_types
    assert sum(dtype == np.int8 for dtype in kernel_types.values()) >= 3
    runner = interpreter.get_signature_runner()
    outputs = [runner(images=image[None]) for image in images]
    tfl = np.stack([out["class_map"][0] for out in outputs])
    assert (tfl == np.asarray(model(images, training=False)).argmax(-1)).mean() > 0.9
    probabilities = np.stack([out["probabilities"][0] for out in outputs])
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    assert (probabilities.argmax(-1) == tfl).mean() > 0.999
