"""`LabelCheck`: labels other than a class id or the ignore label fail `fit` / `evaluate`.

`FastFCNImageSegmenter.compute_metrics` reports each step's invalid label values
(`losses.invalid_labels`: count, smallest, largest) in the step's logs (`KEYS`);
the loss and metrics see them as the ignore label. This callback, which the
segmenter's `fit` and `evaluate` put first, raises a `ValueError` naming the values
and the class count at the end of the step that met them, and takes the entry out
of the logs before any other callback (progress bar, history, TensorBoard) sees it.
It works the same on every backend and inside XLA, where an in-graph assertion
would be dropped. Under a `tf.distribute` strategy Keras averages each log over the
replicas, so a step where any replica met an invalid value fails too.
"""

import keras


class LabelCheck(keras.callbacks.Callback):
    """Raises `ValueError` when a step met label values outside `0..C-1` and 255.

    Args:
        num_classes: the model's class count.

    Example:
    >>> LabelCheck.check({"loss": 1.0, **LabelCheck.logs([0.0, 0.0, 0.0])}, 3)
    """

    # The step's `[count, smallest, largest]` of invalid values, as three scalar logs:
    # Keras averages logs over replicas (and over workers), which a scalar survives.
    KEYS = ("_invalid_labels", "_invalid_smallest", "_invalid_largest")

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = int(num_classes)

    @classmethod
    def logs(cls, stats):
        """The step's log entries of `losses.invalid_labels`' `stats`."""
        return {key: stats[i] for i, key in enumerate(cls.KEYS)}

    @classmethod
    def check(cls, logs, num_classes, ignore_label=255):
        """Removes the entries from `logs` and raises if they count invalid labels.

        Averaged over replicas, the count and the extremes of a step where only some
        replicas met invalid values are no longer exact: the message then gives only
        what still is (a count and values that are whole numbers outside the range).
        """
        if not isinstance(logs, dict) or cls.KEYS[0] not in logs:
            return
        count, smallest, largest = (float(keras.ops.convert_to_numpy(logs.pop(key)))
                                    for key in cls.KEYS)
        if count <= 0:
            return

        def exact(value):
            return value.is_integer() and (value < 0 or value >= num_classes) \
                and value != ignore_label

        pixels = f"{int(count)} pixel(s) with values" if count.is_integer() else "values"
        if exact(smallest) and exact(largest):
            pixels += (f" {int(smallest)}" if smallest == largest
                       else f" from {int(smallest)} to {int(largest)}")
        raise ValueError(
            f"Labels hold {pixels}, outside the class ids 0..{num_classes - 1} "
            f"(num_classes={num_classes}) and the ignore label {ignore_label}. Map them "
            f"to class ids or to {ignore_label}.")

    @classmethod
    def added_to(cls, callbacks, model):
        """`callbacks` (a list, a `CallbackList` or None) with a `LabelCheck` first."""
        if isinstance(callbacks, keras.callbacks.CallbackList):
            # `fit`'s own list, passed to its validation `evaluate`: kept as it is (a
            # new list would reset the progress bar's and other callbacks' parameters).
            if not any(isinstance(c, cls) for c in callbacks.callbacks):
                check = cls(model.num_classes)
                check.set_model(model)
                callbacks.callbacks.insert(0, check)
            return callbacks
        callbacks = list(callbacks or [])
        if not any(isinstance(c, cls) for c in callbacks):
            callbacks.insert(0, cls(model.num_classes))
        return callbacks

    def _check(self, logs):
        try:
            self.check(logs, self.num_classes)
        except ValueError:
            # JAX's fit and evaluate hold the variables' values outside the model
            # during an epoch: give them back before the error leaves the loop.
            sync = getattr(self.model, "jax_state_sync", None)
            if callable(sync):
                sync()
            raise

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_test_batch_end(self, batch, logs=None):
        self._check(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs)

    def on_test_end(self, logs=None):
        self._check(logs)
