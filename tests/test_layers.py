import keras
import numpy as np
import pytest
try:  # the parity tests against PyTorch skip without it (pip install -e ".[test]")
    import torch
except ImportError:
    torch = None
requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

from keras_fastfcn import layers as L


def n_trainable(layer):
    return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def official_inputs():
    return [keras.Input((None, None, c)) for c in (512, 1024, 2048)]


def test_jpu_parameter_count_matches_official():
    jpu = L.JPU(width=512, dilations=(1, 2, 4, 8))
    out = jpu(official_inputs())
    assert out.shape[-1] == 2048
    assert n_trainable(jpu) == 19_735_552


def test_jpux_parameter_count_matches_official():
    jpux = L.JPUX(width=512)
    out = jpux(official_inputs())
    assert out.shape[-1] == 2048
    assert n_trainable(jpux) == 19_719_168


@pytest.mark.parametrize("head,jpu,expected", [("enc", True, 1_652_438), ("enc", False, 10_041_046),
                                               ("psp", True, 23_104_059), ("aspp", True, 16_140_603),
                                               ("fcn", True, 9_468_475)])
def test_head_parameter_counts(head, jpu, expected):
    layer = {"enc": lambda: L.EncHead(59, se_loss=True, jpu=jpu), "psp": lambda: L.PSPHead(59),
             "aspp": lambda: L.ASPPHead(59), "fcn": lambda: L.FCNHead(59)}[head]()
    layer(keras.Input((None, None, 2048)))
    assert n_trainable(layer) == expected


def test_aux_head_parameter_count():
    aux = L.FCNHead(59)
    aux(keras.Input((None, None, 1024)))
    assert n_trainable(aux) == 2_374_971


def test_jpu_shapes_and_dynamic_sizes(rng):
    jpu = L.JPU(width=16, dilations=(1, 2))
    c3, c4, c5 = (rng.randn(2, 13, 17, 8), rng.randn(2, 7, 9, 12), rng.randn(2, 4, 5, 20))
    out = jpu([c3.astype("float32"), c4.astype("float32"), c5.astype("float32")])
    assert tuple(out.shape) == (2, 13, 17, 32)
    # A list of four features uses the last three (the official JPU signature).
    out4 = jpu([np.zeros((2, 26, 34, 4), "float32"), c3.astype("float32"),
                c4.astype("float32"), c5.astype("float32")])
    np.testing.assert_allclose(np.asarray(out4), np.asarray(out), atol=1e-6)


def test_jpu_rejects_bad_inputs():
    with pytest.raises(ValueError, match="list of 3"):
        L.JPU(width=8)(keras.ops.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="positive"):
        L.JPU(width=8, dilations=(0, 2))


def test_heads_reject_too_few_channels_by_name():
    """A head whose branches take C // k channels names k and C, instead of Keras'
    "filters=0" from a conv deep inside it."""
    x = keras.ops.zeros((1, 8, 8, 2))
    with pytest.raises(ValueError, match="PSPHead needs at least 4 input channels.*C = 2"):
        L.PSPHead(3)(x)
    with pytest.raises(ValueError, match="FCNHead needs at least 4 input channels"):
        L.FCNHead(3)(x)
    with pytest.raises(ValueError, match="ASPP needs at least 8 input channels"):
        L.ASPP()(keras.ops.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError, match="EncHead width must be >= 1, got 0"):
        L.EncHead(5, width=0)


def test_separable_conv_bn_structure():
    sep = L.SeparableConvBN(6, dilation_rate=2)
    sep(keras.ops.zeros((1, 9, 9, 4)))
    shapes = [tuple(w.shape) for w in sep.trainable_weights]
    assert shapes == [(3, 3, 4, 1), (4,), (4,), (1, 1, 4, 6)]
    assert sep.conv1.dilation_rate == (2, 2)


@requires_torch
def test_encoding_matches_reference_formula(rng):
    enc = L.Encoding(num_codes=5)
    x = rng.randn(2, 3, 4, 6).astype("float32")
    out = np.asarray(enc(x))
    c = enc.codewords.numpy()
    s = enc.scale.numpy()
    xf = x.reshape(2, -1, 6)
    resid = xf[:, :, None, :] - c[None, None]  # B, N, K, D
    logits = s * (resid ** 2).sum(-1)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ref = (a[..., None] * resid).sum(1)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_pyramid_pooling_matches_torch_pipeline(rng):
    ppm = L.PyramidPooling()
    x = rng.randn(1, 7, 9, 8).astype("float32")
    out = np.asarray(ppm(x))
    assert out.shape == (1, 7, 9, 16)
    np.testing.assert_allclose(out[..., :8], x)
    # Branch 1 (one bin) is spatially constant after upsampling.
    b1 = out[..., 8:10]
    np.testing.assert_allclose(b1, np.broadcast_to(b1[:, :1, :1], b1.shape), atol=1e-5)


@requires_torch
def test_jpu_against_torch_reference(rng):
    """Forward parity with a PyTorch JPU written from the official structure."""
    nn = torch.nn
    width, chans = 8, (4, 6, 10)

    def cbr(cin):
        return nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU())

    class Sep(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.conv1 = nn.Conv2d(3 * width, 3 * width, 3, 1, d, d, groups=3 * width, bias=False)
            self.bn = nn.BatchNorm2d(3 * width)
            self.pointwise = nn.Conv2d(3 * width, width, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.bn(self.conv1(x)))

    conv3, conv4, conv5 = cbr(chans[0]), cbr(chans[1]), cbr(chans[2])
    branches = [nn.Sequential(Sep(d), nn.BatchNorm2d(width), nn.ReLU()) for d in (1, 2, 4, 8)]
    modules = [conv3, conv4, conv5] + branches
    for m in modules:
        for p in m.modules():
            if isinstance(p, nn.BatchNorm2d):
                p.running_mean.uniform_(-0.5, 0.5)
                p.running_var.uniform_(0.5, 1.5)
                p.weight.data.uniform_(0.5, 1.5)
                p.bias.data.uniform_(-0.5, 0.5)
        m.eval()

    jpu = L.JPU(width=width)
    feats = [rng.randn(1, 12, 10, chans[0]), rng.randn(1, 6, 5, chans[1]), rng.randn(1, 3, 3, chans[2])]
    feats = [f.astype("float32") for f in feats]
    jpu(feats)

    def bn_weights(bn):
        return [bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                bn.running_mean.numpy(), bn.running_var.numpy()]

    def conv_w(conv):
        return conv.weight.detach().numpy().transpose(2, 3, 1, 0)

    for ours, theirs in ((jpu.conv3, conv3), (jpu.conv4, conv4), (jpu.conv5, conv5)):
        ours.conv.set_weights([conv_w(theirs[0])])
        ours.bn.set_weights(bn_weights(theirs[1]))
    for ours, theirs in zip(jpu.dilation_branches, branches):
        sep = theirs[0]
        ours.sep.conv1.set_weights([sep.conv1.weight.detach().numpy().transpose(2, 3, 0, 1)])
        ours.sep.bn.set_weights(bn_weights(sep.bn))
        ours.sep.pointwise.set_weights([conv_w(sep.pointwise)])
        ours.bn.set_weights(bn_weights(theirs[1]))

    with torch.no_grad():
        t = [torch.from_numpy(f).permute(0, 3, 1, 2) for f in feats]
        f5, f4, f3 = conv5(t[2]), conv4(t[1]), conv3(t[0])
        size = f3.shape[2:]
        up = dict(mode="bilinear", align_corners=True)
        feat = torch.cat([torch.nn.functional.interpolate(f5, size, **up),
                          torch.nn.functional.interpolate(f4, size, **up), f3], 1)
        ref = torch.cat([b(feat) for b in branches], 1).permute(0, 2, 3, 1).numpy()
    out = np.asarray(jpu(feats, training=False))
    np.testing.assert_allclose(out, ref, atol=1e-4)


@requires_torch
@pytest.mark.parametrize("training", [False, True])
def test_branch_relu_placement_changes_no_value(rng, training):
    """The JPU / JUM branches' ReLU runs per branch at inference (where it fuses with
    the pointwise conv) and once after the concatenation in training (one saved copy
    less): both equal each branch with its own ReLU, concatenated."""
    from keras_fastfcn.layers.jpu import _branches_output

    branches = [L.DilatedBranch(8, d, remat=False) for d in (1, 2, 4)]
    feat = keras.ops.convert_to_tensor(rng.randn(2, 12, 10, 24).astype("float32"))
    lead = keras.ops.convert_to_tensor(rng.rand(2, 12, 10, 8).astype("float32"))
    ref = np.concatenate([np.asarray(lead)] + [
        np.asarray(b(feat, training=training)) for b in branches], axis=-1)
    assert (ref[..., 8:] == 0).mean() > 0.2  # the ReLU matters
    out = _branches_output(branches, feat, training, leading=[lead])
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_encoding_under_float16_does_not_overflow(rng):
    """Under mixed_float16 the Encoding computes in float32: ||x||^2 over 512
    channels and its sums over the positions pass float16's 65504 (a user's EncNet
    gave NaN logits from 192x256 images on)."""
    x = rng.uniform(0, 20, (1, 16, 16, 512)).astype("float32")
    reference = L.Encoding(num_codes=8)
    expected = np.asarray(reference(x))
    half = L.Encoding(num_codes=8, dtype="mixed_float16")
    half.build(x.shape)
    half.set_weights(reference.get_weights())
    got = np.asarray(half(x)).astype("float32")
    assert half.compute_dtype == "float16" and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())
