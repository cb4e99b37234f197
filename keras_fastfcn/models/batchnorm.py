"""Synchronized BatchNorm (the official SyncBN) for a model trained on several replicas.

Pure Keras: it needs only the strategy's replica count, so the segmenter's `compile()`
and the training command both use it without the model importing the training code.
"""

import keras

from keras_fastfcn._keras_private import all_layers


def synchronize_batchnorm(model, strategy):
    """Makes every BatchNormalization of `model` compute its batch statistics over all
    replicas of `strategy` in training (the official SyncBN), when there are several.

    With one replica the layers are left as they are (the statistics are the same).
    Inference is unchanged: it uses the moving statistics. Returns the number of
    layers set.

    Example:
    >>> seg = keras_fastfcn.models.FastFCNImageSegmenter(
    ...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> synchronize_batchnorm(seg, tf.distribute.get_strategy())  # one replica: as they are
    0
    >>> strategy = tf.distribute.MirroredStrategy(["/gpu:0", "/gpu:1"])  # doctest: +SKIP
    >>> with strategy.scope():  # doctest: +SKIP
    ...     seg = keras_fastfcn.models.FastFCNImageSegmenter(
    ...         keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
    >>> synchronize_batchnorm(seg, strategy) > 0  # every BatchNormalization  # doctest: +SKIP
    True
    """
    if strategy.num_replicas_in_sync < 2:
        return 0
    layers = [layer for layer in all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)
