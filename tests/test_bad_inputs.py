"""Bad input, table-driven: each case is a command (or a Python call), the fragment of
the one-line message it must give, and the promise that nothing was written.

Every case fails before any slow work (model loading, training), so the whole table
runs in seconds, in process: `keras_fastfcn.cli.main(argv)` returns 1 (argparse: 2)
after printing one line on stderr, no traceback.
"""

import json

import numpy as np
import pytest
from PIL import Image

import keras_fastfcn as kf
from keras_fastfcn.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "ok.png")
    (root / "bad.png").write_text("not an image")
    nan = np.full((16, 16), np.nan, np.float32)
    Image.fromarray(nan, mode="F").save(root / "nan.tif")
    (root / "model.keras").write_bytes(b"PK")  # never read: every case fails before
    (root / "sm" / "1" / "variables").mkdir(parents=True)
    (root / "sm" / "1" / "saved_model.pb").write_bytes(b"")
    (root / "folder.onnx").mkdir()
    (root / "afile").write_text("x")
    (root / "bad.yaml").write_text("train:\n  epochz: 1\n")
    for name, classes in (("oneclass", "road\n"), ("dupclasses", "road\nsky\nroad\n")):
        for sub in ("images", "labels"):
            (root / name / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / name / "images" / "a.png")
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / name / "labels" / "a.png")
        (root / name / "classes.txt").write_text(classes)
    return root


# (argv with {in} = the inputs folder and {out} = a fresh output path, message fragment)
CLI_CASES = [
    # train: every option validated before any work
    ("train --config {in}/bad.yaml --output-dir {out}", "unknown config key 'train.epochz'"),
    ("train --config demo --output-dir {out} --set train.steps_per_epoch=-1",
     "train.steps_per_epoch"),
    ("train --config demo --output-dir {out} --set train.epochs=0", "train.epochs"),
    ("train --config demo --output-dir {out} --set train.lr=-0.1", "train.lr"),
    ("train --config demo --output-dir {out} --set data.crop_size=0", "data.crop_size"),
    ("train --config demo --output-dir {out} --set model.head=encnett", "encnett"),
    ("train --config nosuchconfig --output-dir {out}", "nosuchconfig"),
    ("train --config demo --output-dir {in}/afile", "afile exists and is not a folder"),
    ("train --config demo --output-dir {out} --set train.nokey=1", "train.nokey"),
    ("train --config demo --output-dir {out} --set data.loader=torch",
     "data.loader must be one of"),
    ("train --config demo --output-dir {out} --set data.scale_range=[0.5,.inf]",
     "finite numbers"),
    ("train --config demo --output-dir {out} --set data.scale_range=[0.5,1000]",
     "96000 px on the short side"),
    ("train --config demo --output-dir {out} --set data.source=folder:{in}/oneclass",
     "at least 2 classes"),
    ("train --config demo --output-dir {out} --set data.source=folder:{in}/dupclasses",
     "'road' (lines 1, 3)"),
    # predict: inputs, outputs and the model file checked before loading anything
    ("predict --model {in}/model.keras --input {in}/bad.png --output {out}", "bad.png"),
    ("predict --model {in}/model.keras --input {in}/nan.tif --output {out}", "NaN"),
    ("predict --model {in}/missing.keras --input {in}/ok.png --output {out}",
     "Model file not found"),
    ("predict --model {in}/model.keras --input {in}/nothere.png --output {out}",
     "Input not found"),
    ("predict --model {in}/model.keras --input {in}/ok.png --output {in}/afile",
     "not a folder"),
    ("predict --model {in}/model.keras --input {in}/ok.png --output {out} --alpha 2",
     "--alpha"),
    ("predict --model {in} --input {in}/ok.png --output {out}", "is a folder"),
    # evaluate
    ("evaluate --model {in}/missing.keras --data demo", "Model file not found"),
    ("evaluate --model {in}/model.keras --data nosuchsource", "nosuchsource"),
    ("evaluate --model {in}/model.keras --data folder:{in}/nothere", "nothere"),
    # export: targets and optional dependencies before the model load
    ("export --model {in}/model.keras --output {in}/sm/1/variables", "inside the SavedModel"),
    ("export --model {in}/model.keras --output {in}/sm/1/saved_model", "inside the SavedModel"),
    ("export --model {in}/model.keras --format onnx --output {in}/folder.onnx", "is a folder"),
    ("export --model {in}/model.keras --format onnx --output {out}.tflite", "must end in .onnx"),
    ("export --model {in}/missing.keras --output {out}", "Model file not found"),
    ("export --model {in}/model.keras --format onnx --output {out}.onnx --keep-float classifier",
     "static int8 exports only"),
    ("export --model {in}/model.keras --output {out} --keep-float classifier",
     "not to --format saved_model"),
    # convert
    ("convert --checkpoint {in}/missing.pth.tar --output {out}.keras", "missing.pth.tar"),
]
ARGPARSE_CASES = [
    ("train --config demo --steps-per-epoch 0", "must be >= 1"),
    ("train --config demo --epochs -1", "must be >= 1"),
    ("predict --model m --input i --output o --mode tiles", "invalid choice"),
    ("predict --model m --input i --output o --scales 0,1", "positive numbers"),
    ("export --model m --output o --format pb", "invalid choice"),
    ("nosuchcommand", "unknown command"),
]


def _run(argv, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = argv.format(**{"in": files, "out": out}).split()
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    assert not out.exists()
    return code, captured.err


@pytest.mark.parametrize("argv,fragment", CLI_CASES, ids=[c[0][:48] for c in CLI_CASES])
def test_cli_bad_input_one_line(argv, fragment, files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERAS_FASTFCN_DEBUG", raising=False)
    code, err = _run(argv, files, tmp_path, capsys)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,fragment", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_cli_bad_arguments(argv, fragment, files, tmp_path, capsys):
    code, err = _run(argv, files, tmp_path, capsys)
    assert code == 2 and fragment in err and "Traceback" not in err, err


def test_malformed_tf_config(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: [}")
    code, err = _run("train --config demo --strategy multiworker --output-dir {out}",
                     files, tmp_path, capsys)
    assert code == 1 and "TF_CONFIG is not valid JSON" in err and "Train on several" in err


def _backbone():
    return kf.models.FastFCNBackbone(encoder="tiny_resnet", width=16)


PYTHON_CASES = [
    (lambda: kf.models.FastFCNBackbone(encoder="resnet5"), "resnet5"),
    (lambda: kf.models.FastFCNBackbone(encoder="tiny_resnet", upsampler="jpu3"), "jpu3"),
    (lambda: kf.models.FastFCNBackbone(encoder="tiny_resnet", width=0), "width"),
    (lambda: kf.models.FastFCNImageSegmenter(_backbone(), num_classes=0), "num_classes"),
    (lambda: kf.models.FastFCNImageSegmenter(_backbone(), num_classes=1), ">= 2"),
    (lambda: kf.models.FastFCNImageSegmenter(_backbone(), 3, head="unet"), "unet"),
    (lambda: _backbone()(np.zeros((0, 32, 32, 3), "float32")), "empty batch"),
    (lambda: _backbone()(np.zeros((1, 0, 32, 3), "float32")), "0 pixels"),
    (lambda: _backbone()(np.zeros((32, 32, 3), "float32")), "batch axis"),
    (lambda: _backbone()(np.zeros((1, 32, 32, 4), "float32")), "3 channels"),
    (lambda: kf.inference.fit_to_pixels(10, 10, 50) and kf.serving.export(
        None, "x", format="pb"), "Unknown export format"),
]


@pytest.mark.parametrize("call,fragment", PYTHON_CASES, ids=[c[1] for c in PYTHON_CASES])
def test_python_bad_input(call, fragment, tiny_backbone):
    with pytest.raises(ValueError, match=fragment):
        call()


def test_numpy_integers_are_accepted(tiny_backbone):
    seg = kf.models.FastFCNImageSegmenter(_backbone(), num_classes=np.int64(5))
    assert seg.num_classes == 5 and json.dumps(seg.get_config()["num_classes"])
