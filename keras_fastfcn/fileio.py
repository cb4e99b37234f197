"""Atomic writes: a crash or kill never leaves a half-written model, checkpoint or export.

Every file or folder the package writes goes through `atomic_path`: it is written to a
temporary sibling named `.NAME.PID.RANDOM.tmp[.EXT]` and renamed onto `NAME` only when
complete. A process killed mid-write leaves that temporary behind; the next
`atomic_path` for the same `NAME` removes it, and `remove_stale_temporaries(folder)`,
which the training command runs on its output folder before it starts, removes every
such leftover there. Only temporaries of processes that no longer run are removed (a
temporary of a live process, e.g. a concurrent export, is left alone).

Two more guards for long writers: `check_free_space` refuses a write that cannot fit
before it starts (HDF5 can crash the process on a full disk instead of raising), and
`FolderLock` keeps two trainings out of one output folder.
"""

import contextlib
import errno
import json
import os
import socket
import time
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
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> with atomic_path("runs/model.keras") as tmp:  # runs/.model.keras.PID.RANDOM.tmp.keras
    ...     model.save(tmp)
    >>> os.listdir("runs")
    ['model.keras']
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    remove_stale_temporaries(parent, base)
    prefix = f".{base}.{os.getpid()}."
    if is_dir:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
        # mkdtemp makes it 0700; renamed into place, a SavedModel version would be
        # unreadable to a TF Serving process of another user. Give it what os.mkdir
        # would have (the umask's).
        os.chmod(tmp, 0o777 & ~_umask())
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


def _umask():
    """The process umask (read from /proc where it can be, without setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    >>> os.makedirs("runs/demo")
    >>> open("runs/demo/.best.keras.999999999.k2j4_x9a.tmp.keras", "w").close()  # a killed run's
    >>> remove_stale_temporaries("runs/demo")
    ['.best.keras.999999999.k2j4_x9a.tmp.keras']
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


@contextlib.contextmanager
def removing_new_folders(path):
    """Removes, if the block fails, `path` and the folders above it that the block
    created (when they are empty): a failed export leaves nothing at its output path,
    not even the folder its target check made.

    Example:
    >>> with removing_new_folders("exports/new/fastfcn.onnx"):
    ...     os.makedirs("exports/new")
    ...     raise RuntimeError("the export failed")
    Traceback (most recent call last):
    RuntimeError: the export failed
    >>> os.path.exists("exports")
    False
    """
    missing, probe = [], os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        missing.append(probe)  # deepest first
        probe = os.path.dirname(probe)
    try:
        yield
    except BaseException:
        for folder in missing:
            if os.path.lexists(folder):
                try:
                    os.rmdir(folder)
                except OSError:  # not empty (or not a folder): someone else's now
                    break
        raise


def scratch_folder(output):
    """A temporary folder beside `output` (a `tempfile.TemporaryDirectory`), named as
    `fileio.atomic_path` names its temporaries, so that if the process is killed, the
    next write of `output` removes it.

    Example:
    >>> with scratch_folder("fastfcn.tflite") as tmp:
    ...     os.path.basename(tmp).startswith(f".fastfcn.tflite.{os.getpid()}.")
    True
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(output)))
    return tempfile.TemporaryDirectory(prefix=f".{name}.{os.getpid()}.", suffix=".tmp",
                                       dir=parent)


def variables_nbytes(variables):
    """Bytes the values of `variables` take (what a weights file of them holds)."""
    import numpy as np

    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def check_free_space(folder, nbytes, what):
    """Raises `OSError(ENOSPC)` naming `what` when `folder` has no room for `nbytes`.

    The estimate gets 5% and 1 MiB on top (file-format overhead). Checked before a
    write starts, so that nothing is half written and the previous file stays as it was.

    Args:
        folder: where the file or folder will be written (the nearest existing parent
            is measured).
        nbytes: int, the payload's size.
        what: the file being written, for the message.

    Example:
    >>> check_free_space("runs/demo", 120 * 2**20, "runs/demo/backup/ckpt-000000100")
    """
    folder = os.path.abspath(os.fspath(folder))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    need = int(nbytes * 1.05) + 2**20
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC,
                      f"No space left on the device of {folder} to write {what}: it needs "
                      f"about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free. Free "
                      "some space and run the same command again (it resumes from the last "
                      "checkpoint)")


class FolderLock:
    """An exclusive lock on a folder (`FOLDER/.lock`) held by one process at a time.

    `fcntl.flock` on the lock file: the kernel drops the lock when its process ends,
    however it ends (a `kill -9` leaves no stale lock). The file records the holder's
    host, pid and start time for the message another process gets. On systems
    without `fcntl` (Windows) nothing is locked.

    Args:
        folder: the folder (created if missing).
        purpose: what holds it, for the message ("a training run").

    Example:
    >>> with FolderLock("runs/demo", "a training run"):
    ...     pass  # a second process entering here fails with OSError naming the lock
    """

    NAME = ".lock"

    def __init__(self, folder, purpose="a process"):
        self.folder, self.purpose = os.fspath(folder), purpose
        self.path = os.path.join(self.folder, self.NAME)
        self._file = None

    def acquire(self):
        try:
            import fcntl
        except ImportError:  # Windows
            return self
        os.makedirs(self.folder, exist_ok=True)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise OSError(errno.EBUSY,
                              f"{self.folder} is in use by {self.purpose} ({holder}; lock "
                              f"{self.path}): wait for it to end, or use another folder") \
                    from err
            # The holder before us may have removed the file after we opened it: lock
            # the file that is at the path now.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._file = handle
        return self

    def release(self):
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


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
    payload = list(model.weights)
    if include_optimizer and optimizer is not None:
        payload += list(optimizer.variables)
    check_free_space(os.path.dirname(os.path.abspath(path)), variables_nbytes(payload), path)
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

