"""The OpenVINO export (`serving/openvino.py`) and its runtime (`ExportPredictor`).

A confident tiny segmenter (tests/harness.py) exported at each precision gives the Keras
class map: exactly in fp32 (near-ties allowed), and in bf16 / int8 wherever the Keras
top-2 margin is larger than a few steps of the format (bf16: 2^-8 relative, int8: 1/256
of a tensor's range). Foreign `.xml` files are refused at load with one line naming the
file; failed exports leave nothing. The failure tests replace the (slow) ONNX step by a
hand-made three-node graph.
"""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import make_confident
from harness import assert_one_line_error, predict_fails, tiny_segmenter
from keras_fastfcn import serving
from keras_fastfcn.cli import main

ov = pytest.importorskip("openvino")
pytest.importorskip("tf2onnx")
onnx = pytest.importorskip("onnx")
from openvino import opset13 as ops  # noqa: E402

BF16_STEP, INT8_STEP = 2.0 ** -8, 1.0 / 256


@pytest.fixture(scope="module")
def confident(tiny_backbone):
    rng = np.random.RandomState(5)
    calibration = rng.uniform(0, 255, (4, 64, 64, 3)).astype("uint8")
    keras.utils.set_random_seed(5)
    seg = make_confident(tiny_segmenter(), calibration.astype("float32"))
    images = np.random.RandomState(7).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    return seg, list(calibration), images, np.asarray(seg.predict(images, verbose=0))


@pytest.fixture(scope="module")
def exported(confident, tmp_path_factory):
    """`{precision: path}` of the tiny model's IRs (about 10 s each on 2 cores)."""
    seg, calibration, _, _ = confident
    folder = tmp_path_factory.mktemp("openvino")
    return {precision: serving.export(
        seg, str(folder / f"{precision}.xml"), format="openvino", precision=precision,
        **({"calibration": calibration} if precision == "int8" else {}))
        for precision in ("fp32", "bf16", "int8")}


def assert_class_map(class_map, logits, steps):
    """`class_map` is the logits' argmax wherever their top-2 margin exceeds `steps` of
    the logits' scale."""
    top2 = np.sort(logits, -1)[..., -2:]
    close = top2[..., 1] - top2[..., 0] <= steps * np.abs(logits).max()
    assert class_map.shape == logits.shape[:3] and class_map.dtype == np.int32
    assert ((class_map == logits.argmax(-1)) | close).all()


@pytest.mark.slow
@pytest.mark.parametrize("precision,steps", [("fp32", 1e-4), ("bf16", 8 * BF16_STEP),
                                             ("int8", 16 * INT8_STEP)])
def test_export_gives_the_keras_class_map(exported, confident, precision, steps):
    from keras_fastfcn.serving.runtime import ExportPredictor

    _, _, images, logits = confident
    path = exported[precision]
    assert os.path.isfile(path) and os.path.isfile(path[:-4] + ".bin")
    predictor = ExportPredictor(path)
    assert predictor.format == "openvino" and predictor.input_size is None
    assert predictor.options["precision"] == precision
    assert predictor.num_classes == 3
    # What the runtime compiled for: the recorded precision (bf16 only with bf16 hardware).
    expected = {"fp32": ("f32",), "bf16": ("bf16", "f32"), "int8": ("f32",)}[precision]
    assert predictor.inference_precision in expected
    assert f"precision={precision} (runs " in predictor.describe()
    assert_class_map(predictor(images), logits, steps)
    # The class map's ArgMax came as reductions, not as OpenVINO's stable TopK.
    types = {op.get_type_name() for op in ov.Core().read_model(path).get_ordered_ops()}
    assert "TopK" not in types and {"ReduceMax", "ReduceMin"} <= types


@pytest.mark.slow
def test_int8_keeps_the_default_layers_float(exported):
    """NNCF quantized the convolutions but not the classifier (`DEFAULT_KEEP_FLOAT`)."""
    from keras_fastfcn.serving.openvino import float_op_names

    model = ov.Core().read_model(exported["int8"])
    options = json.loads(model.get_rt_info(["keras_fastfcn", "keras_fastfcn_export"])
                         .astype(str))
    assert options["keep_float"] == ["classifier", "logits"]
    kept = set(float_op_names(model, ["classifier"]))

    def quantized(op):  # its weights come through a FakeQuantize (or a dequantization)
        weights = op.input_value(1).get_node()
        while weights.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape"):
            weights = weights.input_value(0).get_node()
        return weights.get_type_name() == "FakeQuantize" or (
            weights.get_type_name() == "Constant" and weights.get_element_type() == ov.Type.i8)

    convolutions = [op for op in model.get_ordered_ops()
                    if op.get_type_name() in ("Convolution", "GroupConvolution")]
    classifier = [op for op in convolutions if op.get_friendly_name() in kept]
    assert len(classifier) == 1 and not quantized(classifier[0])
    assert sum(quantized(op) for op in convolutions) >= len(convolutions) - 3


@pytest.mark.slow
def test_harness_case_and_cli(exported, confident, tmp_path, capsys):
    """`export --format openvino` writes NAME.xml and NAME.bin; `predict` runs the IR."""
    seg, _, images, _ = confident
    model_file = tmp_path / "m.keras"
    seg.save(model_file)
    output = tmp_path / "ir" / "m.xml"
    assert main(["export", "--model", str(model_file), "--format", "openvino",
                 "--output", str(output), "--no-probabilities"]) == 0
    assert sorted(os.listdir(output.parent)) == ["m.bin", "m.xml"]
    assert f"weights: {tmp_path / 'ir' / 'm.bin'}" in capsys.readouterr().out
    photo = tmp_path / "photo.png"
    Image.fromarray(images[0].astype("uint8")).save(photo)
    out = tmp_path / "predictions"
    assert main(["predict", "--model", str(output), "--input", str(photo),
                 "--output", str(out)]) == 0
    assert os.listdir(out)
    # Without --overwrite an existing IR (or its .bin alone) is refused before the load.
    os.remove(output)
    code = main(["export", "--model", str(model_file), "--format", "openvino",
                 "--output", str(output)])
    assert_one_line_error(code, capsys.readouterr().err, "error:", "m.bin already exists",
                          "--overwrite")


# --- Foreign files ----------------------------------------------------------------



def ir(path, name="images", shape=(-1, -1, -1, 3), dtype=np.float32, output="class_map",
       rt_info=None):
    """Writes an IR `output = argmax(images, -1)` (int32) with the given input."""
    image = ops.parameter(ov.PartialShape(list(shape)), ov.Type(dtype), name=name)
    image.output(0).set_names({name})
    top = ops.topk(ops.convert(image, "f32"), ops.constant(np.int64(1)), -1, "max", "none",
                   "i32")
    labels = ops.squeeze(top.output(1), ops.constant(np.int64([-1])))
    labels.output(0).set_names({output})
    model = ov.Model([labels.output(0)], [image], "foreign")
    for key, value in (rt_info or {}).items():
        model.set_rt_info(value, ["keras_fastfcn", key])
    ov.save_model(model, str(path))
    return str(path)


FOREIGN = {  # name: (ir options, fragment of the message after the file name)
    "other_names": (dict(name="x"), "no keras_fastfcn_export runtime info): its inputs are"),
    "no_class_map": (dict(output="labels"), "its outputs are ['labels']"),
    "rank3_image": (dict(shape=(-1, -1, 3)), "its input 'images' has rank 3"),
    "uint8_image": (dict(dtype=np.uint8), "its input 'images' is uint8"),
    "bad_class_names": (dict(rt_info={"class_names": "road,car"}),
                        "its metadata 'class_names' is 'road,car'"),
    "bad_hint": (dict(rt_info={"inference_precision_hint": "int4"}),
                 "its runtime info 'inference_precision_hint' is 'int4'"),
}


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(path)
    return str(path)



@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_foreign_ir_is_refused_at_load(case, tmp_path, image_file, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    options, fragment = FOREIGN[case]
    predict_fails(ir(tmp_path / f"{case}.xml", **options), image_file, tmp_path, capsys,
                  fragment)


def test_foreign_xml_files_are_refused_at_load(tmp_path, image_file, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    page = tmp_path / "page.xml"
    page.write_text('<?xml version="1.0"?>\n<svg width="4"/>\n')
    predict_fails(page, image_file, tmp_path, capsys, "its weights file", "page.bin",
                  "is missing")
    (tmp_path / "page.bin").write_bytes(b"")
    predict_fails(page, image_file, tmp_path, capsys, "is not a readable OpenVINO model")


def test_hand_made_ir_with_the_export_interface_runs(tmp_path):
    from keras_fastfcn.serving.runtime import ExportPredictor, is_export

    images = np.random.RandomState(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    bare = ExportPredictor(ir(tmp_path / "bare.xml"), threads=1)
    assert bare.num_classes is None and bare.options == {}
    np.testing.assert_array_equal(bare(images), images.argmax(-1))
    named = ExportPredictor(ir(tmp_path / "named" / "m.xml", rt_info={
        "class_names": json.dumps(["r", "g", "b"]), "num_classes": "3",
        "keras_fastfcn_export": json.dumps({"precision": "bf16"}),
        "inference_precision_hint": "bf16"}))
    assert named.class_names == ["r", "g", "b"] and "precision=bf16 (runs " in named.describe()
    # A folder holding one IR is that IR.
    assert is_export(tmp_path / "named")
    assert ExportPredictor(tmp_path / "named").path == str(tmp_path / "named" / "m.xml")
    fixed = ExportPredictor(ir(tmp_path / "fixed.xml", shape=(1, 5, 7, 3)))
    assert fixed.input_size == (5, 7)
    with pytest.raises(ValueError, match=r"fixed.xml cannot run on images of shape \(2, 5, 7"):
        fixed(images)  # the batch its graph fixed is 1
    with pytest.raises(ValueError, match=r"holds 2 OpenVINO IRs \(bare.xml, fixed.xml\)"):
        ExportPredictor(tmp_path)


# --- Failed exports leave nothing ------------------------------------------------


@pytest.fixture
def fake_onnx(monkeypatch):
    """`export_onnx` writing a three-node graph with the export's interface and
    metadata (instead of the tf2onnx conversion, seconds on 2 cores)."""
    from onnx import TensorProto, helper

    from keras_fastfcn.serving import onnx as onnx_export

    def export_onnx(model, output, **options):
        shape = ["batch", "height", "width", 3]
        graph = helper.make_graph(
            [helper.make_node("ArgMax", ["images"], ["argmax"], axis=-1, keepdims=0),
             helper.make_node("Cast", ["argmax"], ["class_map"], to=TensorProto.INT32)],
            "fake", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("class_map", TensorProto.INT32, shape[:-1])])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        for key, value in {"class_names": "null", "num_classes": "3",
                           "keras_fastfcn_export": json.dumps({"opset": 17})}.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.save(proto, output)
        return output

    monkeypatch.setattr(onnx_export, "export_onnx", export_onnx)


def assert_nothing_left(root, output):
    assert not os.path.lexists(output)
    left = [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files]
    assert left == [], left


@pytest.fixture(scope="module")
def model(tiny_backbone):
    keras.utils.set_random_seed(0)
    return tiny_segmenter()


def test_fake_onnx_export_runs(model, fake_onnx, tmp_path):
    """The failure tests' stand-in exports and runs: what they break is real."""
    from keras_fastfcn.serving.runtime import ExportPredictor

    path = serving.export(model, str(tmp_path / "m.xml"), format="openvino")
    images = np.random.RandomState(0).uniform(0, 255, (1, 4, 6, 3)).astype("float32")
    np.testing.assert_array_equal(ExportPredictor(path)(images), images.argmax(-1))
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.xml"]


def test_failed_conversion_leaves_nothing(model, fake_onnx, tmp_path, monkeypatch):
    def unconvertible(*args, **kwargs):
        raise RuntimeError("Check 'unknown operation' failed\nline two")

    monkeypatch.setattr(ov, "convert_model", unconvertible)
    output = tmp_path / "new" / "folder" / "m.xml"
    with pytest.raises(RuntimeError, match=r"OpenVINO conversion failed, nothing was written "
                                           r"to .*m.xml: RuntimeError: Check 'unknown"):
        serving.export(model, str(output), format="openvino")
    assert_nothing_left(tmp_path, output)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_save_leaves_nothing(model, fake_onnx, tmp_path, monkeypatch, failure):
    real = ov.save_model

    def half_saved(model, path, **kwargs):
        real(model, path, **kwargs)
        with open(path[:-4] + ".bin", "r+b") as f:
            f.truncate(1)
        raise failure("disk full")

    monkeypatch.setattr(ov, "save_model", half_saved)
    output = tmp_path / "sub" / "m.xml"
    with pytest.raises(failure):
        serving.export(model, str(output), format="openvino")
    assert_nothing_left(tmp_path, output)


def test_failed_quantization_leaves_nothing(model, fake_onnx, tmp_path, monkeypatch):
    nncf = pytest.importorskip("nncf")

    def broken(*args, **kwargs):
        raise IndexError("statistics collection failed")

    monkeypatch.setattr(nncf, "quantize", broken)
    output = tmp_path / "int8.xml"
    with pytest.raises(RuntimeError, match="NNCF.*failed, nothing was written to .*int8.xml"):
        serving.export(model, str(output), format="openvino", precision="int8",
                       calibration=[np.zeros((4, 6, 3), np.uint8)])
    assert_nothing_left(tmp_path, output)


def test_keep_float_naming_no_layer_is_refused(model, fake_onnx, tmp_path):
    pytest.importorskip("nncf")
    output = tmp_path / "int8.xml"
    with pytest.raises(ValueError, match=r"keep_float \['nosuchlayer'\] names no layer"):
        serving.export(model, str(output), format="openvino", precision="int8",
                       calibration=[np.zeros((4, 6, 3), np.uint8)], keep_float=["nosuchlayer"])
    assert_nothing_left(tmp_path, output)


def test_bad_targets_and_options_are_refused_before_the_load(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    fake = tmp_path / "m.keras"
    fake.write_bytes(b"PK")  # never read: each problem is found first
    (tmp_path / "old.bin").write_bytes(b"weights")
    for args, fragments in (
            (["--output", str(tmp_path / "m.onnx")], ["must end in .xml"]),
            (["--output", str(tmp_path / "old.xml")], ["old.bin already exists"]),
            (["--output", str(tmp_path / "m.xml"), "--precision", "fp16"],
             ["fp16", "OpenVINO"]),
            (["--output", str(tmp_path / "m.xml"), "--precision", "int8"],
             ["needs calibration images"]),
            (["--output", str(tmp_path / "m.xml"), "--keep-float", "classifier"],
             ["keep_float applies to static int8"])):
        code = main(["export", "--model", str(fake), "--format", "openvino"] + args)
        assert_one_line_error(code, capsys.readouterr().err, "error:", *fragments)
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "old.bin"]


# --- Benchmark columns -----------------------------------------------------------


def test_benchmark_rows_get_openvino_columns(monkeypatch):
    """`run_benchmarks(openvino=True)` times each fp32 / bf16 / int8 row's OpenVINO export
    in its own child; `"auto"` leaves the columns out where openvino cannot run."""
    from keras_fastfcn import benchmark

    calls = []

    def child(kind, config, options):
        calls.append((kind, config["upsampler"], options.get("precision")))
        slow = 2.0 if config["upsampler"] == "os8" else 1.0
        if kind == "run.measure_openvino_speed":
            return {"latency_s": 0.5 * slow, "inference_precision": "f32", "export_s": 9.0,
                    "openvino_version": "x", "throughput_ips": 4.0, "throughput_batch": 8}
        return {"latency_s": slow, "fps": 1 / slow, "gflops": 10.0, "params": {},
                "params_total": 0}

    monkeypatch.setattr(benchmark.run, "_child", child)
    cpu = {"cores": 2, "mhz": 2000.0, "all_flags": ["avx2", "fma"]}
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], memory=False,
                                    precisions=("fp32", "fp16"), torch_anchor=False, cpu=cpu,
                                    openvino=True, log=lambda text: None)
    assert [c for c in calls if c[0] == "run.measure_openvino_speed"] == [
        ("run.measure_openvino_speed", "jpu", "fp32"),
        ("run.measure_openvino_speed", "os8", "fp32")]  # no OpenVINO fp16 export
    jpu = rows[0]
    assert jpu["openvino_latency_s"] == 0.5 and jpu["openvino_speedup"] == pytest.approx(2.0)
    assert jpu["openvino_throughput_ips"] == 4.0 and jpu["openvino_throughput_batch"] == 8
    assert "openvino_latency_s" not in rows[1]  # fp16
    ratio = {r["precision"]: r for r in benchmark.ratios(rows)}["fp32"]
    assert ratio["openvino_speedup"] == pytest.approx(2.0)
    assert "OpenVINO 0.500 s (runs f32, 2.00x) 4.00 img/s at batch 8" in \
        benchmark.run._row_text(jpu)
    monkeypatch.setattr(benchmark.run, "openvino_available", lambda p: "not installed: x")
    calls.clear()
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], memory=False,
                                    torch_anchor=False, cpu=cpu, openvino="auto",
                                    log=lambda text: None)
    assert [c[0] for c in calls] == ["measure_speed"] and "openvino_error" not in rows[0]
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], memory=False,
                                    torch_anchor=False, cpu=cpu, openvino=True,
                                    log=lambda text: None)
    assert rows[0]["openvino_error"] == "not installed: x"


@pytest.mark.slow
def test_measure_openvino_speed_small(tiny_backbone):
    from keras_fastfcn.benchmark.run import measure_openvino_speed

    row = measure_openvino_speed("fcn", tiny_backbone, "jpu", size=64, num_classes=3,
                                 precision="fp32", warmup=1, min_runs=1, min_seconds=0.01,
                                 throughput_batch=2, threads=1)
    assert row["latency_s"] > 0 and row["throughput_ips"] > 0 and row["throughput_batch"] == 2
    assert row["inference_precision"] == "f32" and row["export_s"] > 0


def test_calibration_of_another_size_is_refused_before_the_conversion(model, tmp_path):
    pytest.importorskip("nncf")
    output = tmp_path / "int8.xml"
    with pytest.raises(ValueError, match="calibration images must be 48x48, the fixed input "
                                         "size, got one of 64x64"):
        serving.export(model, str(output), format="openvino", precision="int8",
                       input_size=(48, 48), calibration=[np.zeros((64, 64, 3), np.uint8)])
    assert_nothing_left(tmp_path, output)


def test_failed_onnx_step_names_the_output(model, tmp_path, monkeypatch):
    from keras_fastfcn.serving import onnx as onnx_export

    def failing(model, output, **options):
        raise RuntimeError(f"ONNX conversion failed, nothing was written to {output}: "
                           "ValueError: unsupported op Bincount")

    monkeypatch.setattr(onnx_export, "export_onnx", failing)
    output = tmp_path / "new" / "m.xml"
    with pytest.raises(RuntimeError) as info:
        serving.export(model, str(output), format="openvino")
    assert str(info.value) == (f"OpenVINO export failed, nothing was written to {output}: "
                               "ONNX conversion failed: ValueError: unsupported op Bincount")
    assert_nothing_left(tmp_path, output)
