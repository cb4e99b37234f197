"""Memory options: rematerialized separable convs (JPU / JUM) and the matmul resize.

Both must change memory only: same outputs, gradients and BatchNorm statistics as
the plain computation (up to float rounding), inside `model.fit` too, and the
options must survive serialization.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras

from keras_fastfcn import layers as L
from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.layers import resize as kops
from keras_fastfcn.layers.resize import BilinearResize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grads(layer, x):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            # Quadratic, so that the output gradient differs per element.
            loss = tf.reduce_sum(0.5 * y * y + y)
        return y, tape.gradient(loss, [x] + layer.trainable_variables)

    return step(x)


@pytest.mark.parametrize("norm,dilation", [("batch", 2), ("batch", 1), ("group", 4)])
def test_separable_remat_same_outputs_gradients_and_moving_stats(rng, norm, dilation):
    x = tf.constant(rng.randn(2, 12, 10, 64).astype("float32"))
    plain = L.SeparableConvBN(32, 3, dilation, norm=norm, remat=False)
    plain.build(x.shape)
    # Non-trivial weights and statistics, so that an update applied twice shows.
    plain.set_weights([rng.randn(*w.shape).astype("float32") * 0.5 + (w.ndim == 1)
                       for w in plain.get_weights()])
    remat = L.SeparableConvBN(32, 3, dilation, norm=norm, remat=True)
    remat.build(x.shape)
    remat.set_weights(plain.get_weights())

    y0, g0 = _grads(plain, x)
    y1, g1 = _grads(remat, x)
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) == 1 + len(plain.trainable_variables)
    for a, b in zip(g0, g1):
        assert b is not None
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    # BatchNorm moving statistics: updated once (twice would give other values,
    # as the random initial statistics are far from the batch ones), identically.
    assert len(plain.non_trainable_variables) == (2 if norm == "batch" else 0)
    for a, b in zip(plain.non_trainable_variables, remat.non_trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-6)

    # Inference is the plain computation either way.
    np.testing.assert_array_equal(remat(x, training=False).numpy(),
                                  plain(x, training=False).numpy())


def _tiny_jpu_model(remat, upsampler="jpu"):
    images = keras.Input((32, 32, 3))
    c3 = keras.layers.Conv2D(8, 3, strides=8, padding="same", name="c3")(images)
    c4 = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c4")(c3)
    c5 = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="c5")(c4)
    if upsampler == "jpu":
        up = L.JPU(width=32, dilations=(1, 2, 4), remat=remat, name="jpu")
    else:
        up = L.JPUX(width=64, remat=remat, name="jpu")
    feat = up([c3, c4, c5])
    logits = keras.layers.Conv2D(3, 1, name="classifier")(feat)
    logits = L.BilinearResize(name="logits")([logits, images])
    return keras.Model(images, logits)


@pytest.mark.parametrize("upsampler", ["jpu", "jpu_x"])
def test_remat_in_model_fit_matches_plain(rng, upsampler):
    """One SGD step in `model.fit`: same weights and moving statistics after it."""
    x = rng.uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    y = rng.randint(0, 3, (2, 32, 32)).astype("int32")
    results = []
    for remat in (False, True):
        keras.utils.set_random_seed(1)
        model = _tiny_jpu_model(remat, upsampler)
        assert model.get_layer("jpu").remat is remat
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(w, 0) for w in results[0])


def test_remat_option_serializes_and_can_be_switched(tmp_path):
    jpu = L.JPU(width=32, dilations=(1, 2), remat=True)
    config = jpu.get_config()
    assert config["remat"] is True
    again = L.JPU.from_config(config)
    assert again.remat is True and all(b.sep.remat for b in again.dilation_branches)
    jpux = L.JPUX.from_config(L.JPUX(width=64, remat=True).get_config())
    assert jpux.remat is True and jpux.jum_1.dilation_branches[0].sep.remat
    # Older configs have no "remat" key: the default (on) applies.
    del config["remat"]
    assert L.JPU.from_config(config).remat is True
    assert L.JPU(width=32).remat is True and L.JPUX(width=64).remat is True

    model = _tiny_jpu_model(remat=True)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("jpu").remat is True
    x = np.random.RandomState(0).uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)

    # The option can be switched on an existing layer (e.g. a built FastFCN).
    model.get_layer("jpu").remat = False
    assert model.get_layer("jpu").get_config()["remat"] is False


@pytest.mark.parametrize("align_corners", [True, False])
def test_matmul_resize_matches_gather_in_value_and_gradient(rng, align_corners):
    x = tf.constant(rng.randn(2, 7, 9, 5).astype("float32"))
    g = tf.constant(rng.randn(2, 29, 33, 5).astype("float32"))

    def value_and_grad(method):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = kops.resize_bilinear(x, (29, 33), align_corners, method=method)
            loss = tf.reduce_sum(y * g)
        return y, tape.gradient(loss, x)

    y0, g0 = value_and_grad("gather")
    y1, g1 = value_and_grad("matmul")
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), atol=1e-5)
    np.testing.assert_allclose(g1.numpy(), g0.numpy(), atol=1e-4)


def test_matmul_resize_dynamic_shape_and_bad_method():
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32),
                                  tf.TensorSpec([2], tf.int32)])
    def fn(x, size):
        return kops.resize_bilinear(x, (size[0], size[1]), method="matmul")

    out = fn(tf.ones((3, 3, 5, 2)), tf.constant([7, 4]))
    assert tuple(out.shape) == (3, 7, 4, 2)
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="resize method"):
        kops.resize_bilinear(tf.ones((1, 2, 2, 1)), (4, 4), method="nearest")
    with pytest.raises(ValueError, match="resize method"):
        L.BilinearResize(method="bicubic")


def test_bilinear_resize_layer_methods(rng):
    x = tf.constant(rng.randn(1, 6, 5, 3).astype("float32"))
    ref = tf.zeros((1, 23, 17, 1))
    layer = L.BilinearResize()
    assert L.BilinearResize.from_config(layer.get_config()).method == "auto"
    train = layer([x, ref], training=True)
    infer = layer([x, ref], training=False)
    np.testing.assert_allclose(train.numpy(), infer.numpy(), atol=1e-5)
    # Inference keeps the gather form bit for bit.
    np.testing.assert_array_equal(infer.numpy(), kops.resize_bilinear(x, (23, 17)).numpy())
    fixed = L.BilinearResize(method="matmul")
    np.testing.assert_array_equal(
        fixed([x, ref], training=False).numpy(),
        kops.resize_bilinear(x, (23, 17), method="matmul").numpy())


def _reference_jpu_call(jpu, c3, c4, c5):
    """JPU's training forward as the official code writes it: gather resize, each
    branch with its own ReLU, no remat, no chaining."""
    f3 = jpu.conv3(c3, training=True)
    size = tf.shape(f3)[1:3]
    f4 = kops.resize_bilinear(jpu.conv4(c4, training=True), size, jpu.align_corners)
    f5 = kops.resize_bilinear(jpu.conv5(c5, training=True), size, jpu.align_corners)
    feat = tf.concat([f5, f4, f3], axis=-1)
    outs = []
    for branch in jpu.dilation_branches:
        x = branch.sep.pointwise(branch.sep.bn(branch.sep.conv1(feat), training=True))
        outs.append(tf.nn.relu(branch.bn(x, training=True)))
    return tf.concat(outs, axis=-1)


@pytest.mark.parametrize("remat", [False, True])
def test_jpu_training_pass_matches_the_plain_formulation(rng, remat):
    """Outputs and gradients (inputs and every weight) of JPU in training, with the
    matmul resize, ReLU after the concatenation, chaining and optionally remat, equal
    those of the plain per-branch computation."""
    c3 = tf.constant(rng.randn(2, 16, 12, 8).astype("float32"))
    c4 = tf.constant(rng.randn(2, 8, 6, 16).astype("float32"))
    c5 = tf.constant(rng.randn(2, 4, 3, 32).astype("float32"))
    jpu = L.JPU(width=32, dilations=(1, 2, 4), remat=remat)
    jpu.build([c3.shape, c4.shape, c5.shape])
    upstream = tf.constant(rng.randn(2, 16, 12, 96).astype("float32"))

    def run(fn):
        before = [v.numpy() for v in jpu.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch([c3, c4, c5])
            y = fn()
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [c3, c4, c5] + jpu.trainable_variables)
        after = [v.numpy() for v in jpu.non_trainable_variables]
        for v, value in zip(jpu.non_trainable_variables, before):  # undo the update
            v.assign(value)
        return y, grads, after

    y0, g0, stats0 = run(lambda: _reference_jpu_call(jpu, c3, c4, c5))
    y1, g1, stats1 = run(tf.function(lambda: jpu([c3, c4, c5], training=True)))
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=1e-5, atol=1e-5)
    # Gradients reach hundreds (the depthwise kernels'): float32 rounding of their
    # reductions (~1e-4 there, also on near-zero elements) is bounded relative to that
    # scale, not by a fixed 1e-4; the betas before a BatchNorm get only rounding noise.
    scale = max(float(np.abs(a.numpy()).max()) for a in g0)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5 * scale)
    for a, b in zip(stats0, stats1):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _saved_for_backward_bytes(fn, *specs):
    """Bytes of forward tensors read by the backward pass of the traced `fn`, by the
    analysis of benchmarks/profile_memory.py (`saved` mode)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import profile_memory
    finally:
        sys.path.pop(0)
    graph = tf.function(fn).get_concrete_function(*specs).graph
    return sum(nbytes for _, nbytes in profile_memory.saved_for_backward(graph).values())


def test_remat_keeps_less_for_the_backward_pass():
    """The point of the option: JPU's training step saves much less for its backward
    pass (the separable convs' intermediates are recomputed instead)."""
    specs = [tf.TensorSpec(s, tf.float32)
             for s in ((2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64))]
    totals = {}
    for remat in (False, True):
        jpu = L.JPU(width=32, dilations=(1, 2, 4, 8), remat=remat)
        jpu.build([s.shape for s in specs])

        def step(c3, c4, c5, jpu=jpu):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(jpu([c3, c4, c5], training=True)))
            return tape.gradient(loss, jpu.trainable_variables)

        totals[remat] = _saved_for_backward_bytes(step, *specs)
    # Per branch, only the pointwise output (width channels) stays, instead of also
    # the 3 * width channel depthwise output, its normalization and the padded
    # space-to-batch copy.
    assert totals[True] < 0.5 * totals[False], totals


def test_profile_memory_gather_option_reaches_every_resize():
    """`profile_memory.py --resize gather` sets the gather form on every BilinearResize
    (logits, the JPU's upsample, pyramid pooling), so its A/B measures what it says."""
    import keras_fastfcn as kf

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import profile_memory
    finally:
        sys.path.pop(0)
    model = kf.FastFCN(num_classes=3, head="psp", jpu_width=32)
    applied = profile_memory._apply_options(model, remat=None, resize="gather")
    resizes = [layer for layer in all_layers(model) if isinstance(layer, BilinearResize)]
    assert len(resizes) == applied["resize_layers"] >= 3
    assert {layer.method for layer in resizes} == {"gather"}
    assert model.get_layer("jpu").upsample.method == "gather"
