"""Bad input to `keras-fastfcn predict` and `inference.Predictor`: network inputs over
the pixel budget, crops beyond it, non-finite images, malformed options.

Each refusal happens before any model work: the CLI cases run with `load_model`
replaced by a function that fails the test, the Python cases with the predictor's
forward replaced the same way, so a regression fails at once instead of allocating
the gigabytes the options ask for.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fastfcn import inference
from keras_fastfcn.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_inputs")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "img.png")
    Image.fromarray(np.zeros((4, 600, 3), np.uint8)).save(root / "thin.png")
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs)).save(root / "conv.keras")
    return root


@pytest.fixture(scope="module")
def conv():
    """Any Keras model from images to logits: the smallest one."""
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="logits")(inputs))


def _no_model_work(*args, **kwargs):
    raise AssertionError("the model was loaded or run before the options were refused")


# (arguments after `predict --model M --input IN --output OUT`, fragments of the line)
CLI_CASES = [
    ("{in}/img.png --scales 100",
     ["img.png (64x64)", "--scales", "at scale 100", "6400x6400 = 40960000 pixels",
      "--max-pixels 4194304", "--max-pixels 0: no limit"]),
    ("{in}/img.png --base-size 100000",
     ["--base-size 100000", "100000x100000 = 10000000000 pixels", "--max-pixels 4194304"]),
    ("{in}/img.png --mode slide --flip --crop-size 100000",
     ["--crop-size 100000", "every window is 100000x100000", "--max-pixels 4194304"]),
    ("{in}/img.png --mode slide --crop-size 300 --max-pixels 50000",
     ["--crop-size 300", "90000 pixels", "--max-pixels 50000"]),
    ("{in}/img.png --ms --max-pixels 10000",
     ["--ms", "at scale 1.75", "112x112 = 12544 pixels", "--max-pixels 10000"]),
    ("{in}/img.png --scales 1e300", ["--scales", "more than 1e15 pixels long"]),
    # A thin image fits the budget, padded to the window across it does not.
    ("{in}/thin.png --mode slide --crop-size 60 --max-pixels 5000",
     ["thin.png (600x4)", "padded to the windows", "600x60 = 36000 pixels", "--mode whole"]),
    ("{in}/thin.png --scales 0.1", ["--scales", "60x0", "empty network input"]),
    ("{in}/img.png --ms --scales 1", ["--ms and --scales are exclusive"]),
    ("{in}/img.png --mode slide --crop-size 1", ["--crop-size must be >= 2"]),
]
ARGPARSE_CASES = [
    ("--scales inf", "positive numbers"),
    ("--scales nan", "positive numbers"),
    ("--scales 1,-1", "positive numbers"),
    ("--base-size 0", "must be >= 1"),
    ("--crop-size -3", "must be >= 1"),
    ("--max-pixels -1", "must be >= 1"),
]


def _predict(files, tmp_path, capsys, rest):
    out = tmp_path / "out"
    argv = ["predict", "--model", str(files / "conv.keras"), "--output", str(out), "--input",
            *rest.format(**{"in": files}).split()]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr(), out


@pytest.mark.parametrize("rest,fragments", CLI_CASES, ids=[c[0][5:] for c in CLI_CASES])
def test_predict_refuses_before_model_load(rest, fragments, files, tmp_path, capsys,
                                           monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    monkeypatch.setattr(inference, "load_model", _no_model_work)
    code, captured, out = _predict(files, tmp_path, capsys, rest)
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "error:" in lines[0], captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in captured.err and not out.exists()


@pytest.mark.parametrize("option,fragment", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_predict_bad_option_values(option, fragment, files, tmp_path, capsys):
    code, captured, out = _predict(files, tmp_path, capsys, "{in}/img.png " + option)
    assert code == 2 and fragment in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_predict_crop_larger_than_image_runs_once(files, tmp_path, capsys):
    # Within the budget, a window larger than the image is the image padded to it.
    code, captured, out = _predict(files, tmp_path, capsys,
                                   "{in}/img.png --mode slide --crop-size 96")
    assert code == 0, captured.err
    assert Image.open(out / "img_labels.png").size == (64, 64)


def test_predict_max_pixels_0_lifts_the_budget(files, tmp_path, capsys):
    # 1025 x 1024 at scale 2 is 4198400 pixels, just over the default budget: refused,
    # then run with --max-pixels 0, which the predictor gets too (its own default
    # budget is the same 4194304).
    Image.fromarray(np.zeros((1024, 1025, 3), np.uint8)).save(tmp_path / "mid.png")
    rest = f"{tmp_path / 'mid.png'} --scales 2"
    code, captured, out = _predict(files, tmp_path, capsys, rest)
    assert code == 1 and "2050x2048 = 4198400 pixels" in captured.err and not out.exists()
    code, captured, out = _predict(files, tmp_path, capsys, rest + " --max-pixels 0")
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "mid_color.png", "mid_labels.png", "mid_overlay.png"]


# ---------------------------------------------------------------------- Python API


@pytest.mark.parametrize("options,shape,fragment", [
    ({"scales": (100.0,)}, (64, 64), "scales: at scale 100, the network input for a 64x64 "
     "image would be 6400x6400 = 40960000 pixels, over the budget of max_pixels 4194304"),
    ({"base_size": 100000}, (64, 64), "base_size 100000: at scale 1"),
    ({"mode": "slide", "crop_size": 100000, "flip": True}, (64, 64), "crop_size 100000"),
    ({"mode": "slide", "crop_size": 60, "max_pixels": 5000}, (4, 600), "mode='whole'"),
    ({"max_pixels": 4095}, (64, 64), "shrink the images first"),
    ({"scales": (1e308,)}, (64, 64), "more than 1e15 pixels long"),
], ids=["scales", "base_size", "crop_size", "thin-slide", "image", "huge-scale"])
def test_predictor_refuses_before_allocating(options, shape, fragment, conv):
    predictor = inference.Predictor(conv, **options)
    predictor._scores = predictor._whole_classes = _no_model_work
    for call in (predictor, predictor.class_map):
        with pytest.raises(ValueError, match=r"raise max_pixels \(max_pixels=None: no limit\)"
                           ) as info:
            call(np.zeros((1, *shape, 3), np.uint8))
        assert fragment in str(info.value)


def test_predictor_refuses_an_empty_network_input(conv):
    with pytest.raises(ValueError, match="at scale 0.1 a 600x4 image would be 60x0"):
        inference.predict(conv, np.zeros((4, 600, 3), np.uint8), scales=(0.1,))


def test_predict_budget_is_inclusive_and_can_be_lifted(conv):
    image = np.zeros((1, 64, 64, 3), np.uint8)
    assert inference.predict(conv, image, max_pixels=64 * 64).shape == (1, 64, 64, 2)
    with pytest.raises(ValueError, match="16384 pixels, over the budget of max_pixels 10000"):
        inference.predict(conv, image, scales=(2.0,), max_pixels=10000)
    assert inference.predict(conv, image, scales=(2.0,), max_pixels=None).shape == (1, 64, 64, 2)


def _with_non_finite(dtype):
    image = np.full((1, 16, 16, 3), 100, dtype)
    image[0, 0, :2] = np.nan
    image[0, 1, :3] = np.inf
    return image


@pytest.mark.parametrize("make", [
    lambda: _with_non_finite(np.float32),
    lambda: _with_non_finite(np.float64),
    lambda: _with_non_finite(np.float16),
    lambda: tf.constant(_with_non_finite(np.float32)),
    lambda: _with_non_finite(np.float32)[0],  # one (H, W, 3) image
], ids=["float32", "float64", "float16", "tf-tensor", "single"])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_predictor_refuses_non_finite_images(make, mode, conv):
    predictor = inference.Predictor(conv, mode=mode, crop_size=12)
    predictor._scores = predictor._whole_classes = _no_model_work
    for call in (predictor, predictor.class_map):
        with pytest.raises(ValueError, match=r"images contain 6 NaN and 9 infinite"):
            call(make())


def test_float64_beyond_float32_is_named(conv):
    image = np.full((1, 8, 8, 3), 1e39)
    with pytest.raises(ValueError, match=r"0 NaN and 192 infinite \(or beyond float32\)"):
        inference.Predictor(conv).class_map(image)


def test_integer_and_finite_images_still_run(conv):
    predictor = inference.Predictor(conv)
    for image in (np.full((1, 16, 16, 3), 255, np.uint8), np.zeros((16, 16, 3), np.int64),
                  tf.zeros((1, 16, 16, 3)), np.full((1, 16, 16, 3), 255.0)):
        expected = (1, 16, 16) if image.ndim == 4 else (16, 16)
        assert predictor.class_map(image).shape == expected


@pytest.mark.parametrize("options,fragment", [
    ({"mode": "slide", "crop_size": float("inf")}, "crop_size must be a whole number >= 2"),
    ({"mode": "slide", "crop_size": float("nan")}, "crop_size must be a whole number"),
    ({"mode": "slide", "crop_size": 2.5}, "got 2.5"),
    ({"mode": "slide", "crop_size": -480}, "crop_size must be a whole number >= 2"),
    ({"base_size": "520"}, "base_size must be a whole number"),
    ({"base_size": float("inf")}, "base_size must be a whole number"),
    ({"max_pixels": 0}, "max_pixels must be a whole number >= 1"),
    ({"pad_value": float("nan")}, "pad_value must be finite"),
    ({"scales": (1.0, float("inf"))}, "scales must be"),
])
def test_predictor_bad_options(options, fragment, conv):
    with pytest.raises(ValueError, match=fragment):
        inference.Predictor(conv, **options)


def test_predictor_refuses_an_empty_batch(conv):
    with pytest.raises(ValueError, match="must not be empty"):
        inference.Predictor(conv).class_map(np.zeros((0, 16, 16, 3), np.uint8))


# Peak resident memory of a whole `keras-fastfcn predict` process that is refused: about
# TensorFlow's start (0.7 GB); the cases were killed at a 5 GB cap before the budget.
MEMORY_CAP_MB = 1500


@pytest.mark.parametrize("extra", [["--scales", "100"], ["--base-size", "1000000"],
                                   ["--mode", "slide", "--flip", "--crop-size", "100000"]],
                         ids=["scales", "base-size", "slide-crop"])
def test_refused_process_stays_under_its_memory_budget(extra, files, tmp_path):
    """The case as a user runs it, a process of its own: refused in one line, with its
    peak resident memory measured."""

    out = tmp_path / "out"
    # A wrapper process whose only child is the command: its RUSAGE_CHILDREN peak is
    # the command's.
    wrapper = ("import resource, subprocess, sys; "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "keras_fastfcn", "predict",
         "--model", str(files / "conv.keras"), "--input", str(files / "img.png"),
         "--output", str(out), *extra], capture_output=True, text=True, timeout=300)
    code, peak_kb = map(int, proc.stdout.split())
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert code == 1 and len(errors) == 1 and "budget" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()
    assert peak_kb / 1024 < MEMORY_CAP_MB, f"peak {peak_kb / 1024:.0f} MB"
