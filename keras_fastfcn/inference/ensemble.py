"""Full-size prediction: whole image or sliding window, multi-scale and flip.

This reproduces the official evaluator (`MultiEvalModule` and `module_inference`
in wuhuikai/FastFCN `encoding/models/base.py`) on top of a Keras model that maps
0-255 RGB images `(B, H, W, 3)` to logits `(B, H, W, C)` at the input size (a
`keras_fastfcn.FastFCN`; dict-output training models are reduced to their
`"logits"`).

What is summed (the official definition, read off `module_inference`): for each
scale `s` the image is resized (bilinear) so that its long side is
`ceil(base_size * s)` and the model's *raw logits* `z` are taken; with flip, the
logits of the mirrored image are mirrored back and *added to the logits*, and the
scale's score is `exp(z + flip(z_flipped))`: an exponential of summed logits,
not a softmax probability. In sliding-window mode the exponentiated window scores
are averaged where windows overlap. Each scale's scores are resized (bilinear) to
the input size and the scales are summed. The class map is the argmax.

The package returns these scores as their logarithm, the *log-scores*: the scale's
log-score is `z + flip(z_flipped)` itself, overlapping windows are combined with a
log-sum-exp (minus the log of the window count), resizes between scales are done
in the log domain (`ops.log_resize_bilinear`), and scales are log-summed. This
is the log of the official float computation wherever that is finite, and it stays
finite for any logits: trained models reach logits in the hundreds, where the
official float32 `exp` overflows for some pixels and underflows to 0 for others
(every class 0, argmax class 0). Consequences:

- one scale of 1.0 without flip (`mode="whole"`) returns the logits unchanged, so
  the class map is exactly `argmax(model(images))`;
- `argmax(log_scores)` is the official ensemble's class map;
- `normalize_scores(log_scores)` (a softmax) is the official scores normalized per
  pixel; for a single scale without flip, the softmax of the logits.

Modes:
    - `"whole"`: the model sees the whole (resized) image, any size, no padding.
      Traceable in a `tf.function` with dynamic height and width
      (`multiscale_log_scores`), which the exporter builds its serving graph on.
    - `"slide"`: the official evaluator exactly. Per scale: if the long side is at
      most `crop_size`, pad to `crop_size` and run once; else pad the short side up
      to `crop_size` if needed and run `crop_size` windows on a grid with stride
      `int(2/3 * crop_size)` (the last windows overhang and are padded), averaging
      overlapping scores (`count_norm`). The official code pads its normalized
      images with `-mean / std`, the normalized value of a black pixel; our models
      normalize inside the graph, so padding the raw 0-255 image with 0 (black) is
      the same input (for any normalization mode, not only the official one). All
      windows of a scale (and their flips) go through the model as one batch.

`base_size=None` means each image's own long side, so scale 1.0 is the image as is.
The official test script uses `base_size=520, crop_size=480` (Pascal Context,
ADE20K), scales `(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)` with flip for `--ms`, and
`(1.0,)` without flip otherwise; even single-scale, it resizes to `base_size` and
runs windows, so its single-scale numbers correspond to
`mode="slide", base_size=520, crop_size=480`.

Protocols (`PROTOCOLS`): the above is `"official"`. `"mmseg"` is mmsegmentation's
test of its FastFCN models, the protocol of the numbers it reports
(`mmseg_log_scores`): whole images only; each image resized, aspect kept, to fit
`keep_ratio_fit = (long, short)` (its test pipelines' `Resize(scale=(2048, 1024),
keep_ratio=True)` for Cityscapes, `(2048, 512)` for ADE20K; sizes rounded as mmcv's
`imrescale`: `keep_ratio_size`), at scale `s` the bounds `(int(long * s), int(short *
s))` (mmsegmentation 0.x's `MultiScaleFlipAug`, which measured the released models'
MS+flip numbers); the logits of every scale and mirror (mirrored back) are resized
(bilinear, in the linear domain) to the image and their softmaxes averaged
(`SegTTAModel.merge_preds`). The log-scores are the log of that average (a
log-sum-exp of log-softmaxes), so their argmax is mmsegmentation's class map and
`normalize_scores` its averaged probabilities; one scale without flip returns the
resized logits themselves.
"""

import math

from keras import ops

from keras_fastfcn.layers.resize import log_add_exp, log_resize_bilinear, resize_bilinear


MODES = ("whole", "slide")


PROTOCOLS = ("official", "mmseg")


MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# The largest network input (height x width) `keras-fastfcn predict` and a `Predictor`
# run and a SavedModel accepts by default: 2048 x 2048. A ResNet-50 FastFCN at that size peaks
# at a few GB; a 100-megapixel photo run whole would need tens (docs/prediction.md: "Large images").
MAX_PIXELS = 2048 * 2048


STRIDE_RATE = 2.0 / 3.0


def fit_to_pixels(height, width, max_pixels=MAX_PIXELS):
    """`(height, width)` scaled down, aspect kept, to at most `max_pixels` pixels (the
    size unchanged when it fits or `max_pixels` is None).

    Example:
    >>> fit_to_pixels(10000, 10000, 2048 * 2048)
    (2048, 2048)
    """
    if not max_pixels or height * width <= max_pixels:
        return int(height), int(width)
    factor = math.sqrt(max_pixels / float(height * width))
    h, w = max(1, int(height * factor)), max(1, int(width * factor))
    while h * w > max_pixels and max(h, w) > 1:  # float rounding
        if h >= w:
            h -= 1
        else:
            w -= 1
    return h, w


def scaled_size(height, width, scale, base_size=None):
    """The official `MultiEvalModule` size of an image at `scale` (Python ints).

    The long side becomes `ceil(base_size * scale)` and the short side keeps the
    aspect ratio, rounded half up. `base_size=None` uses the image's long side.

    Example:
    >>> scaled_size(512, 683, 0.75, base_size=520)
    (292, 390)
    """
    base = max(height, width) if base_size is None else base_size
    long_size = int(math.ceil(base * scale))
    if height > width:
        return long_size, int(1.0 * width * long_size / height + 0.5)
    return int(1.0 * height * long_size / width + 0.5), long_size


def keep_ratio_size(height, width, fit=None, scale=1.0):
    """mmsegmentation's test size of an image at `scale` (Python ints): resized, aspect
    kept, as large as fits `fit = (long, short)` times `scale`.

    The bounds at `scale` are `(int(long * scale), int(short * scale))` (mmsegmentation
    0.x's `MultiScaleFlipAug`); the factor is `min(long / max(h, w), short / min(h, w))`
    and each side becomes `int(side * factor + 0.5)` (mmcv's `rescale_size`).
    `fit=None` takes the image's own long and short side.

    Example:
    >>> keep_ratio_size(375, 500, (2048, 512))
    (512, 683)
    >>> keep_ratio_size(1024, 2048, (2048, 1024), 0.75)
    (768, 1536)
    """
    long_side, short_side = (max(height, width), min(height, width)) if fit is None else fit
    long_side, short_side = int(max(long_side, short_side) * scale), int(
        min(long_side, short_side) * scale)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def network_size(height, width, scale, base_size=None, protocol="official",
                 keep_ratio_fit=None):
    """The size an image of `(height, width)` is resized to at `scale`: `scaled_size`
    (protocol `"official"`) or `keep_ratio_size` (`"mmseg"`)."""
    if protocol == "mmseg":
        return keep_ratio_size(height, width, keep_ratio_fit, scale)
    return scaled_size(height, width, scale, base_size)


# How the options are named in `check_network_input`'s messages: the Python
# arguments; the CLI passes its flags.
API_NAMES = {"scales": "scales", "base_size": "base_size", "crop_size": "crop_size",
             "keep_ratio_fit": "keep_ratio_fit",
             "max_pixels": "max_pixels", "no_limit": "max_pixels=None",
             "whole": "mode='whole'",
             "shrink": "shrink the images first (inference.fit_to_pixels)"}


def check_network_input(height, width, scales=(1.0,), base_size=None, mode="whole",
                        crop_size=None, max_pixels=MAX_PIXELS, names=None,
                        protocol="official", keep_ratio_fit=None):
    """Raises a ValueError if predicting an image of `(height, width)` would build a
    network input over `max_pixels` (height x width), or an empty one.

    The network input is, per scale, the image resized to `network_size`; in
    `"slide"` mode, that image padded to at least `crop_size` on each side, as the
    official evaluator pads it (its windows, `crop_size x crop_size` each, overlap by
    a third, so they hold at most about 2.25 times as many pixels; one window when
    the image fits in it). A `Predictor` checks this before any model work; the
    sizes are computed, nothing is allocated. The message names the option that
    makes the input too large, the size, the budget and how to raise it.

    Args:
        height, width: the image's size.
        scales, base_size, mode, crop_size, protocol, keep_ratio_fit: as `Predictor`.
        max_pixels: the budget; None checks only that no side becomes 0.
        names: how the message names the options (`API_NAMES`, the default; the CLI
            passes its flags).

    Example:
    >>> check_network_input(64, 64, scales=(100.0,))
    Traceback (most recent call last):
    ValueError: scales: at scale 100, the network input for a 64x64 image would be ...
    """
    names = dict(API_NAMES, **(names or {}))
    budget = None if max_pixels is None else int(max_pixels)
    fit = protocol == "mmseg"
    if fit:  # the size option, and its long side, that the scales multiply
        base_size, base = keep_ratio_fit, max(keep_ratio_fit or (height, width))
        base_name = names["keep_ratio_fit"]
    else:
        base = max(height, width) if base_size is None else base_size
        base_name = names["base_size"]
    worst = None  # (pixels, scale, (h, w) of the network input)
    for scale in scales:
        long_side = float(base) * scale
        # Beyond any budget, and beyond what the integer sizes below (math.ceil of
        # inf) and a readable message can hold.
        if not long_side < 1e15:
            if budget is None and not math.isfinite(long_side):
                raise ValueError(f"{names['scales']}: scale {scale:g} makes a {width}x{height} "
                                 "image too large to compute its size.")
            worst = (math.inf, scale, None)
            break
        size = network_size(height, width, scale, base_size, protocol, keep_ratio_fit)
        if min(size) < 1:
            raise ValueError(
                f"{names['scales']}: at scale {scale:g} a {width}x{height} image would be "
                f"{size[1]}x{size[0]}, an empty network input; use larger scales"
                + ("" if base_size is None else f" or a larger {base_name}") + ".")
        net = (max(size[0], crop_size), max(size[1], crop_size)) if mode == "slide" else size
        if worst is None or net[0] * net[1] > worst[0]:
            worst = (net[0] * net[1], scale, net)
    if budget is None or worst[0] <= budget:
        return
    _, scale, net = worst
    shape = ("more than 1e15 pixels long" if net is None
             else f"{net[1]}x{net[0]} = {net[0] * net[1]} pixels")
    what = "the image padded to the windows" if mode == "slide" else "the network input"
    if mode == "slide" and int(crop_size) ** 2 > budget:
        crop = int(crop_size)
        lead = f"{names['crop_size']} {crop}: every window is {crop}x{crop} = {crop * crop} pixels"
        fix = f"use a smaller {names['crop_size']} (official: 480)"
    elif base_size is not None:
        given = "x".join(str(v) for v in base_size) if fit else base_size
        lead = f"{base_name} {given}: at scale {scale:g}, {what} would be {shape}"
        fix = f"use a smaller {base_name} or smaller scales"
    elif scale > 1:
        lead = (f"{names['scales']}: at scale {scale:g}, {what} for a {width}x{height} image "
                f"would be {shape}")
        fix = f"use smaller scales or a {base_name}"
    else:
        lead = f"a {width}x{height} image: {what} would be {shape}"
        # Within the budget itself, an image is over it only through the window
        # padding (a long thin image padded to crop_size across).
        fix = (f"use a smaller {names['crop_size']} or {names['whole']}" if mode == "slide"
               and height * width <= budget else names["shrink"])
    raise ValueError(f"{lead}, over the budget of {names['max_pixels']} {budget}; {fix}, or "
                     f"raise {names['max_pixels']} ({names['no_limit']}: no limit).")


def _scaled_size_tensor(height, width, scale, base_size):
    """`scaled_size` with tf ops for dynamic sizes (same float64 arithmetic)."""
    import tensorflow as tf  # dynamic sizes exist only in a traced TensorFlow graph

    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    base = tf.maximum(h, w) if base_size is None else tf.constant(float(base_size), tf.float64)
    long_size = tf.math.ceil(base * scale)
    short_of_h = tf.floor(1.0 * w * long_size / h + 0.5)  # width when h > w
    short_of_w = tf.floor(1.0 * h * long_size / w + 0.5)  # height when h <= w
    out_h = tf.where(h > w, long_size, short_of_w)
    out_w = tf.where(h > w, short_of_h, long_size)
    return tf.cast(out_h, tf.int32), tf.cast(out_w, tf.int32)


def _keep_ratio_size_tensor(height, width, fit, scale):
    """`keep_ratio_size` with tf ops for dynamic sizes (same float64 arithmetic)."""
    import tensorflow as tf  # dynamic sizes exist only in a traced TensorFlow graph

    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    long_in, short_in = tf.maximum(h, w), tf.minimum(h, w)
    if fit is None:
        long_side, short_side = tf.floor(long_in * scale), tf.floor(short_in * scale)
    else:
        long_side = tf.constant(float(int(max(fit) * scale)), tf.float64)
        short_side = tf.constant(float(int(min(fit) * scale)), tf.float64)
    factor = tf.minimum(long_side / long_in, short_side / short_in)
    out_h, out_w = tf.floor(h * factor + 0.5), tf.floor(w * factor + 0.5)
    return tf.cast(out_h, tf.int32), tf.cast(out_w, tf.int32)


def _check_scales(scales):
    scales = tuple(float(s) for s in scales)
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}.")
    return scales


def _float_images_and_size(images):
    """`(images as float32, height, width, static)`: Python ints and True where the
    size is known at trace time, else scalar tensors and False."""
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    return images, height, width, isinstance(height, int) and isinstance(width, int)


def _flip_w(x):
    return ops.flip(x, axis=2)


def _logits_with_flip(model, x, flip):
    """Raw logits of `x`, plus (with flip) the mirrored logits of the mirrored input.

    Image and mirror go through the model as one batch.
    """
    if not flip:
        return _call_logits(model, x)
    batch = ops.shape(x)[0]
    both = _call_logits(model, ops.concatenate([x, _flip_w(x)], axis=0))
    return both[:batch] + _flip_w(both[batch:])


def _call_logits(model, x):
    out = model(x, training=False)
    if isinstance(out, dict):
        out = out["logits"]
    return ops.cast(out, "float32")


def _add_scale(acc, term):
    """Adds one scale's log-scores to the running log-sum (None: the first scale)."""
    return term if acc is None else log_add_exp(acc, term)


def multiscale_log_scores(model, images, scales=(1.0,), flip=False, base_size=None,
                          align_corners=True):
    """Whole-image multi-scale (+ flip) log-scores, written with `keras.ops`.

    For each scale the batch is resized (bilinear, `align_corners`) to
    `scaled_size(H, W, scale, base_size)` and run through `model` whole (no
    padding, no windows); the scale's log-score is `z + flip(z_flipped)` (its
    official score is the `exp` of that), resized back to `(H, W)` in the log
    domain (`ops.log_resize_bilinear`) and log-summed over scales. The result is
    the log of the official ensemble's scores, finite for any logits; a single
    scale of 1.0 without flip returns the logits themselves. Height and width may
    be dynamic: this function can be traced once in a `tf.function` with
    `input_signature=[tf.TensorSpec((None, None, None, 3))]` and serves any image
    size (the exporter's serving graph is built on it).

    Args:
        model: a Keras model, 0-255 RGB `(B, H, W, 3)` -> logits `(B, H, W, C)`
            (dict outputs: the `"logits"` entry is used).
        images: float32 (or uint8) tensor `(B, H, W, 3)`, 0-255 RGB.
        scales: Python floats, resize factors of `base_size`.
        flip: bool, add horizontally mirrored predictions.
        base_size: int or None (the image's own long side).
        align_corners: bool, resize semantics (the official code uses True).

    Returns:
        float32 tensor `(B, H, W, C)` of log-scores; argmax over the last axis is
        the class map, `normalize_scores` the per-pixel distribution.

    Example:
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> multiscale_log_scores(model, tf.zeros((1, 64, 80, 3)), (0.5, 1.0), flip=True).shape
    TensorShape([1, 64, 80, 3])
    """
    scales = _check_scales(scales)
    images, height, width, static = _float_images_and_size(images)
    acc = None
    for scale in scales:
        identity = scale == 1.0 and base_size is None
        if identity:
            x = images
        else:
            size = (scaled_size(height, width, scale, base_size) if static
                    else _scaled_size_tensor(height, width, scale, base_size))
            x = resize_bilinear(images, size, align_corners)
        term = _logits_with_flip(model, x, flip)
        if not identity:
            term = log_resize_bilinear(term, (height, width), align_corners)
        acc = _add_scale(acc, term)
    return acc


def mmseg_log_scores(model, images, scales=(1.0,), flip=False, keep_ratio_fit=None,
                     align_corners=False):
    """mmsegmentation's whole-image test, and its multi-scale + flip test, as log-scores.

    For each scale the batch is resized (bilinear, `align_corners`) to
    `keep_ratio_size(H, W, keep_ratio_fit, scale)` and run through `model` whole; with
    flip the mirrored batch too, its logits mirrored back. Each of these logits is
    resized (bilinear) to `(H, W)` and softmaxed, and the softmaxes are averaged, as
    mmsegmentation's `postprocess_result` and `SegTTAModel.merge_preds` do (module
    docstring). Returned as the log of that average, finite for any logits; one scale
    without flip returns the resized logits. Height and width may be dynamic (traced
    once in a `tf.function`, as `multiscale_log_scores`).

    Args:
        model: a Keras model, 0-255 RGB `(B, H, W, 3)` -> logits `(B, H, W, C)`
            (dict outputs: the `"logits"` entry is used).
        images: float32 (or uint8) tensor `(B, H, W, 3)`, 0-255 RGB.
        scales: Python floats, factors of the `keep_ratio_fit` bounds.
        flip: bool, add horizontally mirrored predictions.
        keep_ratio_fit: `(long, short)` bounds, e.g. `(2048, 1024)`; None: the image's
            own size.
        align_corners: bool, resize semantics (mmsegmentation's models: False).

    Returns:
        float32 tensor `(B, H, W, C)` of log-scores.

    Example:
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> mmseg_log_scores(model, tf.zeros((1, 60, 80, 3)), MS_SCALES, flip=True,
    ...                  keep_ratio_fit=(128, 64)).shape
    TensorShape([1, 60, 80, 3])
    """
    scales = _check_scales(scales)
    images, height, width, static = _float_images_and_size(images)
    count = len(scales) * (2 if flip else 1)
    acc = None
    for scale in scales:
        size = (keep_ratio_size(height, width, keep_ratio_fit, scale) if static
                else _keep_ratio_size_tensor(height, width, keep_ratio_fit, scale))
        same = static and tuple(size) == (height, width)
        x = images if same else resize_bilinear(images, size, align_corners)
        if flip:
            batch = ops.shape(x)[0]
            both = _call_logits(model, ops.concatenate([x, _flip_w(x)], axis=0))
            terms = (both[:batch], _flip_w(both[batch:]))
        else:
            terms = (_call_logits(model, x),)
        for z in terms:
            if not same:
                z = resize_bilinear(z, (height, width), align_corners)
            if count == 1:
                return z
            z = ops.log_softmax(z, axis=-1)
            acc = z if acc is None else log_add_exp(acc, z)
    return acc - math.log(count)


def normalize_scores(log_scores):
    """Per-pixel distribution of log-scores (softmax over the class axis).

    For a single scale without flip this is the softmax of the logits; otherwise
    it is the official ensemble's scores divided by their sum over classes.
    """
    return ops.softmax(ops.cast(log_scores, "float32"), axis=-1)
