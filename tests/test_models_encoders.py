import keras
import numpy as np
import pytest

from keras_fastfcn.models import registry


@pytest.mark.parametrize("output_stride,strides", [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)),
                                                   (8, (4, 8, 8, 8))])
def test_resnet50_feature_strides(output_stride, strides):
    model = registry.build_encoder("resnet50", output_stride=output_stride)
    feats = model(np.zeros((1, 64, 96, 3), "float32"))
    assert [f.shape[-1] for f in feats] == [256, 512, 1024, 2048]
    assert [(64 // s, 96 // s) for s in strides] == [tuple(f.shape[1:3]) for f in feats]


def test_dilated_backbone_keeps_weights_and_dilates_like_official():
    plain = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = "/tmp/kf_test_resnet50.weights.h5"
    plain.save_weights(path)
    dilated = registry.build_encoder("resnet50", output_stride=8, weights=path)
    inner = {layer.name: layer for layer in plain.layers}
    for layer in dilated.layers:
        if layer.weights:
            for a, b in zip(layer.get_weights(), inner[layer.name].get_weights()):
                np.testing.assert_array_equal(a, b)
    # Official pattern: first block of a stage dilated by d uses d/2, the others d.
    rates = {layer.name: layer.dilation_rate[0] for layer in dilated.layers
             if layer.name.endswith("_2_conv")}
    assert rates["conv3_block4_2_conv"] == 1
    assert rates["conv4_block1_2_conv"] == 1 and rates["conv4_block6_2_conv"] == 2
    assert rates["conv5_block1_2_conv"] == 2 and rates["conv5_block3_2_conv"] == 4
    assert dilated.get_layer("conv4_block1_1_conv").strides == (1, 1)


def test_backbone_uses_pytorch_batchnorm_momentum():
    model = registry.build_encoder("resnet50", output_stride=32)
    moms = {layer.momentum for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)}
    assert moms == {0.9}


def test_backbone_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown encoder 'resnet18'"):
        registry.build_encoder("resnet18")
    with pytest.raises(ValueError, match="output_stride"):
        registry.build_encoder("resnet50", output_stride=4)
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        registry.build_encoder("resnet50", weights=str(tmp_path / "no_such.h5"))


def test_imagenet_weights_offline_is_one_clear_oserror(monkeypatch, capsys, tmp_path):
    """keras.applications failing to fetch the ImageNet weights (no internet) is an
    OSError naming the way out, which the CLI prints as one line, not a traceback."""
    from keras_fastfcn.cli import main

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(OSError, match="Could not load ImageNet weights for resnet50.*"
                                      "encoder_weights=None"):
        registry.build_encoder("resnet50", weights="imagenet")
    code = main(["train", "--config", "demo", "--set", "model.encoder=resnet50",
                 "--set", "model.encoder_weights=imagenet", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("keras-fastfcn train: error: Could not load ImageNet"), err
    assert not (tmp_path / "run").exists()  # a run that failed before training leaves nothing


def test_preprocessing_modes():
    assert registry.encoder("resnet101").preprocessing == "caffe"
