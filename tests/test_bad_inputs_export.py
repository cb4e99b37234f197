"""Bad exports: foreign `.onnx` / `.tflite` files given as models, and exports that fail.

A file `keras-fastfcn export` did not write (other inputs or outputs, a rank-3 image
input, broken metadata, not a model at all) is refused when it is opened, with one line
naming the file and what is wrong, before `predict` creates its output folder. An export
that fails after its target is chosen (a conversion error, an interrupted quantization,
a calibration set that fails) leaves nothing at its output path: no file, no temporary,
not even the folder the target check made.

The ONNX files are graphs of a few nodes made with `onnx.helper`; the one real model is
`tiny_segmenter` (tests/harness.py), and the slow conversions are replaced by failures.
"""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from harness import assert_one_line_error, predict_fails, tiny_segmenter
from keras_fastfcn import serving
from keras_fastfcn.cli import main
from keras_fastfcn import fileio
from keras_fastfcn.fileio import remove_stale_temporaries

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

FLOAT, INT32, INT64, UINT8 = (TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64,
                              TensorProto.UINT8)


def onnx_model(path, image=("images", FLOAT, ["batch", "height", "width", 3]),
               labels=("class_map", INT32), metadata=None):
    """Writes a graph `labels = argmax(image, -1)` with the given input and output."""
    name, dtype, shape = image
    out_name, out_dtype = labels
    nodes = [helper.make_node("Cast", [name], ["as_float"], to=FLOAT),
             helper.make_node("ArgMax", ["as_float"], ["argmax"], axis=-1, keepdims=0)]
    nodes.append(helper.make_node("Cast", ["argmax"], [out_name], to=out_dtype))
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info(name, dtype, shape)],
        [helper.make_tensor_value_info(out_name, out_dtype, shape[:-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnxruntime reads, whatever onnx writes
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return str(path)


NHWC = ["batch", "height", "width", 3]
ONNX_CASES = {  # name: (onnx_model options, fragment of the message after the file name)
    "other_names": (dict(image=("x", FLOAT, NHWC), labels=("y", INT32)),
                    "no keras_fastfcn_export metadata): its inputs are ['x']"),
    "no_class_map": (dict(labels=("labels", INT64)), "its outputs are ['labels']"),
    "rank3_image": (dict(image=("images", FLOAT, ["height", "width", 3])),
                    "its input 'images' has rank 3"),
    "four_channels": (dict(image=("images", FLOAT, ["batch", "height", "width", 4])),
                      "its input 'images' has 4 channels"),
    "uint8_image": (dict(image=("images", UINT8, NHWC)), "its input 'images' is uint8"),
    "float_class_map": (dict(labels=("class_map", FLOAT)), "'class_map' is float32"),
    "bad_class_names": (dict(metadata={"class_names": "road,car"}),
                        "its metadata 'class_names' is 'road,car'"),
    "bad_num_classes": (dict(metadata={"num_classes": "0"}), "its metadata 'num_classes'"),
    "names_count_mismatch": (dict(metadata={"class_names": '["a", "b"]', "num_classes": "3"}),
                             "names 2 classes but num_classes is 3"),
    "bad_options": (dict(metadata={"keras_fastfcn_export": "[1]"}),
                    "its metadata 'keras_fastfcn_export'"),
}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(path)
    return str(path)




@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_foreign_onnx_is_refused_at_load(case, tmp_path, image_file, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    from keras_fastfcn.serving.runtime import ExportPredictor

    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    options, fragment = ONNX_CASES[case]
    path = onnx_model(tmp_path / f"{case}.onnx", **options)
    with pytest.raises(ValueError) as info:
        ExportPredictor(path)
    assert path in str(info.value) and fragment in str(info.value)
    predict_fails(path, image_file, tmp_path, capsys, fragment)


def test_rank3_onnx_names_the_expected_input(tmp_path, image_file, capsys, monkeypatch):
    """The issue's case: ONNX Runtime's INVALID_ARGUMENT traceback at the first image."""
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    path = onnx_model(tmp_path / "hw3.onnx", image=("images", FLOAT, ["h", "w", 3]))
    predict_fails(path, image_file, tmp_path, capsys, "rank 3",
                  "'images' float32 (batch, height, width, 3)")


def test_unreadable_files_are_refused_at_load(tmp_path, image_file, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    pytest.importorskip("onnxruntime")
    for name, fragment in (("junk.onnx", "not a readable ONNX model"),
                           ("junk.tflite", "not a readable TFLite model"),
                           ("empty.onnx", "not a readable ONNX model")):
        (tmp_path / name).write_bytes(b"" if name.startswith("empty") else b"not a model")
        predict_fails(tmp_path / name, image_file, tmp_path, capsys, fragment)


def test_hand_made_onnx_with_the_export_interface_runs(tmp_path):
    """The checks refuse what cannot run, not what another tool wrote: a graph with the
    export's input and output runs, without metadata (no class count) or with it."""
    pytest.importorskip("onnxruntime")
    from keras_fastfcn.serving.runtime import ExportPredictor

    images = np.random.RandomState(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    bare = ExportPredictor(onnx_model(tmp_path / "bare.onnx"))
    assert bare.num_classes is None and bare.options == {}
    np.testing.assert_array_equal(bare(images), images.argmax(-1))
    named = ExportPredictor(onnx_model(tmp_path / "named.onnx", metadata={
        "class_names": json.dumps(["r", "g", "b"]), "num_classes": "3",
        "dataset": "null", "keras_fastfcn_export": json.dumps({"precision": "fp32"})}))
    assert named.class_names == ["r", "g", "b"] and named.num_classes == 3
    assert "precision=fp32" in named.describe()
    fixed = ExportPredictor(onnx_model(tmp_path / "fixed.onnx",
                                       image=("images", FLOAT, [1, 5, 7, 3])))
    assert fixed.input_size == (5, 7)
    with pytest.raises(ValueError, match=r"fixed.onnx cannot run on images of shape \(2, 5, 7"):
        fixed(images)  # the batch its graph fixed is 1
    # An empty batch (ONNX Runtime's bare `Fail`) and NaN pixels (a constant class map)
    # are refused by name, as the SavedModel's in-graph checks do.
    with pytest.raises(ValueError, match=r"non-empty batch of images, got shape \(0, 5, 7, 3\)"):
        bare(images[:0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        bare(np.where(images > 250, np.nan, images))


def tflite_file(path, input_shape, input_name="images"):
    """A TFLite file converted from a one-layer Keras model (signature `serving_default`)."""
    import tensorflow as tf

    inputs = keras.Input(input_shape[1:], batch_size=input_shape[0], name=input_name)
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return str(path)


def test_foreign_tflite_is_refused_at_load(tmp_path, image_file, capsys, monkeypatch):
    import tensorflow as tf

    from keras_fastfcn.serving.runtime import ExportPredictor

    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    dense = tflite_file(tmp_path / "dense.tflite", (1, 4, 4, 3))
    with pytest.raises(ValueError, match="dense.tflite is not a keras-fastfcn TFLite export: "
                                         "its outputs are"):
        ExportPredictor(dense)
    predict_fails(dense, image_file, tmp_path, capsys, "its outputs are")
    rank3 = tflite_file(tmp_path / "rank3.tflite", (1, 4, 3), input_name="x")
    predict_fails(rank3, image_file, tmp_path, capsys, "its inputs are ['x']")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def double(x):
        return 2.0 * x

    bare = tmp_path / "bare.tflite"
    bare.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()]).convert())
    predict_fails(bare, image_file, tmp_path, capsys, "it has no signature")


# --- Failed exports leave nothing ------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_backbone):
    keras.utils.set_random_seed(0)
    return tiny_segmenter()


@pytest.fixture(scope="module")
def converted(model, tmp_path_factory):
    """`from_function` replaying the one real tf2onnx conversion of `model` (seconds each
    on 2 cores), for the tests whose failures come after it."""
    pytest.importorskip("tf2onnx")
    import tf2onnx

    real, protos = tf2onnx.convert.from_function, []

    def spy(*args, **kwargs):
        proto, storage = real(*args, **kwargs)
        protos.append(type(proto).FromString(proto.SerializeToString()))
        return proto, storage

    tf2onnx.convert.from_function = spy
    try:
        serving.export(model, str(tmp_path_factory.mktemp("ref") / "m.onnx"), format="onnx")
    finally:
        tf2onnx.convert.from_function = real

    def replay(*args, **kwargs):
        return type(protos[0]).FromString(protos[0].SerializeToString()), None

    return replay


def assert_nothing_left(root, output):
    """Nothing at `output`, and no temporary or scratch folder anywhere under `root`."""
    assert not os.path.lexists(output), os.listdir(os.path.dirname(output))
    left = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]
    assert left == [], left


def test_failed_onnx_conversion_leaves_nothing(model, tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    import tf2onnx

    def unconvertible(*args, **kwargs):
        raise ValueError("tf2onnx: unsupported op Bincount\n(long details)")

    monkeypatch.setattr(tf2onnx.convert, "from_function", unconvertible)
    output = tmp_path / "new" / "folder" / "m.onnx"
    with pytest.raises(RuntimeError, match=r"ONNX conversion failed, nothing was written to "
                                           r".*m.onnx: ValueError: tf2onnx: unsupported op"):
        serving.export(model, str(output), format="onnx")
    assert_nothing_left(tmp_path, output)


def test_unconvertible_op_is_named_by_the_checker(model, converted, tmp_path, monkeypatch):
    """tf2onnx leaves an op it cannot convert in the graph (continue_on_error); the
    ONNX checker names it, and nothing is written."""
    import tf2onnx

    from keras_fastfcn.serving import onnx as onnx_export

    monkeypatch.setattr(tf2onnx.convert, "from_function", converted)

    def leave_a_tensorflow_op(proto):
        proto.graph.node[0].op_type = "Bincount"

    monkeypatch.setattr(onnx_export, "_name_onnx_dims", leave_a_tensorflow_op)
    output = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match="ONNX conversion failed.*Bincount"):
        onnx_export.export_onnx(model, str(output))
    assert_nothing_left(tmp_path, output)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_onnx_quantization_leaves_nothing(model, converted, tmp_path, monkeypatch,
                                                      failure):
    import tf2onnx

    quantization = pytest.importorskip("onnxruntime.quantization")
    monkeypatch.setattr(tf2onnx.convert, "from_function", converted)

    def half_quantized(source, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise failure("stopped")

    monkeypatch.setattr(quantization, "quantize_dynamic", half_quantized)
    output = tmp_path / "sub" / "int8.onnx"
    with pytest.raises(failure):
        serving.export(model, str(output), format="onnx", precision="int8_dynamic")
    assert_nothing_left(tmp_path, output)


def test_failing_onnx_calibration_leaves_nothing(model, converted, tmp_path, monkeypatch):
    import tf2onnx

    pytest.importorskip("onnxruntime.quantization")
    monkeypatch.setattr(tf2onnx.convert, "from_function", converted)

    def calibration():
        yield np.zeros((16, 16, 3), np.uint8)
        raise OSError("calibration source: disk read error")

    output = tmp_path / "int8.onnx"
    with pytest.raises(OSError, match="disk read error"):
        serving.export(model, str(output), format="onnx", precision="int8",
                       calibration=calibration(), keep_float=())
    assert_nothing_left(tmp_path, output)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError])
def test_failed_tflite_conversion_leaves_nothing(model, tmp_path, monkeypatch, failure):
    import tensorflow as tf

    real = tf.lite.TFLiteConverter.from_saved_model

    def broken_converter(*args, **kwargs):
        converter = real(*args, **kwargs)

        def convert():
            raise failure("converter stopped")

        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", broken_converter)
    output = tmp_path / "new" / "m.tflite"
    expected = KeyboardInterrupt if failure is KeyboardInterrupt else RuntimeError
    with pytest.raises(expected):
        serving.export(model, str(output), format="tflite", input_size=(32, 32))
    assert_nothing_left(tmp_path, output)


def test_failed_saved_model_export_leaves_no_base_folder(model, tmp_path, monkeypatch):
    from keras_fastfcn.serving import saved_model

    def broken(endpoints, path):
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(saved_model, "write_saved_model", broken)
    output = tmp_path / "models" / "fastfcn"
    with pytest.raises(OSError, match="disk full"):
        serving.export(model, str(output))
    assert_nothing_left(tmp_path, output)


def test_scratch_folders_of_a_killed_export_are_removed(tmp_path):
    """The TFLite SavedModel and the ONNX quantization scratch folders are named as
    `atomic_path` temporaries: a killed export's are removed by the next one."""
    with fileio.scratch_folder(tmp_path / "m.tflite") as scratch:
        assert os.path.basename(scratch).startswith(f".m.tflite.{os.getpid()}.")
        dead = os.path.join(tmp_path, os.path.basename(scratch).replace(
            f".{os.getpid()}.", ".999999999.", 1))
        os.mkdir(dead)
    assert remove_stale_temporaries(str(tmp_path), "m.tflite") == [os.path.basename(dead)]


def test_cli_export_failure_is_one_line_and_leaves_nothing(model, tmp_path, capsys,
                                                           monkeypatch):
    pytest.importorskip("tf2onnx")
    import tf2onnx

    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    model_file = tmp_path / "m.keras"
    model.save(model_file)

    def unconvertible(*args, **kwargs):
        raise KeyError("op Bincount\nline two")

    monkeypatch.setattr(tf2onnx.convert, "from_function", unconvertible)
    output = tmp_path / "out" / "m.onnx"
    code = main(["export", "--model", str(model_file), "--format", "onnx",
                 "--output", str(output)])
    assert_one_line_error(code, capsys.readouterr().err, "error:", "ONNX conversion failed",
                          str(output), "KeyError")
    os.remove(model_file)
    assert_nothing_left(tmp_path, output)


def test_cli_bad_calibration_source_fails_before_the_model_load(tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    fake = tmp_path / "m.keras"
    fake.write_bytes(b"PK")  # never read: the source is checked first
    output = tmp_path / "int8.tflite"
    code = main(["export", "--model", str(fake), "--format", "tflite", "--input-size", "32",
                 "32", "--output", str(output), "--precision", "int8",
                 "--calibration-data", f"folder:{tmp_path}/nothere"])
    assert_one_line_error(code, capsys.readouterr().err, "error:", "nothere")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]
