"""`Predictor`: whole-image or sliding-window prediction, multi-scale and flip, of a
segmentation model (the official evaluator, or mmsegmentation's test:
`keras_fastfcn.inference.ensemble`), and `predict`, its one-call form."""

import math
import weakref
from typing import Optional, Sequence, Tuple, Union

import keras
import numpy as np
from keras import ops

from keras_fastfcn._keras_private import is_functional
from keras_fastfcn.layers.resize import log_resize_bilinear, resize_bilinear

from keras_fastfcn.inference.prepare import prepare
from keras_fastfcn.inference.ensemble import (MAX_PIXELS, MODES, PROTOCOLS, STRIDE_RATE,
                                              _add_scale, _check_scales, _logits_with_flip,
                                              check_network_input, mmseg_log_scores,
                                              multiscale_log_scores, scaled_size)
from keras_fastfcn.inference.tracing import _check_jit, _CompiledForward, _TracedGraph
from keras_fastfcn.models.segmentation_model import logits_model, model_info

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
            (True for the authors' FastFCN, False for mmsegmentation's); for a model
            without one, True (official protocol) or False (`"mmseg"`).
        pad_value: raw RGB padding colour for `"slide"` (default 0, black: the
            official `-mean / std` padding of normalized images).
        jit_compile: `False`; `True`, the model forward as one XLA cluster (per input
            shape; useful in `"slide"` mode on GPU, where every window has the same
            shape); or `"parts"`, XLA for the backbone and head but not the JPU
            (`xla_parts`, the fastest on CPU for the PSP and DeepLab heads).
            TensorFlow only: on JAX the forward is always XLA-compiled.
        fold_batchnorm: run an inference copy of `model` with its BatchNorms folded
            into the convolutions (`keras_fastfcn.inference.fold.fold_batchnorm`; same
            outputs up to float rounding). Faster, most of all under bf16 (EncNet R50
            at 512 px on an AMX Xeon: 0.32 s -> 0.18 s), but the predictor then holds
            the weights of the moment it was built: leave it off for a model that is
            still training. A model that is not functional is used as is.
        precision: `"fp32"`, `"bf16"` or `"fp16"`: run a copy rebuilt under that Keras
            mixed precision (`keras_fastfcn.precision.with_precision`).
        freeze: TensorFlow only: the static-shape trace of the first repeated input
            shape (`FROZEN_SHAPES`) holds the weights as constants, taken when it is
            traced (`trace(freeze=True)`). Faster per image (bf16 EncNet R50, BN
            folded, XLA parts, 360x480, AMX Xeon: 115 -> 72 ms) after a one-off cost
            (about 8 s more tracing and 3 GB more peak resident memory for EncNet
            R50): it pays from a few hundred images of one size on. `__call__` and
            `class_map` trace separate graphs, so using both freezes two copies.
        protocol: `"official"` (the authors' evaluator: the options above) or
            `"mmseg"` (mmsegmentation's test and MS+flip test, the protocol of the
            numbers it reports for its models: whole images resized to fit
            `keep_ratio_fit`, softmaxes of scales and mirrors averaged; module
            docstring of `inference.ensemble`). `keras-fastfcn evaluate/predict
            --model PRESET` take it from the preset.
        keep_ratio_fit: `"mmseg"` only: `(long, short)` bounds each image is resized
            to fit, aspect kept, as mmcv rounds (`ensemble.keep_ratio_size`):
            `(2048, 1024)` for Cityscapes, `(2048, 512)` for ADE20K; None: each
            image's own size. The scales multiply the bounds.
        max_pixels: the largest network input (height x width) it runs: per scale
            the resized image, in `"slide"` mode that image padded to at least
            `crop_size` on each side (as the official evaluator pads it; every
            window is `crop_size x crop_size`). A call that would build a larger
            one raises a ValueError naming the option, the size and the budget,
            before any model work (`check_network_input`). Default `MAX_PIXELS`
            (2048 x 2048), as a SavedModel; None: no limit.

    Example:
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> predictor = Predictor(model, mode="slide", crop_size=48, flip=True)
    >>> predictor(np.zeros((1, 64, 96, 3), "uint8")).shape
    TensorShape([1, 64, 96, 3])
    """

    def __init__(self, model: keras.Model, mode: str = "whole",
                 scales: Sequence[float] = (1.0,), flip: bool = False,
                 crop_size: Optional[int] = None, base_size: Optional[int] = None,
                 align_corners: Optional[bool] = None, pad_value: float = 0.0,
                 jit_compile: Union[bool, str] = False, fold_batchnorm: bool = False,
                 precision: str = "fp32", freeze: bool = False,
                 max_pixels: Optional[int] = MAX_PIXELS, protocol: str = "official",
                 keep_ratio_fit: Optional[Tuple[int, int]] = None):
        if mode not in MODES:
            raise ValueError(f"Unknown inference mode {mode!r}: expected one of {MODES}.")
        self.protocol, self.keep_ratio_fit = _check_protocol(protocol, keep_ratio_fit, mode,
                                                             base_size)
        self.scales = _check_scales(scales)
        if mode == "slide":
            if crop_size is None:
                raise ValueError("mode='slide' needs crop_size (the window size, e.g. 480).")
            # 2: the window stride, int(2/3 * crop_size), must be at least 1.
            crop_size = _whole_number(crop_size, "crop_size", 2)
        if base_size is not None:
            base_size = _whole_number(base_size, "base_size", 1)
        self.max_pixels = None if max_pixels is None else _whole_number(max_pixels,
                                                                        "max_pixels", 1)
        pad_value = np.broadcast_to(np.asarray(pad_value, np.float64), (3,))
        if not np.isfinite(pad_value).all():
            raise ValueError(f"pad_value must be finite, got {pad_value.tolist()}.")
        self.model = logits_model(model)
        self.fold_batchnorm = bool(fold_batchnorm) and is_functional(self.model)
        self.precision = precision
        if self.fold_batchnorm or precision != "fp32":
            # The model that runs, as every export and the benchmark prepare it.
            self.model, _ = prepare(model, fold_bn=self.fold_batchnorm, precision=precision)
        self.mode = mode
        self.flip = bool(flip)
        self.crop_size = crop_size
        self.base_size = base_size
        if align_corners is None and self.protocol == "mmseg":
            align_corners = getattr(model, "align_corners", False)  # mmsegmentation's default
        elif align_corners is None:
            align_corners = model_info(model).align_corners
        self.align_corners = bool(align_corners)
        self.pad_value = tuple(float(v) for v in pad_value)
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
        """The options as a JSON-ready dict (stored in evaluation reports); `protocol` and
        `keep_ratio_fit` only for `protocol="mmseg"` (reports without them are official)."""
        settings = {"mode": self.mode, "scales": list(self.scales), "flip": self.flip,
                    "crop_size": self.crop_size if self.mode == "slide" else None,
                    "base_size": self.base_size, "jit_compile": self.jit_compile,
                    "fold_batchnorm": self.fold_batchnorm, "precision": self.precision,
                    "freeze": self.freeze}
        if self.protocol == "mmseg":
            fit = list(self.keep_ratio_fit) if self.keep_ratio_fit else None
            settings.update(protocol=self.protocol, keep_ratio_fit=fit)
        return settings

    def describe(self):
        """One line naming the settings (printed by the CLI)."""
        text = f"mode={self.mode} scales={list(self.scales)} flip={self.flip}"
        if self.protocol == "mmseg":
            fit = "x".join(map(str, self.keep_ratio_fit)) if self.keep_ratio_fit else "image"
            text = f"protocol=mmseg {text} keep_ratio_fit={fit}"
        else:
            if self.mode == "slide":
                text += f" crop_size={self.crop_size}"
            text += f" base_size={self.base_size or 'image'}"
        return text + " freeze" if self.freeze else text

    def _whole_graph(self, images):
        if self.protocol == "mmseg":
            return mmseg_log_scores(self._net, images, self.scales, self.flip,
                                    self.keep_ratio_fit, self.align_corners)
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
        >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
        ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
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
        if 0 in images.shape:
            raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}.")
        check_network_input(images.shape[1], images.shape[2], self.scales, self.base_size,
                            self.mode, self.crop_size, self.max_pixels,
                            protocol=self.protocol, keep_ratio_fit=self.keep_ratio_fit)
        dtype = images.dtype
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, below
            images = images.astype(np.float32, copy=False)
        # Integers are always finite: only floats pay for the one pass.
        if dtype.kind == "f" and not np.isfinite(images).all():
            inf = "infinite" if dtype.itemsize <= 4 else "infinite (or beyond float32)"
            raise ValueError(
                f"images contain {int(np.isnan(images).sum())} NaN and "
                f"{int(np.isinf(images).sum())} {inf} value(s); the model needs finite "
                "0-255 RGB.")
        return images, single

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


def _whole_number(value, name, low):
    """`value` as an int >= `low`, else a ValueError naming `name`: `int()` alone would
    truncate 2.5, and raise OverflowError (not a ValueError) for inf."""
    try:
        number = int(value)
        whole = bool(number == value)  # not 2.5, nor a string
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or number < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}.")
    return number


def _check_protocol(protocol, keep_ratio_fit, mode, base_size):
    """`(protocol, keep_ratio_fit as a tuple of ints or None)`, or a ValueError naming
    the option that does not belong to the protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}: expected one of {PROTOCOLS}.")
    if protocol != "mmseg":
        if keep_ratio_fit is not None:
            raise ValueError("keep_ratio_fit belongs to protocol='mmseg' (its resize rule); "
                             "the official protocol resizes the long side to base_size * "
                             "scale.")
        return protocol, None
    if mode != "whole":
        raise ValueError("protocol='mmseg' predicts whole images (mmsegmentation tests its "
                         f"FastFCN models with mode='whole'), not mode={mode!r}.")
    if base_size is not None:
        raise ValueError("base_size is the official protocol's; protocol='mmseg' resizes "
                         "each image to fit keep_ratio_fit=(long, short).")
    if keep_ratio_fit is None:
        return protocol, None
    try:
        pair = tuple(keep_ratio_fit)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"keep_ratio_fit must be (long, short), e.g. (2048, 1024), got "
                         f"{keep_ratio_fit!r}.")
    return protocol, tuple(_whole_number(v, "keep_ratio_fit", 1) for v in pair)


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
        **kwargs: more `Predictor` options (`protocol`, `keep_ratio_fit`,
            `align_corners`, `pad_value`, `jit_compile`, `max_pixels`).

    Returns:
        float32 backend tensor of log-scores (the logits themselves for one scale
        without flip); `argmax(log_scores, -1)` is the class map and
        `normalize_scores(log_scores)` the per-pixel probabilities.

    Example:
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> scores = predict(model, np.zeros((1, 64, 80, 3)), scales=(0.75, 1.0), flip=True)
    >>> keras.ops.argmax(scores, -1).shape
    (1, 64, 80)
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
