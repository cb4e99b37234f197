"""Python functions inside tf.data, and a clean interpreter exit after a data error.

`FileSource` decodes files with PIL inside `tf.numpy_function`, run by a parallel
`map`. When such an iterator is still alive as Python shuts down (an uncaught data
error keeps it in `sys.last_traceback`; a caught one often in a reference cycle of
the traceback), TensorFlow destroys it during finalization. Its destructor waits
for the map's calls in flight, but a thread that asks for the GIL while Python is
finalizing is stopped by Python (3.11: `PyThread_exit_thread`), so the call never
ends and the process hangs for good (TF 2.21; plain `tf.data` does this too).

`guarded(fn)` wraps the Python function and, once, registers an `atexit` hook. Those
hooks run before finalization, while threads can still take the GIL. The hook drops
the last uncaught exception, collects cycles (so iterators nobody refers to are
destroyed now), then waits, boundedly, until no guarded call is in flight. An
iterator still referenced (a global) is then idle: its buffers are full, and its
destructor has no call to wait for.

Example:
>>> import numpy as np
>>> double = guarded(lambda x: x * 2)
>>> int(double(np.int64(3)))
6
"""

import atexit
import functools
import gc
import sys
import threading
import time

# Bound on the wait at exit: a call in flight is one image decode (milliseconds).
DRAIN_TIMEOUT_S = 10.0
# A pipeline whose buffer is not yet full starts new calls; "quiet" is this long
# without a call in flight.
QUIET_S = 0.2

_lock = threading.Lock()
_in_flight = 0
_registered = False


def in_flight():
    """Guarded calls running now (for tests)."""
    return _in_flight


def guarded(fn):
    """`fn`, counted while it runs, with the exit hook registered (once).

    Args:
        fn: the Python function given to `tf.numpy_function` or `tf.py_function`.

    Returns:
        A function with the same signature and result.
    """
    global _registered
    with _lock:
        if not _registered:
            atexit.register(release_pipelines)
            _registered = True

    @functools.wraps(fn)
    def call(*args, **kwargs):
        global _in_flight
        with _lock:
            _in_flight += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _in_flight -= 1

    return call


def release_pipelines(timeout=DRAIN_TIMEOUT_S):
    """Destroys unreferenced iterators and waits for guarded calls in flight.

    Registered with `atexit` by `guarded`; safe to call at any time.

    Args:
        timeout: the most seconds to wait for calls in flight.

    Returns:
        True when no call was in flight at the end.
    """
    # An uncaught exception's traceback holds the frames that hold the iterator.
    sys.last_type = sys.last_value = sys.last_traceback = None
    if hasattr(sys, "last_exc"):  # Python 3.12+
        sys.last_exc = None
    gc.collect()
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        if _in_flight:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S:
            return True
        time.sleep(0.01)  # releases the GIL, so calls in flight can end
    return _in_flight == 0
