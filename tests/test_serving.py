"""Export (SavedModel / ONNX / TFLite), the export CLI and the TF Serving REST client.

The exports are checked against the Keras model they came from: class maps agree
on >= 99.9% of pixels and probabilities within 1e-4 (BatchNorm folding is on, and
the BN statistics are randomized so that folding is not the identity).
"""

import base64
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_fastfcn as kf
from keras_fastfcn import cli, inference
from keras_fastfcn import serving as export
from keras_fastfcn.layers import resize_bilinear
from keras_fastfcn.serving import client as serving_client
from keras_fastfcn.serving.runtime import ExportPredictor
from keras_fastfcn.inference.fold import batchnorm_layers

CLASS_NAMES = ["road", "car", "sky"]
SIZES = [(64, 64), (67, 75), (96, 80)]


def randomize_batchnorms(model, seed=0):
    rng = np.random.RandomState(seed)
    for bn in batchnorm_layers(model):
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                        rng.normal(0.0, 0.1, beta.shape).astype("float32"),
                        rng.normal(0.0, 0.1, mean.shape).astype("float32"),
                        rng.uniform(0.5, 1.5, var.shape).astype("float32")])


def keras_probabilities(model, images):
    logits = model(np.asarray(images, np.float32), training=False)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def assert_agrees(probs, class_map, ref):
    assert class_map.shape == ref.shape[:-1] and class_map.dtype == np.int32
    assert (class_map == ref.argmax(-1)).mean() >= 0.999
    np.testing.assert_allclose(probs, ref, atol=1e-4, rtol=0)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fcn_model(tiny_backbone):
    keras.utils.set_random_seed(0)  # reproducible weights (tolerances below are absolute)
    model = kf.FastFCN(num_classes=3, head="fcn", backbone=tiny_backbone, jpu_width=64,
                       class_names=CLASS_NAMES)
    randomize_batchnorms(model)
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return [rng.randint(0, 256, (2, h, w, 3)).astype(np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def saved_model_dir(fcn_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "fastfcn"
    return export.export_saved_model(fcn_model, str(base))


@pytest.fixture(scope="module")
def loaded(saved_model_dir):
    return tf.saved_model.load(saved_model_dir)


# --- SavedModel -----------------------------------------------------------------

FRESH_PROCESS = r"""
import json, os, sys
import numpy as np
import tensorflow as tf

path, folder = sys.argv[1:]
sigs = tf.saved_model.load(path).signatures
data = np.load(os.path.join(folder, "inputs.npz"))
out = {}
for key in data.files:
    batch = data[key]
    for name, value in [("default", tf.constant(batch)),
                        ("float", tf.constant(batch.astype(np.float32)))]:
        res = sigs["serving_" + name](image_tensor=value)
        out[f"{key}_{name}_map"] = res["class_map"].numpy()
        out[f"{key}_{name}_prob"] = res["probabilities"].numpy()
    files = [open(os.path.join(folder, f"{key}_{i}.png"), "rb").read() for i in range(len(batch))]
    res = sigs["serving_image_bytes"](image_bytes=tf.constant(files))
    out[f"{key}_bytes_map"] = res["class_map"].numpy()
    out[f"{key}_bytes_prob"] = res["probabilities"].numpy()
    out[f"{key}_bytes_names"] = res["class_names"].numpy().astype(str)
np.savez(os.path.join(folder, "outputs.npz"), **out)

def read(name):
    return open(os.path.join(folder, name), "rb").read()

cases = {
    "rgba_tensor": ("serving_default", "image_tensor", tf.zeros((1, 32, 32, 4), tf.uint8)),
    "gray_tensor": ("serving_float", "image_tensor", tf.zeros((1, 32, 32, 1), tf.float32)),
    "gray_png": ("serving_image_bytes", "image_bytes", tf.constant([read("gray.png")])),
    "rgba_png": ("serving_image_bytes", "image_bytes", tf.constant([read("rgba.png")])),
    "not_an_image": ("serving_image_bytes", "image_bytes", tf.constant([b"hello, not an image"])),
    "mixed_sizes": ("serving_image_bytes", "image_bytes",
                    tf.constant([read("img0_0.png"), read("img1_0.png")])),
    "empty_batch": ("serving_image_bytes", "image_bytes", tf.constant([], tf.string)),
}
errors = {}
for case, (sig, arg, value) in cases.items():
    try:
        sigs[sig](**{arg: value})
        errors[case] = "no error"
    except Exception as err:
        errors[case] = type(err).__name__ + ": " + str(err)

# TF Serving loads SavedModels into a TF1-style session (C++ LoadSavedModel):
# the variables must restore there too, and the checks must still fire.
batch = data["img0"]
with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    fetch = {k: v.name for k, v in sig.outputs.items()}
    res = sess.run(fetch, {sig.inputs["image_tensor"].name: batch})
    np.save(os.path.join(folder, "session_prob.npy"), res["probabilities"])
    try:
        sess.run(fetch, {sig.inputs["image_tensor"].name: np.zeros((1, 8, 8, 4), np.uint8)})
        errors["session_rgba"] = "no error"
    except Exception as err:
        errors["session_rgba"] = type(err).__name__ + ": " + str(err)
errors["keras_fastfcn imported"] = "keras_fastfcn" in sys.modules
json.dump(errors, open(os.path.join(folder, "errors.json"), "w"))
"""


def test_saved_model_layout(saved_model_dir):
    base, version = os.path.split(saved_model_dir)
    assert version == "1"
    assert os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb"))
    assert os.path.isdir(os.path.join(saved_model_dir, "variables"))
    # The temporary folder was renamed into place: nothing else in the base.
    assert os.listdir(base) == ["1"]
    with open(os.path.join(saved_model_dir, "keras_fastfcn_export.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == CLASS_NAMES and meta["options"]["fold_bn"] is True
    assert meta["inputs"]["serving_default"]["image_tensor"]["shape"] == ["B", "H", "W", 3]


def test_saved_model_in_fresh_process(fcn_model, images, saved_model_dir, tmp_path):
    """A process that never imports keras_fastfcn gets the Keras model's answers."""
    np.savez(tmp_path / "inputs.npz", **{f"img{i}": batch for i, batch in enumerate(images)})
    for i, batch in enumerate(images):
        for j, image in enumerate(batch):
            (tmp_path / f"img{i}_{j}.png").write_bytes(png_bytes(image))
    (tmp_path / "gray.png").write_bytes(png_bytes(images[0][0, :, :, 0]))
    rgba = np.concatenate([images[0][0], np.full((64, 64, 1), 255, np.uint8)], axis=-1)
    (tmp_path / "rgba.png").write_bytes(png_bytes(rgba))
    (tmp_path / "script.py").write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([sys.executable, str(tmp_path / "script.py"), saved_model_dir,
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = np.load(tmp_path / "outputs.npz")
    for i, batch in enumerate(images):
        ref = keras_probabilities(fcn_model, batch)
        for name in ("default", "float", "bytes"):
            assert_agrees(out[f"img{i}_{name}_prob"], out[f"img{i}_{name}_map"], ref)
        assert out[f"img{i}_bytes_names"].tolist() == [CLASS_NAMES] * len(batch)

    np.testing.assert_allclose(np.load(tmp_path / "session_prob.npy"),
                               out["img0_default_prob"], atol=1e-6)
    errors = json.loads((tmp_path / "errors.json").read_text())
    assert errors.pop("keras_fastfcn imported") is False
    for case, message in errors.items():
        assert message.startswith("InvalidArgumentError"), (case, message)
    assert "must have 3 channels" in errors["rgba_tensor"]
    assert "must have 3 channels" in errors["session_rgba"]
    assert "must have 3 channels" in errors["gray_tensor"]
    assert "does not have 3 channels" in errors["gray_png"]
    assert "does not have 3 channels" in errors["rgba_png"]
    assert "not an encoded JPEG, PNG, GIF or BMP image" in errors["not_an_image"]
    assert "same height and width" in errors["mixed_sizes"]
    assert "batch is empty" in errors["empty_batch"]


def test_saved_model_cli_lists_signatures(saved_model_dir):
    tool = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.isfile(tool):
        pytest.skip(f"saved_model_cli not found next to {sys.executable}")
    proc = subprocess.run([tool, "show", "--all", "--dir", saved_model_dir],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in proc.stdout
    assert "inputs['image_tensor']" in proc.stdout and "DT_UINT8" in proc.stdout
    assert "inputs['image_bytes']" in proc.stdout
    for output in ("class_map", "probabilities", "class_names"):
        assert f"outputs['{output}']" in proc.stdout


@pytest.fixture(scope="module")
def enc_model(tiny_backbone):
    keras.utils.set_random_seed(1)
    model = kf.FastFCN(num_classes=4, head="encnet", backbone=tiny_backbone,
                       jpu_width=64)  # no class names
    randomize_batchnorms(model, seed=3)
    return model


def test_fixed_input_size_no_probabilities_no_class_names(enc_model, tmp_path, rng):
    path = export.export_saved_model(enc_model, str(tmp_path / "enc"), input_size=(64, 64),
                                     probabilities=False, fold_bn=False)
    sig = tf.saved_model.load(path).signatures["serving_default"]
    assert set(sig.structured_outputs) == {"class_map"}
    image = rng.randint(0, 256, (1, 50, 70, 3)).astype(np.uint8)
    class_map = sig(image_tensor=tf.constant(image))["class_map"].numpy()
    # The network runs at 64x64; its scores (exp of the logits) are resized back
    # to 50x70, as the official evaluator resizes each scale's scores.
    x = resize_bilinear(tf.constant(image, tf.float32), (64, 64))
    scores = resize_bilinear(keras.ops.exp(enc_model(x, training=False)), (50, 70))
    assert class_map.shape == (1, 50, 70)
    assert (class_map == keras.ops.convert_to_numpy(scores).argmax(-1)).mean() >= 0.999


def test_a_model_declared_at_a_fixed_size_is_exported_at_it(tmp_path, rng):
    """A model built on `keras.Input((48, 40, 3))` (Keras runs it at no other size)
    was exported for any size: ONNX and the SavedModel ran it on 30x50 images. They
    now run it at its size, as TFLite did: ONNX takes 48x40 only, the SavedModel
    resizes (the class map comes back at the image's size)."""
    inputs = keras.Input((48, 40, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    onnx_file = export.export_onnx(model, str(tmp_path / "m.onnx"))
    predictor = ExportPredictor(onnx_file)
    assert predictor.input_size == (48, 40)
    with pytest.raises(ValueError, match="takes 48x40 images"):
        predictor(np.zeros((1, 30, 50, 3), np.float32))
    saved = export.export_saved_model(model, str(tmp_path / "sm"))
    sig = tf.saved_model.load(saved).signatures["serving_default"]
    image = rng.randint(0, 256, (1, 30, 50, 3)).astype(np.uint8)
    assert sig(image_tensor=tf.constant(image))["class_map"].shape == (1, 30, 50)
    with open(os.path.join(saved, "keras_fastfcn_export.json")) as f:
        assert json.load(f)["options"]["input_size"] == [48, 40]


def test_multiscale_flip_in_graph(enc_model, tmp_path, rng):
    """In-graph scales + flip give the inference module's whole-image ensemble."""
    path = export.export_saved_model(enc_model, str(tmp_path / "ms"), scales=(0.75, 1.0),
                                     flip=True)
    sig = tf.saved_model.load(path).signatures["serving_float"]
    for shape in [(2, 64, 64, 3), (1, 67, 90, 3)]:
        image = rng.uniform(0, 255, shape).astype(np.float32)
        out = sig(image_tensor=tf.constant(image))
        ref = inference.normalize_scores(
            inference.predict(enc_model, image, scales=(0.75, 1.0), flip=True)).numpy()
        assert_agrees(out["probabilities"].numpy(), out["class_map"].numpy(), ref)


def official_ensemble_f64(net, image, scales, flip):
    """The official evaluator's whole-image scores in float64: per scale
    `exp(z + flip(z'))` resized to the image (align_corners=True) and summed. Finite
    for logits up to ~350 (flip doubles them; float64 exp overflows at 709)."""
    import torch
    import torch.nn.functional as F

    image = np.asarray(image, np.float32)
    h, w = image.shape[1:3]
    total = 0.0
    for scale in scales:
        size = inference.scaled_size(h, w, scale)
        x = resize_bilinear(tf.constant(image), size)
        z = np.asarray(net(x, training=False), np.float64)
        if flip:
            z = z + np.asarray(net(x[:, :, ::-1], training=False), np.float64)[:, :, ::-1]
        e = torch.from_numpy(np.exp(z)).permute(0, 3, 1, 2)
        total = total + F.interpolate(e, (h, w), mode="bilinear", align_corners=True)
    total = total.permute(0, 2, 3, 1).numpy()
    assert np.isfinite(total).all()
    return total


def test_ms_flip_exports_of_a_confident_model_match_the_official_ensemble(
        tmp_path, rng, tiny_backbone):
    """Logits in the hundreds (as a trained model's): the `--ms` class maps of every
    format equal the float64 official ensemble (a per-image exp shift sent 99% of
    such pixels to class 0)."""
    from conftest import make_confident

    keras.utils.set_random_seed(5)
    model = kf.FastFCN(num_classes=5, head="fcn", backbone=tiny_backbone, jpu_width=32)
    image = rng.uniform(0, 255, (1, 48, 64, 3)).astype(np.float32)
    make_confident(model, image, peak=300.0)
    logits = np.asarray(model(image, training=False))
    assert np.abs(logits).max() > 250 and np.median(logits.max(-1)) < logits.max() - 50
    ref = official_ensemble_f64(model, image, inference.MS_SCALES, flip=True)
    expected = ref.argmax(-1)
    options = dict(scales=inference.MS_SCALES, flip=True)

    ours = inference.predict(model, image, **options).numpy()
    assert (ours.argmax(-1) == expected).mean() >= 0.999

    # The exports with two scales + flip: the same ensemble code as `--ms` (whose
    # six-scale graph takes minutes to save and convert).
    options = dict(scales=(0.75, 1.25), flip=True)
    ref = official_ensemble_f64(model, image, options["scales"], flip=True)
    expected = ref.argmax(-1)
    path = export.export_saved_model(model, str(tmp_path / "sm"), **options)
    out = tf.saved_model.load(path).signatures["serving_float"](image_tensor=tf.constant(image))
    assert (out["class_map"].numpy() == expected).mean() >= 0.999
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs, ref / ref.sum(-1, keepdims=True), atol=2e-3)

    ort = pytest.importorskip("onnxruntime")
    onnx_path = export.export_onnx(model, str(tmp_path / "m.onnx"), **options)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    class_map, _ = sess.run(None, {"images": image})
    assert (class_map == expected).mean() >= 0.999

    tfl = export.export_tflite(model, str(tmp_path / "m.tflite"), input_size=(48, 64),
                               **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = tf.lite.Interpreter(tfl).get_signature_runner()
    assert (runner(images=image)["class_map"] == expected).mean() >= 0.999

    # Single scale: the class map is the logits' argmax (no exponentials).
    single = export.export_saved_model(model, str(tmp_path / "single"), fold_bn=False)
    out = tf.saved_model.load(single).signatures["serving_float"](image_tensor=tf.constant(image))
    assert (out["class_map"].numpy() == logits.argmax(-1)).mean() >= 0.9999


def test_refuses_existing_version_and_reports_bad_paths(fcn_model, saved_model_dir, tmp_path):
    with pytest.raises(FileExistsError, match="Version 1 already exists"):
        export.export_saved_model(fcn_model, saved_model_dir)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        export.export_saved_model(fcn_model, str(blocker / "models" / "demo"))
    with pytest.raises(ValueError, match="segmentation model must take RGB images"):
        export.export_saved_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
                                  str(tmp_path / "seq"))
    with pytest.raises(ValueError, match="must end in .onnx"):
        export.export_onnx(fcn_model, str(tmp_path / "model.bin"))
    with pytest.raises(ValueError, match="fixed input size"):
        export.export_tflite(fcn_model, str(tmp_path / "model.tflite"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write to read-only folders")
def test_unwritable_folder(fcn_model, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="Cannot"):
            export.export_saved_model(fcn_model, str(folder / "demo"))
    finally:
        folder.chmod(0o700)


def test_failed_export_leaves_nothing(fcn_model, tmp_path, monkeypatch):
    """A write that fails half way leaves nothing: not the version folder, not the
    base folder the export created."""
    def broken_write(endpoints, path):
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    from keras_fastfcn.serving import saved_model

    monkeypatch.setattr(saved_model, "write_saved_model", broken_write)
    base = tmp_path / "demo"
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(fcn_model, str(base / "7"))
    assert os.listdir(tmp_path) == []


def test_resolve_version_dir(tmp_path):
    base = tmp_path / "demo"
    assert export.resolve_version_dir(str(base)) == (str(base), 1)
    (base / "1").mkdir(parents=True)
    (base / "12").mkdir()
    (base / ".13.tmp").mkdir()  # an unfinished export is not a version
    assert export.resolve_version_dir(str(base)) == (str(base), 13)
    assert export.resolve_version_dir(str(base / "5")) == (str(base), 5)
    # A plain SavedModel folder (not NAME/VERSION) is not a TF Serving base.
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="itself a SavedModel"):
        export.resolve_version_dir(str(tmp_path / "plain"))


# --- CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(fcn_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fcn.keras"
    fcn_model.save(path)
    return str(path)


def test_cli_export_picks_next_version(model_file, saved_model_dir, capsys):
    base = os.path.dirname(saved_model_dir)
    code = cli.main(["export", "--model", model_file, "--output", base, "--no-probabilities",
                     "--no-fold-bn"])
    assert code == 0, capsys.readouterr().err
    assert "exported saved_model to" in capsys.readouterr().out
    assert sorted(os.listdir(base)) == ["1", "2"]
    sig = tf.saved_model.load(os.path.join(base, "2")).signatures["serving_image_bytes"]
    assert set(sig.structured_outputs) == {"class_map", "class_names"}


def test_cli_errors(model_file, saved_model_dir, tmp_path, capsys):
    other = tmp_path / "dense.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(other)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["--model", str(other), "--output", str(tmp_path / "x")], "not a segmentation model"),
        (["--model", model_file, "--output", saved_model_dir], "already exists"),
        (["--model", model_file, "--output", str(blocker / "m")], "is a file, not a folder"),
        (["--model", str(tmp_path / "missing.keras"), "--output", str(tmp_path / "y")],
         "not found"),
        (["--model", model_file, "--format", "tflite", "--output", str(tmp_path / "m.tflite")],
         "--input-size"),
    ]
    for args, message in cases:
        assert cli.main(["export"] + args) == 1
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "Traceback" not in err


# --- ONNX and TFLite ------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_path(fcn_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "fastfcn.onnx")
    return export.export_onnx(fcn_model, path)


def dilated_conv_rates(proto):
    """The sorted rates of the ONNX graph's dilated Conv nodes, after asserting that no
    dilated conv is tf2onnx's SpaceToDepth/DepthToSpace rendering of TensorFlow's
    space-to-batch, and that each keeps its "same" padding in the Conv, not in a Pad
    before it (which int8 quantization would leave in float between a dequantize and a
    quantize)."""
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"SpaceToDepth", "DepthToSpace"}, sorted(ops)
    producers = {out: node for node in proto.graph.node for out in node.output}
    rates = []
    for node in proto.graph.node:
        attrs = {a.name: list(a.ints) for a in node.attribute}
        if node.op_type == "Conv" and max(attrs.get("dilations", [1])) > 1:
            rates.append(max(attrs["dilations"]))
            assert attrs["pads"] == [rates[-1]] * 4, attrs
            assert producers[node.input[0]].op_type != "Pad"
    return sorted(rates)


def test_onnx_agrees_with_keras_at_any_size(fcn_model, images, onnx_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    proto = onnx.load(onnx_path)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)"
    assert inp.shape == ["batch", "height", "width", 3]
    assert [o.name for o in sess.get_outputs()] == ["class_map", "probabilities"]
    # The JPU's dilated depthwise convs are single dilated Conv nodes.
    assert dilated_conv_rates(proto) == [2, 4, 8]
    # Each resize (the JPU's two upsamplings, the logits) is one ONNX Resize
    # (fold.native_resizes), not gathers.
    producers = {out: node for node in proto.graph.node for out in node.output}
    resizes = [{a.name: a.s for a in node.attribute} for node in proto.graph.node
               if node.op_type == "Resize"]
    assert [r["coordinate_transformation_mode"] for r in resizes] == [b"align_corners"] * 3
    assert {producers[node.input[0]].op_type for node in proto.graph.node
            if node.op_type == "Gather"} <= {"Shape"}  # sizes only, no pixel gathers
    for batch in images:
        class_map, probs = sess.run(None, {"images": batch.astype(np.float32)})
        assert_agrees(probs, class_map, keras_probabilities(fcn_model, batch))


def test_onnx_aspp_branches_are_single_dilated_convs(tiny_backbone, images, tmp_path):
    """The DeepLab head's ASPP branches (rates 12, 24, 36) export as dilated Conv nodes
    with their padding inside (fold.pad_dilated_convs, serving.onnx._fuse_pad_into_conv),
    like the JPU's, and the export agrees with Keras (rates larger than the 8x8 to
    12x10 maps of these images included)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(1)
    model = kf.FastFCN(num_classes=3, head="deeplab", backbone=tiny_backbone, jpu_width=32)
    randomize_batchnorms(model)
    path = export.export_onnx(model, str(tmp_path / "deeplab.onnx"))
    assert dilated_conv_rates(onnx.load(path)) == [2, 4, 8, 12, 24, 36]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in images:
        class_map, probs = sess.run(None, {"images": batch.astype(np.float32)})
        assert_agrees(probs, class_map, keras_probabilities(model, batch))


def run_onnx(proto, x):
    """The outputs of the ONNX model `proto` on input `x` (named "x"), in ONNX Runtime."""
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_fuse_pad_into_conv_only_where_it_is_the_same_graph():
    """A zero constant Pad of the spatial dims that feeds only a Conv becomes (part of)
    the conv's pads; a Pad of another value or mode, of the channels, or with another
    reader stays."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from keras_fastfcn.serving.onnx import _fuse_pad_into_conv

    rng = np.random.RandomState(0)
    w = numpy_helper.from_array(rng.randn(4, 1, 3, 3).astype(np.float32), "w")
    inits = [w, numpy_helper.from_array(np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64), "sp"),
             numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64), "ch"),
             numpy_helper.from_array(np.array(1.5, np.float32), "one")]

    def conv(name, source, pads=(0, 0, 0, 0)):
        return helper.make_node("Conv", [source, "w"], [name], group=4, dilations=[2, 2],
                                kernel_shape=[3, 3], pads=list(pads))

    nodes = [helper.make_node("Pad", ["x", "sp"], ["p1"]), conv("a", "p1", (1, 1, 1, 1)),
             helper.make_node("Pad", ["x", "sp", "one"], ["p2"]), conv("b", "p2"),  # 1.5
             helper.make_node("Pad", ["x", "sp"], ["p3"]), conv("c", "p3"),  # two readers
             helper.make_node("Relu", ["p3"], ["d"]),
             helper.make_node("Pad", ["x", "ch"], ["p4"]),  # pads the channels: stays
             helper.make_node("ReduceSum", ["p4"], ["e"], keepdims=1),
             helper.make_node("Pad", ["x", "sp"], ["p5"], mode="reflect"), conv("f", "p5")]
    shapes = {"a": [1, 4, 10, 10], "b": [1, 4, 8, 8], "c": [1, 4, 8, 8],
              "d": [1, 4, 12, 12], "e": [1, 1, 1, 1], "f": [1, 4, 8, 8]}
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
               for n, shape in shapes.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 4, 8, 8])], outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.randn(1, 4, 8, 8).astype(np.float32)

    before = run_onnx(proto, x)
    assert _fuse_pad_into_conv(proto) == 1
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node].count("Pad") == 4
    fused = next(n for n in proto.graph.node if n.output[0] == "a")
    # The conv's own padding (1) plus the Pad's (2), per side.
    assert fused.input[0] == "x" and list(fused.attribute[-1].ints) == [3, 3, 3, 3]
    for want, got in zip(before, run_onnx(proto, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cancel_layout_transposes_only_where_it_is_the_same_graph():
    """A product of a transposed map and a small (per-sample, per-channel) tensor whose
    only readers transpose it back loses both transposes; a pair of inverse transposes
    cancels; a product with a full-size tensor, one read in its transposed layout, and
    a transpose that is a graph output stay. Same values, bit for bit."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from keras_fastfcn.serving.onnx import _cancel_layout_transposes

    nhwc, nchw = [0, 2, 3, 1], [0, 3, 1, 2]

    def transpose(source, name, perm):
        return helper.make_node("Transpose", [source], [name], perm=perm)

    relu = lambda source, name: helper.make_node("Relu", [source], [name])  # noqa: E731
    nodes = [transpose("x", "t", nhwc),  # x NCHW (B, 4, 5, 6) -> t NHWC (B, 5, 6, 4)
             helper.make_node("Sub", ["g", "t"], ["m"]),  # g (B, 1, 1, 4): rewritten
             transpose("m", "a", nchw), relu("a", "ra"),
             helper.make_node("Div", ["t", "g"], ["d"]),  # also read as NHWC: stays
             transpose("d", "b", nchw), relu("b", "rb"), relu("d", "c"),
             helper.make_node("Mul", ["t", "full"], ["f"]),  # full-size operand: stays
             transpose("f", "e", nchw), relu("e", "re"),
             transpose("t", "back", nchw),  # cancels: back is x
             helper.make_node("Add", ["back", "x"], ["h"]),
             transpose("x", "out", nhwc)]  # a graph output: stays
    float_input = lambda name, shape: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, shape)
    inputs = [float_input("x", ["b", 4, 5, 6]), float_input("g", ["b", 1, 1, 4]),
              float_input("full", ["b", 5, 6, 4])]
    outputs = [float_input(name, ["b", 4, 5, 6]) for name in ("ra", "rb", "re", "h")]
    outputs += [float_input(name, ["b", 5, 6, 4]) for name in ("c", "out")]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.RandomState(0)
    feeds = {"x": rng.randn(2, 4, 5, 6), "g": rng.randn(2, 1, 1, 4) + 3.0,
             "full": rng.randn(2, 5, 6, 4)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}

    def run(model):
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)

    before = run(proto)
    # Removed: a and back; added: g's transpose; t stays for d and f.
    assert _cancel_layout_transposes(proto) == 1
    onnx.checker.check_model(proto)
    producers = {out: node for node in proto.graph.node for out in node.output}
    sub = producers[producers["ra"].input[0]]
    assert sub.op_type == "Sub" and sub.input[1] == "x"
    assert producers[sub.input[0]].op_type == "Transpose"  # g's, (B, 4, 1, 1)
    assert producers["h"].input[0] == "x"
    assert {producers[name].op_type for name in ("b", "e", "out")} == {"Transpose"}
    for want, got in zip(before, run(proto)):
        np.testing.assert_array_equal(got, want)
    assert _cancel_layout_transposes(proto) == 0


def test_onnx_encnet_attention_has_no_layout_transposes(enc_model, images, tmp_path):
    """EncNet's channel attention (`x + x * gamma`) runs in the ONNX graph's
    channels-first layout (serving.onnx._cancel_layout_transposes): the head's
    (B, C, H, W) feature map is transposed once, into the Encoding's reshape, and the
    export agrees with Keras."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = export.export_onnx(enc_model, str(tmp_path / "enc.onnx"))
    proto = onnx.load(path)
    producers = {out: node for node in proto.graph.node for out in node.output}
    to_nhwc = [node for node in proto.graph.node if node.op_type == "Transpose"
               and [list(a.ints) for a in node.attribute] == [[0, 2, 3, 1]]]
    # Into the Encoding's reshape, and the probabilities output.
    assert sorted(producers[node.input[0]].op_type for node in to_nhwc) == ["Relu", "Softmax"]
    attention = [node for node in proto.graph.node
                 if node.op_type == "Mul" and "encmodule" in node.name
                 and any(producers.get(i) is not None and producers[i].op_type == "Relu"
                         for i in node.input)]
    assert len(attention) == 1  # x * gamma, on the conv's channels-first output
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in images:
        class_map, probs = sess.run(None, {"images": batch.astype(np.float32)})
        assert_agrees(probs, class_map, keras_probabilities(enc_model, batch))


@pytest.mark.parametrize("opset", [17, 18])
def test_argmax_as_reductions_keeps_the_first_maximum(opset):
    """The OpenVINO export's ArgMax rewrite gives ONNX's ArgMax indices exactly: ties
    (many, from small integers) to the lowest index, any axis, with and without
    keepdims, before and after opset 18 moved the reduce axes into an input."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from keras_fastfcn.serving.openvino import argmax_as_reductions

    x = np.random.RandomState(0).randint(0, 3, (2, 5, 4, 6)).astype(np.float32)
    x[0, :, 0, 0] = 7.0  # a whole row tied
    cases = [(1, 0, [2, 4, 6]), (-1, 1, [2, 5, 4, 1]), (0, 0, [5, 4, 6])]
    nodes = [helper.make_node("ArgMax", ["x"], [f"y{i}"], axis=axis, keepdims=keep)
             for i, (axis, keep, _) in enumerate(cases)]
    nodes.append(helper.make_node("ArgMax", ["x"], ["last"], axis=1, keepdims=0,
                                  select_last_index=1))  # another rule: left alone
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.INT64, shape)
               for i, (_, _, shape) in enumerate(cases)]
    outputs.append(helper.make_tensor_value_info("last", TensorProto.INT64, [2, 4, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["b", 5, "h", "w"])], outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    before = run_onnx(proto, x)
    assert argmax_as_reductions(proto) == 3
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node].count("ArgMax") == 1
    after = run_onnx(proto, x)
    for want, got in zip(before, after):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert (after[0][0, 0, 0] == 0) and (after[-1][0, 0, 0] == 4)
    assert argmax_as_reductions(proto) == 0  # nothing left to rewrite


def test_onnx_refuses_overwrite(fcn_model, onnx_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_onnx(fcn_model, onnx_path)


def test_tflite_agrees_with_keras(fcn_model, tmp_path, rng):
    path = export.export_tflite(fcn_model, str(tmp_path / "fastfcn.tflite"), input_size=(64, 80))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(path)
    runner = interpreter.get_signature_runner()
    image = rng.randint(0, 256, (1, 64, 80, 3)).astype(np.float32)
    out = runner(images=image)
    assert_agrees(out["probabilities"], out["class_map"], keras_probabilities(fcn_model, image))
    # The class names and options travel in the file, as in ONNX and OpenVINO exports.
    predictor = ExportPredictor(path)
    assert predictor.class_names == CLASS_NAMES and predictor.num_classes == 3
    assert predictor.options["precision"] == "fp32"
    assert predictor.options["input_size"] == [64, 80]
    assert "precision=fp32" in predictor.describe()
    np.testing.assert_array_equal(predictor(image), out["class_map"])


# --- REST client ----------------------------------------------------------------


class FakeTFServing(http.server.BaseHTTPRequestHandler):
    """Just enough of TF Serving's REST `:predict` (row format) to test the client.

    Follows the documented JSON mapping: `{"b64": ...}` for binary inputs, a bare
    value per instance for a single-input signature, `{"predictions": [...]}` with
    one object per instance for several outputs, `{"error": ...}` on failure.
    """

    signatures = None

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sig = self.signatures[body.get("signature_name", "serving_default")]
        (arg,) = sig.structured_input_signature[1]
        values = [inst[arg] if isinstance(inst, dict) and arg in inst else inst
                  for inst in body["instances"]]
        values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in values]
        try:
            out = sig(**{arg: tf.constant(values)})
        except tf.errors.InvalidArgumentError as err:
            return self._reply(400, {"error": err.message})
        out = {k: v.numpy() for k, v in out.items()}
        rows = [{k: (v[i].astype(str).tolist() if v.dtype.kind in "SO" else v[i].tolist())
                 for k, v in out.items()} for i in range(len(values))]
        self._reply(200, {"predictions": rows})

    def _reply(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_serving_client_round_trip(loaded, images, tmp_path):
    FakeTFServing.signatures = loaded.signatures
    server = http.server.HTTPServer(("127.0.0.1", 0), FakeTFServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        batch = images[1]
        files = []
        for i, image in enumerate(batch):
            files.append(tmp_path / f"{i}.png")
            files[-1].write_bytes(png_bytes(image))
        request = serving_client.build_predict_request(files)
        assert request["signature_name"] == "serving_image_bytes"
        assert base64.b64decode(request["instances"][0]["b64"]) == files[0].read_bytes()
        results = serving_client.predict(url, "fastfcn", files)
        direct = loaded.signatures["serving_default"](image_tensor=tf.constant(batch))
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result["class_map"], direct["class_map"][i].numpy())
            assert result["class_names"] == CLASS_NAMES
            mask = serving_client.colorize(result["class_map"], len(CLASS_NAMES))
            assert mask.shape == batch.shape[1:] and mask.dtype == np.uint8
        # The CLI writes one colour mask per image.
        assert serving_client.main([str(files[0]), "--url", url, "--model", "fastfcn",
                                    "--output-dir", str(tmp_path / "masks")]) == 0
        saved = np.asarray(Image.open(tmp_path / "masks" / "0_mask.png"))
        np.testing.assert_array_equal(
            saved, serving_client.colorize(results[0]["class_map"], len(CLASS_NAMES)))
        # A grayscale file is sent as the package reads it (RGB); raw grayscale
        # bytes reach the signature, whose error comes back as the server's message.
        gray = tmp_path / "gray.png"
        gray.write_bytes(png_bytes(batch[0, :, :, 0]))
        (result,) = serving_client.predict(url, "fastfcn", [gray])
        rgb = np.repeat(batch[:1, :, :, :1], 3, axis=-1)
        direct = loaded.signatures["serving_default"](image_tensor=tf.constant(rgb))
        np.testing.assert_array_equal(result["class_map"], direct["class_map"][0].numpy())
        with pytest.raises(RuntimeError, match="does not have 3 channels"):
            serving_client.predict(url, "fastfcn", [png_bytes(batch[0, :, :, 0])])
    finally:
        server.shutdown()
        server.server_close()


def test_serving_client_helpers():
    assert (serving_client.predict_url("http://h:8501/", "m", 3)
            == "http://h:8501/v1/models/m/versions/3:predict")
    palette = serving_client.get_palette(5)
    assert palette.shape == (5, 3) and len({tuple(c) for c in palette}) == 5
    # A single-output model: TF Serving drops the output name.
    (result,) = serving_client.parse_predictions({"predictions": [[[0, 1], [1, 0]]]})
    assert result["class_map"].tolist() == [[0, 1], [1, 0]]
    with pytest.raises(RuntimeError, match="bad input"):
        serving_client.parse_predictions({"error": "bad input"})
    with pytest.raises(ValueError, match="do not fit"):
        serving_client.colorize(np.array([[0, 7]]), palette=palette)


def test_in_graph_checks_of_a_saved_model(fcn_model, tmp_path):
    """Requests the signature shape does not stop (TF Serving feeds any tensor): each
    fails with the export's own one-line message, never a slicing error deep in a conv."""
    path = export.export_saved_model(fcn_model, str(tmp_path / "sm"), max_pixels=1000)
    signatures = tf.saved_model.load(path).signatures
    cases = [
        ("serving_default", np.zeros((1, 40, 40, 3), np.uint8), "limit of 1000 pixels"),
        ("serving_default", np.zeros((20, 20, 3), np.uint8), "4-D batch"),
        ("serving_default", np.zeros((0, 20, 20, 3), np.uint8), "batch is empty"),
        ("serving_float", np.full((1, 20, 20, 3), np.nan, np.float32), "NaN or infinite"),
    ]
    for name, value, fragment in cases:
        with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
            signatures[name](image_tensor=tf.constant(value))
    ok = signatures["serving_default"](image_tensor=tf.zeros((1, 20, 30, 3), tf.uint8))
    assert tuple(ok["class_map"].shape) == (1, 20, 30)
    with pytest.raises(ValueError, match="inside the SavedModel"):
        export.export_saved_model(fcn_model, os.path.join(path, "variables"))
