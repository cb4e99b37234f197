"""SeparableConvBN's depthwise conv as shifted multiply-adds (`depthwise_shifted`, the
JAX backend's form, `SHIFTED_DEPTHWISE`): the conv's values, weights and files."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_fastfcn import layers as L
from keras_fastfcn.layers import conv as conv_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS32 = float(np.finfo(np.float32).eps)


def _randomize(layer, seed=0):
    """Weights of unit scale, BN statistics away from the identity (so they matter)."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        shape = tuple(v.shape)
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        elif "moving_mean" in v.path:
            v.assign(rng.uniform(-0.5, 0.5, shape).astype("float32"))
        else:
            v.assign((rng.standard_normal(shape) / np.sqrt(max(np.prod(shape[:-1]), 1)))
                     .astype("float32"))


def _depthwise_scale(x, kernel):
    """The largest sum of |products| an output of the conv adds up: what its rounding
    error is relative to (not the output, which can cancel to near zero)."""
    return float(np.abs(x).max() * np.abs(kernel).sum(axis=(0, 1)).max())


@pytest.mark.parametrize("kernel_size, rate, use_bias", [
    (3, 1, False), (3, 2, True), (3, (4, 3), False), (3, 8, False),
    (4, 2, True),  # an even kernel: an odd padding total, the extra pixel bottom/right
])
def test_depthwise_shifted_equals_depthwise_conv(kernel_size, rate, use_bias):
    """Same values as `DepthwiseConv2D(padding="same")` on an odd-sized input, up to
    float rounding (the sum in another order)."""
    conv = keras.layers.DepthwiseConv2D(kernel_size, padding="same", dilation_rate=rate,
                                        use_bias=use_bias)
    x = np.random.default_rng(1).standard_normal((2, 13, 11, 6)).astype("float32")
    conv.build(x.shape)
    _randomize(conv)
    ref = np.asarray(conv(x))
    got = np.asarray(conv_module.depthwise_shifted(
        x, conv.kernel, conv.dilation_rate, conv.bias if use_bias else None))
    assert got.shape == ref.shape
    # Measured at most 0.32 eps x scale (AVX-512 EPYC, Zen 4): 100x margin.
    scale = _depthwise_scale(x, np.asarray(conv.kernel)) + float(
        np.abs(np.asarray(conv.bias)).max() if use_bias else 0.0)
    np.testing.assert_allclose(got, ref, rtol=0, atol=32 * EPS32 * scale)
    # Negative control: another dilation is not within that tolerance.
    other = np.asarray(conv_module.depthwise_shifted(x, conv.kernel, 5))
    assert np.abs(other - ref).max() > 1e3 * 32 * EPS32 * scale


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_depthwise_shifted_accumulates_16_bit_inputs_in_float32(dtype):
    """16-bit inputs (mixed precision): the float32 sum of the 16-bit products, rounded
    once to the input's type, as a convolution accumulates (not nine 16-bit sums)."""
    rng = np.random.default_rng(5)
    x32 = rng.standard_normal((1, 9, 10, 16)).astype("float32")
    k32 = (rng.standard_normal((3, 3, 16, 1)) / 3).astype("float32")
    x, k = (keras.ops.cast(t, dtype) for t in (x32, k32))
    got = conv_module.depthwise_shifted(x, k, 2)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    xr, kr = (keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")) for t in (x, k))
    ref = np.asarray(keras.ops.depthwise_conv(xr, kr, 1, "same", dilation_rate=2))
    got = keras.ops.convert_to_numpy(keras.ops.cast(got, "float32"))
    # One rounding of the float32 sum: at most the unit roundoff (half an ulp) of the
    # output's magnitude (a 16-bit sum would round nine times).
    unit_roundoff = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}[dtype]
    bound = unit_roundoff * np.abs(ref) + 32 * EPS32 * _depthwise_scale(xr, kr)
    assert (np.abs(got - ref) <= bound).all(), np.max(np.abs(got - ref) / bound)


@pytest.mark.parametrize("training, remat", [(False, False), (True, False), (True, True)])
def test_separable_conv_bn_either_form(monkeypatch, training, remat):
    """`SHIFTED_DEPTHWISE` True and False: the same outputs (batch statistics in
    training, with and without remat), the same weights and the same config."""
    x = np.random.default_rng(2).standard_normal((2, 12, 9, 12)).astype("float32")
    outs, configs, names = [], [], []
    for setting in (False, True):
        monkeypatch.setattr(conv_module, "SHIFTED_DEPTHWISE", setting)
        keras.utils.set_random_seed(0)
        sep = L.SeparableConvBN(8, dilation_rate=2, remat=remat, name="sep")
        sep.build(x.shape)
        _randomize(sep)
        outs.append(np.asarray(sep(x, training=training)))
        configs.append(sep.get_config())
        names.append([v.path for v in sep.weights])
    assert configs[0] == configs[1] and names[0] == names[1]
    # Measured at most 1.0 eps x the output scale (Zen 4): 64x margin.
    np.testing.assert_allclose(outs[1], outs[0], rtol=0,
                               atol=64 * EPS32 * np.abs(outs[0]).max())


def test_folded_separable_conv_bn_either_form(monkeypatch):
    """After BN folding (the BN's scale in the depthwise kernel, its shift in the
    pointwise conv's bias) the shifted form reads the folded kernel."""
    from keras_fastfcn.inference.fold import fold_batchnorm

    monkeypatch.setattr(conv_module, "SHIFTED_DEPTHWISE", False)
    inputs = keras.Input((None, None, 12))
    sep = L.SeparableConvBN(8, dilation_rate=2)
    model = keras.Model(inputs, sep(inputs))
    _randomize(sep)
    x = np.random.default_rng(3).standard_normal((1, 10, 9, 12)).astype("float32")
    ref = np.asarray(model(x, training=False))
    folded = fold_batchnorm(model)
    folded_sep = next(layer for layer in folded.layers
                      if isinstance(layer, L.SeparableConvBN))
    assert not np.allclose(np.asarray(folded_sep.conv1.kernel), np.asarray(sep.conv1.kernel))
    monkeypatch.setattr(conv_module, "SHIFTED_DEPTHWISE", True)
    got = np.asarray(folded(x, training=False))
    np.testing.assert_allclose(got, ref, rtol=0, atol=64 * EPS32 * np.abs(ref).max())


def test_auto_is_the_conv_outside_jax(monkeypatch):
    monkeypatch.setattr(conv_module, "SHIFTED_DEPTHWISE", "auto")
    assert conv_module._shifted_depthwise() is (keras.backend.backend() == "jax")


JAX_SCRIPT = r"""
import sys
import jax, keras, numpy as np
from keras_fastfcn.layers import conv as conv_module
import keras_fastfcn  # registers the layers for loading
assert keras.backend.backend() == "jax"
assert conv_module.SHIFTED_DEPTHWISE == "auto" and conv_module._shifted_depthwise()
path, npz = sys.argv[1], np.load(sys.argv[2])
feats = [npz[f"x{i}"] for i in range(3)]
model = keras.saving.load_model(path)  # written by TensorFlow
eps = float(np.finfo(np.float32).eps)

def run(setting, training):
    conv_module.SHIFTED_DEPTHWISE = setting
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def loss(tv):
        out, _ = model.stateless_call(tv, ntv, feats, training=training)
        return keras.ops.sum(keras.ops.square(out)), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(tv)
    return np.asarray(out), [np.asarray(g) for g in grads]

ref = npz["out"]
shifted, _ = run("auto", False)
conv, _ = run(False, False)
# The JAX shifted form against TensorFlow's conv (every other op differs too) and
# against JAX's conv: measured 2.0 and 0.8 eps x scale (Zen 4); tolerance 64.
scale = np.abs(ref).max()
assert np.abs(shifted - ref).max() <= 64 * eps * scale, np.abs(shifted - ref).max() / scale
assert np.abs(shifted - conv).max() <= 64 * eps * scale, np.abs(shifted - conv).max() / scale
# Training (batch statistics, remat on): outputs and gradients of both forms.
out_s, grads_s = run("auto", True)
out_c, grads_c = run(False, True)
assert np.abs(out_s - out_c).max() <= 64 * eps * np.abs(out_c).max()  # measured 2.4
gscale = max(np.abs(g).max() for g in grads_c)
worst = max(np.abs(a - b).max() for a, b in zip(grads_s, grads_c)) / gscale
assert worst <= 256 * eps, worst  # measured 3.3 eps of the largest gradient
print("errors / scale:", np.abs(shifted - ref).max() / scale, np.abs(shifted - conv).max()
      / scale, np.abs(out_s - out_c).max() / np.abs(out_c).max(), worst)
conv_module.SHIFTED_DEPTHWISE = "auto"
before = np.asarray(model(feats, training=False))
model.save(sys.argv[3])  # and back: the same file format, the same weights
again = keras.saving.load_model(sys.argv[3])
assert [v.path for v in again.weights] == [v.path for v in model.weights]
np.testing.assert_array_equal(np.asarray(again(feats, training=False)), before)
print("OK")
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_shifted_form_matches_and_loads_tensorflow_files(tmp_path):
    """On JAX (a child process) a `.keras` JPU written by TensorFlow loads, its
    shifted-form outputs match TensorFlow's and JAX's conv, in training the gradients
    too, and it saves and loads again."""
    rng = np.random.default_rng(4)
    feats = [rng.standard_normal(s).astype("float32")
             for s in ((1, 12, 10, 8), (1, 6, 5, 12), (1, 3, 3, 16))]
    inputs = [keras.Input((None, None, f.shape[-1])) for f in feats]
    jpu = L.JPU(width=8, dilations=(1, 2, 4))
    model = keras.Model(inputs, jpu(inputs))
    _randomize(jpu)
    path = str(tmp_path / "jpu.keras")
    model.save(path)
    np.savez(tmp_path / "ref.npz", out=np.asarray(model(feats, training=False)),
             **{f"x{i}": f for i, f in enumerate(feats)})
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, path, str(tmp_path / "ref.npz"),
                           str(tmp_path / "jax.keras")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
