"""The shared test harness (as keras-hub's `TestCase`): the checks every registered
layer, head, upsampler and export format passes, written once.

- `run_layer_test`: symbolic and eager calls agree on shapes (and with
  `compute_output_shape`), `get_config` / `from_config` round trip, and a model
  around the layer round-trips through a `.keras` file with `safe_mode=True`,
  giving the same outputs.
- `run_segmenter_test`: a `FastFCNImageSegmenter` with a given head / upsampler on
  the tiny test encoder: logits at the input size, the training outputs, and the
  `.keras` round trip with the same logits.
- `run_export_test`: a confident tiny model exported to a format, run by its runtime
  (or loaded, for a SavedModel), with the Keras class map (near-ties allowed).
- `run_cli` / `assert_one_line_error`: a `keras-fastfcn` command in process, and the
  one-line error every bad input must end in.

`tests/test_harness.py` feeds every registered part through them; a part added
without a case there fails its coverage test.
"""

import os

import keras
import numpy as np

from conftest import make_confident

EPS32 = float(np.finfo(np.float32).eps)


def _numpy(values):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in keras.tree.flatten(values)]


def _assert_close(got, expected, what):
    for g, e in zip(_numpy(got), _numpy(expected)):
        assert g.shape == e.shape, (what, g.shape, e.shape)
        scale = max(float(np.abs(e).max()) if e.size else 0.0, 1.0)
        np.testing.assert_allclose(g, e, atol=64 * EPS32 * scale, err_msg=what)


def run_layer_test(make, input_shapes, tmp_path, seed=0):
    """`make()` builds the layer; `input_shapes`: one shape or a list of shapes
    `(B, H, W, C)` (the batch is used for the eager data, None for the symbolic call)."""
    rng = np.random.RandomState(seed)
    layer = make()
    many = isinstance(input_shapes, list)
    shapes = input_shapes if many else [input_shapes]
    symbolic = [keras.Input(tuple(s[1:])) for s in shapes]
    data = [rng.uniform(-1, 1, s).astype("float32") for s in shapes]
    outputs = layer(symbolic if many else symbolic[0])
    # compute_output_shape agrees with the symbolic call.
    expected = layer.compute_output_shape([tuple(x.shape) for x in symbolic] if many
                                          else tuple(symbolic[0].shape))
    several = isinstance(outputs, (list, tuple))
    for out, shape in zip(outputs if several else [outputs], expected if several else [expected]):
        assert tuple(out.shape) == tuple(shape), (type(layer).__name__, out.shape, shape)
    model = keras.Model(symbolic if many else symbolic[0], outputs)
    before = model.predict(data if many else data[0], verbose=0)
    # Eager shapes agree with the symbolic ones where those are known.
    for out, sym in zip(_numpy(before), keras.tree.flatten(outputs)):
        assert all(a == b for a, b in zip(out.shape[1:], sym.shape[1:]) if b is not None)
    # Config round trip.
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    # .keras round trip, safe mode.
    path = os.path.join(tmp_path, f"{type(layer).__name__}.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    _assert_close(restored.predict(data if many else data[0], verbose=0), before,
                  f"{type(layer).__name__} after .keras round trip")


def tiny_segmenter(head="fcn", upsampler="jpu", num_classes=3, encoder="tiny_resnet"):
    import keras_fastfcn as kf

    backbone = kf.models.FastFCNBackbone(encoder=encoder, upsampler=upsampler, width=64)
    return kf.models.FastFCNImageSegmenter(backbone, num_classes=num_classes, head=head,
                                           se_loss=None)


def run_segmenter_test(tmp_path, head="fcn", upsampler="jpu", seed=0):
    rng = np.random.RandomState(seed)
    seg = tiny_segmenter(head, upsampler)
    x = rng.uniform(0, 255, (2, 64, 80, 3)).astype("float32")
    # Training outputs first: a training call moves BatchNorm's statistics.
    train = seg(x, training=True)
    expected_keys = {"logits", "aux_logits"} | ({"se_logits"} if seg.se_loss else set())
    assert set(train) == expected_keys
    logits = seg.predict(x, verbose=0)
    assert logits.shape == (2, 64, 80, 3)
    path = os.path.join(tmp_path, "segmenter.keras")
    seg.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert type(restored) is type(seg) and restored.head_name == seg.head_name
    _assert_close(restored.predict(x, verbose=0), logits, f"{head}/{upsampler} round trip")


def run_export_test(tmp_path, fmt, seed=5):
    """Exports a confident tiny segmenter to `fmt` and checks its class map."""
    import tensorflow as tf

    from keras_fastfcn import serving
    from keras_fastfcn.serving.formats import get_format
    from keras_fastfcn.serving.runtime import ExportPredictor

    spec = get_format(fmt)
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    keras.utils.set_random_seed(seed)
    seg = make_confident(tiny_segmenter(), images)
    logits = np.asarray(seg.predict(images, verbose=0))
    output = os.path.join(tmp_path, "export" + (spec.suffix or ""))
    options = {"input_size": (64, 64)} if fmt == "tflite" else {}
    path = serving.export(seg, output, format=fmt, **options)
    if spec.runtime:
        class_map = ExportPredictor(path)(images)
    else:
        signature = tf.saved_model.load(path).signatures["serving_default"]
        class_map = signature(image_tensor=tf.constant(images.astype("uint8")))[
            "class_map"].numpy()
        logits = np.asarray(seg.predict(images.astype("uint8").astype("float32"), verbose=0))
    top2 = np.sort(logits, -1)[..., -2:]
    near_tie = top2[..., 1] - top2[..., 0] <= 1e-4 * np.abs(logits).max()
    assert class_map.shape == logits.shape[:3]
    assert ((class_map == logits.argmax(-1)) | near_tie).all(), fmt


def run_cli(capsys, *argv):
    """`keras-fastfcn ARGV` in this process: `(exit code, stdout, stderr)`."""
    from keras_fastfcn import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    """Exit code 1 and exactly one line on stderr, holding every fragment."""
    assert rc == 1
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def predict_fails(model, image_file, tmp_path, capsys, *fragments):
    """`keras-fastfcn predict --model MODEL` exits 1 with one line naming the model file
    (and every fragment), and creates no output folder."""
    out = tmp_path / "predictions"
    rc, _, err = run_cli(capsys, "predict", "--model", model, "--input", image_file,
                         "--output", out)
    assert_one_line_error(rc, err, "error:", str(model), *fragments)
    assert not out.exists()
