"""End to end on real data (CamVid): train -> evaluate -> export agree on the numbers.

The numbers `keras-fastfcn train` prints for its final validation, the numbers
`keras-fastfcn evaluate` gives for the saved model on the same split, and the class
maps of the exported SavedModel must all describe the same model: the same
definitions (official pixAcc / mIoU, whole images, single scale) and the same argmax.
Small settings keep it to a minute or two: a subset of CamVid (the first images of each
split, linked into a temporary folder of the same layout), a few steps, JPU width 64 and
the small test encoder (tests/tiny_encoder.py) in place of ResNet-50.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def camvid_subset(camvid_dir, root, train=8, val=12):
    """The first `train` / `val` images of CamVid, linked in the same folder layout."""
    for split, count in (("train", train), ("val", val)):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        for image in sorted((camvid_dir / split / "images").iterdir())[:count]:
            label = camvid_dir / split / "labels" / (image.stem + ".png")
            os.symlink(image, root / split / "images" / image.name)
            os.symlink(label, root / split / "labels" / label.name)
    os.symlink(camvid_dir / "classes.txt", root / "classes.txt")
    return root


def _run(*argv):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    script = os.path.join(REPO, "tests", "tiny_encoder.py")  # keras-fastfcn + tiny_resnet
    proc = subprocess.run([sys.executable, script, *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_evaluate_export_agree_on_camvid(camvid_dir, tmp_path, tiny_backbone):
    subset = camvid_subset(camvid_dir, tmp_path / "camvid")
    run = tmp_path / "run"
    _run("train", "--config", "camvid", "--output-dir", run, "--epochs", 1,
         "--steps-per-epoch", 2, "--set", f"data.options.root={subset}",
         "--set", f"model.encoder={tiny_backbone}", "--set", "model.encoder_weights=null",
         "--set", "model.width=64",
         "--set", "train.batch_size=2", "--set", "data.crop_size=128",
         "--set", "data.base_size=160", "--set", "train.verbose=2")
    trained = json.loads((run / "results.json").read_text())

    report = tmp_path / "eval.json"
    _run("evaluate", "--model", run / "model.keras", "--data", f"camvid:{subset}",
         "--split", "val", "--quiet", "--output", report)
    evaluated = json.loads(report.read_text())
    assert evaluated["images"] == 12
    assert evaluated["pixAcc"] == pytest.approx(trained["val_pixAcc"], abs=1e-4)
    assert evaluated["mIoU"] == pytest.approx(trained["val_mIoU"], abs=1e-4)

    # The SavedModel's class maps are the Keras model's argmax on the same images.
    import keras
    import tensorflow as tf

    import keras_fastfcn  # noqa: F401  (registers the classes)
    from keras_fastfcn import data, serving

    model = keras.models.load_model(run / "model.keras", compile=False)
    path = serving.export_saved_model(model, str(tmp_path / "serving"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    source = data.get_source(f"camvid:{subset}")
    for image, _ in source.dataset("val").take(3):
        image = image.numpy()[None]
        logits = model.predict(image, verbose=0)
        logits = logits["logits"] if isinstance(logits, dict) else logits
        class_map = serve(image_tensor=tf.constant(image))["class_map"].numpy()
        assert (class_map == np.argmax(logits, -1)).mean() >= 0.9999
