"""One prepared graph: predict / evaluate (the CLI's predictor), every export and the
benchmark run what `inference.prepare` returns for a model, nothing built on the side."""

import argparse

import numpy as np
import pytest

import keras_fastfcn as kf
from conftest import make_confident
from keras_fastfcn import benchmark, inference
from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.cli import common, predict


def _kinds(model):
    return [type(layer).__name__ for layer in all_layers(model)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_backbone):
    model = kf.models.FastFCNImageSegmenter(
        kf.models.FastFCNBackbone(encoder=tiny_backbone, width=32), num_classes=3,
        head="psp")
    images = np.random.RandomState(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    make_confident(model, images)
    path = tmp_path_factory.mktemp("prepare") / "m.keras"
    model.save(path)
    return str(path), images


def test_predict_evaluate_export_and_benchmark_run_the_same_graph(saved, monkeypatch):
    path, images = saved
    model = inference.load_model(path)
    net, info = inference.prepare(model)
    assert info.num_classes == 3 and "BatchNormalization" not in _kinds(net)

    # predict / evaluate: the CLI's predictor over the same file.
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    args = parser.parse_args(["--model", path, "--input", path, "--output", "unused"])
    predictor, _ = common.open_predictor(args)
    # The benchmark's deployed model.
    deployed = benchmark._deployed(model)
    # An export: the same graph, the resizes as the runtime's own op.
    exported, _ = inference.prepare(model, native_resizes=True)

    expected = np.asarray(net(images))
    for other in (predictor.model, deployed):
        assert _kinds(other) == _kinds(net)
        np.testing.assert_array_equal(np.asarray(other(images)), expected)
    assert [k.replace("NativeBilinearResize", "BilinearResize") for k in _kinds(exported)] \
        == _kinds(net)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(exported(images)), expected,
                               atol=64 * np.finfo(np.float32).eps * scale)
    # The caller's model is left as it was.
    assert "BatchNormalization" in _kinds(model)


def test_predictor_prepares_precision_and_folding_itself(saved):
    path, images = saved
    model = inference.load_model(path)
    predictor = inference.Predictor(model, fold_batchnorm=True, precision="bf16")
    net, _ = inference.prepare(model, precision="bf16")
    assert _kinds(predictor.model) == _kinds(net)
    assert predictor.settings()["precision"] == "bf16"
    np.testing.assert_array_equal(np.asarray(predictor.model(images)), np.asarray(net(images)))
