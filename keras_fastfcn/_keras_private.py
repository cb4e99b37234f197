"""Every use of a private Keras API in keras_fastfcn, in one place.

Keras has no public equivalent for these; each is small, stable across Keras 3.x so
far, and checked by `tests/test_package.py::test_keras_private_hooks_still_exist`, which fails loudly (naming the hook)
when a Keras release changes one. `setup.py` pins `keras` below the next minor
version that has not been tested.

- `optimizer_variable_index`: a custom optimizer's `update_step` needs the index of
  its variable in the optimizer's slot lists (`momentums`); Keras' own optimizers
  use the same private `_get_variable_index`.
- `all_layers`: every layer nested in a model, sublayers of custom layers included
  (`Model.layers` stops at the first level of a custom layer such as the JPU); used to
  switch BatchNorm synchronization on for training and off for saving.
- `patch_multiworker_fit`: works around keras-team/keras#20585, Keras 3's `fit`
  under `tf.distribute.MultiWorkerMirroredStrategy` (TensorFlow backend only).
"""

import functools

import keras

TESTED_KERAS = "3.15"


def optimizer_variable_index(optimizer, variable):
    """The index of `variable` in `optimizer`'s per-variable slot lists."""
    return optimizer._get_variable_index(variable)


def all_layers(model):
    """Every layer inside `model` (nested models and custom layers' sublayers), once."""
    return list(model._flatten_layers(include_self=False, recursive=True))


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


def check():
    """Raises `RuntimeError` naming every private hook this Keras no longer has.

    Example:
    >>> check()  # silent on a tested Keras
    """
    missing = []
    if not hasattr(keras.optimizers.Optimizer, "_get_variable_index"):
        missing.append("keras.optimizers.Optimizer._get_variable_index")
    if not hasattr(keras.layers.Layer, "_flatten_layers"):
        missing.append("keras.layers.Layer._flatten_layers")
    for name in ("_symbolic_build", "_maybe_symbolic_build"):
        if not hasattr(keras.Model, name):
            missing.append(f"keras.Model.{name}")
    if keras.config.backend() == "tensorflow":
        from keras.src.backend.tensorflow import trainer as tf_trainer

        for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker"):
            if not hasattr(tf_trainer, name):
                missing.append(f"keras.src.backend.tensorflow.trainer.{name}")
    if missing:
        raise RuntimeError(
            f"Keras {keras.__version__} changed private APIs keras_fastfcn relies on "
            f"(tested with Keras {TESTED_KERAS}): {', '.join(missing)}. See "
            "keras_fastfcn/_keras_private.py.")
