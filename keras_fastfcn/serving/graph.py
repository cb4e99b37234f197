"""The serving graph: checks, multi-scale inference and outputs, written in TF ops.

What every export format runs: images (uint8 or float 0-255, or encoded bytes) are
checked in the graph (3 channels, non-empty; for SavedModels, the pixel limits per
image and per request, encoded images on the sizes their headers declare, before
decoding), optionally resized to a fixed network size, run through
`inference.multiscale_log_scores` (the model's logits for a single scale) and turned
into the outputs `class_map` (the argmax of the log-scores: exact), `probabilities`
(their softmax) and `class_names`.
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
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
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


def _pixel_counter(scales, flip, input_size, base_size):
    """`count(batch, height, width)`: the pixels a request costs, float64 (no overflow).

    Each image counts the larger of its own size (the input, the outputs and their
    resizes live at that size) and the pixels the network runs on it: at `input_size`
    when set, the long side mapped to `base_size` when set, summed over `scales`
    (the scales' branches may run concurrently) and doubled with `flip` (image and
    mirror run as one batch). One scale of 1.0 without flip counts B x H x W.
    """
    factor = sum(s * s for s in scales) * (2.0 if flip else 1.0)

    def count(batch, height, width):
        b, h, w = (tf.cast(v, tf.float64) for v in (batch, height, width))
        nh, nw = (float(input_size[0]), float(input_size[1])) if input_size else (h, w)
        net = nh * nw * factor
        if base_size is not None:
            # A 0-pixel header (the decoder refuses the file) must not make a NaN.
            net *= tf.math.divide_no_nan(float(base_size), tf.maximum(nh, nw)) ** 2
        return b * tf.maximum(h * w, net)

    return count


def _budget_note(scales, flip, input_size, base_size):
    if tuple(scales) == (1.0,) and not flip and input_size is None and base_size is None:
        return "batch x height x width"
    parts = [f"input_size {input_size[0]}x{input_size[1]}"] if input_size else []
    if base_size is not None:
        parts.append(f"base_size {base_size}")
    parts.append("scales " + ",".join(f"{s:g}" for s in scales))
    if flip:
        parts.append("flip (x2)")
    return ("batch x height x width, each image counted at the larger of its own size "
            "and the pixels the network runs on it: " + ", ".join(parts))


def _check_budget(signature, pixels, batch, height, width, budget, note):
    """An assertion that a request costs at most `budget` pixels (`pixels`, float64)."""
    message = tf.strings.format(
        f"{signature}: the request is over this export's budget of {budget} pixels per "
        f"request ({note}): a batch of {{}} images of {{}}x{{}} (height x width) counts "
        "{} pixels. Send fewer or smaller images per request, or export with a larger "
        "max_batch_pixels (by default the same as --max-pixels).",
        (batch, height, width, pixels))
    return tf.debugging.Assert(tf.less_equal(pixels, float(budget)), [message])


def _check_image_tensor(images, signature, max_pixels=None, budget=None, count=None,
                        note=""):
    """Asserts `[B, H, W, 3]` with B, H, W > 0 (and H * W <= `max_pixels`, and finite
    values for floats, and `count(B, H, W) <= budget`); returns the images, rank 4,
    with the checks attached.

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
    if budget:
        # After the per-image checks, so that an image over `max_pixels` gets their
        # message rather than this one.
        with tf.control_dependencies(checks):
            checks = [_check_budget(signature, count(shape[0], shape[1], shape[2]),
                                    shape[0], shape[1], shape[2], budget, note)]
    with tf.control_dependencies(checks):
        return tf.identity(images)


_JPEG, _PNG, _GIF, _BMP = b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM"
_IMAGE_MAGIC = (_JPEG, _PNG, _GIF, _BMP)
_HEADER = 26  # bytes read for a size: a PNG's IHDR ends at 24, a BMP's height at 26


def _header_size(data):
    """The `(height, width)` an encoded image declares (int64), read from its header
    before any decoding: the size the decoder allocates for it.

    JPEG: its frame header (`tf.io.extract_jpeg_shape`); PNG: the IHDR chunk, which
    the format requires first (width and height big-endian at bytes 16-24); BMP: the
    info header fields TF's decoder reads (little-endian int32 width and height at
    18 and 22; a negative height means top-down rows). `(0, 0)` where no size can be
    read (a header cut short, a GIF): then the decoder itself refuses the file, or
    a GIF is refused before (see `_check_header`)."""
    head = tf.strings.substr(
        tf.strings.join([tf.strings.substr(data, 0, _HEADER), b"\0" * _HEADER]), 0, _HEADER)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big_endian(i):
        return ((b[i] * 256 + b[i + 1]) * 256 + b[i + 2]) * 256 + b[i + 3]

    def little_endian_abs(i):
        value = ((b[i + 3] * 256 + b[i + 2]) * 256 + b[i + 1]) * 256 + b[i]
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    zero = tf.zeros([2], tf.int64)
    png = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), _PNG),
                         tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"))
    other = tf.where(png, tf.stack([big_endian(20), big_endian(16)]),
                     tf.where(tf.equal(tf.strings.substr(head, 0, 2), _BMP),
                              tf.stack([little_endian_abs(22), little_endian_abs(18)]), zero))
    return tf.cond(tf.equal(tf.strings.substr(head, 0, 3), _JPEG),
                   lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64),
                   lambda: other)


def _check_header(data, max_pixels, limited):
    """Refuses what is not an image, a GIF when the export has a size limit, and an
    image whose header declares more than `max_pixels`; returns `_header_size`."""
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 4), b"\0" * 4]), 0, 4)
    is_image = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(head, 0, len(magic)), magic) for magic in _IMAGE_MAGIC]))
    checks = [tf.debugging.Assert(is_image, [
        "serving_image_bytes: an input is not an encoded JPEG, PNG, GIF or BMP image "
        "(send the file's raw bytes, base64-encoded as {\"b64\": ...} over REST). "
        "Its first bytes:", tf.strings.substr(data, 0, 16)])]
    if limited:
        # A GIF's size is not in its header: giflib decodes every frame, each sized in
        # its own descriptor deep in the stream, before TF keeps the first.
        checks.append(tf.debugging.Assert(tf.not_equal(head, _GIF), [
            "serving_image_bytes: GIF images are refused by this export: their decoded "
            "size (every frame is decoded) cannot be checked against the export's pixel "
            "limits before decoding. Send PNG or JPEG, or export without limits "
            "(--max-pixels 0) to accept GIFs unchecked."]))
    with tf.control_dependencies(checks):
        size = _header_size(data)
    if max_pixels:
        check = tf.debugging.Assert(tf.less_equal(size[0] * size[1], max_pixels), [
            tf.strings.format(
                "serving_image_bytes: an image declares {}x{} pixels (height x width) in "
                f"its header, over this export's limit of {max_pixels} pixels (height x "
                "width); it was refused before decoding. Send a smaller image, or export "
                "with a larger --max-pixels.", (size[0], size[1]))])
        with tf.control_dependencies([check]):
            size = tf.identity(size)
    return size


def _decode_image(data):
    """Decodes one encoded image (checked by `_check_header`) to uint8 `[H, W, 3]`."""
    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    channels = tf.shape(image)[2]
    check = tf.debugging.assert_equal(
        channels, 3,
        message="serving_image_bytes: an image does not have 3 channels (RGB): grayscale "
                "has 1, grayscale+alpha 2, RGBA 4. Convert it to RGB before sending.")
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(image), [None, None, 3])


def _decode_batch(image_bytes, max_pixels=None, budget=None, count=None, note=""):
    """Decodes a batch of encoded images after checking each header and, from the
    headers' sizes, the request's budget: nothing is decoded before they pass."""
    check = tf.debugging.assert_greater(
        tf.size(image_bytes), 0, message="serving_image_bytes: the batch is empty.")
    with tf.control_dependencies([check]):
        image_bytes = tf.identity(image_bytes)
    sizes = tf.map_fn(lambda data: _check_header(data, max_pixels, bool(max_pixels or budget)),
                      image_bytes, fn_output_signature=tf.TensorSpec([2], tf.int64))
    checks = [sizes]
    if budget:
        pixels = tf.reduce_sum(count(tf.ones_like(sizes[:, 0]), sizes[:, 0], sizes[:, 1]))
        checks = [_check_budget("serving_image_bytes", pixels, tf.size(image_bytes),
                                sizes[0, 0], sizes[0, 1], budget, note)]
    with tf.control_dependencies(checks):
        image_bytes = tf.identity(image_bytes)
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
                      max_pixels=None, max_batch_pixels=None):
    """The three serving functions and their input signatures, keyed by signature name.

    Both limits are checked before the network runs, and `serving_image_bytes`
    checks them on the sizes the images' headers declare, before decoding anything
    (JPEG, PNG and BMP; with a limit set, GIFs are refused: their decoded size is not
    in their header).

    Args:
        model: a logits model (`inference.prepare`'s, folded or not).
        class_names: optional list of C names, returned as the `class_names` output.
        probabilities: bool, include the `probabilities` output.
        scales, flip, input_size, base_size, align_corners: see `make_forward`.
        max_pixels: None, or the largest image (height x width) accepted.
        max_batch_pixels: None, or the most pixels one request may carry: batch x
            height x width, each image counted at the larger of its own size and the
            pixels the network runs on it (at `input_size`, or the long side at
            `base_size`, summed over `scales`, doubled with `flip`).

    Returns:
        dict `{signature name: (function, [tf.TensorSpec])}`, ready for
        `keras.export.ExportArchive.add_endpoint` or `tf.function`.

    Example:
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    >>> fn, spec = serving_endpoints(model)["serving_default"]
    >>> outputs = tf.function(fn, input_signature=spec)(tf.zeros((1, 64, 64, 3), tf.uint8))
    >>> sorted(outputs), outputs["class_map"].shape
    (['class_map', 'probabilities'], TensorShape([1, 64, 64]))
    """
    forward = make_forward(model, scales, flip, input_size, base_size, align_corners)
    count = _pixel_counter(scales, flip, input_size, base_size)
    note = _budget_note(scales, flip, input_size, base_size)

    def serve(images, signature):
        images = _check_image_tensor(images, signature, max_pixels, max_batch_pixels,
                                     count, note)
        return _outputs(forward(images), class_names, probabilities)

    def serving_default(image_tensor):
        return serve(image_tensor, "serving_default")

    def serving_image_bytes(image_bytes):
        images = _decode_batch(image_bytes, max_pixels, max_batch_pixels, count, note)
        return serve(images, "serving_image_bytes")

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
