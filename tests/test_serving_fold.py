"""BatchNorm folding (keras_fastfcn.inference.fold): same outputs, fewer BN layers, original
untouched; and the export-only padded dilated depthwise convs and native logits resize."""

import keras
import numpy as np
import pytest

import keras_fastfcn as kf
from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.inference import logits_model
from keras_fastfcn.layers.resize import BilinearResize
from keras_fastfcn.inference.fold import (NativeBilinearResize, PaddedConv2D,
                                        PaddedDepthwiseConv2D,
                                        batchnorm_layers, fold_batchnorm, inference_copy,
                                        native_resizes, pad_dilated_convs)


def randomize_batchnorms(model, seed=0):
    """Non-trivial BN statistics (a fresh BN is the identity, which folds trivially)."""
    rng = np.random.RandomState(seed)
    for bn in batchnorm_layers(model):
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([
            rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
            rng.normal(0.0, 0.1, beta.shape).astype("float32"),
            rng.normal(0.0, 0.1, mean.shape).astype("float32"),
            rng.uniform(0.5, 1.5, var.shape).astype("float32"),
        ])


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _check_same(model, folded, images):
    ref = _numpy(logits_model(model)(images, training=False))
    out = _numpy(folded(images, training=False))
    assert out.shape == ref.shape
    # Folding only changes float32 rounding, relative to the activations' size.
    # Random weights with random BN statistics give logits in the hundreds, so the
    # bound is relative (a trained model's logits are ~10: differences ~1e-5).
    scale = max(1.0, float(np.abs(ref).max()))
    logit_diff = float(np.abs(out - ref).max())
    assert logit_diff <= 1e-5 * scale, (logit_diff, scale)
    # The softmax is 1/2-Lipschitz in the max norm.
    prob_diff = np.abs(_numpy(keras.ops.softmax(out)) - _numpy(keras.ops.softmax(ref))).max()
    assert prob_diff <= max(1e-4, 0.5 * logit_diff)
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.999


@pytest.mark.parametrize("head, upsampler, backbone, left", [
    # ConvBNReLU, DilatedBranch (inner + outer BN), keras.applications ResNet pairs
    ("fcn", "jpu", "resnet50", 0),
    ("encnet", "jpu", "resnet50", 1),   # the Encoding BN (axis=1, over codewords) stays
    ("psp", "jpu_x", "resnet50", 0),    # JUM's GroupNorms are not BatchNorms and stay
    ("encnet", "jpu", "resnet50s", 1),  # the official deep-stem ResNet
])
def test_fold_keeps_outputs(head, upsampler, backbone, left, rng):
    keras.utils.set_random_seed(0)
    model = kf.FastFCN(num_classes=3, head=head, upsampler=upsampler, backbone=backbone,
                       jpu_width=64)
    randomize_batchnorms(model)
    before = [w.copy() for w in model.get_weights()]
    folded = fold_batchnorm(model)
    assert len(batchnorm_layers(folded)) == left
    if upsampler == "jpu_x":
        norms = [layer for layer in folded._flatten_layers(include_self=False)
                 if isinstance(layer, keras.layers.GroupNormalization)]
        assert norms, "JPU_X GroupNorms must survive folding"
    images = rng.uniform(0, 255, (2, 67, 75, 3)).astype("float32")
    _check_same(model, folded, images)
    # The original model is not modified.
    assert len(batchnorm_layers(model)) > 50
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Folding drops the BN variables (4 per BN) from the model.
    assert len(folded.weights) < len(logits_model(model).weights)


def test_fold_dilated_backbone_with_aux_heads(rng):
    keras.utils.set_random_seed(1)
    # A dilated (output stride 8) backbone rebuilt from config, and a dict-output
    # model: fold takes the logits-only inference model.
    model = kf.FastFCN(num_classes=4, head="fcn", upsampler=None, output_stride=8, aux=True)
    randomize_batchnorms(model, seed=1)
    folded = fold_batchnorm(model)
    assert len(batchnorm_layers(folded)) == 0
    images = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    _check_same(model, folded, images)


def test_separable_conv_bn_folds_inner_norm(rng):
    # The standalone separable block: depthwise -> BN -> pointwise.
    inputs = keras.Input((None, None, 8))
    block = kf.layers.SeparableConvBN(16, dilation_rate=2)
    model = keras.Model(inputs, block(inputs))
    randomize_batchnorms(model, seed=2)
    folded = fold_batchnorm(model)
    assert batchnorm_layers(folded) == []
    x = rng.normal(size=(2, 9, 11, 8)).astype("float32")
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x, training=False)), atol=1e-5)


def test_fold_rejects_non_functional_models():
    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional keras.Model"):
        fold_batchnorm(Custom())
    with pytest.raises(ValueError, match="functional keras.Model"):
        fold_batchnorm("model.keras")


def test_padded_dilated_depthwise_same_values_any_size(rng, tiny_backbone):
    """JUM (dilations 1, 2, 4) and JPU (2, 4, 8) separable convs written as explicit
    padding + valid conv: same outputs at odd and even sizes, the caller's model
    untouched, and the layer round-trips through its config."""
    keras.utils.set_random_seed(2)
    # JPU: dilations 1, 2, 4, 8; JPU_X: two JUMs with 1, 2, 4 and 2, 4, 8.
    for upsampler, replaced in (("jpu", 3), ("jpu_x", 2 + 3)):
        model = kf.FastFCN(num_classes=3, head="fcn", upsampler=upsampler, jpu_width=64,
                           backbone=tiny_backbone)
        randomize_batchnorms(model, seed=3)
        net = pad_dilated_convs(inference_copy(logits_model(model)))
        padded = [layer for layer in net._flatten_layers(include_self=False)
                  if isinstance(layer, PaddedDepthwiseConv2D)]
        assert len(padded) == replaced
        assert pad_dilated_convs(net) is net  # nothing left to replace
        assert not any(isinstance(layer, PaddedDepthwiseConv2D)
                       for layer in model._flatten_layers(include_self=False))
        for h, w in ((64, 64), (67, 75)):
            _check_same(model, net, rng.uniform(0, 255, (1, h, w, 3)).astype("float32"))
    layer = padded[0]
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, PaddedDepthwiseConv2D) and clone.pad == layer.pad
    assert clone.padding == "valid" and clone.dilation_rate == layer.dilation_rate
    channels = layer.kernel.shape[2]
    assert clone.compute_output_shape((1, 9, 11, channels)) == (1, 9, 11, channels)


def test_padded_dilated_aspp_convs_same_values(rng, tiny_backbone):
    """The DeepLab head's ASPP branches (rates 12, 24, 36: larger than a 64 px image's
    8x8 map, where only the centre tap reads it) written as explicit padding + valid
    conv, beside the JPU's: same logits at odd and even sizes, folded or not, the
    caller's model untouched, and the layer round-trips through its config."""
    keras.utils.set_random_seed(4)
    model = kf.FastFCN(num_classes=3, head="deeplab", jpu_width=32, backbone=tiny_backbone)
    randomize_batchnorms(model, seed=5)
    for net in (inference_copy(logits_model(model)), fold_batchnorm(model)):
        net = pad_dilated_convs(net)
        assert sum(isinstance(layer, PaddedDepthwiseConv2D) for layer in all_layers(net)) == 3
        aspp = [layer for layer in all_layers(net) if isinstance(layer, PaddedConv2D)]
        assert sorted(layer.pad for layer in aspp) == [(12,) * 4, (24,) * 4, (36,) * 4]
        for h, w in ((64, 64), (67, 75)):
            _check_same(model, net, rng.uniform(0, 255, (1, h, w, 3)).astype("float32"))
    assert not any(isinstance(layer, PaddedConv2D) for layer in all_layers(model))
    layer = aspp[0]
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, PaddedConv2D) and clone.pad == layer.pad
    assert clone.padding == "valid" and clone.dilation_rate == layer.dilation_rate


@pytest.mark.parametrize("stride", [8, 16])
def test_padded_dilated_encoder_convs_same_values(rng, stride):
    """A dilated encoder (DilatedFCN, output stride 8 or 16): its dilated 3x3 convs are
    nodes of a nested functional model, padded in a rebuilt graph (the caller's model
    keeps its convs) with the same logits at odd and even sizes."""
    keras.utils.set_random_seed(6)
    model = kf.models.FastFCNImageSegmenter(kf.models.FastFCNBackbone(
        encoder="resnet50", upsampler=None, output_stride=stride, width=16,
        encoder_weights=None), num_classes=3, head="fcn")
    randomize_batchnorms(model, seed=7)
    rates = sorted(max(layer.dilation_rate) for layer in all_layers(model)
                   if type(layer) is keras.layers.Conv2D and max(layer.dilation_rate) > 1)
    assert rates and max(rates) == 32 // stride
    net = pad_dilated_convs(fold_batchnorm(model))
    padded = [layer for layer in all_layers(net) if isinstance(layer, PaddedConv2D)]
    assert sorted(max(layer.dilation_rate) for layer in padded) == rates
    assert not any(type(layer) is keras.layers.Conv2D and max(layer.dilation_rate) > 1
                   for layer in all_layers(net))
    assert not any(isinstance(layer, PaddedConv2D) for layer in all_layers(model))
    for h, w in ((64, 64), (67, 75)):
        _check_same(model, net, rng.uniform(0, 255, (1, h, w, 3)).astype("float32"))


@pytest.mark.parametrize("shape, size", [((2, 4, 4, 3), (15, 9)), ((1, 64, 64, 5), (512, 480)),
                                         ((1, 9, 9, 2), (4, 3)), ((1, 1, 1, 2), (6, 5)),
                                         ((1, 5, 7, 2), (1, 1)), ((1, 45, 60, 11), (360, 480))])
def test_native_bilinear_resize_is_the_same_resize(rng, shape, size):
    """TensorFlow's align_corners=True ResizeBilinear is PyTorch's align_corners=True:
    up, down, to and from one pixel, at logits-sized scales (values like a trained
    model's logits)."""
    x = (rng.randn(*shape) * 100).astype("float32")
    reference = np.zeros((shape[0],) + size + (1,), "float32")
    want = _numpy(BilinearResize()([x, reference]))
    got = _numpy(NativeBilinearResize()([x, reference]))
    assert got.shape == want.shape == (shape[0],) + size + shape[3:]
    # Two blends of values up to ~450: a few float32 ulps of that scale (~3e-5 each),
    # also where the result is near 0.
    np.testing.assert_allclose(got, want, rtol=1e-5,
                               atol=16 * np.finfo(np.float32).eps * np.abs(x).max())


@pytest.mark.parametrize("head", ["fcn", "psp"])
def test_native_resizes_swaps_every_resize_of_a_copy(rng, head, tiny_backbone):
    """The logits resize (top-level graph) and the layers' own upsampling (JPU,
    pyramid pooling) of the copy become native; the caller's model keeps its own."""
    model = kf.FastFCN(num_classes=3, head=head, jpu_width=32, backbone=tiny_backbone)
    net = logits_model(model)
    copy = inference_copy(net)
    native = native_resizes(copy)
    assert type(native.get_layer("logits")) is NativeBilinearResize
    assert type(native.get_layer("jpu").upsample) is NativeBilinearResize
    if head == "psp":
        pooling = [layer for layer in all_layers(native)
                   if type(layer).__name__ == "PyramidPooling"]
        assert pooling and type(pooling[0].upsample) is NativeBilinearResize
    for graph in (net, model):  # the caller's graph untouched
        assert type(graph.get_layer("logits")) is BilinearResize
        assert type(graph.get_layer("jpu").upsample) is BilinearResize
    assert native_resizes(native) is native  # nothing left to swap
    config = native.get_layer("logits").get_config()
    assert NativeBilinearResize.from_config(config).get_config() == config
    image = rng.uniform(0, 255, (1, 67, 75, 3)).astype("float32")
    np.testing.assert_allclose(_numpy(native(image)), _numpy(net(image)), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="align_corners=False"):
        NativeBilinearResize(align_corners=False)


def test_native_resizes_under_mixed_precision_and_subclassed_models(rng, tiny_backbone):
    """A bf16 export's logits resize (the layer's policy rewritten to mixed_bfloat16)
    gives the portable layer's values; a subclassed model is exported as it is."""
    from keras_fastfcn.precision import with_precision

    net = logits_model(with_precision(kf.FastFCN(num_classes=3, head="fcn", jpu_width=32,
                                                 backbone=tiny_backbone), "bf16"))
    native = native_resizes(inference_copy(net))
    assert native.get_layer("logits").compute_dtype == net.get_layer("logits").compute_dtype
    image = rng.uniform(0, 255, (1, 64, 72, 3)).astype("float32")
    want = _numpy(keras.ops.cast(net(image), "float32"))
    got = _numpy(keras.ops.cast(native(image), "float32"))
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())

    class Own(keras.Model):
        def __init__(self):
            super().__init__()
            self.up = BilinearResize()

        def call(self, x):
            return self.up([x, x])

    own = Own()
    assert native_resizes(own) is own


class _Apply(keras.layers.Layer):
    """A user's layer whose config cannot round-trip (it holds a Python function)."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


def test_prepare_without_folding_copies_what_it_can(rng, tiny_backbone):
    """`fold_bn=False`: a Sequential model is copied and rewritten (the caller's is
    not); a functional model that cannot be cloned from its configs is exported as it
    is, with a warning that says why, instead of failing."""
    from keras_fastfcn.inference.prepare import prepare

    model = kf.FastFCN(num_classes=3, head="fcn", jpu_width=32, backbone=tiny_backbone)
    image = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    seq = keras.Sequential([keras.Input((None, None, 3)), logits_model(model)])
    net, _ = prepare(seq, fold_bn=False, pad_dilations=True, native_resizes=True)
    kinds = {type(layer).__name__ for layer in all_layers(net)}
    assert {"NativeBilinearResize", "PaddedDepthwiseConv2D"} <= kinds
    assert type(model.get_layer("jpu").upsample) is BilinearResize
    np.testing.assert_allclose(_numpy(net(image)), _numpy(seq(image)), rtol=1e-5, atol=1e-4)

    inputs = keras.Input((None, None, 3))
    own = keras.Model(inputs, _Apply(lambda x: 2.0 * x)(logits_model(model)(inputs)))
    with pytest.warns(UserWarning, match="Could not copy the model"):
        net, _ = prepare(own, fold_bn=False, native_resizes=True)
    assert net is own
    assert type(model.get_layer("jpu").upsample) is BilinearResize
