import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="the PyTorch parity tests need PyTorch")

from keras_fastfcn import layers as L
from keras_fastfcn.layers import resize as kops


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (13, 11)), ((16, 16), (64, 64)),
                                          ((9, 6), (4, 3)), ((1, 1), (6, 5)),
                                          ((4, 4), (1, 1))])
def test_resize_matches_torch(rng, align_corners, in_hw, out_hw):
    x = rng.randn(2, *in_hw, 3).astype("float32")
    ours = np.asarray(kops.resize_bilinear(x, out_hw, align_corners=align_corners))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=out_hw, mode="bilinear",
        align_corners=align_corners).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_resize_hand_computed():
    x = np.array([0.0, 1.0, 2.0, 3.0], "float32").reshape(1, 2, 2, 1)
    out = np.asarray(kops.resize_bilinear(x, (3, 3), align_corners=True))[0, :, :, 0]
    np.testing.assert_allclose(out, [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]], atol=1e-6)


def test_resize_dynamic_shape_in_tf_function():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32),
                                  tf.TensorSpec([2], tf.int32)])
    def fn(x, size):
        return kops.resize_bilinear(x, (size[0], size[1]))

    out = fn(tf.ones((1, 3, 5, 2)), tf.constant([7, 4]))
    assert tuple(out.shape) == (1, 7, 4, 2)
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)


def test_resize_rejects_non_4d():
    with pytest.raises(ValueError, match="4-D"):
        kops.resize_bilinear(np.zeros((3, 3, 1), "float32"), (4, 4))


@pytest.mark.parametrize("hw,bins", [((7, 5), 2), ((12, 12), 6), ((5, 9), 3), ((4, 4), 1), ((2, 3), 6)])
def test_adaptive_avg_pool_matches_torch(rng, hw, bins):
    x = rng.randn(2, *hw, 4).astype("float32")
    ours = np.asarray(L.adaptive_avg_pool2d(x, bins))
    ref = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), bins).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("align_corners", [True, False])
def test_log_resize_is_the_log_of_the_resized_scores_and_stays_finite(rng, align_corners,
                                                                      monkeypatch):
    """`log_resize_bilinear` (multi-scale inference) equals log(resize(exp(x))) where
    float32 can compute that, and stays finite for trained-size logits (+-1000), also
    where a runtime fuses its selects into products, as OpenVINO does (its exported
    multi-scale models gave NaN probabilities: 0 * exp(overflow))."""
    import keras

    x = rng.uniform(-20, 20, (1, 5, 7, 3)).astype("float32")
    got = np.asarray(kops.log_resize_bilinear(x, (13, 11), align_corners))
    expected = np.log(np.asarray(kops.resize_bilinear(np.exp(x), (13, 11), align_corners)))
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())

    big = rng.choice([-1000.0, 0.0, 1000.0], (1, 5, 7, 3)).astype("float32")
    reference = np.asarray(kops.log_resize_bilinear(big, (13, 11), align_corners))
    assert np.isfinite(reference).all()
    select = keras.ops.where

    def fused(condition, x1, x2):  # where(c, x, 0) as c * x + (1 - c) * 0
        if isinstance(x2, float) and x2 == 0.0:
            return keras.ops.cast(condition, "float32") * x1
        return select(condition, x1, x2)

    monkeypatch.setattr(kops.ops, "where", fused)
    as_products = np.asarray(kops.log_resize_bilinear(big, (13, 11), align_corners))
    np.testing.assert_allclose(as_products, reference, atol=1e-3)
