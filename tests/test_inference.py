"""Full-size inference against a PyTorch re-implementation of the official evaluator.

The reference below follows `MultiEvalModule.forward` and `module_inference` of
wuhuikai/FastFCN (`encoding/models/base.py`) step by step, one window at a time, on
normalized NCHW images in float64, with a toy model whose logits are a fixed
function of the input (normalization + a 3x3 convolution with set weights).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
try:  # the parity tests against PyTorch skip without it (pip install -e ".[test]")
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None
requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

import keras_fastfcn as kf
from keras_fastfcn import inference
from keras_fastfcn.layers import ImageNormalization

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
NCLASS = 4


def toy_model(rng, kernel=3, scale=0.1):
    """0-255 RGB -> torch-style normalization -> one conv: logits with known weights."""
    inputs = keras.Input((None, None, 3))
    x = ImageNormalization("torch")(inputs)
    conv = keras.layers.Conv2D(NCLASS, kernel, padding="same")
    logits = conv(x)
    model = keras.Model(inputs, logits)
    w = rng.randn(kernel, kernel, 3, NCLASS) * scale
    b = rng.randn(NCLASS) * scale
    conv.set_weights([w.astype("float32"), b.astype("float32")])
    return model, w, b


def smooth_image(rng, shape):
    """A photo-like uint8 image: bilinear upsampling of a coarse random grid.

    Noise images give neighbouring exp-scores that differ by 1e6, and then the
    float32 rounding of resize coordinates (which PyTorch's float32 kernels share)
    dominates the comparison with a float64 reference.
    """
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 8)))
    fine = F.interpolate(coarse, shape, mode="bilinear", align_corners=True)
    return np.rint(fine[0].permute(1, 2, 0).numpy()).astype("uint8")


def torch_logits(w, b):
    weight = torch.from_numpy(np.transpose(w, (3, 2, 0, 1)))  # (out, in, kh, kw)
    bias = torch.from_numpy(b)
    return lambda x: F.conv2d(x, weight, bias, padding=w.shape[0] // 2)


def official_ms_eval(logits_fn, image, scales, flip, base_size, crop_size):
    """MultiEvalModule.forward for one image (1, 3, H, W), normalized, float64."""
    up = dict(mode="bilinear", align_corners=True)
    _, _, h, w = image.shape
    stride = int(crop_size * 2.0 / 3.0)
    scores = torch.zeros(1, NCLASS, h, w, dtype=torch.float64)
    pad_values = -MEAN / STD

    def pad(img):
        _, _, ih, iw = img.shape
        ph, pw = max(crop_size - ih, 0), max(crop_size - iw, 0)
        return torch.stack([F.pad(img[:, c], (0, pw, 0, ph), value=float(pad_values[c]))
                            for c in range(3)], 1)

    def module_inference(img):
        out = logits_fn(img)
        if flip:
            out = out + logits_fn(img.flip(3)).flip(3)
        return out.exp()

    for scale in scales:
        long_size = int(math.ceil(base_size * scale))
        if h > w:
            height, width = long_size, int(1.0 * w * long_size / h + 0.5)
            short_size = width
        else:
            width, height = long_size, int(1.0 * h * long_size / w + 0.5)
            short_size = height
        cur = F.interpolate(image, (height, width), **up)
        if long_size <= crop_size:
            outputs = module_inference(pad(cur))[:, :, :height, :width]
        else:
            pad_img = pad(cur) if short_size < crop_size else cur
            _, _, ph, pw = pad_img.shape
            h_grids = int(math.ceil(1.0 * (ph - crop_size) / stride)) + 1
            w_grids = int(math.ceil(1.0 * (pw - crop_size) / stride)) + 1
            outputs = torch.zeros(1, NCLASS, ph, pw, dtype=torch.float64)
            count = torch.zeros(1, 1, ph, pw, dtype=torch.float64)
            for idh in range(h_grids):
                for idw in range(w_grids):
                    h0, w0 = idh * stride, idw * stride
                    h1, w1 = min(h0 + crop_size, ph), min(w0 + crop_size, pw)
                    out = module_inference(pad(pad_img[:, :, h0:h1, w0:w1]))
                    outputs[:, :, h0:h1, w0:w1] += out[:, :, :h1 - h0, :w1 - w0]
                    count[:, :, h0:h1, w0:w1] += 1
            assert (count == 0).sum() == 0
            outputs = (outputs / count)[:, :, :height, :width]
        scores += F.interpolate(outputs, (h, w), **up)
    return scores


def official_whole(logits_fn, image, scales, flip, base_size):
    """The same sum with the model run on each whole resized image (no padding)."""
    up = dict(mode="bilinear", align_corners=True)
    _, _, h, w = image.shape
    scores = 0
    for scale in scales:
        height, width = inference.scaled_size(h, w, scale, base_size)
        cur = F.interpolate(image, (height, width), **up)
        out = logits_fn(cur)
        if flip:
            out = out + logits_fn(cur.flip(3)).flip(3)
        scores = scores + F.interpolate(out.exp(), (h, w), **up)
    return scores


def to_torch(image):
    x = torch.from_numpy(image.astype("float64") / 255.0)
    x = (x - torch.from_numpy(MEAN)) / torch.from_numpy(STD)
    return x.permute(2, 0, 1)[None]


def to_nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def assert_log_close(log_scores, ref, atol=2e-4):
    """Our log-scores against official (linear, float64) scores: rtol on the scores."""
    np.testing.assert_allclose(log_scores, np.log(ref), rtol=0, atol=atol)


@requires_torch
@pytest.mark.parametrize("shape", [(50, 70), (61, 44)])
def test_slide_ms_flip_matches_official(rng, shape):
    model, w, b = toy_model(rng)
    image = smooth_image(rng, shape)
    ref = to_nhwc(official_ms_eval(torch_logits(w, b), to_torch(image), inference.MS_SCALES,
                                   True, base_size=64, crop_size=40))
    ours = inference.predict(model, image[None], mode="slide", scales=inference.MS_SCALES,
                             flip=True, crop_size=40, base_size=64).numpy()
    assert ours.shape == (1,) + shape + (NCLASS,)
    assert_log_close(ours, ref)


@requires_torch
def test_slide_single_scale_no_flip_matches_official(rng):
    model, w, b = toy_model(rng)
    image = smooth_image(rng, (45, 83))
    ref = to_nhwc(official_ms_eval(torch_logits(w, b), to_torch(image), (1.0,), False,
                                   base_size=83, crop_size=30))
    ours = inference.predict(model, image, mode="slide", crop_size=30).numpy()  # (H, W, 3) in
    assert_log_close(ours[None], ref)


@requires_torch
def test_whole_ms_flip_matches_hand_computation(rng):
    model, w, b = toy_model(rng)
    images = np.stack([smooth_image(rng, (37, 52)) for _ in range(2)])
    scales = (0.5, 1.0, 1.5)
    ours = inference.predict(model, images, scales=scales, flip=True, base_size=60).numpy()
    for i in range(2):
        ref = to_nhwc(official_whole(torch_logits(w, b), to_torch(images[i]), scales, True, 60))
        assert_log_close(ours[i:i + 1], ref)


def test_flip_adds_mirrored_logits_before_exp(rng):
    # Hand computation at one scale: exp(z(x) + mirror(z(mirror(x)))).
    model, _, _ = toy_model(rng)
    image = rng.randint(0, 256, (1, 20, 30, 3)).astype("float32")
    z = model(image).numpy().astype("float64")
    zf = model(image[:, :, ::-1]).numpy().astype("float64")[:, :, ::-1]
    ours = inference.predict(model, image, flip=True).numpy()
    np.testing.assert_allclose(ours, z + zf, rtol=0, atol=1e-4)
    # No flip, one scale: exactly the logits; normalized, exactly the softmax.
    plain = inference.predict(model, image)
    np.testing.assert_allclose(plain.numpy(), z, rtol=0, atol=1e-5)
    np.testing.assert_allclose(inference.normalize_scores(plain).numpy(),
                               tf.nn.softmax(z).numpy(), rtol=1e-5, atol=1e-7)


def test_slide_equals_whole_for_pointwise_model_and_covers_every_pixel(rng):
    model, _, _ = toy_model(rng, kernel=1)
    image = rng.randint(0, 256, (1, 70, 101, 3)).astype("uint8")
    for scales in [(1.0,), (0.75, 1.0, 1.5)]:
        whole = inference.predict(model, image, scales=scales, flip=True, base_size=101).numpy()
        slide = inference.predict(model, image, mode="slide", scales=scales, flip=True,
                                  crop_size=32, base_size=101).numpy()
        assert np.isfinite(slide).all()  # every pixel got a score (count_norm > 0)
        np.testing.assert_allclose(slide, whole, rtol=0, atol=1e-4)


def trained_like_model(rng, peak=300.0):
    """The toy model with logits like a trained network's: confident, spanning hundreds.

    Its classifier weights are scaled so that the largest |logit| on a photo-like
    image is about `peak`, and pixels differ by hundreds: one shift per image can
    not keep exp() finite for all of them.
    """
    model, w, b = toy_model(rng)
    conv = model.layers[-1]
    probe = smooth_image(np.random.RandomState(0), (40, 40))[None].astype("float32")
    factor = peak / np.abs(model(probe).numpy()).max()
    w, b = w * factor, b * factor
    conv.set_weights([w.astype("float32"), b.astype("float32")])
    return model, w, b


@requires_torch
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_logits_in_the_hundreds_give_the_official_ensemble(rng, mode):
    # Regression for wrong class maps of trained models: one exp() shift per image
    # underflowed every class to 0 on most pixels (argmax = class 0). In float64 the
    # official sums are still finite here (flip doubles 300 -> 600 < 709).
    model, w, b = trained_like_model(rng)
    image = smooth_image(rng, (41, 57))
    z = model(image[None].astype("float32")).numpy()
    assert z.max() - np.median(z.max(-1)) > 100  # pixels differ by hundreds
    x = to_torch(image)
    if mode == "slide":
        ref = official_ms_eval(torch_logits(w, b), x, (0.75, 1.0, 1.25), True, 57, crop_size=30)
    else:
        ref = official_whole(torch_logits(w, b), x, (0.75, 1.0, 1.25), True, 57)
    ref = to_nhwc(ref)
    assert np.isfinite(ref).all() and ref.max() > 1e200
    ours = inference.predict(model, image[None], mode=mode, scales=(0.75, 1.0, 1.25),
                             flip=True, crop_size=30, base_size=57).numpy()
    assert np.isfinite(ours).all()
    # Log-scores to float32 precision of values in the hundreds.
    np.testing.assert_allclose(ours, np.log(ref), rtol=1e-5, atol=2e-3)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.999
    # One scale, no flip: exactly the logits and their argmax. The traced graph and the
    # eager call may sum the conv in other orders: a few float32 ulps of the largest
    # logit (~3e-5 at 300), also where a logit is near 0. Every top-2 margin of z is
    # far above that (> 0.05), so the argmax must be the same everywhere.
    plain = inference.predict(model, image[None]).numpy()
    np.testing.assert_allclose(plain, z, rtol=1e-6,
                               atol=32 * np.finfo(np.float32).eps * np.abs(z).max())
    assert (plain.argmax(-1) == z.argmax(-1)).all()


@requires_torch
def test_multiscale_log_scores_traces_once_for_any_size(rng):
    model, w, b = toy_model(rng)
    fn = tf.function(
        lambda x: inference.multiscale_log_scores(model, x, (0.5, 1.25), True, base_size=None),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for shape in [(1, 40, 56), (2, 33, 29)]:
        images = np.stack([smooth_image(rng, shape[1:]) for _ in range(shape[0])]).astype("float32")
        out = fn(images).numpy()
        for i in range(shape[0]):
            ref = official_whole(torch_logits(w, b), to_torch(images[i]), (0.5, 1.25), True,
                                 max(shape[1:]))
            assert_log_close(out[i:i + 1], to_nhwc(ref))
    assert fn.experimental_get_tracing_count() == 1


def test_scaled_size_python_and_graph_agree():
    for h, w in [(512, 683), (683, 512), (360, 480), (375, 500), (1, 7), (97, 131)]:
        for scale in inference.MS_SCALES + (2.0, 2.25):
            for base in [None, 520, 1024]:
                ph, pw = inference.scaled_size(h, w, scale, base)
                th, tw = inference.ensemble._scaled_size_tensor(tf.constant(h), tf.constant(w), scale, base)
                assert (ph, pw) == (int(th), int(tw))


def test_fastfcn_with_dict_outputs(rng, tiny_backbone):
    model = kf.FastFCN(num_classes=3, head="fcn", backbone=tiny_backbone, aux=True, jpu_width=64)
    image = rng.randint(0, 256, (1, 64, 72, 3)).astype("uint8")
    scores = inference.predict(model, image, mode="slide", crop_size=48, flip=True).numpy()
    assert scores.shape == (1, 64, 72, 3) and np.isfinite(scores).all()
    whole = inference.predict(model, image).numpy()
    logits = np.asarray(model(image.astype("float32")))
    np.testing.assert_allclose(inference.normalize_scores(whole).numpy(),
                               tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_bad_options_and_inputs(rng):
    model, _, _ = toy_model(rng)
    with pytest.raises(ValueError, match="Unknown inference mode"):
        inference.Predictor(model, mode="tiles")
    with pytest.raises(ValueError, match="needs crop_size"):
        inference.Predictor(model, mode="slide")
    with pytest.raises(ValueError, match="scales"):
        inference.Predictor(model, scales=())
    with pytest.raises(ValueError, match="scales"):
        inference.Predictor(model, scales=(1.0, -0.5))
    predictor = inference.Predictor(model)
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        predictor(np.zeros((1, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match="empty"):
        predictor(np.zeros((1, 0, 8, 3), "float32"))


@requires_torch
def test_converted_official_model_matches_official_evaluator(tmp_path):
    # End to end on a real FastFCN: the PyTorch stand-in of the official EncNet+JPU
    # (keras_fastfcn/benchmark/torch_reference.py), converted to Keras; our sliding-window MS +
    # flip against the official evaluator run on the PyTorch model. EncNet's global
    # context makes every window's padding visible, so this also checks that padding
    # the raw image with 0 equals the official `-mean / std` padding.
    from keras_fastfcn.benchmark import torch_reference as ref

    from keras_fastfcn import convert
    from keras_fastfcn.models import registry
    from keras_fastfcn.models.encoders.resnet_deepstem import build_resnet_deepstem

    name = "tiny_deepstem_1111_inference"
    registry.register_encoder(
        name, lambda output_stride, weights: build_resnet_deepstem(
            (1, 1, 1, 1), output_stride, weights, name=f"{name}_os{output_stride}"), "torch")
    torch_model = ref.randomize_(ref.SegmentationModel(
        "encnet", NCLASS, layers=(1, 1, 1, 1), jpu="JPU", aux=False, se_loss=False,
        width=64)).eval()
    torch.save(torch_model.state_dict(), tmp_path / "encnet.pth")
    model = convert.convert_checkpoint(str(tmp_path / "encnet.pth"), encoder=name)

    rng = np.random.RandomState(3)
    image = smooth_image(rng, (70, 90))
    scales = (0.75, 1.0, 1.25)
    with torch.no_grad():
        torch_model.double()
        expected = to_nhwc(official_ms_eval(lambda x: torch_model(x)[0], to_torch(image),
                                            scales, True, base_size=80, crop_size=48))
    ours = inference.predict(model, image, mode="slide", scales=scales, flip=True,
                             crop_size=48, base_size=80).numpy()[None]
    np.testing.assert_allclose(inference.normalize_scores(ours).numpy(),
                               expected / expected.sum(-1, keepdims=True), atol=2e-3)
    assert (ours.argmax(-1) == expected.argmax(-1)).mean() > 0.999


def test_xla_parts_same_output_jpu_left_to_tensorflow(tiny_backbone):
    """`jit_compile="parts"`: the backbone and head become XLA clusters, the JPU does
    not, the output is unchanged and the model's layers are restored after the trace."""
    model = kf.FastFCN(4, head="deeplab", backbone=tiny_backbone, upsampler="jpu", jpu_width=16)
    net = inference.logits_model(model)
    x = tf.random.uniform((1, 64, 80, 3), 0, 255, seed=1)
    reference = net(x, training=False).numpy()
    fn = tf.function(lambda images: net(images, training=False))
    with inference.xla_parts(net):
        traced = fn.get_concrete_function(tf.TensorSpec((1, None, None, 3)))
    assert all("call" not in layer.__dict__ for layer in net.layers)
    clusters = [f.signature.name for f in traced.graph.as_graph_def().library.function
                if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
    parts = [layer.name for layer in net.layers
             if not isinstance(layer, (keras.layers.InputLayer, kf.layers.JPU))]
    assert "jpu" in [layer.name for layer in net.layers] and "head" in parts
    assert len(clusters) == len(parts)  # one XLA cluster per part, none for the JPU
    np.testing.assert_allclose(traced(x).numpy(), reference, rtol=1e-4, atol=1e-4)
    predictor = inference.Predictor(model, jit_compile="parts")
    plain = inference.Predictor(model)
    np.testing.assert_allclose(predictor(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        inference.Predictor(model, jit_compile="yes")


def test_xla_parts_under_a_16_bit_policy_compiles_only_float32_parts(tiny_backbone):
    """Under mixed precision XLA's CPU code for 16-bit types is slower than TensorFlow's
    kernels, so `xla_parts` compiles only the parts that compute in float32 (the
    logits resize); the output is unchanged."""
    from keras_fastfcn.precision import with_precision

    model = with_precision(kf.FastFCN(4, head="fcn", backbone=tiny_backbone, jpu_width=16),
                           "fp16")
    net = inference.logits_model(model)
    x = tf.random.uniform((1, 64, 80, 3), 0, 255, seed=1)
    reference = tf.cast(net(x, training=False), tf.float32).numpy()
    fn = tf.function(lambda images: tf.cast(net(images, training=False), tf.float32))
    with inference.xla_parts(net):
        traced = fn.get_concrete_function(tf.TensorSpec((1, None, None, 3)))
    clusters = [f.signature.name for f in traced.graph.as_graph_def().library.function
                if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b]
    compiled = [layer.name for layer in net.layers if inference.tracing._is_xla_part(layer)]
    assert compiled == ["logits"] and len(clusters) == 1
    np.testing.assert_allclose(traced(x).numpy(), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("jit_compile", [False, True, "parts"])
def test_trace_freeze_holds_the_weights_of_the_moment(tiny_backbone, jit_compile,
                                                       monkeypatch):
    """`trace(freeze=True)` (what `Predictor(freeze=True)` and `benchmark --freeze`
    run): the same outputs as the variables' trace, taken at trace time, with or
    without XLA (kept for `True`), numpy accepted and other shapes refused; a
    TensorFlow without the private freezing hook falls back to the variables with a
    warning."""
    from keras_fastfcn import _keras_private

    model = kf.FastFCN(4, head="fcn", backbone=tiny_backbone, jpu_width=16)
    net = inference.logits_model(model)
    spec = tf.TensorSpec((1, 64, 80, 3), tf.float32)
    x = tf.random.uniform((1, 64, 80, 3), 0, 255, seed=2)

    def forward(images):
        return net(images, training=False)

    live = inference.trace(forward, spec, net, jit_compile)
    frozen = inference.trace(forward, spec, net, jit_compile, freeze=True)
    before = live(x).numpy()
    np.testing.assert_allclose(frozen(x).numpy(), before, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(frozen(x.numpy()).numpy(), before, rtol=1e-5, atol=1e-5)
    if jit_compile is True:
        assert frozen._jit_compile  # the frozen graph is still one XLA cluster
    with pytest.raises((TypeError, ValueError)):
        frozen(tf.zeros((1, 32, 80, 3)))
    classifier = model.head_layer.classifier
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel, bias + 5.0])
    np.testing.assert_allclose(live(x).numpy(), before + 5.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(frozen(x).numpy(), before, rtol=1e-5, atol=1e-5)

    def missing(concrete):
        raise ImportError("no convert_variables_to_constants_v2")

    monkeypatch.setattr(_keras_private, "freeze_function", missing)
    with pytest.warns(UserWarning, match="Cannot freeze the inference graph"):
        fallback = inference.trace(forward, spec, net, jit_compile, freeze=True)
    np.testing.assert_allclose(fallback(x).numpy(), before + 5.0, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_predictor_same_class_map_weights_of_the_moment(rng, tiny_backbone):
    """`fold_batchnorm=True` (what `evaluate` / `predict` use): an inference copy with BN
    folded, same logits up to float rounding on a trained-looking (confident) model,
    recorded in the settings, and frozen at build time: it does not follow later
    weight changes, the unfolded predictor does."""
    from conftest import make_confident

    model = kf.FastFCN(5, head="encnet", backbone=tiny_backbone, jpu_width=16)
    x = rng.uniform(0, 255, (2, 64, 80, 3)).astype("float32")
    make_confident(model, x)
    plain, folded = inference.Predictor(model), inference.Predictor(model, fold_batchnorm=True)
    a, b = plain(x).numpy(), folded(x).numpy()
    assert np.abs(a).max() > 100  # confident: argmax decided by large logits
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.999
    assert folded.settings()["fold_batchnorm"] and not plain.settings()["fold_batchnorm"]
    from keras_fastfcn.inference.fold import batchnorm_layers

    assert len(batchnorm_layers(folded.model)) < len(batchnorm_layers(model)) // 4
    kernel, bias = model.head_layer.classifier.get_weights()
    model.head_layer.classifier.set_weights([-kernel, -bias])
    # The second call of a shape runs its static-shape trace: same up to rounding.
    np.testing.assert_allclose(folded(x).numpy(), b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert (plain(x).numpy().argmax(-1) != a.argmax(-1)).mean() > 0.5


def test_predictor_traces_repeated_shapes_statically(rng, monkeypatch):
    """TensorFlow: one dynamic-shape trace serves every input; a shape seen a second
    time gets its own static-shape trace (faster graphs), at most `STATIC_SHAPES` of
    them; the log-scores are those of the dynamic trace either way, in whole and slide
    mode."""
    monkeypatch.setattr(inference.tracing, "STATIC_SHAPES", 2)
    model, _, _ = toy_model(rng)
    whole = inference.Predictor(model, scales=(0.75, 1.0), flip=True)
    slide = inference.Predictor(model, mode="slide", crop_size=24, flip=True)
    dynamic = whole._whole._trace((None, None, None, 3))
    shapes = [(1, 30, 40), (1, 33, 29), (1, 30, 40), (2, 30, 40), (1, 33, 29), (1, 40, 56),
              (1, 40, 56), (1, 30, 40)]
    for shape in shapes:
        images = rng.uniform(0, 255, shape + (3,)).astype("float32")
        np.testing.assert_allclose(whole(images).numpy(), dynamic(images).numpy(),
                                   rtol=1e-5, atol=1e-4)
        assert tuple(slide(images).shape) == shape + (NCLASS,)
    # Seen twice: (1, 30, 40) and (1, 33, 29); (1, 40, 56) too, but past the bound.
    assert set(whole._whole.traces) == {None, (1, 30, 40, 3), (1, 33, 29, 3)}
    assert all(fn.experimental_get_tracing_count() == 1 for fn in whole._whole.traces.values())
    assert len(slide._forward.traces) <= 3  # at most 2 static traces + the dynamic one


def test_predictor_freezes_at_most_frozen_shapes_static_traces(rng, monkeypatch):
    """`Predictor(freeze=True)` (`--freeze`) freezes the weights into its first
    `FROZEN_SHAPES` static traces only (each holds a copy of the weights), never into
    the dynamic one; the log-scores are those of the dynamic trace for every shape."""
    monkeypatch.setattr(inference.tracing, "FROZEN_SHAPES", 1)
    frozen_calls = []
    original = inference.trace

    def counting(fn, spec, model, jit_compile=False, freeze=False):
        frozen_calls.append((tuple(spec.shape), freeze))
        return original(fn, spec, model, jit_compile, freeze)

    monkeypatch.setattr(inference.tracing, "trace", counting)
    model, _, _ = toy_model(rng)
    folded = inference.Predictor(model, fold_batchnorm=True, freeze=True)
    assert folded.settings()["freeze"] and not inference.Predictor(model).settings()["freeze"]
    dynamic = folded._whole._trace((None, None, None, 3))
    for shape in [(1, 30, 40), (1, 30, 40), (1, 33, 29), (1, 33, 29), (1, 30, 40)]:
        images = rng.uniform(0, 255, shape + (3,)).astype("float32")
        np.testing.assert_allclose(folded(images).numpy(), dynamic(images).numpy(),
                                   rtol=1e-5, atol=1e-4)
    assert set(folded._whole.traces) == {None, (1, 30, 40, 3), (1, 33, 29, 3)}
    # frozen_calls[0] is the reference `dynamic` above.
    assert frozen_calls[1:] == [((None, None, None, 3), False), ((1, 30, 40, 3), True),
                                ((1, 33, 29, 3), False)]
    # class_map traces its own graphs (the argmax inside): frozen the same way.
    images = rng.uniform(0, 255, (1, 30, 40, 3)).astype("float32")
    for _ in range(2):
        classes = folded.class_map(images)
        np.testing.assert_array_equal(classes, folded(images).numpy().argmax(-1))
    assert frozen_calls[-1] == ((1, 30, 40, 3), True) and classes.dtype == np.int32


@requires_torch
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_class_map_is_the_argmax_of_the_log_scores(rng, mode):
    """`Predictor.class_map` (what predict / evaluate run; in whole mode the argmax is
    in the traced graph): int32 `(B, H, W)`, the argmax of `__call__`'s log-scores on a
    model whose logits are in the hundreds, batch or single image; bad images are
    refused as by `__call__`."""
    model, _, _ = trained_like_model(rng)
    predictor = inference.Predictor(model, mode=mode, scales=(0.75, 1.0), flip=True,
                                    crop_size=30)
    images = np.stack([smooth_image(rng, (41, 57)) for _ in range(2)])
    scores = predictor(images).numpy()
    classes = predictor.class_map(images)
    assert classes.dtype == np.int32 and classes.shape == (2, 41, 57)
    assert len(np.unique(classes)) > 1  # not vacuous
    np.testing.assert_array_equal(classes, scores.argmax(-1))
    np.testing.assert_array_equal(predictor.class_map(images[0]), classes[0])
    with pytest.raises(ValueError, match="got shape"):
        predictor.class_map(images[..., :2])
