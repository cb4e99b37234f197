"""Atomic writes: a crash or kill never leaves a half-written model, checkpoint or export."""

import contextlib
import os
import shutil
import tempfile


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
    if is_dir:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    else:
        # Keep the extension: Keras picks the format from it (.keras, .weights.h5).
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{_ext(base)}", dir=parent)
        os.close(fd)
        os.remove(tmp)
    try:
        yield tmp
        if is_dir and os.path.isdir(path):
            # os.replace cannot replace a non-empty folder: swap via a second rename.
            old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
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
    for ext in (".weights.h5", ".keras", ".h5", ".json", ".onnx", ".tflite", ".png"):
        if name.endswith(ext):
            return ext
    return os.path.splitext(name)[1]
