"""`LabelCheck`: labels other than a class id or the ignore label fail `fit` / `evaluate`.

`FastFCNImageSegmenter.compute_metrics` reports each step's invalid label values
(`losses.invalid_labels`: count, smallest, largest) in the step's logs under `KEY`;
the loss and metrics see them as the ignore label. This callback, which the
segmenter's `fit` and `evaluate` put first, raises a `ValueError` naming the values
and the class count at the end of the step that met them, and takes the entry out
of the logs before any other callback (progress bar, history, TensorBoard) sees it.
It works the same on every backend and inside XLA, where an in-graph assertion
would be dropped. Under a `tf.distribute` strategy a step's logs are the first
replica's: a bad value another replica met is reported at the end of the epoch.
"""

import keras


class LabelCheck(keras.callbacks.Callback):
    """Raises `ValueError` when a step met label values outside `0..C-1` and 255.

    Args:
        num_classes: the model's class count.

    Example:
    >>> LabelCheck.check({"loss": 1.0, LabelCheck.KEY: [0.0, 0.0, 0.0]}, 3)
    """

    KEY = "_invalid_labels"

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = int(num_classes)

    @classmethod
    def check(cls, logs, num_classes, ignore_label=255):
        """Removes `KEY` from `logs` and raises if it counts invalid labels."""
        if not isinstance(logs, dict) or cls.KEY not in logs:
            return
        count, smallest, largest = (float(v) for v in keras.ops.convert_to_numpy(
            logs.pop(cls.KEY)))
        if count > 0:
            values = (f"{int(smallest)}" if smallest == largest
                      else f"from {int(smallest)} to {int(largest)}")
            raise ValueError(
                f"Labels hold {int(count)} pixel(s) with values {values}, outside the class "
                f"ids 0..{num_classes - 1} (num_classes={num_classes}) and the ignore label "
                f"{ignore_label}. Map them to class ids or to {ignore_label}.")

    @classmethod
    def added_to(cls, callbacks, model):
        """`callbacks` (a list, a `CallbackList` or None) with a `LabelCheck` first."""
        callbacks = [] if callbacks is None else callbacks
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = callbacks.callbacks
        callbacks = list(callbacks)
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
