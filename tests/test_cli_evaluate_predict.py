"""`keras-fastfcn evaluate` and `predict` end to end on a tiny FastFCN, plus bad input."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_fastfcn
from harness import assert_one_line_error, run_cli
from keras_fastfcn import data, inference
from keras_fastfcn.metrics import SegmentationMetric

NAMES = ["sky", "road", "car"]
PALETTE = data.palettes.get_palette(None, 3)  # the model has no `dataset`: generated


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, tiny_backbone):
    # Seeded: the tests below need its random weights to tell several classes apart
    # once made confident, which some unseeded draws did not (a flaky failure).
    keras.utils.set_random_seed(0)
    model = keras_fastfcn.FastFCN(num_classes=3, head="fcn", backbone=tiny_backbone,
                                  jpu_width=64, class_names=NAMES)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def examples():
    rng = np.random.RandomState(1)
    out = []
    for h, w in [(64, 80), (72, 64), (64, 96)]:
        image = rng.randint(0, 256, (h, w, 3)).astype("uint8")
        label = rng.randint(0, 3, (h, w)).astype("int32")
        label[: h // 4] = 255
        out.append((image, label))
    return out


@pytest.fixture(scope="module")
def folder_spec(tmp_path_factory, examples):
    """`folder:PATH` data: val/images/*.png, val/labels/*.png and classes.txt."""
    root = tmp_path_factory.mktemp("folder_data")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    for k, (image, label) in enumerate(examples):
        Image.fromarray(image).save(root / "val" / "images" / f"{k}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "val" / "labels" / f"{k}.png")
    return f"folder:{root}"




# ------------------------------------------------------------------------ evaluate


def test_evaluate_table_json_and_values(capsys, tmp_path, model_path, folder_spec, examples):
    out_json = tmp_path / "res" / "results.json"
    rc, out, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", folder_spec,
                           "--output", out_json)
    assert rc == 0, err
    for fragment in ["pixAcc", "mIoU_present", "official", "sky", "road", "car", "3/3"]:
        assert fragment in out
    report = json.loads(out_json.read_text())
    assert report["images"] == 3 and report["split"] == "val"
    assert report["inference"] == {"mode": "whole", "scales": [1.0], "flip": False,
                                   "crop_size": None, "base_size": None,
                                   "jit_compile": False, "fold_batchnorm": True, "precision": "fp32",
                                   "freeze": False}
    assert [c["name"] for c in report["per_class"]] == NAMES  # the model's names win

    model = inference.load_model(model_path)
    predictor = inference.Predictor(model, fold_batchnorm=True)  # as the CLI
    ref = SegmentationMetric(3)
    for image, label in examples:
        ref.update(label, predictor(image[None]).numpy()[0])
    expected = ref.result()
    for key in ["pixAcc", "mIoU", "mIoU_present", "IoU", "labeled_pixels"]:
        assert report[key] == pytest.approx(expected[key])
    assert not [p for p in os.listdir(out_json.parent) if p.startswith(".")]  # no temp left


def test_evaluate_data_options_as_in_training(capsys, tmp_path, model_path, folder_spec,
                                             examples):
    """`--data-option` gives the source the training config's data.options: a folder
    without classes.txt takes num_classes, and ignore_index scores as training did
    (here label 2 ignored, as a 255 pixel); an unknown option or a bad item is refused."""
    root = tmp_path / "data"
    shutil.copytree(folder_spec.split(":", 1)[1], root)
    (root / "classes.txt").unlink()
    spec = f"folder:{root}"
    assert_one_line_error(*run_cli(capsys, "evaluate", "--model", model_path, "--data", spec)[::2],
                          "has no classes.txt", "--data-option num_classes=N")
    out_json = tmp_path / "results.json"
    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", spec,
                         "--data-option", "num_classes=3", "--data-option", "ignore_index=2",
                         "--output", out_json)
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    model = inference.load_model(model_path)
    predictor = inference.Predictor(model, fold_batchnorm=True)
    ref = SegmentationMetric(3)
    for image, label in examples:
        ref.update(np.where(label == 2, 255, label), predictor(image[None]).numpy()[0])
    assert report["labeled_pixels"] == ref.result()["labeled_pixels"]
    assert report["pixAcc"] == pytest.approx(ref.result()["pixAcc"])
    assert report["labeled_pixels"] < sum(int((lab != 255).sum()) for _, lab in examples)
    assert_one_line_error(*run_cli(capsys, "evaluate", "--model", model_path, "--data", spec,
                                   "--data-option", "num_clases=3")[::2],
                          "unknown option(s) num_clases")
    with pytest.raises(SystemExit):
        run_cli(capsys, "evaluate", "--model", model_path, "--data", spec,
                "--data-option", "num_classes")
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_evaluate_scores_onnx_and_tflite_exports_like_the_keras_model(
        capsys, tmp_path, model_path, folder_spec, examples):
    """`evaluate --model m.onnx` runs the export (ONNX Runtime) through the same metric:
    for a confident model the same pixAcc / mIoU as the .keras file. The export's options
    are fixed, so inference flags are refused; a fixed-size TFLite export scores the
    images of its size and names the mismatch of the next one."""
    pytest.importorskip("onnxruntime")
    from conftest import make_confident

    from keras_fastfcn import serving

    model = inference.load_model(model_path)
    make_confident(model, np.stack([examples[0][0]]).astype("float32"), peak=300.0)
    confident = tmp_path / "confident.keras"
    model.save(confident)
    onnx_path = serving.export(model, str(tmp_path / "m.onnx"), format="onnx")
    reports = {}
    for path in (confident, onnx_path):
        out_json = tmp_path / f"{os.path.basename(path)}.json"
        rc, out, err = run_cli(capsys, "evaluate", "--model", path, "--data", folder_spec,
                               "--output", out_json)
        assert rc == 0, err
        reports[path] = json.loads(out_json.read_text())
    keras_report, onnx_report = reports[confident], reports[onnx_path]
    assert 0.1 < keras_report["pixAcc"] < 0.9  # not vacuous: a real mix of classes
    for key in ("pixAcc", "mIoU", "labeled_pixels"):
        assert onnx_report[key] == pytest.approx(keras_report[key], abs=1e-4)
    assert onnx_report["inference"]["export"] == "onnx"
    assert onnx_report["inference"]["precision"] == "fp32"
    assert [c["name"] for c in onnx_report["per_class"]] == NAMES  # from its metadata

    rc, _, err = run_cli(capsys, "evaluate", "--model", onnx_path, "--data", folder_spec,
                         "--flip", "--precision", "bf16")
    assert_one_line_error(rc, err, "is an export", "--flip, --precision")

    h, w = examples[0][0].shape[:2]
    tflite_path = serving.export(model, str(tmp_path / "m.tflite"), format="tflite",
                                 input_size=(h, w))
    rc, _, err = run_cli(capsys, "evaluate", "--model", tflite_path, "--data", folder_spec)
    other = examples[1][0].shape
    assert_one_line_error(rc, err, f"takes {h}x{w} images",
                          f"this one is {other[0]}x{other[1]}")
    rc, out, err = run_cli(capsys, "evaluate", "--model", tflite_path, "--data", folder_spec,
                           "--limit", "1")
    assert rc == 0 and "tflite export" in out, err


def test_evaluate_slide_ms_options(capsys, model_path, folder_spec):
    rc, out, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", folder_spec,
                           "--mode", "slide", "--crop-size", "48", "--scales", "0.75,1.0",
                           "--flip", "--freeze", "--limit", "2", "--quiet")
    assert rc == 0, err
    assert "mode=slide scales=[0.75, 1.0] flip=True crop_size=48" in out
    assert out.split("crop_size=48")[1].split("\n")[0].endswith(" freeze")
    assert "2 images" in out


def test_evaluate_bad_input(capsys, tmp_path, model_path, folder_spec):
    rc, _, err = run_cli(capsys, "evaluate", "--model", tmp_path / "nope.keras",
                         "--data", folder_spec)
    assert_one_line_error(rc, err, "Model file not found")

    junk = tmp_path / "junk.keras"
    junk.write_bytes(os.urandom(1000))
    rc, _, err = run_cli(capsys, "evaluate", "--model", junk, "--data", folder_spec)
    assert_one_line_error(rc, err, "not a Keras model file")

    seq = tmp_path / "seq.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(seq)
    rc, _, err = run_cli(capsys, "evaluate", "--model", seq, "--data", folder_spec)
    assert_one_line_error(rc, err, "seq.keras", "not a segmentation model")

    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", folder_spec,
                         "--output", tmp_path)
    assert_one_line_error(rc, err, "is a folder")

    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", "nosuch")
    assert_one_line_error(rc, err, "unknown dataset 'nosuch'")

    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", folder_spec,
                         "--ms", "--scales", "1.0")
    assert_one_line_error(rc, err, "--ms and --scales")

    four = tmp_path / "four.keras"
    keras_fastfcn.FastFCN(num_classes=4, head="fcn", backbone="tiny_resnet",
                          jpu_width=64).save(four)
    out_json = tmp_path / "never.json"
    rc, _, err = run_cli(capsys, "evaluate", "--model", four, "--data", folder_spec,
                         "--output", out_json)
    assert_one_line_error(rc, err, "predicts 4 classes", "has 3")
    assert not out_json.exists()


# ------------------------------------------------------------------------- predict


@pytest.fixture
def photo_dir(tmp_path):
    rng = np.random.RandomState(2)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.randint(0, 256, (64, 80, 3)).astype("uint8")).save(folder / "street.jpg")
    Image.fromarray(rng.randint(0, 256, (90, 70)).astype("uint8"), "L").save(folder / "gray.png")
    Image.fromarray(rng.randint(0, 256, (66, 66, 4)).astype("uint8"), "RGBA").save(
        folder / "alpha.png")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_predict_writes_three_files_per_image(capsys, tmp_path, model_path, photo_dir):
    out_dir = tmp_path / "out" / "pred"
    rc, out, err = run_cli(capsys, "predict", "--model", model_path, "--input", photo_dir,
                           "--output", out_dir, "--flip")
    assert rc == 0, err
    assert "gray.png: grayscale image (mode L) converted to RGB" in err
    assert "alpha.png: image with transparency (mode RGBA) converted to RGB" in err
    expected = {f"{stem}{suffix}" for stem in ["street", "gray", "alpha"]
                for suffix in ["_labels.png", "_color.png", "_overlay.png"]}
    assert set(os.listdir(out_dir)) == expected  # nothing else: no temporaries
    for stem, size in [("street", (80, 64)), ("gray", (70, 90)), ("alpha", (66, 66))]:
        labels = Image.open(out_dir / f"{stem}_labels.png")
        color = Image.open(out_dir / f"{stem}_color.png")
        overlay = Image.open(out_dir / f"{stem}_overlay.png")
        assert labels.mode == "L" and labels.size == size
        assert color.mode == "RGB" and color.size == size
        lab = np.asarray(labels)
        assert lab.max() < 3
        rgb = np.asarray(color)
        assert {tuple(c) for c in rgb.reshape(-1, 3)} <= {tuple(c) for c in PALETTE}
        np.testing.assert_array_equal(rgb, PALETTE[lab])
        # The overlay keeps the photo's size on the left and adds a legend panel.
        assert overlay.size[0] > size[0] and overlay.size[1] >= size[1]

    # The labels equal the library prediction for the same image and options, except
    # where the random model's top two scores tie within float32 rounding (the command
    # folds BatchNorm, this prediction does not): only there may the argmax differ.
    model = inference.load_model(model_path)
    image = np.asarray(Image.open(photo_dir / "street.jpg").convert("RGB"))
    scores = inference.predict(model, image[None], flip=True).numpy()[0]
    labels = np.asarray(Image.open(out_dir / "street_labels.png"))
    top2 = np.sort(scores, -1)[..., -2:]
    near_tie = top2[..., 1] - top2[..., 0] <= 1e-4 * np.abs(scores).max()
    assert labels.shape == scores.shape[:2]
    assert ((labels == scores.argmax(-1)) | near_tie).all()


def test_predict_single_file_slide(capsys, tmp_path, model_path, photo_dir):
    out_dir = tmp_path / "single"
    rc, _, err = run_cli(capsys, "predict", "--model", model_path,
                         "--input", photo_dir / "street.jpg", "--output", out_dir,
                         "--mode", "slide", "--crop-size", "48")
    assert rc == 0, err
    assert sorted(os.listdir(out_dir)) == ["street_color.png", "street_labels.png",
                                           "street_overlay.png"]


def test_predict_mirrors_subfolders(capsys, tmp_path, model_path, photo_dir):
    """Images in subfolders of --input were left out silently; they are predicted
    into the same subfolders of --output, which is not read as input when it lies
    inside the input folder (the second run finds the same three images)."""
    (photo_dir / "seq01").mkdir()
    (photo_dir / "street.jpg").rename(photo_dir / "seq01" / "street.jpg")
    (photo_dir / "alpha.png").unlink()
    out_dir = photo_dir / "out"
    for _ in range(2):
        rc, out, err = run_cli(capsys, "predict", "--model", model_path,
                               "--input", photo_dir, "--output", out_dir)
        assert rc == 0, err
        assert "Predicting 2 image(s)" in out
    assert sorted(os.listdir(out_dir)) == ["gray_color.png", "gray_labels.png",
                                           "gray_overlay.png", "seq01"]
    assert sorted(os.listdir(out_dir / "seq01")) == [
        "street_color.png", "street_labels.png", "street_overlay.png"]
    assert Image.open(out_dir / "seq01" / "street_labels.png").size == (80, 64)


def test_predict_with_onnx_and_tflite_exports(capsys, tmp_path, model_path, photo_dir):
    """`predict --model m.onnx|m.tflite` writes the same files from the export: the ONNX
    class maps equal the .keras model's on a confident model, with its class names; a
    fixed-size TFLite export without the probabilities output (no class count recorded)
    predicts its own size exactly and resizes other images to it, with a warning; the
    inference flags are refused for an export."""
    pytest.importorskip("onnxruntime")
    from conftest import make_confident

    from keras_fastfcn import serving

    model = inference.load_model(model_path)
    street = np.asarray(Image.open(photo_dir / "street.jpg").convert("RGB"))
    make_confident(model, street[None].astype("float32"), peak=300.0)
    expected = {}
    for stem, name in [("street", "street.jpg"), ("gray", "gray.png"), ("alpha", "alpha.png")]:
        image = np.asarray(Image.open(photo_dir / name).convert("RGB"))
        expected[stem] = np.argmax(np.asarray(inference.predict(model, image[None]))[0], -1)
    assert len(np.unique(expected["street"])) > 1  # not vacuous: several classes

    onnx_path = serving.export(model, str(tmp_path / "m.onnx"), format="onnx")
    out_dir = tmp_path / "onnx_out"
    rc, out, err = run_cli(capsys, "predict", "--model", onnx_path, "--input", photo_dir,
                           "--output", out_dir)
    assert rc == 0, err
    assert "onnx export, precision=fp32" in out
    for stem, labels in expected.items():
        # Another runtime (ONNX Runtime, BN folded): float rounding may flip a near-tie.
        written = np.asarray(Image.open(out_dir / f"{stem}_labels.png"))
        assert written.shape == labels.shape and (written == labels).mean() > 0.999
        np.testing.assert_array_equal(np.asarray(Image.open(out_dir / f"{stem}_color.png")),
                                      PALETTE[written])
    assert re.search(r"\((sky|road|car) ", out), out  # class names from its metadata

    tflite_path = serving.export(model, str(tmp_path / "m.tflite"), format="tflite",
                                 input_size=street.shape[:2], probabilities=False)
    out_dir = tmp_path / "tflite_out"
    rc, out, err = run_cli(capsys, "predict", "--model", tflite_path, "--input", photo_dir,
                           "--output", out_dir)
    assert rc == 0, err
    assert (np.asarray(Image.open(out_dir / "street_labels.png"))
            == expected["street"]).mean() > 0.999
    assert "street.jpg: " not in err  # its own size: no resize
    assert "gray.png: 90x70 (height x width) is not the export's fixed input size; the " \
           "network runs at 64x80" in err
    gray = np.asarray(Image.open(out_dir / "gray_labels.png"))
    assert gray.shape == (90, 70) and gray.max() < 3
    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "gray_color.png")),
                                  PALETTE[gray])  # the generated palette: same colours

    rc, _, err = run_cli(capsys, "predict", "--model", tflite_path, "--input", photo_dir,
                         "--output", tmp_path / "never", "--ms")
    assert_one_line_error(rc, err, "is an export", "--ms")
    assert not (tmp_path / "never").exists()


def test_predict_bad_input(capsys, tmp_path, model_path, photo_dir):
    out_dir = tmp_path / "never"

    def predict(model, src):
        return run_cli(capsys, "predict", "--model", model, "--input", src, "--output", out_dir)

    rc, _, err = predict(model_path, tmp_path / "missing.jpg")
    assert_one_line_error(rc, err, "Input not found")

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = predict(model_path, empty)
    assert_one_line_error(rc, err, "No images in folder")

    rc, _, err = predict(model_path, photo_dir / "notes.txt")
    assert_one_line_error(rc, err, "notes.txt: not an image file")

    # One corrupt image among good ones: nothing is written at all.
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    rc, _, err = predict(model_path, photo_dir)
    assert rc == 1 and "broken.jpg" in err and "nothing was written" in err

    (photo_dir / "broken.jpg").unlink()
    junk = tmp_path / "junk.keras"
    junk.write_bytes(os.urandom(1000))
    rc, _, err = predict(junk, photo_dir)
    assert_one_line_error(rc, err, "not a Keras model file")

    seq = tmp_path / "seq.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(seq)
    rc, _, err = predict(seq, photo_dir)
    assert_one_line_error(rc, err, "not a segmentation model")

    rc, _, err = predict(tmp_path / "nope.keras", photo_dir)
    assert_one_line_error(rc, err, "Model file not found")

    rc, _, err = run_cli(capsys, "predict", "--model", model_path, "--input", photo_dir,
                         "--output", photo_dir)
    assert_one_line_error(rc, err, "must not be the input folder")

    assert not out_dir.exists()
    assert sorted(os.listdir(photo_dir)) == ["alpha.png", "gray.png", "notes.txt", "street.jpg"]


def test_cli_subprocess_exit_code_and_one_line(tmp_path):
    junk = tmp_path / "model.keras"
    junk.write_text("this is not a model")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_FASTFCN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "keras_fastfcn", "predict", "--model", str(junk),
         "--input", str(image), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("keras-fastfcn")]
    assert lines == [f"keras-fastfcn predict: error: {junk} is not a Keras model file "
                     "(.keras, a zip archive written by model.save)."]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- with the real data sources


def test_evaluate_demo_source(capsys, tmp_path, tiny_backbone):
    model_file = tmp_path / "demo.keras"
    keras_fastfcn.FastFCN(num_classes=5, head="fcn", backbone=tiny_backbone, jpu_width=64,
                          dataset="demo").save(
        model_file)
    out_json = tmp_path / "demo.json"
    rc, out, err = run_cli(capsys, "evaluate", "--model", model_file, "--data", "demo",
                           "--limit", "4", "--output", out_json)
    assert rc == 0, err
    report = json.loads(out_json.read_text())
    source = data.get_source("demo")
    assert report["images"] == 4
    assert [c["name"] for c in report["per_class"]] == list(source.class_names)
    assert 0.0 <= report["mIoU"] <= report["mIoU_present"] <= 1.0


def test_camvid_evaluate_and_predict_palette(capsys, tmp_path, camvid_dir, tiny_backbone):
    model_file = tmp_path / "camvid.keras"
    keras_fastfcn.FastFCN(num_classes=11, head="fcn", backbone=tiny_backbone, jpu_width=64,
                          dataset="camvid").save(
        model_file)
    rc, out, err = run_cli(capsys, "evaluate", "--model", model_file,
                           "--data", f"camvid:{camvid_dir}", "--limit", "2", "--quiet")
    assert rc == 0, err
    assert "bicyclist" in out and "2 images" in out

    image = sorted((camvid_dir / "val" / "images").iterdir())[0]
    rc, out, err = run_cli(capsys, "predict", "--model", model_file, "--input", image,
                           "--output", tmp_path / "pred")
    assert rc == 0, err
    palette = data.palettes.get_palette("camvid", 11)
    labels = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_labels.png"))
    color = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_color.png"))
    assert labels.shape == (360, 480) and color.shape == (360, 480, 3)
    np.testing.assert_array_equal(color, palette[labels])


def test_evaluate_reports_bad_labels_in_one_line(capsys, tmp_path, model_path):
    root = tmp_path / "folder"
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "val" / "images" / "a.png")
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(root / "val" / "labels" / "a.png")
    out_json = tmp_path / "never.json"
    rc, _, err = run_cli(capsys, "evaluate", "--model", model_path, "--data", f"folder:{root}",
                         "--output", out_json, "--quiet")
    assert_one_line_error(rc, err, "a.png")
    assert not out_json.exists()
