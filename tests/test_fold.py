"""BatchNorm folding (keras_fastfcn.fold): same outputs, fewer BN layers, original untouched."""

import keras
import numpy as np
import pytest

import keras_fastfcn as kf
from keras_fastfcn.fold import batchnorm_layers, fold_batchnorm


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
    ref = _numpy(model.inference_model()(images, training=False))
    out = _numpy(folded(images, training=False))
    assert out.shape == ref.shape
    # float32 rounding of the merged kernels: relative to the logits' scale.
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(_numpy(keras.ops.softmax(out)), _numpy(keras.ops.softmax(ref)),
                               atol=1e-4)
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.999


@pytest.mark.parametrize("head, upsampler, left", [
    ("fcn", "jpu", 0),          # ConvBNReLU, DilatedBranch (inner + outer BN), ResNet pairs
    ("encnet", "jpu", 1),       # the Encoding BN (axis=1, over codewords) stays
    ("psp", "jpu_x", 0),        # JUM's GroupNorms are not BatchNorms and stay
])
def test_fold_keeps_outputs(head, upsampler, left, rng):
    model = kf.FastFCN(num_classes=3, head=head, upsampler=upsampler, jpu_width=64)
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
    assert len(folded.weights) < len(model.inference_model().weights)


def test_fold_dilated_backbone_with_aux_heads(rng):
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
