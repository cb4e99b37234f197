"""Errors raised for bad data, and their translation out of tf.data.

Problems found while reading data (an unreadable image, a label value that is not a
class id, an image and label of different sizes) raise `DataError`, a `ValueError`
whose message names the file. Inside a `tf.data` pipeline TensorFlow re-raises any
Python error as `tf.errors.InvalidArgumentError` with the traceback in its message;
`translate_errors()` turns those back into a one-line `DataError`.

Example:
>>> from keras_fastfcn.data import errors
>>> with errors.translate_errors():   # around model.fit / iteration of a pipeline
...     pass
"""

import contextlib
import re

__all__ = ["DataError", "translate_errors"]

# Marks our messages inside TensorFlow errors so `translate_errors` can find them.
TAG = "[keras_fastfcn.data]"
_TAGGED = re.compile(re.escape(TAG) + r"\s*([^\n]*)")


class DataError(ValueError):
    """Bad data on disk or in a dataset; the message names the file or record."""


def tagged(message):
    """`message` marked for `translate_errors` (use inside tf.data functions)."""
    return f"{TAG} {message}"


def _message_of(err):
    text = getattr(err, "message", None) or str(err)
    match = _TAGGED.search(text)
    if match is None:
        return None
    # tf.debugging.Assert wraps its data in brackets: drop the trailing ones.
    return match.group(1).strip().rstrip("]").strip()


@contextlib.contextmanager
def translate_errors():
    """Re-raises data errors from inside tf.data as a one-line `DataError`.

    Wrap the code that iterates a pipeline (a training or evaluation loop). Other
    errors pass through unchanged. Also usable as a decorator.

    Example:
    >>> import tensorflow as tf
    >>> with translate_errors():
    ...     _ = list(tf.data.Dataset.range(2))
    """
    try:
        import tensorflow as tf
    except ImportError:  # no tf.data on this host: errors arrive untranslated already
        yield
        return
    try:
        yield
    except tf.errors.OpError as err:
        message = _message_of(err)
        if message is None:
            raise
        raise DataError(message) from None
