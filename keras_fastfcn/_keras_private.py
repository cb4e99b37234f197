"""Every use of a private Keras (or TensorFlow) API in keras_fastfcn, in one place.

Keras and TensorFlow have no public equivalent for these; each is small, stable across
Keras 3.x so far, and checked by `tests/test_package.py::test_keras_private_hooks_still_exist`,
which fails loudly (naming the hook) when a Keras release changes one. `setup.py` pins
`keras` below the next minor version that has not been tested.

- `optimizer_variable_index`: a custom optimizer's `update_step` needs the index of
  its variable in the optimizer's slot lists (`momentums`); Keras' own optimizers
  use the same private `_get_variable_index`.
- `optimizer_built_variables`: the variables an optimizer was built for. A JAX step
  needs its slots 1:1 with the model's trainable variables (and no backend updates a
  variable it was not built for), so `FastFCNImageSegmenter.fit` rebuilds the
  optimizer when a layer was frozen or unfrozen since (Keras' own fix is "compile
  again", which loses the optimizer's state).
- `all_layers`: every layer nested in a model, sublayers of custom layers included
  (`Model.layers` stops at the first level of a custom layer such as the JPU); used to
  switch BatchNorm synchronization on for training and off for saving.
- `sublayers`: a layer's direct sublayers (one level of `all_layers`); the models
  save the layers frozen inside them by their paths through it.
- `is_functional`: whether a model is a functional graph (which `clone_model` can
  rebuild layer by layer) rather than a subclassed one; Keras has no public test.
- `replace_sublayer`: swaps a built layer's sublayer for another, in Keras's layer
  tracking too (built layers refuse new sublayers); the export rewrites of
  `keras_fastfcn.inference.fold` (BatchNorm folding, padded dilated convs, native
  resizes) use it on an inference copy.
- `patch_multiworker_fit`: works around keras-team/keras#20585, Keras 3's `fit`
  under `tf.distribute.MultiWorkerMirroredStrategy` (TensorFlow backend only).
- `logs_in_order`: a dict of logs as the list `evaluate` / `train_on_batch` return
  without `return_dict` (Keras' `_flatten_metrics_in_order`: the compiled metrics in
  compile order, then the other logs by name); the segmenter overrides those methods
  to check the labels first.
- `restored_epoch`: the epoch `keras.callbacks.BackupAndRestore` restored a `fit` to
  (the trainer's `_initial_epoch`, which its `on_train_begin` sets), so that the
  segmenter's per-fit learning-rate decay resumes where it stopped.
- `build_before_tracing`: the optimizer's slots and the compiled metrics' and losses'
  state, created before a training step is traced (Keras' `_symbolic_build`, from
  the model's input shapes). Keras does this itself under a `tf.distribute` strategy
  and on JAX and PyTorch; on TensorFlow without a strategy it leaves it to the first
  trace, where `tf.function` sees variables created and traces the step a second time
  without them (a small model's first `fit`: 8.9 s of CPU -> 6.3 s).
- `freeze_function`: a traced `tf.function` with its variables as constants of its
  graph (TensorFlow's `convert_variables_to_constants_v2`, which its own TFLite
  converter and tf2onnx use; the public API can save a function, not freeze it).
  `inference.trace(freeze=True)` uses it (`Predictor(freeze=True)`, `--freeze`, the
  benchmark); without it the graphs read the variables, with a warning.
"""

import functools

import keras

TESTED_KERAS = "3.15"


def optimizer_variable_index(optimizer, variable):
    """The index of `variable` in `optimizer`'s per-variable slot lists."""
    return optimizer._get_variable_index(variable)


def optimizer_built_variables(optimizer):
    """The trainable variables `optimizer` was built for ([] before it is built)."""
    return list(optimizer._trainable_variables) if optimizer.built else []


def logs_in_order(model, logs):
    """`logs` as the list Keras' `evaluate` / `*_on_batch` return without `return_dict`."""
    return model._flatten_metrics_in_order(logs)


def restored_epoch(model):
    """The epoch `BackupAndRestore` restored the current `fit` to, or None."""
    return getattr(model, "_initial_epoch", None)


def all_layers(model):
    """Every layer inside `model` (nested models and custom layers' sublayers), once."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def sublayers(layer):
    """The layers directly inside `layer` (a model's, or a custom layer's sublayers)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def is_functional(model):
    """Whether `model` is a functional Keras model (a graph of layers)."""
    return isinstance(model, keras.Model) and hasattr(model, "_run_through_graph")


def replace_sublayer(parent, attr, new):
    """Replaces the sublayer `parent.<attr>` by `new`, in Keras's tracking too, so the
    weight order is kept and no orphaned (unused, but saved) variables are left."""
    parent._tracker.replace_tracked_value("layers", getattr(parent, attr), new)
    setattr(parent, attr, new)


def build_before_tracing(model):
    """Creates the optimizer's slots and the compiled metrics' and losses' state that
    the first traced training step of `model` would otherwise create (and so be traced
    twice): TensorFlow without a distribution strategy only, where Keras defers them
    to that trace. The batch is symbolic: the model's input, and int32 masks of its
    shape without channels. (An evaluation step creates no variables: traced once.)"""
    if (keras.config.backend() != "tensorflow" or model._distribute_strategy is not None
            or not model.compiled):
        return  # Keras builds them itself before the first step (or asks for compile)
    images = model.inputs[0]
    masks = keras.KerasTensor(tuple(images.shape)[:-1], "int32")
    model._symbolic_build(data_batch=(images, masks, None))


def patch_multiworker_fit(model, sample_batch):
    """Makes `model.fit` work under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Two failures, both in Keras' TensorFlow trainer:
    1. Before the first step `fit` builds the model symbolically and
       `strategy.reduce`s a *distributed* input batch, which collective strategies
       refuse. The build only needs shapes: it is given one undistributed batch.
    2. Each step's logs (scalar losses and metrics) are reduced across workers with
       `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid
       reduction dimension 0"); scalars are reduced with `axis=None` instead.

    Args:
        model: the compiled model (built in the strategy's scope).
        sample_batch: one batch of the training data (not distributed).
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=sample_batch)

    model._maybe_symbolic_build = build

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_keras_fastfcn_patch", False):
        return

    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            def reduce(v):
                local = strategy.experimental_local_results(v)
                if local and local[0].shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_fastfcn_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def freeze_function(concrete):
    """`concrete` (a `tf.function`'s concrete function) with its variables replaced by
    constants holding their current values: a new concrete function, called with the
    same arguments, returning its outputs as a flat list.

    Constant weights let grappler fold what depends on them (the 16-bit casts of a
    mixed-precision model) and let oneDNN keep each filter in its own layout between
    calls instead of reordering it every call.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(concrete)


class _Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(2)

    def call(self, x):
        return self.inner(x)


def _replace_sublayer_works():
    """Swaps the sublayer of a built layer: the new one is tracked (its weights are
    the parent's) and the old one is gone."""
    holder = _Holder()
    holder(keras.ops.ones((1, 3)))
    new = keras.layers.Dense(2)
    new.build((1, 3))
    try:
        replace_sublayer(holder, "inner", new)
    except (AttributeError, ValueError):
        return False
    tracked = all_layers(holder)
    return (new in tracked and not any(layer is not new for layer in tracked)
            and len(holder.weights) == len(new.weights))


def check():
    """Raises `RuntimeError` naming every private hook this Keras (or TensorFlow) no
    longer has.

    Example:
    >>> check()  # silent on a tested Keras
    """
    missing = []
    if not hasattr(keras.optimizers.Optimizer, "_get_variable_index"):
        missing.append("keras.optimizers.Optimizer._get_variable_index")
    probe_optimizer = keras.optimizers.SGD()
    probe_optimizer.build([keras.Variable(1.0)])
    if len(getattr(probe_optimizer, "_trainable_variables", ())) != 1:
        missing.append("keras.optimizers.Optimizer._trainable_variables")
    if not hasattr(keras.Model, "_flatten_metrics_in_order"):
        missing.append("keras.Model._flatten_metrics_in_order")
    probe_model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    if getattr(probe_model, "_initial_epoch", "missing") == "missing":
        missing.append("keras.Model._initial_epoch (set by BackupAndRestore)")
    if not hasattr(keras.layers.Layer, "_flatten_layers"):
        missing.append("keras.layers.Layer._flatten_layers")
    probe = keras.Input((1,))
    if not is_functional(keras.Model(probe, keras.layers.Dense(1)(probe))):
        missing.append("keras.Model._run_through_graph (functional models)")
    if not _replace_sublayer_works():
        missing.append("keras.layers.Layer._tracker.replace_tracked_value")
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        if not hasattr(keras.Model, name):
            missing.append(f"keras.Model.{name}")
    if getattr(probe_model, "_distribute_strategy", "missing") == "missing":
        missing.append("keras.Model._distribute_strategy")
    if keras.config.backend() == "tensorflow":
        from keras.src.backend.tensorflow import trainer as tf_trainer

        for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker"):
            if not hasattr(tf_trainer, name):
                missing.append(f"keras.src.backend.tensorflow.trainer.{name}")
        try:
            from tensorflow.python.framework.convert_to_constants import (  # noqa: F401
                convert_variables_to_constants_v2,
            )
        except ImportError:
            missing.append("tensorflow.python.framework.convert_to_constants."
                           "convert_variables_to_constants_v2")
    if missing:
        versions = f"Keras {keras.__version__}"
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            versions += f" / TensorFlow {tf.__version__}"
        raise RuntimeError(
            f"{versions} changed private APIs keras_fastfcn relies on "
            f"(tested with Keras {TESTED_KERAS}): {', '.join(missing)}. See "
            "keras_fastfcn/_keras_private.py.")
