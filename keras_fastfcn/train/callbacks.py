"""Callbacks of a resumable training run: checkpoints, best model, history, official score.

What a run writes, and what a kill at any moment may cost (never more than the steps
since the last checkpoint):

- `ResumableBackup`: every `save_freq` steps and at each epoch end, the weights with
  the optimizer state plus a JSON state (epoch, step in epoch, the history rows so
  far, the best score so far), written into a fresh folder that then becomes
  `latest` by an atomic rename. `train.run` restores all of it before `fit`.
- `BestModel`: `best.keras` (without optimizer state) whenever the monitored score
  improves. With a backup it is a two-phase write: the model goes to a pending file
  (`.best.keras.epochNNNNN.pending.keras`), the epoch-end checkpoint records that epoch
  as the best one, and only then is the pending file renamed onto `best.keras`. On
  resume, `recover()` finishes a rename the checkpoint had recorded and drops a
  pending model the checkpoint had not, so `best.keras` is always the model of the
  best epoch in `history.csv`, whatever instant a kill lands on.
- `HistoryCSV`: `history.csv` rewritten atomically from the rows at each epoch end;
  the rows are part of the backup state, so no epoch's row is lost by a kill.
- `OfficialScore`: `val_score = (val pixAcc + val mIoU) / 2`, the official model
  selection score.
- `StopOnNonFiniteLoss`: a loss that turns NaN or infinite stops `fit` with
  `TrainingDiverged` at that step, before any checkpoint or best model holds it.

Order matters: `train.run` passes them to `fit` in the order that keeps these promises
(score, best model, history, then the backup that records them and commits the best).
"""

import csv
import io
import json
import math
import os
import re
import shutil

import keras
import numpy as np

from keras_fastfcn.fileio import (atomic_path, check_free_space, remove_stale_temporaries,
                                  save_model, variables_nbytes)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite (`StopOnNonFiniteLoss`).

    Attributes:
        epoch: the epoch (0-based) of the step.
        step: the step in the epoch (1-based).
        loss: the loss value logged at that step.
    """

    def __init__(self, message, epoch, step, loss):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDiverged` at the first step whose loss is NaN or infinite.

    Keras' `TerminateOnNaN` falls short here: it only sets `stop_training`, after
    which `fit` still validates and ends the epoch, so the callbacks after it would
    save the diverged weights as a checkpoint and, with a validation score computed
    from NaN logits (argmax 0 everywhere), as the best model. Raising at the step
    keeps every file as it was at the last checkpoint. Put it before the callbacks
    that write.

    Args:
        monitor: the log key holding the loss.

    Example:
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.ones((4, 2)), np.array([[1.0], [np.nan], [1.0], [1.0]])  # a NaN target
    >>> model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[StopOnNonFiniteLoss()])
    Traceback (most recent call last):
    ...
    keras_fastfcn.train.callbacks.TrainingDiverged: Training diverged: the loss is nan at epoch 1, step ...
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        self.monitor = monitor
        self.step_offset = 0  # steps of the current epoch done before this fit()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            step = self.step_offset + batch + 1
            raise TrainingDiverged(
                f"Training diverged: the {self.monitor} is {value} at epoch "
                f"{self._epoch + 1}, step {step}", self._epoch, step, value)


def nonfinite_weights(model):
    """The names of `model`'s weights that hold NaN or inf (empty when all are finite)."""
    return [v.path for v in model.weights
            if not np.isfinite(keras.ops.convert_to_numpy(v.value)).all()]


class OfficialScore(keras.callbacks.Callback):
    """Adds `val_score = (val_pixel_accuracy + val_mean_iou) / 2` to the epoch logs."""

    def __init__(self, accuracy="val_pixel_accuracy", miou="val_mean_iou"):
        super().__init__()
        self.accuracy, self.miou = accuracy, miou

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.accuracy in logs and self.miou in logs:
            logs["val_score"] = (float(logs[self.accuracy]) + float(logs[self.miou])) / 2.0


class BestModel(keras.callbacks.Callback):
    """Writes `filepath` (a `.keras` model without optimizer state) when `monitor` improves.

    Args:
        filepath: the `.keras` path.
        monitor: the log key to watch (`val_score`).
        mode: `"max"` or `"min"`.
        best: the best value seen before this run (restored on resume), or None.
        best_epoch: the epoch of `best` (restored on resume), or None.
        deferred: write a pending file that `commit()` moves onto `filepath` (a
            `ResumableBackup(best=...)` calls it once its checkpoint records the epoch).

    Example:
    >>> from keras_fastfcn import metrics
    >>> inputs = keras.Input((8, 8, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    >>> model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...               metrics=metrics.segmentation_metrics(3))
    >>> x, y = np.random.uniform(0, 1, (4, 8, 8, 3)), np.random.randint(0, 3, (4, 8, 8))
    >>> best = BestModel("runs/x/best.keras")      # writes directly: no backup
    >>> _ = model.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...               callbacks=[OfficialScore(), best])
    >>> os.listdir("runs/x")
    ['best.keras']
    """

    def __init__(self, filepath, monitor="val_score", mode="max", best=None, best_epoch=None,
                 deferred=False):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.filepath, self.monitor, self.mode = os.fspath(filepath), monitor, mode
        self.best, self.best_epoch, self.deferred = best, best_epoch, deferred

    def _pending(self, epoch):
        folder, base = os.path.split(self.filepath)
        return os.path.join(folder, f".{base}.epoch{epoch:05d}.pending.keras")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        # NaN logits score as class 0 everywhere: a finite score, not a model.
        if value is None or not math.isfinite(float(value)) \
                or not math.isfinite(float(logs.get("val_loss", 0.0))):
            return
        value = float(value)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, epoch
            target = self._pending(epoch) if self.deferred else self.filepath
            save_model(self.model, target, include_optimizer=False)

    def commit(self):
        """Moves the pending model of `best_epoch` (if any) onto `filepath`."""
        if self.best_epoch is not None and os.path.exists(self._pending(self.best_epoch)):
            os.replace(self._pending(self.best_epoch), self.filepath)

    def recover(self):
        """On resume: commits the pending model of the restored `best_epoch` (a kill
        between the checkpoint and the rename) and removes any other pending model
        (written for an epoch whose checkpoint never came, so not the best on record)."""
        folder, base = os.path.split(self.filepath)
        pattern = re.compile(rf"^\.{re.escape(base)}\.epoch(\d+)\.pending\.keras$")
        self.commit()
        for name in os.listdir(folder or ".") if os.path.isdir(folder or ".") else ():
            if pattern.match(name):
                os.remove(os.path.join(folder, name))


class HistoryCSV(keras.callbacks.Callback):
    """`history.csv`: one row per epoch, rewritten atomically from all rows each epoch.

    Each row has the epoch's logs and `steps`, the number of training steps its
    training metrics (`loss`, ...) are the mean of: the epoch's steps, or in an epoch
    resumed mid-way only those run after the resume (Keras' metrics start again at
    each `fit` call). The validation metrics are always over the whole split.

    Args:
        filepath: the CSV path.
        rows: rows of earlier epochs (restored on resume), each a dict.
    """

    def __init__(self, filepath, rows=()):
        super().__init__()
        self.filepath = filepath
        self.rows = [dict(row) for row in rows]
        self._steps = 0

    def on_train_begin(self, logs=None):
        if self.rows:
            self._write()  # drops any row a killed run wrote after its last checkpoint

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, "steps": self._steps}
        row.update({k: float(v) for k, v in (logs or {}).items()
                    if isinstance(v, (int, float)) or hasattr(v, "__float__")})
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [row]
        self._write()

    def _write(self):
        keys = ["epoch", "steps"] + sorted({k for row in self.rows for k in row}
                                           - {"epoch", "steps"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_path(self.filepath) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text.getvalue())


class ResumableBackup(keras.callbacks.Callback):
    """Atomic mid-epoch checkpoints of the whole training state (module docstring).

    Args:
        backup_dir: folder for the checkpoints (on storage shared by all workers).
        save_freq: int, steps between checkpoints (also saved at every epoch end).
        steps_per_epoch: int, to record the position inside the epoch.
        chief: bool, whether this process writes.
        history: the `HistoryCSV` whose rows are saved with each checkpoint.
        best: the `BestModel` whose best score is saved with each checkpoint.
        signature: a JSON-able dict describing the model (its config), saved with each
            checkpoint so that a resume can tell a checkpoint of another model apart.
        resumed_from: the name of the checkpoint this run resumed from: it is removed
            once a newer one is written. Checkpoints of other runs are never removed.
    """

    def __init__(self, backup_dir, save_freq, steps_per_epoch, chief=True, history=None,
                 best=None, signature=None, resumed_from=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.save_freq = int(save_freq)
        self.steps_per_epoch = int(steps_per_epoch)
        self.chief = chief
        self.history, self.best = history, best
        self.signature = signature
        self._own = [resumed_from] if resumed_from else []
        self.step_offset = 0  # steps of the current epoch done before this fit()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step_in_epoch = self.step_offset + batch + 1
        if step_in_epoch % self.save_freq == 0 and step_in_epoch < self.steps_per_epoch:
            self._write(self._epoch, step_in_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None and not math.isfinite(float(val_loss)):
            raise TrainingDiverged(
                f"Training diverged: the validation loss is {float(val_loss)} after epoch "
                f"{epoch + 1}", epoch, self.steps_per_epoch, float(val_loss))
        self._write(epoch + 1, 0)

    def _write(self, epoch, step_in_epoch):
        if not self.chief:
            return
        bad = nonfinite_weights(self.model)
        if bad:
            raise TrainingDiverged(
                f"Training diverged: {len(bad)} weight tensor(s) hold NaN or inf at epoch "
                f"{epoch + 1 if step_in_epoch else epoch}, step "
                f"{step_in_epoch or self.steps_per_epoch} (first: {bad[0]})",
                epoch if step_in_epoch else epoch - 1, step_in_epoch or self.steps_per_epoch,
                float("nan"))
        os.makedirs(self.backup_dir, exist_ok=True)
        global_step = epoch * self.steps_per_epoch + step_in_epoch
        name = f"ckpt-{global_step:09d}"
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                 "steps_per_epoch": self.steps_per_epoch,
                 "history": self.history.rows if self.history is not None else [],
                 "best": self.best.best if self.best is not None else None,
                 "best_epoch": self.best.best_epoch if self.best is not None else None,
                 "signature": self.signature}
        folder = os.path.join(self.backup_dir, name)
        check_free_space(self.backup_dir, variables_nbytes(
            list(self.model.weights) + list(self.model.optimizer.variables)), folder)
        with atomic_path(folder, is_dir=True) as tmp:
            self.model.save_weights(os.path.join(tmp, "model.weights.h5"))
            with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                json.dump(state, f)
        with atomic_path(os.path.join(self.backup_dir, "latest")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(name)
        if self.best is not None:
            self.best.commit()  # the checkpoint now records the best epoch
        # Only this run's older checkpoints go: a folder may hold another run's.
        for old in self._own:
            if old != name:
                shutil.rmtree(os.path.join(self.backup_dir, old), ignore_errors=True)
        self._own = [name]

    @staticmethod
    def read_state(backup_dir):
        """The last checkpoint's state dict (with `"weights"` and `"name"`), or None.

        Temporary files a killed run left in `backup_dir` are removed first. A
        damaged checkpoint (a `latest` pointer to nothing, a state file that is not
        the JSON this class writes, a missing weights file) raises `ValueError`
        naming the file and the way out.
        """
        if not os.path.isdir(backup_dir):
            return None
        remove_stale_temporaries(backup_dir)
        pointer = os.path.join(backup_dir, "latest")
        if not os.path.isfile(pointer):
            return None
        way_out = (f"it cannot be resumed. Remove {backup_dir} to train from the start in "
                   "this folder, or use another output folder")
        with open(pointer, encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
        folder = os.path.join(backup_dir, name)
        state_file = os.path.join(folder, "state.json")
        weights = os.path.join(folder, "model.weights.h5")
        if not name.startswith("ckpt-") or not os.path.isfile(state_file):
            raise ValueError(f"{pointer} names the checkpoint {name!r}, which has no "
                             f"state.json: {way_out}.")
        try:
            with open(state_file, encoding="utf-8") as f:
                state = json.load(f)
            if not isinstance(state, dict):
                raise ValueError(f"a JSON {type(state).__name__}, not an object")
            missing = [key for key in ("epoch", "step_in_epoch", "global_step",
                                       "steps_per_epoch") if not isinstance(state.get(key), int)]
            if missing:
                raise ValueError(f"no integer {', '.join(missing)}")
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"The checkpoint state {state_file} is damaged ({err}): "
                             f"{way_out}.") from None
        if not os.path.isfile(weights):
            raise ValueError(f"The checkpoint {folder} has no model.weights.h5: {way_out}.")
        state["weights"], state["name"] = weights, name
        return state
