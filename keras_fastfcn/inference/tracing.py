"""Tracing the inference graphs: `tf.function`s per input shape, XLA for the parts it
runs faster (`xla_parts`), and frozen weights (`trace(freeze=True)`); on JAX and
PyTorch, Keras' compiled predict step (`_CompiledForward`)."""

import contextlib
import warnings

import keras
from keras import ops

from keras_fastfcn import _keras_private
from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.layers import JPU, JPUX



# What `jit_compile` may be: off, the whole forward as one XLA cluster, or "parts".
JIT_OPTIONS = (False, True, "parts")


def _check_jit(jit_compile):
    if not (isinstance(jit_compile, bool) or jit_compile == "parts"):
        raise ValueError(f"Unknown jit_compile {jit_compile!r}: expected one of {JIT_OPTIONS}.")
    return jit_compile


def _is_xla_part(layer):
    """Whether `xla_parts` compiles top-level `layer` with XLA."""
    if isinstance(layer, (keras.layers.InputLayer, JPU, JPUX)):
        return False
    # XLA's CPU code for 16-bit types is slower than TensorFlow's kernels: its
    # convolutions miss oneDNN's AMX / AVX512-BF16 ones (bf16 EncNet R50 on an AMX
    # Xeon: 0.28-0.30 s with XLA for the backbone and head, 0.15-0.17 s without) and
    # even the bf16 input normalization lost 20 ms as a cluster; the float32 logits
    # resize gains (64 -> 512 px, 59 classes: 3.0 ms against 16 ms), so under a mixed
    # policy only float32 parts compile.
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
    the benchmark's `--xla` option times both against this mixed form. The model
    is only patched during the trace: the traced function keeps the clusters, the
    layers are restored on exit.

    Args:
        model: a functional Keras model (a FastFCN or its `logits_model`).

    Example:
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=32), num_classes=3, head="fcn")
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
    >>> model = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=32), num_classes=3, head="fcn")
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
