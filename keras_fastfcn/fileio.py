"""Atomic writes: a crash or kill never leaves a half-written model, checkpoint or export.

Every file or folder the package writes goes through `atomic_path`: it is written to a
temporary sibling named `.NAME.PID.RANDOM.tmp[.EXT]` and renamed onto `NAME` only when
complete. A process killed mid-write leaves that temporary behind; the next
`atomic_path` for the same `NAME` removes it, and `remove_stale_temporaries(folder)`,
which the training command runs on its output folder before it starts, removes every
such leftover there. Only temporaries of processes that no longer run are removed (a
temporary of a live process, e.g. a concurrent export, is left alone).
"""

import contextlib
import os
import re
import shutil
import tempfile

_TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(tmp|old)(\.[A-Za-z0-9.]+)?$")


@contextlib.contextmanager
def atomic_path(path, is_dir=False):
    """Yields a temporary sibling of `path`; moves it onto `path` only on success.

    The temporary file or folder lives in the same directory, so the final
    `os.replace` is an atomic rename on POSIX file systems. On an exception the
    temporary is removed and `path` is left as it was.

    Args:
        path: final file or folder path.
        is_dir: whether a folder is written (the temporary is created empty).

    Example:
    >>> with atomic_path("/tmp/model.keras") as tmp:
    ...     model.save(tmp)
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    remove_stale_temporaries(parent, base)
    prefix = f".{base}.{os.getpid()}."
    if is_dir:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
    else:
        # Keep the extension: Keras picks the format from it (.keras, .weights.h5).
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{_ext(base)}", dir=parent)
        os.close(fd)
        os.remove(tmp)
    try:
        yield tmp
        if is_dir and os.path.isdir(path):
            # os.replace cannot replace a non-empty folder: swap via a second rename.
            old = tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def _ext(name):
    for ext in (".weights.h5", ".keras", ".h5", ".json", ".onnx", ".tflite", ".png", ".csv"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder, name=None):
    """Removes `atomic_path` temporaries in `folder` whose writing process is gone
    (only those of the file or folder `name`, when given).

    Returns:
        The names removed.

    Example:
    >>> remove_stale_temporaries("runs/demo")   # after a killed run
    ['.best.keras.4242.k2j4_x9a.tmp.keras']
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    removed = []
    for entry in sorted(os.listdir(folder)):
        match = _TEMP.match(entry)
        if match is None or (name is not None and match.group("name") != name) \
                or int(match.group("pid")) == os.getpid() or _alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(entry)
    return removed


def save_model(model, path, include_optimizer=True):
    """`model.save(path)` through `atomic_path`; optionally without the optimizer state.

    Without it, a `.keras` file holds the weights and the compile config only (a
    model loaded from it is compiled with a fresh optimizer): the final and best
    models of a training run, where the optimizer state would double or triple the
    file for nothing (the resumable backup keeps it).

    Args:
        model: a Keras model.
        path: `.keras` path.
        include_optimizer: bool.
    """
    optimizer = getattr(model, "optimizer", None)
    # Synchronized BatchNorm is a training-time setting (`train.run` under several
    # replicas); files are written without it, since Keras refuses to build
    # `synchronized=True` layers on the JAX and PyTorch backends.
    from keras_fastfcn._keras_private import all_layers

    synced = [layer for layer in all_layers(model) if getattr(layer, "synchronized", False)]
    with atomic_path(path) as tmp:
        for layer in synced:
            layer.synchronized = False
        if not include_optimizer:
            model.optimizer = None  # not walked by the saver; restored right after
        try:
            model.save(tmp)
        finally:
            model.optimizer = optimizer
            for layer in synced:
                layer.synchronized = True

