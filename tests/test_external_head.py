"""A head and an encoder registered by a user's own module, with no edit of the package:
built by `FastFCNImageSegmenter`, trained by `keras-fastfcn train`, offered by
`keras-fastfcn benchmark`, exported and reloaded, each command given `--import`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN = '''
"""A user's module: one head and one small encoder, registered by name."""
import keras
from keras_fastfcn.models import registry
from keras_fastfcn.models.encoders.resnet_deepstem import build_resnet_deepstem


@keras.saving.register_keras_serializable(package="my_heads")
class TinyHead(keras.layers.Layer):
    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        self.classifier = keras.layers.Conv2D(num_classes, 1)

    def build(self, shape):
        self.conv.build(shape)
        self.classifier.build(tuple(shape[:-1]) + (16,))

    def call(self, x):
        return self.classifier(self.conv(x))

    def compute_output_shape(self, shape):
        return tuple(shape[:-1]) + (self.num_classes,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


registry.register_head("tiny", lambda num_classes, *, se_loss, upsampled, align_corners,
                       name: TinyHead(num_classes, name=name))
if "plugin_resnet" not in registry.available("encoder"):
    registry.register_encoder("plugin_resnet", lambda stride, weights: build_resnet_deepstem(
        (1, 1, 1, 1), stride, weights, name=f"plugin_resnet_os{stride}"), "torch")
'''

SMALL = ["--set", "data.crop_size=64", "--set", "data.base_size=64",
         "--set", "data.options.size=64", "--set", "data.options.num_val=4",
         "--set", "train.batch_size=4"]


def _run(tmp_path, *argv):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "keras_fastfcn", *argv, "--import", "my_heads"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_segmenter_builds_a_head_registered_outside(monkeypatch, tmp_path):
    (tmp_path / "my_heads.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_heads  # noqa: F401

    import keras_fastfcn as kf

    seg = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder="plugin_resnet", width=16), num_classes=3,
        head="tiny")
    assert type(seg.head_layer).__name__ == "TinyHead"
    assert tuple(seg.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0).shape) == \
        (1, 64, 64, 3)


@pytest.mark.slow
def test_train_benchmark_export_and_reload_a_head_of_your_own(tmp_path):
    (tmp_path / "my_heads.py").write_text(PLUGIN)
    _run(tmp_path, "train", "--config", "demo", "--output-dir", "run", "--epochs", "1",
         "--steps-per-epoch", "2", "--set", "model.head=tiny",
         "--set", "model.encoder=plugin_resnet", "--set", "model.se_loss=false",
         "--set", "model.width=16", *SMALL)
    assert (tmp_path / "run" / "model.keras").is_file()

    _run(tmp_path, "benchmark", "--heads", "tiny", "--encoders", "plugin_resnet",
         "--upsamplers", "jpu", "--size", "64", "--crop", "64", "--min-seconds", "0.1",
         "--no-memory", "--no-torch", "--xla", "off", "--throughput-batch", "0",
         "--output", "bench")
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["results"]
    assert [(r["head"], r["encoder"]) for r in rows] == [("tiny", "plugin_resnet")]
    assert rows[0]["latency_s"] > 0, rows

    _run(tmp_path, "export", "--model", "run/model.keras", "--format", "onnx",
         "--output", "m.onnx")
    # `export` loaded the .keras file with the user's head (as `predict --model
    # run/model.keras` would, through the same `load_model`); the file it wrote predicts.
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "img.png")
    _run(tmp_path, "predict", "--model", "m.onnx", "--input", "img.png", "--output", "out")
    assert np.asarray(Image.open(tmp_path / "out" / "img_labels.png")).shape == (48, 64)


def test_a_data_source_registered_outside(tmp_path):
    from keras_fastfcn import data
    from keras_fastfcn.data.sources import folder_source, register_source

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 9 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "labels" / f"{i}.png")
    register_source("mine", lambda path, **options: folder_source(path, **options))
    source = data.get_source(f"mine:{tmp_path}", num_classes=2)
    assert source.num_classes == 2 and "mine:PATH" in data.sources.SPECS
    with pytest.raises(ValueError, match="built-in data source"):
        register_source("folder", folder_source)
