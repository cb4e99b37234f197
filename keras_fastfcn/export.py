"""Export a FastFCN model for serving: SavedModel (TF Serving), ONNX or TFLite.

SavedModel (TF Serving's layout `NAME/VERSION/`) with three signatures, all
with preprocessing in the graph, as TF Model Garden's vision serving modules:

| signature | input | dtype, shape |
|---|---|---|
| `serving_default` | `image_tensor` | uint8 `[B, H, W, 3]`, RGB |
| `serving_image_bytes` | `image_bytes` | string `[B]`, encoded JPEG/PNG/GIF/BMP |
| `serving_float` | `image_tensor` | float32 `[B, H, W, 3]`, RGB 0-255 |

B, H and W are dynamic; with `input_size=(H, W)` the network itself runs at that
fixed size (images resized to it in the graph, results resized back, as Model
Garden's `input_image_size` + `rescale_output`). Outputs (a dict):
- `class_map`: int32 `[B, H, W]`, at the input image's size;
- `probabilities`: float32 `[B, H, W, C]`: the softmax of the logits, or with
  multi-scale / flip the official ensemble's scores normalized per pixel (the
  softmax of `keras_fastfcn.inference`'s log-scores); left out with
  `probabilities=False`, as it is `4 * C` bytes per pixel;
- `class_names`: string `[B, C]` when the model carries class names. It is
  repeated per image (not `[C]`) because TF Serving's REST row format
  (`"instances"`) requires every output to share the batch dimension.

Bad input fails in the signature with an `InvalidArgumentError` naming the
problem (a 1- or 4-channel image, bytes that are not an image, images of
different sizes in one `serving_image_bytes` batch), not deep in the network.

ONNX (tf2onnx, opset >= 17): input `images` float32 `[B, H, W, 3]` RGB 0-255
(dynamic B, H, W, or H, W fixed with `input_size`); outputs `class_map` int32
and `probabilities`; the class names are in the model's metadata
(`metadata_props["class_names"]`, JSON). Float input was chosen over uint8
because it is what ONNX Runtime / TensorRT pipelines usually hold.

TFLite (float32, fixed size): input `[1, H, W, 3]` float32 RGB 0-255, outputs
`class_map` int32 `[1, H, W]` and `probabilities`.

By default BatchNorms are folded into the convolutions first
(`keras_fastfcn.fold.fold_batchnorm`): same outputs, fewer ops.
"""

import json
import os
import re
import tempfile
import time

import keras

from keras_fastfcn.fileio import atomic_path

FORMATS = ("saved_model", "onnx", "tflite")
SIGNATURES = ("serving_default", "serving_image_bytes", "serving_float")
DEFAULT_OPSET = 17
_METADATA_FILE = "keras_fastfcn_export.json"


# --- model checks ---------------------------------------------------------------


def load_fastfcn(path):
    """Loads a `.keras` file and checks that it holds a keras_fastfcn `FastFCN`.

    Raises `FileNotFoundError` for a missing file and `ValueError` for anything
    that is not a saved FastFCN (see `keras_fastfcn.inference.load_model`).

    Example:
    >>> model = load_fastfcn("runs/camvid/model.keras")  # doctest: +SKIP
    """
    from keras_fastfcn.inference import load_model

    return load_model(path)


def check_model(model, source=None):
    """Returns `model` if it is a keras_fastfcn `FastFCN`, else raises `ValueError`."""
    from keras_fastfcn.models import FastFCN

    if not isinstance(model, FastFCN):
        where = f" in {source}" if source else ""
        raise ValueError(
            f"Expected a keras_fastfcn FastFCN model{where}, got {type(model).__name__} "
            f"{getattr(model, 'name', '')!r}. Export works on models built with "
            "keras_fastfcn.FastFCN (it relies on their preprocessing, output layout and "
            "class names)."
        )
    return model


# --- options --------------------------------------------------------------------


def _check_options(scales, flip, input_size, base_size):
    scales = tuple(float(s) for s in (scales or (1.0,)))
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers, got {scales}.")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width) > 0, got {input_size}.")
    if base_size is not None and int(base_size) < 1:
        raise ValueError(f"base_size must be a positive int, got {base_size}.")
    return scales, bool(flip), input_size, (int(base_size) if base_size else None)


def _prepare(model, fold_bn):
    model = check_model(model)
    class_names = list(model.class_names) if model.class_names else None
    net = model.inference_model()
    if fold_bn:
        from keras_fastfcn.fold import fold_batchnorm

        net = fold_batchnorm(net)
    return net, class_names, model


# --- the serving graph ----------------------------------------------------------


def make_forward(model, scales=(1.0,), flip=False, input_size=None, base_size=None,
                 align_corners=True):
    """A function `images float32 [B, H, W, 3] 0-255 -> log-scores [B, H, W, C]`.

    Plain TensorFlow, traceable in a `tf.function` with dynamic B, H and W: the
    package's whole-image ensemble `inference.multiscale_log_scores` (the logits
    themselves for one scale without flip; otherwise the log of the official
    evaluator's scores, finite for any logits). Its argmax is the class map that
    `keras-fastfcn evaluate/predict --mode whole` give, its softmax the
    probabilities. With `input_size` the network runs at exactly that size: the
    images are resized to it and the log-scores resized back to the input size in
    the log domain (as the official evaluator resizes each scale's scores).

    Args:
        model: a logits model (e.g. `FastFCN.inference_model()` or a folded one).
        scales: tuple of floats, inference scales (`inference.MS_SCALES` officially).
        flip: bool, add the horizontally flipped image's logits.
        input_size: None or `(H, W)`, a fixed network input size.
        base_size: with multi-scale, the long side that scale 1.0 maps to
            (None: the image's own long side).
        align_corners: resize semantics (the model's).

    Example:
    >>> forward = make_forward(model.inference_model(), scales=(0.75, 1.0), flip=True)
    >>> forward(tf.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 64, 64, 3])
    """
    import tensorflow as tf

    from keras_fastfcn import inference
    from keras_fastfcn.ops import log_resize_bilinear, resize_bilinear

    scales = tuple(float(s) for s in scales)

    def forward(images):
        images = tf.cast(images, tf.float32)
        size = tf.shape(images)[1:3]
        x = images
        if input_size is not None:
            x = resize_bilinear(images, input_size, align_corners)
            x = tf.ensure_shape(x, [None, input_size[0], input_size[1], 3])
        log_scores = inference.multiscale_log_scores(model, x, scales, flip, base_size,
                                                     align_corners)
        if input_size is not None:
            log_scores = log_resize_bilinear(log_scores, size, align_corners)
        return log_scores

    return forward


def _outputs(log_scores, class_names, probabilities):
    import tensorflow as tf

    # The class map is the argmax of the log-scores themselves (exact: the logits'
    # argmax for a single scale), not of the rounded probabilities.
    out = {"class_map": tf.argmax(log_scores, axis=-1, output_type=tf.int32)}
    if probabilities:
        out["probabilities"] = tf.nn.softmax(log_scores, axis=-1)
    if class_names:
        names = tf.constant(class_names, dtype=tf.string)
        out["class_names"] = tf.tile(names[None], [tf.shape(log_scores)[0], 1])
    return out


def _check_image_tensor(images, signature):
    """Asserts `[B, H, W, 3]` with B, H, W > 0; returns images (with the checks attached)."""
    import tensorflow as tf

    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_equal(
            shape[3], 3,
            message=f"{signature}: images must have 3 channels (RGB); got a different "
                    "channel count (grayscale = 1, RGBA = 4). Convert them to RGB first."),
        tf.debugging.assert_greater(
            tf.reduce_min(shape[1:3]), 0,
            message=f"{signature}: images must have a height and width of at least 1 pixel."),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _decode_image(data):
    """Decodes one encoded image to uint8 `[H, W, 3]` with clear errors."""
    import tensorflow as tf

    is_image = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(data, 0, len(magic)), magic) for magic in _IMAGE_MAGIC
    ]))
    check = tf.debugging.Assert(is_image, [
        "serving_image_bytes: an input is not an encoded JPEG, PNG, GIF or BMP image "
        "(send the file's raw bytes, base64-encoded as {\"b64\": ...} over REST). "
        "Its first bytes:", tf.strings.substr(data, 0, 16)])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    channels = tf.shape(image)[2]
    check = tf.debugging.assert_equal(
        channels, 3,
        message="serving_image_bytes: an image does not have 3 channels (RGB): grayscale "
                "has 1, grayscale+alpha 2, RGBA 4. Convert it to RGB before sending.")
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(image), [None, None, 3])


def _decode_batch(image_bytes):
    import tensorflow as tf

    check = tf.debugging.assert_greater(
        tf.size(image_bytes), 0, message="serving_image_bytes: the batch is empty.")
    with tf.control_dependencies([check]):
        first = _decode_image(image_bytes[0])
    size = tf.shape(first)[:2]

    def decode_same_size(data):
        image = _decode_image(data)
        same = tf.debugging.assert_equal(
            tf.shape(image)[:2], size,
            message="serving_image_bytes: all images in one request must have the same "
                    "height and width (send differently sized images in separate requests).")
        with tf.control_dependencies([same]):
            return tf.identity(image)

    return tf.map_fn(decode_same_size, image_bytes,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def serving_endpoints(model, class_names=None, probabilities=True, scales=(1.0,),
                      flip=False, input_size=None, base_size=None, align_corners=True):
    """The three serving functions and their input signatures, keyed by signature name.

    Args:
        model: a logits model (`FastFCN.inference_model()`, folded or not).
        class_names: optional list of C names, returned as the `class_names` output.
        probabilities: bool, include the `probabilities` output.
        scales, flip, input_size, base_size, align_corners: see `make_forward`.

    Returns:
        dict `{signature name: (function, [tf.TensorSpec])}`, ready for
        `keras.export.ExportArchive.add_endpoint` or `tf.function`.

    Example:
    >>> fn, spec = serving_endpoints(model.inference_model())["serving_default"]
    >>> tf.function(fn, input_signature=spec)(tf.zeros((1, 64, 64, 3), tf.uint8))
    """
    import tensorflow as tf

    forward = make_forward(model, scales, flip, input_size, base_size, align_corners)

    def serve(images, signature):
        images = _check_image_tensor(images, signature)
        return _outputs(forward(images), class_names, probabilities)

    def serving_default(image_tensor):
        return serve(image_tensor, "serving_default")

    def serving_image_bytes(image_bytes):
        return serve(_decode_batch(image_bytes), "serving_image_bytes")

    def serving_float(image_tensor):
        return serve(image_tensor, "serving_float")

    # Channels are left dynamic so that a 1- or 4-channel image reaches the
    # in-graph check (a clear message) instead of a bare signature mismatch.
    return {
        "serving_default": (serving_default, [
            tf.TensorSpec([None, None, None, None], tf.uint8, name="image_tensor")]),
        "serving_image_bytes": (serving_image_bytes, [
            tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "serving_float": (serving_float, [
            tf.TensorSpec([None, None, None, None], tf.float32, name="image_tensor")]),
    }


def _write_saved_model(net, endpoints, path):
    """Writes `endpoints` as signatures of a SavedModel at `path`.

    Keras' ExportArchive tracks the model's variables directly on the saved root
    object. That layout also loads in TF1-style sessions, which is how TF Serving
    (and the TFLite converter) load SavedModels; saving a `tf.Module` holding
    the Keras model does not (its variables are not found there).
    """
    archive = keras.export.ExportArchive()
    # No `archive.track(net)`: the archive already saves the variables the
    # endpoints use, and tracking the model as well stores every weight twice.
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)


# --- output paths ---------------------------------------------------------------


def resolve_version_dir(output):
    """Splits a TF Serving target into `(model base folder, version)`.

    `saved_models/demo/3` -> version 3; `saved_models/demo` -> one more than
    the largest integer-named version already there (1 when none).

    Example:
    >>> resolve_version_dir("saved_models/demo/3")
    ('saved_models/demo', 3)
    """
    output = os.path.normpath(os.fspath(output))
    name = os.path.basename(output)
    if name.isdigit():
        return os.path.dirname(output) or ".", int(name)
    if os.path.isfile(os.path.join(output, "saved_model.pb")):
        raise ValueError(
            f"{output} is itself a SavedModel folder; TF Serving wants "
            "BASE/VERSION/saved_model.pb. Give the base folder (a new version is "
            "picked) or BASE/VERSION."
        )
    if os.path.exists(output) and not os.path.isdir(output):
        raise NotADirectoryError(f"Export base {output} exists and is not a folder.")
    versions = []
    if os.path.isdir(output):
        versions = [int(entry) for entry in os.listdir(output)
                    if entry.isdigit() and os.path.isdir(os.path.join(output, entry))]
    return output, max(versions, default=0) + 1


def _check_writable(folder, create=True):
    """Raises a clear error unless `folder` exists (or can be created) and is writable."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise NotADirectoryError(f"Cannot export to {folder}: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write to {probe} (export to {folder}): permission denied.")
    if create:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise PermissionError(
                f"Cannot create the export folder {folder}: {err.strerror}.") from err


def _check_saved_model_target(output, overwrite, create=True):
    base, version = resolve_version_dir(output)
    target = os.path.join(base, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}; pass --overwrite "
            "(overwrite=True) to replace it, or give the base folder to get the next version."
        )
    _check_writable(base, create=create)
    return target, version


def _check_target_file(path, overwrite, suffix, create=True):
    path = os.fspath(path)
    if not path.endswith(suffix):
        raise ValueError(f"The output path for this format must end in {suffix}, got {path}.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; give a file path ending in {suffix}.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass --overwrite (overwrite=True) to replace it.")
    _check_writable(os.path.dirname(os.path.abspath(path)), create=create)
    return path


def _metadata(model, fmt, options, extra=None):
    info = {
        "format": fmt,
        "keras_fastfcn_model": model.get_config(),
        "class_names": model.class_names,
        "num_classes": model.num_classes,
        "dataset": model.dataset,
        "options": options,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "keras_version": keras.__version__,
    }
    try:
        import tensorflow as tf

        info["tensorflow_version"] = tf.__version__
    except ImportError:
        pass
    info.update(extra or {})
    return info


# --- exporters ------------------------------------------------------------------


def export_saved_model(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                       flip=False, input_size=None, base_size=None, fold_bn=True):
    """Writes a SavedModel for TF Serving at `output` (`BASE` or `BASE/VERSION`).

    The version folder is written next to its final place and renamed into it,
    so TF Serving (which polls `BASE`) never sees a half-written version, and a
    failed export leaves nothing behind.

    Args:
        model: a `FastFCN`.
        output: `BASE` (the next free integer version is used) or `BASE/VERSION`.
        overwrite: replace an existing `BASE/VERSION`.
        probabilities: include the `probabilities` output.
        scales, flip, base_size: in-graph multi-scale / flip inference.
        input_size: None, or `(H, W)`: run the network at a fixed size (images
            are resized in the graph, outputs resized back).
        fold_bn: fold BatchNorms into the convolutions first.

    Returns:
        The version folder written.

    Example:
    >>> export_saved_model(model, "saved_models/demo")
    'saved_models/demo/1'
    """
    scales, flip, input_size, base_size = _check_options(scales, flip, input_size, base_size)
    target, version = _check_saved_model_target(output, overwrite)
    net, class_names, source = _prepare(model, fold_bn)
    endpoints = serving_endpoints(
        net, class_names, probabilities, scales, flip, input_size, base_size,
        source.align_corners)
    options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                   input_size=list(input_size) if input_size else None,
                   base_size=base_size, fold_bn=bool(fold_bn))
    with atomic_path(target, is_dir=True) as tmp:
        _write_saved_model(net, endpoints, tmp)
        with open(os.path.join(tmp, _METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(_metadata(source, "saved_model", options,
                                {"signatures": list(SIGNATURES), "version": version}),
                      f, indent=2)
    return target


def _fixed_function(net, probabilities, scales, flip, input_size, base_size, align_corners,
                    batch=None):
    """`(images float32 [batch, H, W, 3]) -> {class_map, probabilities}` and its spec.

    For ONNX and TFLite: no in-graph checks or string outputs, and with
    `input_size` the tensor itself has that size (no resize in the graph).
    """
    import tensorflow as tf

    forward = make_forward(net, scales, flip, None, base_size, align_corners)
    h, w = input_size if input_size else (None, None)
    spec = tf.TensorSpec([batch, h, w, 3], tf.float32, name="images")

    def fn(images):
        out = _outputs(forward(images), None, probabilities)
        return {k: tf.identity(v, name=k) for k, v in out.items()}

    return fn, spec


def export_onnx(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                flip=False, input_size=None, base_size=None, fold_bn=True,
                opset=DEFAULT_OPSET):
    """Writes an ONNX model (tf2onnx) to `output` (`*.onnx`).

    Input `images` float32 `[B, H, W, 3]` RGB 0-255, with B, H, W dynamic, or
    H, W fixed to `input_size`. Outputs `class_map` int32 `[B, H, W]` and
    (unless `probabilities=False`) `probabilities` float32 `[B, H, W, C]`.
    Class names and export options are stored in the model's metadata.

    Args:
        model: a `FastFCN`.
        output: path ending in `.onnx`.
        overwrite: replace an existing file.
        probabilities, scales, flip, base_size, fold_bn: as `export_saved_model`.
        input_size: None (dynamic) or `(H, W)` (a fixed input size).
        opset: ONNX opset, >= 17.

    Returns:
        The path written.

    Example:
    >>> export_onnx(model, "fastfcn.onnx")
    'fastfcn.onnx'
    """
    try:
        import onnx
        import tf2onnx
    except ImportError as err:
        raise RuntimeError(
            "ONNX export needs tf2onnx and onnx: pip install 'keras_fastfcn[export]'"
        ) from err
    if int(opset) < 17:
        raise ValueError(f"opset must be >= 17, got {opset}.")
    scales, flip, input_size, base_size = _check_options(scales, flip, input_size, base_size)
    output = _check_target_file(output, overwrite, ".onnx")
    net, class_names, source = _prepare(model, fold_bn)
    import tensorflow as tf

    fn, spec = _fixed_function(net, probabilities, scales, flip, input_size, base_size,
                               source.align_corners)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(fn, input_signature=[spec], autograph=False),
        input_signature=[spec], opset=int(opset))
    _rename_onnx_outputs(proto, ["class_map"] + (["probabilities"] if probabilities else []))
    _name_onnx_dims(proto)
    options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                   input_size=list(input_size) if input_size else None,
                   base_size=base_size, fold_bn=bool(fold_bn), opset=int(opset))
    meta = {
        "class_names": json.dumps(class_names),
        "num_classes": str(source.num_classes),
        "dataset": json.dumps(source.dataset),
        "input": "images: float32 [B, H, W, 3], RGB 0-255",
        "keras_fastfcn_export": json.dumps(options),
    }
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "keras_fastfcn (tf2onnx)"
    onnx.checker.check_model(proto)
    with atomic_path(output) as tmp:
        onnx.save(proto, tmp)
    return output


def _rename_onnx_outputs(proto, names):
    """Gives the graph outputs their plain names (tf2onnx keeps `name:0`)."""
    graph = proto.graph
    renames = {}
    for out in graph.output:
        base = re.sub(r":\d+$", "", out.name).split("/")[-1]
        for name in names:
            if base == name or base.startswith(name):
                renames[out.name] = name
    for node in graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for out in graph.output:
        out.name = renames.get(out.name, out.name)
    # Keep a deterministic order: class_map first.
    order = {name: i for i, name in enumerate(names)}
    outs = sorted(graph.output, key=lambda o: order.get(o.name, len(order)))
    del graph.output[:]
    graph.output.extend(outs)


def _name_onnx_dims(proto):
    """Names the dynamic input/output dims `batch`, `height`, `width` (not `unk__N`)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "height", "width")):
            if not dim.HasField("dim_value"):
                dim.dim_param = name


def export_tflite(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                  flip=False, input_size=None, base_size=None, fold_bn=True):
    """Writes a float32 TFLite model with a fixed input size to `output` (`*.tflite`).

    Input `[1, H, W, 3]` float32 RGB 0-255; outputs `class_map` int32
    `[1, H, W]` and (unless `probabilities=False`) `probabilities`.

    Args:
        model: a `FastFCN`.
        output: path ending in `.tflite`.
        overwrite: replace an existing file.
        input_size: `(H, W)`, required unless the model was built with a fixed
            `input_shape`.
        probabilities, scales, flip, base_size, fold_bn: as `export_saved_model`.

    Returns:
        The path written.

    Example:
    >>> export_tflite(model, "fastfcn.tflite", input_size=(512, 512))
    'fastfcn.tflite'
    """
    import tensorflow as tf

    model = check_model(model)
    if input_size is None:
        h, w = model.input_shape_hw[:2]
        if h is None or w is None:
            raise ValueError("TFLite export needs a fixed input size: pass --input-size H W "
                             "(input_size=(H, W)).")
        input_size = (h, w)
    scales, flip, input_size, base_size = _check_options(scales, flip, input_size, base_size)
    output = _check_target_file(output, overwrite, ".tflite")
    net, class_names, source = _prepare(model, fold_bn)
    fn, spec = _fixed_function(net, probabilities, scales, flip, input_size, base_size,
                               source.align_corners, batch=1)
    # Through a temporary SavedModel written like the TF Serving export:
    # converting a concrete function that captures Keras variables directly
    # silently drops the weights in this TF version.
    with tempfile.TemporaryDirectory(prefix=".tflite-", dir=os.path.dirname(
            os.path.abspath(output))) as tmp_dir:
        _write_saved_model(net, {"serving_default": (fn, [spec])}, tmp_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp_dir, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as err:
            raise RuntimeError(f"TFLite conversion failed: {err}") from err
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return output


def export(model, output, format="saved_model", **options):
    """Exports `model` to `format` (`"saved_model"`, `"onnx"` or `"tflite"`); returns the path."""
    exporters = {"saved_model": export_saved_model, "onnx": export_onnx,
                 "tflite": export_tflite}
    if format not in exporters:
        raise ValueError(f"Unknown export format {format!r}: expected one of {FORMATS}.")
    return exporters[format](model, output, **options)


# --- CLI ------------------------------------------------------------------------


def _scales_arg(text):
    import argparse

    try:
        scales = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive numbers like 0.75,1.0,1.25, got {text!r}")
    return scales


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a .keras file of a FastFCN model")
    parser.add_argument("--format", default="saved_model", choices=FORMATS)
    parser.add_argument("--output", required=True,
                        help="saved_model: BASE (next version) or BASE/VERSION; "
                             "onnx/tflite: a .onnx / .tflite file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing version folder or file")
    parser.add_argument("--no-probabilities", dest="probabilities", action="store_false",
                        help="leave out the (large) probabilities output")
    parser.add_argument("--ms", action="store_true",
                        help="official multi-scale + flip in the graph: scales "
                             "0.5,0.75,1.0,1.25,1.5,1.75 with --flip")
    parser.add_argument("--scales", type=_scales_arg, default=None, metavar="S1,S2,...",
                        help="in-graph scales, scores summed (default: 1.0)")
    parser.add_argument("--flip", action="store_true",
                        help="add horizontally flipped predictions in the graph")
    parser.add_argument("--base-size", type=int, default=None, metavar="N",
                        help="with --scales/--ms: the long side that scale 1.0 maps to "
                             "(default: each image's own)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="fixed network input size (required for tflite)")
    parser.add_argument("--fold-bn", dest="fold_bn", action="store_true", default=True,
                        help="fold BatchNorm into the convolutions (default)")
    parser.add_argument("--no-fold-bn", dest="fold_bn", action="store_false")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")


def run(args):
    start = time.perf_counter()
    # Output problems are reported before the (slow) model load.
    if args.format == "saved_model":
        _check_saved_model_target(args.output, args.overwrite, create=False)
    else:
        _check_target_file(args.output, args.overwrite, f".{args.format}", create=False)
    if args.ms and args.scales is not None:
        raise ValueError("--ms and --scales are exclusive: --ms means --scales "
                         "0.5,0.75,1.0,1.25,1.5,1.75 --flip.")
    from keras_fastfcn.inference import MS_SCALES

    model = load_fastfcn(args.model)
    scales = MS_SCALES if args.ms else (args.scales or (1.0,))
    options = dict(overwrite=args.overwrite, probabilities=args.probabilities,
                   scales=scales, flip=bool(args.flip or args.ms),
                   input_size=args.input_size, base_size=args.base_size,
                   fold_bn=args.fold_bn)
    if args.format == "onnx":
        options["opset"] = args.opset
    path = export(model, args.output, args.format, **options)
    elapsed = time.perf_counter() - start
    print(f"exported {args.format} to {path} in {elapsed:.1f} s")
    if args.format == "saved_model":
        print(f"signatures: {', '.join(SIGNATURES)}; serve with: "
              f"--model_base_path={os.path.abspath(os.path.dirname(path))}")
    return 0

