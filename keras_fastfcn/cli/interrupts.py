"""Ctrl-C in the `keras-fastfcn` commands: always "interrupted", never ignored.

Python raises `KeyboardInterrupt` wherever the main thread is when SIGINT arrives.
Inside TensorFlow's tracing of a step (the first seconds of a `fit`), TensorFlow's
C++ code can swallow it, and training runs on as if nothing happened, or turn it
into an unrelated error such as `SystemError: bad argument to internal function`.
The commands run in `recorded()`, whose handler also records the signal: the CLI
reports any error that follows it as an interruption, and `callback()` stops a
training whose interruption was swallowed at its next step.
"""

import contextlib
import signal
import threading

_received = False


def _handler(signum, frame):
    global _received
    _received = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def recorded():
    """Within it SIGINT raises `KeyboardInterrupt` (as Python's default) and is
    remembered (`received()`); the previous handler is back after it. Only in the
    main thread, the one that gets signals."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, _received = signal.getsignal(signal.SIGINT), False
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def received():
    """Whether a SIGINT arrived in the latest `recorded()`."""
    return _received


def callback():
    """A Keras callback that raises `KeyboardInterrupt` at the end of the first step
    after a SIGINT that did not stop the training where it arrived.

    Example:
    >>> with recorded():                                 # doctest: +SKIP
    ...     model.fit(x, y, callbacks=[callback()])
    """
    import keras

    class StopWhenInterrupted(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if _received:
                raise KeyboardInterrupt

        on_test_batch_end = on_train_batch_end

    return StopWhenInterrupted()
