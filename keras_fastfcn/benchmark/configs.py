"""The benchmarked configurations (head x encoder x upsampler) as the models that run:\nrandom weights with trained-like BatchNorm statistics, prepared as predict runs them,\nand their FLOP counts."""


UPSAMPLERS = {  # name -> (FastFCN upsampler, output_stride)
    "jpu": ("jpu", None),
    "jpu_x": ("jpu_x", None),
    "os8": (None, 8),
    "os16": (None, 16),
    "os32": (None, 32),
}


HEADS = ("encnet", "psp", "deeplab", "fcn")


ENCODERS = ("resnet50", "resnet101")


def _build(head, encoder, upsampler, num_classes, seed=0):
    """The configuration's `FastFCNImageSegmenter`, random weights, with BatchNorm
    statistics such as a trained model has (`_trained_like_normalization`)."""
    from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter

    up, stride = UPSAMPLERS[upsampler]
    model = FastFCNImageSegmenter(
        FastFCNBackbone(encoder=encoder, upsampler=up, output_stride=stride),
        num_classes=num_classes, head=head)
    return _trained_like_normalization(model, seed)


def _trained_like_normalization(model, seed=0):
    """Gives every BatchNormalization of `model` random scales, offsets and moving
    statistics (seeded), as a trained model has, and returns `model`.

    Why: a fresh BatchNorm (gamma 1, beta 0, mean 0, variance 1) folds into a
    convolution with a zero bias, which TensorFlow's grappler drops, and with it the
    Conv + BiasAdd + ReLU (+ residual Add) fusions that a trained model gets. Timing
    fresh models timed a graph no user runs: on an AMX Xeon the frozen bf16 EncNet R50
    ran 138 ms (JPU) and 216 ms (OS8) fresh against 121 ms and 206 ms with these
    statistics. The values keep activations at a trained network's scale.
    """
    import keras
    import numpy as np

    from keras_fastfcn._keras_private import all_layers

    rng = np.random.RandomState(seed)
    draws = {"gamma": lambda n: rng.uniform(0.5, 1.0, n),
             "beta": lambda n: rng.normal(0.0, 0.1, n),
             "moving_mean": lambda n: rng.normal(0.0, 0.1, n),
             "moving_variance": lambda n: rng.uniform(0.8, 1.5, n)}
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            for attr, draw in draws.items():
                variable = getattr(layer, attr, None)  # None: center / scale off
                if variable is not None:
                    variable.assign(draw(tuple(variable.shape)).astype(variable.dtype))
    return model


def _params(seg):
    """Parameters of the encoder, the upsampler (JPU / JPU_X) and the head, as the
    official `test_fps_params.py` counts them."""
    return {"encoder": _count(seg.backbone.encoder),
            "upsampler": _count(seg.backbone.upsampler) if seg.backbone.upsampler else 0,
            "head": _count(seg.head_layer)}


def _deployed(segmenter, fold=True, precision="fp32"):
    """What predict and evaluate run (`inference.prepare`): the logits-only model (no
    auxiliary head or SE branch), with BatchNorm folded into the convolutions (`fold`)."""
    from keras_fastfcn.inference import prepare

    return prepare(segmenter, fold_bn=fold, precision=precision)[0]


def _count(layer):
    return int(sum(int(w.shape.num_elements() if hasattr(w.shape, "num_elements")
                       else _prod(w.shape)) for w in layer.weights))


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _flops(model, spec):
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    frozen = frozen_forward(model, spec)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
        opts = option_builder.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        stats = model_analyzer.profile(graph, options=opts)
    return float(stats.total_float_ops)


def frozen_forward(model, spec):
    """`model`'s inference forward on `spec` as a concrete function with its weights as
    constants (what the FLOP count and `benchmarks/profile_ops.py` read), logits cast
    to float32 as every inference path does."""
    import tensorflow as tf

    from keras_fastfcn._keras_private import freeze_function

    return freeze_function(tf.function(_float32_logits(model)).get_concrete_function(spec))


def _float32_logits(model):
    """`model`'s inference forward with its logits cast to float32, as every inference
    path does (a mixed-precision model's are 16-bit)."""
    from keras import ops

    return lambda x: ops.cast(model(x, training=False), "float32")
