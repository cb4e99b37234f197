"""The serving graph: checks, multi-scale inference and outputs, written in TF ops.

What every export format runs: images (uint8 or float 0-255, or encoded bytes) are
checked in the graph (3 channels, non-empty), optionally resized to a fixed network
size, run through `inference.multiscale_log_scores` (the model's logits for a single
scale) and turned into the outputs `class_map` (the argmax of the log-scores: exact),
`probabilities` (their softmax) and `class_names`.
"""

import tensorflow as tf

from keras_fastfcn import inference
from keras_fastfcn.layers.resize import log_resize_bilinear, resize_bilinear

SIGNATURES = ("serving_default", "serving_image_bytes", "serving_float")
# Each signature's input as it is meant, for the export's metadata file: the
# signatures themselves declare no rank (see serving_endpoints).
SIGNATURE_INPUTS = {
    "serving_default": {"image_tensor": {"dtype": "uint8", "shape": ["B", "H", "W", 3]}},
    "serving_image_bytes": {"image_bytes": {"dtype": "string", "shape": ["B"]}},
    "serving_float": {"image_tensor": {"dtype": "float32", "shape": ["B", "H", "W", 3]}},
}


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
        model: a logits model (`inference.prepare`'s, folded or not).
        scales: tuple of floats, inference scales (`inference.MS_SCALES` officially).
        flip: bool, add the horizontally flipped image's logits.
        input_size: None or `(H, W)`, a fixed network input size.
        base_size: with multi-scale, the long side that scale 1.0 maps to
            (None: the image's own long side).
        align_corners: resize semantics (the model's).

    Example:
    >>> forward = make_forward(model, scales=(0.75, 1.0), flip=True)
    >>> forward(tf.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 64, 64, 3])
    """
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
    # The class map is the argmax of the log-scores themselves (exact: the logits'
    # argmax for a single scale), not of the rounded probabilities.
    out = {"class_map": tf.argmax(log_scores, axis=-1, output_type=tf.int32)}
    if probabilities:
        out["probabilities"] = tf.nn.softmax(log_scores, axis=-1)
    if class_names:
        names = tf.constant(class_names, dtype=tf.string)
        out["class_names"] = tf.tile(names[None], [tf.shape(log_scores)[0], 1])
    return out


def _check_image_tensor(images, signature, max_pixels=None):
    """Asserts `[B, H, W, 3]` with B, H, W > 0 (and H * W <= `max_pixels`, and finite
    values for floats); returns the images, rank 4, with the checks attached.

    The signatures take tensors of any rank so that these checks, not a bare
    shape-mismatch or slicing error, answer a wrong request whatever the client
    (TF Serving does not check a fed tensor against the signature's shape)."""
    rank = tf.debugging.Assert(tf.equal(tf.rank(images), 4), [
        f"{signature}: images must be a 4-D batch [batch, height, width, 3]; add a "
        "batch axis to a single image. Got shape:", tf.shape(images)])
    # A rank-4 view that exists for any input, so that nothing fails before the
    # assertion above (TF does not order a failing shape op after it).
    last3 = tf.reshape(tf.concat([tf.ones([3], tf.int32), tf.shape(images)], 0)[-3:], [3])
    with tf.control_dependencies([rank]):
        images = tf.reshape(images, tf.concat([[-1], last3], 0))
    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_greater(
            shape[0], 0, message=f"{signature}: the batch is empty (0 images)."),
        tf.debugging.assert_equal(
            shape[3], 3,
            message=f"{signature}: images must have 3 channels (RGB); got a different "
                    "channel count (grayscale = 1, RGBA = 4). Convert them to RGB first."),
        tf.debugging.assert_greater(
            tf.reduce_min(shape[1:3]), 0,
            message=f"{signature}: images must have a height and width of at least 1 pixel."),
    ]
    if max_pixels:
        checks.append(tf.debugging.assert_less_equal(
            tf.cast(shape[1], tf.int64) * tf.cast(shape[2], tf.int64), tf.cast(max_pixels, tf.int64),
            message=f"{signature}: the image is larger than this export's limit of "
                    f"{max_pixels} pixels (height x width); send a smaller image, or "
                    "export with a larger --max-pixels (or --input-size, which resizes "
                    "every image to a fixed network size)."))
    if images.dtype.is_floating:
        checks.append(tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(images)),
            [f"{signature}: the images contain NaN or infinite values."]))
    with tf.control_dependencies(checks):
        return tf.identity(images)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _decode_image(data):
    """Decodes one encoded image to uint8 `[H, W, 3]` with clear errors."""
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
                      flip=False, input_size=None, base_size=None, align_corners=True,
                      max_pixels=None):
    """The three serving functions and their input signatures, keyed by signature name.

    Args:
        model: a logits model (`inference.prepare`'s, folded or not).
        class_names: optional list of C names, returned as the `class_names` output.
        probabilities: bool, include the `probabilities` output.
        scales, flip, input_size, base_size, align_corners: see `make_forward`.
        max_pixels: None, or the largest image (height x width) accepted.

    Returns:
        dict `{signature name: (function, [tf.TensorSpec])}`, ready for
        `keras.export.ExportArchive.add_endpoint` or `tf.function`.

    Example:
    >>> fn, spec = serving_endpoints(model)["serving_default"]
    >>> tf.function(fn, input_signature=spec)(tf.zeros((1, 64, 64, 3), tf.uint8))
    """
    forward = make_forward(model, scales, flip, input_size, base_size, align_corners)

    def serve(images, signature):
        images = _check_image_tensor(images, signature, max_pixels)
        return _outputs(forward(images), class_names, probabilities)

    def serving_default(image_tensor):
        return serve(image_tensor, "serving_default")

    def serving_image_bytes(image_bytes):
        return serve(_decode_batch(image_bytes), "serving_image_bytes")

    def serving_float(image_tensor):
        return serve(image_tensor, "serving_float")

    # Rank and channels are left dynamic so that a 3-D, 1- or 4-channel image
    # reaches the in-graph checks (a clear message) instead of a bare mismatch.
    # Declaring [batch, height, width, 3] would read better in TF Serving's metadata,
    # but TensorFlow then takes rank and channels as known and drops the checks on
    # them, while neither TF Serving nor a loaded signature holds a fed tensor to the
    # declared shape: a 3-D tensor then ran through unchecked (tried, Keras 3.15 /
    # TF 2.21). `keras_fastfcn_export.json` beside the model states the input.
    return {
        "serving_default": (serving_default, [
            tf.TensorSpec(None, tf.uint8, name="image_tensor")]),
        "serving_image_bytes": (serving_image_bytes, [
            tf.TensorSpec([None], tf.string, name="image_bytes")]),
        "serving_float": (serving_float, [
            tf.TensorSpec(None, tf.float32, name="image_tensor")]),
    }


def fixed_function(net, probabilities, scales, flip, input_size, base_size, align_corners,
                    batch=None):
    """`(images float32 [batch, H, W, 3]) -> {class_map, probabilities}` and its spec.

    For ONNX and TFLite: no in-graph checks or string outputs, and with
    `input_size` the tensor itself has that size (no resize in the graph).
    """
    forward = make_forward(net, scales, flip, None, base_size, align_corners)
    h, w = input_size if input_size else (None, None)
    spec = tf.TensorSpec([batch, h, w, 3], tf.float32, name="images")

    def fn(images):
        out = _outputs(forward(images), None, probabilities)
        return {k: tf.identity(v, name=k) for k, v in out.items()}

    return fn, spec
