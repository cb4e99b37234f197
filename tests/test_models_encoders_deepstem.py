"""The official deep-stem ResNets (resnet50s/101s/152s): structure, counts, PyTorch parity."""

import keras
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="the PyTorch parity tests need PyTorch")

from keras_fastfcn.benchmark import torch_reference as ref
from keras_fastfcn.models import registry
from keras_fastfcn.models.encoders.resnet_deepstem import (
    block_dilations,
    build_resnet_deepstem,
    torch_module_path,
)

torch.set_num_threads(2)


def _strides(model, hw=(64, 96)):
    feats = model(np.zeros((1,) + hw + (3,), "float32"))
    return [hw[0] // f.shape[1] for f in feats], [f.shape[-1] for f in feats]


@pytest.mark.parametrize("output_stride,expected", [(32, [4, 8, 16, 32]), (16, [4, 8, 16, 16]),
                                                    (8, [4, 8, 8, 8])])
def test_feature_strides_and_channels(output_stride, expected):
    model = registry.build_encoder("resnet50s", output_stride=output_stride)
    strides, channels = _strides(model)
    assert strides == expected
    assert channels == [256, 512, 1024, 2048]
    assert model.name == f"resnet50s_os{output_stride}"


def test_dilations_follow_official_make_layer():
    # Official: stage dilated by 2 -> first block 1, others 2; by 4 -> first 2, others 4.
    assert block_dilations(2, 6) == [1, 2, 2, 2, 2, 2]
    assert block_dilations(4, 3) == [2, 4, 4]
    os8 = registry.build_encoder("resnet50s", output_stride=8)
    conv = {layer.name: layer for layer in os8.layers if isinstance(layer, keras.layers.Conv2D)}
    assert conv["layer3_0_conv2"].strides == (1, 1)
    assert conv["layer3_0_conv2"].dilation_rate == (1, 1)
    assert conv["layer3_5_conv2"].dilation_rate == (2, 2)
    assert conv["layer4_0_conv2"].dilation_rate == (2, 2)
    assert conv["layer4_2_conv2"].dilation_rate == (4, 4)
    assert conv["layer3_0_downsample_0"].strides == (1, 1)
    os16 = registry.build_encoder("resnet50s", output_stride=16)
    conv = {layer.name: layer for layer in os16.layers if isinstance(layer, keras.layers.Conv2D)}
    assert conv["layer3_0_conv2"].strides == (2, 2)
    assert conv["layer4_0_conv2"].dilation_rate == (1, 1)
    assert conv["layer4_0_conv2"].strides == (1, 1)
    assert conv["layer4_1_conv2"].dilation_rate == (2, 2)
    # The stride sits in the 3x3 conv (not the first 1x1, as in keras.applications).
    assert conv["layer2_0_conv1"].strides == (1, 1) and conv["layer2_0_conv2"].strides == (2, 2)


@pytest.mark.parametrize("name,expected", [("resnet50s", 25_680_808), ("resnet101s", 44_672_936)])
def test_parameter_count_matches_official(name, expected):
    """Trainable parameters + the ImageNet fc layer == the official network's parameters.

    Cross-check of the literals: torchvision ResNet-50 / 101 (25,557,032 / 44,549,160)
    plus the deep stem's 123,776 extra parameters (three 3x3 convs and BNs instead of
    the 7x7 conv; 128 instead of 64 channels into layer1).
    """
    torch_model = ref.DeepStemResNet(ref.DEPTHS[name], output_stride=32)
    torch_count = sum(p.numel() for p in torch_model.parameters())
    model = registry.build_encoder(name)
    keras_count = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    fc = 2048 * 1000 + 1000
    assert keras_count + fc == torch_count == expected
    # BN running statistics are the only non-trainable weights, as PyTorch's buffers.
    buffers = sum(b.numel() for n, b in torch_model.named_buffers()
                  if not n.endswith("num_batches_tracked"))
    assert sum(int(np.prod(v.shape)) for v in model.non_trainable_weights) == buffers


def _copy_torch_weights(keras_model, torch_model):
    params = dict(torch_model.state_dict())
    for layer in keras_model.layers:
        path = torch_module_path(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(params[path + ".weight"].numpy().transpose(2, 3, 1, 0))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for var, key in zip((layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
                                ("weight", "bias", "running_mean", "running_var")):
                var.assign(params[f"{path}.{key}"].numpy())


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_matches_pytorch_including_odd_sizes(output_stride):
    """Same features as the official layout, on even and odd input sizes (padding semantics)."""
    blocks = (1, 2, 2, 2)
    torch_model = ref.randomize_(ref.DeepStemResNet(blocks, output_stride=output_stride), seed=3)
    torch_model.eval()
    model = build_resnet_deepstem(blocks, output_stride=output_stride)
    _copy_torch_weights(model, torch_model)
    for hw in [(64, 64), (65, 97)]:
        x = np.random.RandomState(0).randn(1, *hw, 3).astype("float32")
        with torch.no_grad():
            expected = torch_model.features(torch.from_numpy(x).permute(0, 3, 1, 2))
        got = model(x)
        for e, g in zip(expected, got):
            e = e.permute(0, 2, 3, 1).numpy()
            assert e.shape == tuple(g.shape)
            np.testing.assert_allclose(np.asarray(g), e, atol=1e-4 * np.abs(e).max())


def test_serializable_and_weights_roundtrip(tmp_path):
    model = build_resnet_deepstem((1, 1, 1, 1), output_stride=16)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    # The same file loads into every output stride (same layer names and shapes).
    other = build_resnet_deepstem((1, 1, 1, 1), output_stride=8, weights=path)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_deepstem_registration_and_errors():
    assert {"resnet50s", "resnet101s", "resnet152s"} <= set(registry.available("encoder"))
    assert registry.encoder("resnet50s").preprocessing == "torch"
    with pytest.raises(ValueError, match="No ImageNet download.*--backbone-only"):
        registry.build_encoder("resnet50s", weights="imagenet")
    with pytest.raises(ValueError, match="blocks must be 4 positive ints"):
        build_resnet_deepstem((3, 4, 6))
    with pytest.raises(ValueError, match="built-in"):
        registry.register_encoder("resnet50", build_resnet_deepstem, "torch")
    assert torch_module_path("layer3_0_downsample_1") == "layer3.0.downsample.1"


# ------------------------------------------------ mmsegmentation's ResNetV1c ("resnet50_v1c")


def test_resnet50_v1c_is_mmsegmentations_d32_layout():
    """Half-width deep stem; stages 3 and 4 keep stride 2 *and* dilate (first blocks by
    half), as mmsegmentation's FastFCN backbone (strides (1, 2, 2, 2), dilations
    (1, 1, 2, 4), contract_dilation=True)."""
    assert registry.encoder("resnet50_v1c").preprocessing == "torch"
    model = registry.build_encoder("resnet50_v1c")
    assert model.name == "resnet50_v1c_os32"
    strides, channels = _strides(model, hw=(64, 96))
    assert strides == [4, 8, 16, 32] and channels == [256, 512, 1024, 2048]
    conv = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert [conv[n].filters for n in ("conv1_0", "conv1_3", "conv1_6")] == [32, 32, 64]
    assert conv["layer1_0_conv1"].kernel.shape[2] == 64
    assert conv["layer3_0_conv2"].strides == (2, 2)
    assert conv["layer3_0_conv2"].dilation_rate == (1, 1)
    assert conv["layer3_5_conv2"].dilation_rate == (2, 2)
    # Stride 2 with dilation 2: padding 2, every second row/column, an undilated conv.
    assert model.get_layer("layer4_0_conv2_pad").padding == ((2, 2), (2, 2))
    assert model.get_layer("layer4_0_conv2_subsample").strides == (2, 2)
    assert conv["layer4_0_conv2"].strides == (1, 1)
    assert conv["layer4_0_conv2"].dilation_rate == (1, 1)
    assert conv["layer4_0_downsample_0"].strides == (2, 2)
    assert conv["layer4_2_conv2"].dilation_rate == (4, 4)
    # mmsegmentation's ResNetV1c-50 without its (unused) fc: resnet50s' 23,631,808 minus
    # the narrower stem (84,064) and layer1's narrower input (4,096 + 16,384).
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 23_527_264
    # At output stride 8 / 16 it is mmsegmentation's d8 / d16 layout (= the official one).
    assert _strides(registry.build_encoder("resnet50_v1c", output_stride=8))[0] == [4, 8, 8, 8]


@pytest.mark.parametrize("hw", [(16, 16), (17, 23), (18, 21)])
def test_stride2_dilated_conv_matches_pytorch(hw):
    """`Conv2d(3, stride=2, padding=2, dilation=2)` (ResNetV1c-d32's layer4.0.conv2), which
    Keras' Conv2D cannot take, built as subsampling + undilated conv: same values."""
    from keras_fastfcn.models.encoders.resnet_deepstem import _strided_conv3x3

    rng = np.random.RandomState(0)
    x = rng.randn(2, *hw, 4).astype("float32")
    w = rng.randn(5, 4, 3, 3).astype("float32")
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                              torch.from_numpy(w), stride=2, padding=2,
                                              dilation=2).permute(0, 2, 3, 1).numpy()
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, _strided_conv3x3(inputs, 5, "c", stride=2, dilation=2))
    model.get_layer("c").kernel.assign(w.transpose(2, 3, 1, 0))
    got = np.asarray(model(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=64 * np.finfo("float32").eps
                               * np.abs(expected).max())


def test_v1c_options_are_checked():
    with pytest.raises(ValueError, match="stride-32 network"):
        build_resnet_deepstem((1, 1, 1, 1), output_stride=8, dilations=(1, 1, 2, 4))
    with pytest.raises(ValueError, match="stem_widths must be 3 positive ints"):
        build_resnet_deepstem((1, 1, 1, 1), stem_widths=(32, 64))
    with pytest.raises(ValueError, match="official code knows 1, 2, 4"):
        build_resnet_deepstem((1, 1, 1, 1), dilations=(1, 1, 3, 4))
