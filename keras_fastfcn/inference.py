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
"""

import contextlib
import dataclasses
import math
import os
import warnings
import weakref
from typing import List, Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from keras_fastfcn._keras_private import is_functional
from keras_fastfcn.layers.resize import log_add_exp, log_resize_bilinear, resize_bilinear

MODES = ("whole", "slide")
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
# The largest network input (height x width) `keras-fastfcn predict` runs and a
# SavedModel accepts by default: 2048 x 2048. A ResNet-50 FastFCN at that size peaks
# at a few GB; a 100-megapixel photo run whole would need tens (README: "Large images").
MAX_PIXELS = 2048 * 2048
STRIDE_RATE = 2.0 / 3.0

# --------------------------------------------------------------------------- model


def logits_model(model):
    """The logits-only functional model of `model`.

    A `FastFCNImageSegmenter` (whose graph also holds the training-only outputs)
    and any functional model with dict outputs are reduced to their `"logits"`
    (sharing layers and weights); any other model is returned as is.
    """
    try:
        output = model.output
    except (AttributeError, ValueError):  # a subclassed model has no symbolic output
        output = None
    if isinstance(output, dict):
        if "logits" not in output:
            raise ValueError(f"Model {model.name!r} has dict outputs without a 'logits' entry.")
        return keras.Model(model.input, output["logits"], name=f"{model.name}_logits")
    return model


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What prediction, evaluation and export need to know about a segmentation model."""

    num_classes: Optional[int]  # None: an export that did not record it
    class_names: Optional[List[str]]
    dataset: Optional[str]
    align_corners: bool


def model_info(model):
    """`ModelInfo` of any Keras model mapping images `(B, H, W, 3)` to logits `(B, H, W, C)`.

    keras_fastfcn models carry their class names and dataset; for other models (e.g.
    one a user built around `keras_fastfcn.layers.JPU`) the number of classes is read
    off the output shape and the names are None.

    Raises:
        ValueError: the model does not take `(B, H, W, 3)` images or does not return
            `(B, H, W, C)` logits with a known C.
    """
    net = logits_model(model)
    in_shape = tuple(getattr(net, "input_shape", ()) or ())
    out_shape = tuple(getattr(net, "output_shape", ()) or ())
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise ValueError(f"Model {model.name!r} takes inputs of shape {in_shape}; a segmentation "
                         "model must take RGB images (batch, height, width, 3).")
    if len(out_shape) != 4 or out_shape[-1] is None:
        raise ValueError(f"Model {model.name!r} returns shape {out_shape}; a segmentation model "
                         "must return logits (batch, height, width, num_classes).")
    num_classes = int(getattr(model, "num_classes", None) or out_shape[-1])
    names = getattr(model, "class_names", None)
    return ModelInfo(num_classes=num_classes, class_names=list(names) if names else None,
                     dataset=getattr(model, "dataset", None),
                     align_corners=bool(getattr(model, "align_corners", True)))


# What `jit_compile` may be: off, the whole forward as one XLA cluster, or "parts".
JIT_OPTIONS = (False, True, "parts")


def _check_jit(jit_compile):
    if not (isinstance(jit_compile, bool) or jit_compile == "parts"):
        raise ValueError(f"Unknown jit_compile {jit_compile!r}: expected one of {JIT_OPTIONS}.")
    return jit_compile


def _is_xla_part(layer):
    """Whether `xla_parts` compiles top-level `layer` with XLA."""
    from keras_fastfcn.layers import JPU, JPUX

    if isinstance(layer, (keras.layers.InputLayer, JPU, JPUX)):
        return False
    # XLA's CPU code for 16-bit types is slower than TensorFlow's kernels: its
    # convolutions miss oneDNN's AMX / AVX512-BF16 ones (bf16 EncNet R50 on an AMX
    # Xeon: 0.28-0.30 s with XLA for the backbone and head, 0.15-0.17 s without) and
    # even the bf16 input normalization lost 20 ms as a cluster; the float32 logits
    # resize gains (64 -> 512 px, 59 classes: 3.0 ms against 16 ms), so under a mixed
    # policy only float32 parts compile.
    from keras_fastfcn._keras_private import all_layers

    return not any(sub.compute_dtype in ("bfloat16", "float16")
                   for sub in [layer] + all_layers(layer))


@contextlib.contextmanager
def xla_parts(model):
    """While a `tf.function` is traced inside it: every top-level part of `model`
    but the JPU / JPUX runs as its own XLA cluster, the JPU by TensorFlow's kernels;
    under a 16-bit policy (`keras_fastfcn.precision`) only the parts that compute in
    float32 (the final resize of the logits) compile.

    Why: on CPU, TensorFlow's oneDNN kernels run the JPU's dilated depthwise convs
    4-5x faster than XLA does (0.18 s vs 0.84 s for JPU width 512 at 64x64 on 2
    cores), while XLA runs the big stride-8 heads faster (ASPP 0.41 s vs 0.70 s,
    PSP 0.37 s vs 0.63 s) and fuses the gathers and blends of a bilinear resize into
    one pass. One setting for the whole graph leaves one of them slow;
    `benchmarks/RESULTS.md` measures both against this mixed form. The model
    is only patched during the trace: the traced function keeps the clusters, the
    layers are restored on exit.

    Args:
        model: a functional Keras model (a FastFCN or its `logits_model`).

    Example:
    >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=32)
    >>> fn = tf.function(lambda x: model(x, training=False))
    >>> with xla_parts(model):
    ...     traced = fn.get_concrete_function(tf.TensorSpec((1, 64, 64, 3)))
    """
    import tensorflow as tf

    layers = getattr(model, "layers", ())
    if not layers:
        raise ValueError(f"xla_parts needs a functional model with layers, got {model!r}.")
    parts = [layer for layer in layers if _is_xla_part(layer)]
    if not parts:
        raise ValueError(f"xla_parts found nothing to compile in {model.name!r}: every "
                         "top-level layer is a JPU or computes in 16 bits (use "
                         "jit_compile=False or True).")
    saved = [(layer, layer.__dict__.get("call")) for layer in parts]
    try:
        for layer in parts:
            # An instance attribute shadows the method: Layer.__call__ looks up self.call.
            layer.call = tf.function(layer.call, jit_compile=True, autograph=False)
        yield model
    finally:
        for layer, original in saved:
            if original is None:
                layer.__dict__.pop("call", None)
            else:
                layer.__dict__["call"] = original


def load_model(path):
    """Loads a segmentation model from a `.keras` file, with a clear error otherwise.

    Any Keras model mapping `(B, H, W, 3)` images to `(B, H, W, C)` logits is accepted
    (a keras_fastfcn model, a 0.1 `FastFCN` file, or a model of your own).

    Args:
        path: path of a `.keras` file written by `model.save`.

    Returns:
        The model (not compiled).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a Keras model, or not a segmentation model.

    Example:
    >>> model = load_model("model.keras")  # doctest: +SKIP
    """
    import zipfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a .keras model file.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a Keras model file (.keras, a zip archive written by model.save)."
        )
    import keras_fastfcn.models  # noqa: F401  (registers the classes)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for foreign or broken files.
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Could not load {path} as a Keras model: {first_line}") from err
    try:
        model_info(model)
    except ValueError as err:
        raise ValueError(f"{path} is not a segmentation model: {err}") from None
    return model


# ------------------------------------------------------------------- size helpers


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


def _check_scales(scales):
    scales = tuple(float(s) for s in scales)
    if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}.")
    return scales


# --------------------------------------------------------------------- the scores


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


class _CompiledForward:
    """`model(x, training=False)` through Keras' compiled `predict_on_batch`.

    On JAX and PyTorch there is no `tf.function` to trace the model into; Keras' own
    predict step (XLA-compiled per input shape on JAX) runs the forward, and the
    cheap resizes and sums around it run eagerly.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x, training=False):
        return ops.convert_to_tensor(self.model.predict_on_batch(x))


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
    >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=64)
    >>> multiscale_log_scores(model, tf.zeros((1, 64, 80, 3)), (0.5, 1.0), flip=True).shape
    TensorShape([1, 64, 80, 3])
    """
    scales = _check_scales(scales)
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    static = isinstance(height, int) and isinstance(width, int)
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


def normalize_scores(log_scores):
    """Per-pixel distribution of log-scores (softmax over the class axis).

    For a single scale without flip this is the softmax of the logits; otherwise
    it is the official ensemble's scores divided by their sum over classes.
    """
    return ops.softmax(ops.cast(log_scores, "float32"), axis=-1)


def trace(fn, spec, model, jit_compile=False, freeze=False):
    """`fn` (images -> tensors, calling `model`) as one TensorFlow graph for inputs
    `spec`, the way a `Predictor` runs it.

    Args:
        fn: the function to trace.
        spec: a `tf.TensorSpec` of its one argument.
        model: the Keras model `fn` calls (patched by `xla_parts` for `"parts"`).
        jit_compile: `False`, `True` (one XLA cluster) or `"parts"` (`xla_parts`).
        freeze: the model's weights become constants of the graph, taken now: later
            weight changes are not seen. Faster on CPU: grappler folds the 16-bit
            casts of a mixed-precision model and oneDNN keeps each filter in its own
            layout (`keras-fastfcn benchmark --freeze`, EncNet R50 at 512 px, BN
            folded, AMX Xeon: fp32 0.518 -> 0.373 s, bf16 0.143 -> 0.107 s; two runs
            one after the other). The graph holds its own copy of the weights (about
            1.3 GB more resident memory for EncNet R50, oneDNN's filters included;
            3 GB more at the peak, while freezing).

    Returns:
        A callable on tensors (or arrays) matching `spec`.

    Example:
    >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=32)
    >>> fast = trace(lambda x: model(x, training=False),
    ...              tf.TensorSpec((1, 64, 64, 3)), model, freeze=True)
    >>> fast(tf.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 64, 64, 3])
    """
    import tensorflow as tf

    traced = tf.function(fn, input_signature=[spec], jit_compile=jit_compile is True,
                         autograph=False)
    if jit_compile == "parts":
        with xla_parts(model):
            concrete = traced.get_concrete_function()  # traced while the parts are patched
    else:
        concrete = traced.get_concrete_function()
    if not freeze:
        return traced
    from keras_fastfcn import _keras_private

    try:
        frozen = _keras_private.freeze_function(concrete)
    except ImportError as err:  # a TensorFlow without the private hook: still correct
        warnings.warn(f"Cannot freeze the inference graph ({err}); it reads the weights "
                      "as variables (slower). See keras_fastfcn/_keras_private.py.",
                      stacklevel=2)
        return traced
    structure = concrete.structured_outputs
    # Wrapped again: the frozen function lost the outer jit_compile, and alone it
    # binds neither numpy inputs nor checks their shape against `spec`.
    return tf.function(lambda images: tf.nest.pack_sequence_as(structure, frozen(images)),
                       input_signature=[spec], jit_compile=jit_compile is True,
                       autograph=False)


# How many input shapes a `Predictor` traces for exactly; every other shape runs
# through one trace with dynamic batch, height and width. Of those, how many hold
# frozen weights with `freeze=True` (each holds its own copy: about 1.3 GB more
# resident memory for EncNet R50, weights and oneDNN's reordered filters).
STATIC_SHAPES = 8
FROZEN_SHAPES = 1


class _TracedGraph:
    """`graph` as TensorFlow functions (`trace`): one trace with dynamic (B, H, W) for
    any input, and, from the second time an input shape is seen, one trace for that
    shape (at most `STATIC_SHAPES` of them; with `freeze`, the first `FROZEN_SHAPES`
    of them freeze the weights).

    Why per shape: with static shapes grappler folds the resize indices and fuses more,
    and frozen weights let it fold the 16-bit casts and oneDNN keep its filter layouts
    (EncNet R50, 512 px, BN folded, AMX Xeon, paired: bf16 with XLA parts 166 ms
    dynamic, 146 static, 99 static and frozen; fp32 547, 524, 461 ms). Why only from
    the second sighting: a trace costs seconds, which a shape seen once (a dataset of
    many image sizes) would not win back; a dataset of one size, or the slide mode's
    windows, pays two traces. The dynamic trace is never frozen: it serves the shapes
    seen once, where a frozen copy of the weights would not pay for its memory.
    Plain Python loops over static scales/windows: no autograph.
    """

    def __init__(self, graph, model, jit_compile, freeze=False):
        self.graph, self.model, self.jit_compile = graph, model, jit_compile
        self.freeze = freeze
        self.traces = {}  # input shape (None: the dynamic one) -> traced callable
        self._seen = set()
        self._frozen = 0

    def _trace(self, shape):
        import tensorflow as tf

        freeze = self.freeze and None not in shape and self._frozen < FROZEN_SHAPES
        self._frozen += freeze
        return trace(self.graph, tf.TensorSpec(shape, tf.float32), self.model,
                     self.jit_compile, freeze)

    def __call__(self, images):
        shape = tuple(int(d) for d in images.shape)
        if shape not in self.traces:
            if shape in self._seen and len(self.traces) - (None in self.traces) < STATIC_SHAPES:
                self.traces[shape] = self._trace(shape)
            else:
                self._seen.add(shape)
                shape = None
                if None not in self.traces:
                    self.traces[None] = self._trace((None, None, None, 3))
        return self.traces[shape](images)


class Predictor:
    """Compiled full-size predictor: whole image or sliding window, MS and flip.

    Build one per model and option set and call it on batches. On TensorFlow the model
    forward is traced once (`tf.function` with dynamic shapes) and reused for every
    image size; on JAX and PyTorch it runs through Keras' compiled `predict_on_batch`
    (XLA per input shape on JAX) with the same arithmetic around it. `predict()`
    caches one per model.

    Args:
        model: a `keras_fastfcn.FastFCN` (or any Keras model mapping 0-255 RGB
            `(B, H, W, 3)` to logits `(B, H, W, C)` at the input size).
        mode: `"whole"` or `"slide"` (see the module docstring).
        scales: resize factors of `base_size`; `MS_SCALES` is the official set.
        flip: bool, add horizontally mirrored predictions.
        crop_size: window size for `"slide"` (required there; official 480).
        base_size: long side at scale 1.0; None = each image's own long side.
        align_corners: resize semantics; None takes the model's `align_corners`
            (True for FastFCN, as the official code).
        pad_value: raw RGB padding colour for `"slide"` (default 0, black: the
            official `-mean / std` padding of normalized images).
        jit_compile: `False`; `True`, the model forward as one XLA cluster (per input
            shape; useful in `"slide"` mode on GPU, where every window has the same
            shape); or `"parts"`, XLA for the backbone and head but not the JPU
            (`xla_parts`, the fastest on CPU for the PSP and DeepLab heads).
            TensorFlow only: on JAX the forward is always XLA-compiled.
        fold_batchnorm: run an inference copy of `model` with its BatchNorms folded
            into the convolutions (`keras_fastfcn.serving.fold.fold_batchnorm`; same
            outputs up to float rounding). Faster, most of all under bf16 (EncNet R50
            at 512 px on an AMX Xeon: 0.32 s -> 0.18 s), but the predictor then holds
            the weights of the moment it was built: leave it off for a model that is
            still training. A model that is not functional is used as is.
        freeze: TensorFlow only: the static-shape trace of the first repeated input
            shape (`FROZEN_SHAPES`) holds the weights as constants, taken when it is
            traced (`trace(freeze=True)`). Faster per image (bf16 EncNet R50, BN
            folded, XLA parts, 360x480, AMX Xeon: 115 -> 72 ms) after a one-off cost
            (about 8 s more tracing and 3 GB more peak resident memory for EncNet
            R50): it pays from a few hundred images of one size on. `__call__` and
            `class_map` trace separate graphs, so using both freezes two copies.

    Example:
    >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=64)
    >>> predictor = Predictor(model, mode="slide", crop_size=48, flip=True)
    >>> predictor(np.zeros((1, 64, 96, 3), "uint8")).shape
    TensorShape([1, 64, 96, 3])
    """

    def __init__(self, model: keras.Model, mode: str = "whole",
                 scales: Sequence[float] = (1.0,), flip: bool = False,
                 crop_size: Optional[int] = None, base_size: Optional[int] = None,
                 align_corners: Optional[bool] = None, pad_value: float = 0.0,
                 jit_compile: Union[bool, str] = False, fold_batchnorm: bool = False,
                 freeze: bool = False):
        if mode not in MODES:
            raise ValueError(f"Unknown inference mode {mode!r}: expected one of {MODES}.")
        self.scales = _check_scales(scales)
        if mode == "slide":
            if crop_size is None:
                raise ValueError("mode='slide' needs crop_size (the window size, e.g. 480).")
            crop_size = int(crop_size)
            if crop_size < 2:
                raise ValueError(f"crop_size must be >= 2, got {crop_size}.")
        if base_size is not None:
            base_size = int(base_size)
            if base_size < 1:
                raise ValueError(f"base_size must be a positive int or None, got {base_size}.")
        self.model = logits_model(model)
        self.fold_batchnorm = bool(fold_batchnorm) and is_functional(self.model)
        if self.fold_batchnorm:
            from keras_fastfcn.serving.fold import fold_batchnorm as fold

            self.model = fold(self.model)
        self.mode = mode
        self.flip = bool(flip)
        self.crop_size = crop_size
        self.base_size = base_size
        if align_corners is None:
            align_corners = model_info(model).align_corners
        self.align_corners = bool(align_corners)
        self.pad_value = tuple(float(v) for v in np.broadcast_to(pad_value, (3,)))
        self.jit_compile = _check_jit(jit_compile)
        self.freeze = bool(freeze) and keras.config.backend() == "tensorflow"
        self._net = self.model
        graph = self._whole_graph if mode == "whole" else self._forward_graph
        self._whole_classes = None
        if keras.config.backend() == "tensorflow":
            fn = _TracedGraph(graph, self.model, self.jit_compile, self.freeze)
            if mode == "whole":
                self._whole_classes = _TracedGraph(self._whole_class_graph, self.model,
                                                   self.jit_compile, self.freeze)
        else:
            self._net = _CompiledForward(self.model)
            fn = graph
        if mode == "whole":
            self._whole = fn
        else:
            self._forward = fn

    def settings(self):
        """The options as a JSON-ready dict (stored in evaluation reports)."""
        return {"mode": self.mode, "scales": list(self.scales), "flip": self.flip,
                "crop_size": self.crop_size if self.mode == "slide" else None,
                "base_size": self.base_size, "jit_compile": self.jit_compile,
                "fold_batchnorm": self.fold_batchnorm, "freeze": self.freeze}

    def describe(self):
        """One line naming the settings (printed by the CLI)."""
        text = f"mode={self.mode} scales={list(self.scales)} flip={self.flip}"
        if self.mode == "slide":
            text += f" crop_size={self.crop_size}"
        text += f" base_size={self.base_size or 'image'}"
        return text + " freeze" if self.freeze else text

    def _whole_graph(self, images):
        return multiscale_log_scores(self._net, images, self.scales, self.flip,
                                     self.base_size, self.align_corners)

    def _whole_class_graph(self, images):
        import tensorflow as tf  # traced only on TensorFlow (`_TracedGraph`)

        # tf.math.argmax, not keras.ops.argmax: on TensorFlow the latter adds five
        # element-wise passes over the scores (its -0.0 < +0.0 rule) before ArgMax.
        return tf.math.argmax(self._whole_graph(images), axis=-1, output_type=tf.int32)

    def _forward_graph(self, windows):
        return _logits_with_flip(self._net, windows, self.flip)

    def __call__(self, images):
        """Log-scores `(B, H, W, C)` (float32 backend tensor) at the input size (module
        docstring).

        Args:
            images: `(B, H, W, 3)` or one `(H, W, 3)` image (a batch axis is added
                and removed again), uint8 or float 0-255 RGB: numpy or any backend's
                tensor.
        """
        images, single = self._check_images(images)
        scores = self._scores(images)
        return scores[0] if single else scores

    def class_map(self, images):
        """The class map `(B, H, W)` int32 (numpy): the argmax of `__call__`'s log-scores.

        On TensorFlow in whole-image mode the argmax runs inside the traced graph, so the
        `(B, H, W, C)` float scores never leave it: for 59 classes at 512x512 that is a
        62 MB array whose numpy argmax alone took 20 ms (13% of a bf16 forward on an
        AMX Xeon). Elsewhere (slide mode, JAX, PyTorch) numpy takes the argmax of the
        returned scores. What `keras-fastfcn predict` and `evaluate` use.

        Args:
            images: as `__call__`.

        Example:
        >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=64)
        >>> Predictor(model).class_map(np.zeros((1, 64, 96, 3), "uint8")).shape
        (1, 64, 96)
        """
        images, single = self._check_images(images)
        if self._whole_classes is not None:
            classes = ops.convert_to_numpy(self._whole_classes(images))
        else:
            classes = np.argmax(ops.convert_to_numpy(self._scores(images)),
                                axis=-1).astype(np.int32)
        return classes[0] if single else classes

    def _scores(self, images):
        return self._whole(images) if self.mode == "whole" else self._slide(images)

    def _check_images(self, images):
        images = ops.convert_to_numpy(images) if ops.is_tensor(images) else np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be (batch, height, width, 3) RGB, got shape {tuple(images.shape)}.")
        if images.dtype.kind not in "iuf":
            raise ValueError(f"images must be numeric 0-255 RGB, got dtype {images.dtype}.")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}.")
        return images.astype(np.float32), single

    # ------------------------------------------------------------------ slide

    def _pad(self, images, height, width):
        """Pads `images` at the bottom/right to (height, width) with the pad colour."""
        pad_h = height - images.shape[1]
        pad_w = width - images.shape[2]
        if pad_h <= 0 and pad_w <= 0:
            return images
        colour = np.asarray(self.pad_value, np.float32)
        # Pad (x - colour) with zeros, then add the colour back: a per-channel pad value.
        shifted = ops.pad(images - colour, [[0, 0], [0, max(pad_h, 0)], [0, max(pad_w, 0)],
                                            [0, 0]])
        return shifted + colour

    def _slide_scale(self, images, height, width):
        """One scale of the official evaluator: log-scores (B, height, width, C)."""
        crop = self.crop_size
        batch = images.shape[0]
        if max(height, width) <= crop:
            return self._forward(self._pad(images, crop, crop))[:, :height, :width]

        stride = int(crop * STRIDE_RATE)
        # Official: pad the short side to the crop size if it is smaller.
        ph, pw = max(height, crop), max(width, crop)
        rows = int(math.ceil(1.0 * (ph - crop) / stride)) + 1
        cols = int(math.ceil(1.0 * (pw - crop) / stride)) + 1
        # Windows that overhang (ph, pw) are padded in the official code; padding the
        # whole image to the grid's extent once gives the same windows.
        grid_h, grid_w = (rows - 1) * stride + crop, (cols - 1) * stride + crop
        padded = self._pad(images, grid_h, grid_w)
        origins = [(r * stride, c * stride) for r in range(rows) for c in range(cols)]
        windows = ops.concatenate(
            [padded[:, y:y + crop, x:x + crop] for y, x in origins], axis=0)  # window-major
        z = ops.convert_to_numpy(self._forward(windows))  # (n * B, crop, crop, C)
        num_classes = z.shape[-1]
        z = z.reshape((len(origins), batch, crop, crop, num_classes))

        # Official count_norm counts each window over [h0, min(h0 + crop, ph)); the
        # result is then cut to (height, width), so only that region matters.
        count = np.zeros((grid_h, grid_w), np.float32)
        for y, x in origins:
            count[y:min(y + crop, ph), x:min(x + crop, pw)] += 1
        assert (count[:height, :width] > 0).all()

        # The official average of exp(z) over the windows covering a pixel, as a
        # log-sum-exp: per pixel and class, shift by the largest window logit there,
        # so every exponential is at most 1 and their sum at least 1. On the host in
        # numpy: a handful of windows, and the same on every backend.
        canvas_shape = (batch, grid_h, grid_w, num_classes)
        peak = np.full(canvas_shape, -np.inf, np.float32)
        for k, (y, x) in enumerate(origins):
            view = peak[:, y:y + crop, x:x + crop]
            np.maximum(view, z[k], out=view)
        total = np.zeros(canvas_shape, np.float32)
        for k, (y, x) in enumerate(origins):
            total[:, y:y + crop, x:x + crop] += np.exp(z[k] - peak[:, y:y + crop, x:x + crop])
        log_scores = peak + np.log(total) - np.log(np.maximum(count, 1.0))[None, :, :, None]
        return ops.convert_to_tensor(log_scores[:, :height, :width])

    def _slide(self, images):
        in_h, in_w = images.shape[1], images.shape[2]
        acc = None
        for scale in self.scales:
            height, width = scaled_size(in_h, in_w, scale, self.base_size)
            if (height, width) == (in_h, in_w):
                current = images
            else:
                current = resize_bilinear(images, (height, width), self.align_corners)
            term = self._slide_scale(current, height, width)
            if (height, width) != (in_h, in_w):
                term = log_resize_bilinear(term, (in_h, in_w), self.align_corners)
            acc = _add_scale(acc, term)
        return acc


_PREDICTORS = weakref.WeakKeyDictionary()


def predict(model: keras.Model, images, mode: str = "whole", scales: Sequence[float] = (1.0,),
            flip: bool = False, crop_size: Optional[int] = None,
            base_size: Optional[int] = None, **kwargs):
    """Log-scores `(B, H, W, C)` of full-size images (see the module docstring).

    A convenience around `Predictor`, cached per model and options, so calling it in
    a loop does not retrace.

    Args:
        model: a `keras_fastfcn.FastFCN` (or compatible Keras model).
        images: `(B, H, W, 3)` or `(H, W, 3)` 0-255 RGB, uint8 or float.
        mode: `"whole"` or `"slide"`.
        scales: resize factors of `base_size` (`MS_SCALES` for the official MS).
        flip: add horizontally mirrored predictions.
        crop_size: window size (required for `"slide"`).
        base_size: long side at scale 1.0 (None: the image's own).
        **kwargs: more `Predictor` options (`align_corners`, `pad_value`,
            `jit_compile`).

    Returns:
        float32 backend tensor of log-scores (the logits themselves for one scale
        without flip); `argmax(log_scores, -1)` is the class map and
        `normalize_scores(log_scores)` the per-pixel probabilities.

    Example:
    >>> model = keras_fastfcn.FastFCN(3, head="fcn", jpu_width=64)
    >>> scores = predict(model, np.zeros((1, 64, 80, 3)), scales=MS_SCALES, flip=True)
    >>> tf.argmax(scores, -1).shape
    TensorShape([1, 64, 80])
    """
    key = (mode, tuple(float(s) for s in scales), bool(flip), crop_size, base_size,
           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    try:
        cache = _PREDICTORS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    if key not in cache:
        cache[key] = Predictor(model, mode=mode, scales=scales, flip=flip, crop_size=crop_size,
                               base_size=base_size, **kwargs)
    return cache[key](images)
