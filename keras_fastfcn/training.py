"""Training: the official FastFCN recipe with `model.fit` under `tf.distribute`.

Recipe (wuhuikai/FastFCN `experiments/segmentation/train.py` and `option.py`): SGD
with momentum 0.9 and weight decay 1e-4 on every parameter (coupled, as PyTorch's
SGD), poly learning-rate decay with power 0.9 per iteration, the JPU, head and
auxiliary head at 10x the backbone's learning rate, cross-entropy + 0.2 x auxiliary
loss + 0.2 x SE loss, best model by (pixAcc + mIoU) / 2 on the validation set.

A run is described by a YAML config (`keras_fastfcn/configs/*.yaml`, also reachable as
`training/configs/`), and resumable: `ResumableBackup` checkpoints weights, optimizer
state and the position in the data stream every `checkpoint_every` steps, atomically;
the same command started again continues from the last checkpoint, mid-epoch included,
and ends with the same number of steps.
"""

import copy
import difflib
import json
import os
import re
import shutil
import sys

import keras
import tensorflow as tf
import yaml

from keras_fastfcn import losses as losses_lib
from keras_fastfcn.fileio import atomic_path

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

DEFAULTS = {
    "name": None,  # defaults to the config file's stem
    "output_dir": None,  # defaults to runs/<name>
    "model": {
        "head": "encnet",
        "backbone": "resnet50",
        "upsampler": "jpu",
        "aux": True,
        "se_loss": True,
        "output_stride": None,
        "backbone_weights": "imagenet",
        "jpu_width": 512,
        "jpu_remat": True,
        "align_corners": True,
    },
    "data": {
        "source": "demo",
        "options": {},
        "train_split": "train",
        "val_split": "val",
        "base_size": 520,
        "crop_size": 480,
        "scale_range": [0.5, 2.0],
    },
    "train": {
        "epochs": 80,
        "batch_size": 16,
        "lr": 0.001,
        "lr_power": 0.9,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "weight_decay_norm": True,
        "head_lr_mult": 10.0,
        "aux_weight": 0.2,
        "se_weight": 0.2,
        "steps_per_epoch": None,
        "val_batch_size": None,
        "mixed_precision": None,
        "seed": 1,
        "checkpoint_every": 100,
        "jit_compile": "auto",
        "verbose": "auto",
    },
}
# Keys whose value is a free-form mapping (not checked key by key).
_FREE_FORM = {("data", "options")}
STRATEGIES = ("default", "mirrored", "multiworker")
MIXED_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
# Top-level model layers trained at head_lr_mult x the backbone's learning rate.
HEAD_LAYERS = ("jpu", "head", "auxlayer")


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

def resolve_config_path(config):
    """A config path, or the name of a bundled config (`demo`, `camvid`, ...)."""
    if os.path.isfile(config):
        return config
    bundled = os.path.join(CONFIG_DIR, f"{config}.yaml")
    if os.path.isfile(bundled):
        return bundled
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
    raise FileNotFoundError(
        f"Config {config!r} not found: not a file, nor a bundled config ({', '.join(names)})."
    )


def load_config(config, overrides=()):
    """Reads and validates a YAML config; `overrides` are `"section.key=value"` strings.

    Unknown keys and values of the wrong type raise a `ValueError` naming the key
    and the file. Missing keys take the values of `DEFAULTS`.

    Args:
        config: path to a YAML file, or the name of a bundled config.
        overrides: iterable of `"dotted.key=yaml_value"` strings.

    Returns:
        The merged config dict.

    Example:
    >>> cfg = load_config("demo", ["train.epochs=1"])
    >>> cfg["train"]["epochs"]
    1
    """
    path = resolve_config_path(config)
    with open(path, encoding="utf-8") as f:
        try:
            user = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(user, dict):
        raise ValueError(f"{path}: the config must be a mapping, got {type(user).__name__}.")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} must look like section.key=value.")
        node = user
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part!r} is not a section.")
        node[parts[-1]] = yaml.safe_load(value)
    merged = _merge(DEFAULTS, user, (), path)
    if merged["name"] is None:
        merged["name"] = os.path.splitext(os.path.basename(path))[0]
    if merged["output_dir"] is None:
        merged["output_dir"] = os.path.join("runs", merged["name"])
    _check_values(merged, path)
    return merged


def _merge(defaults, user, prefix, path):
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        dotted = ".".join(prefix + (str(key),))
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean {'.'.join(prefix + (close[0],))!r}?)" if close else ""
            raise ValueError(f"{path}: unknown config key {dotted!r}{hint}.")
        default = defaults[key]
        if isinstance(default, dict) and prefix + (key,) not in _FREE_FORM:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {dotted!r} must be a mapping, got {value!r}.")
            out[key] = _merge(default, value, prefix + (key,), path)
        else:
            out[key] = _check_type(value, default, dotted, path)
    return out


def _check_type(value, default, dotted, path):
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, type(default))
    if not ok and isinstance(default, str) and isinstance(value, (int, float)):
        ok = True  # e.g. jit_compile: true / "auto"
    if not ok:
        raise ValueError(
            f"{path}: {dotted!r} must be of type {type(default).__name__}, got {value!r}."
        )
    return value


def _check_values(cfg, path):
    train, data = cfg["train"], cfg["data"]
    for key in ("epochs", "batch_size", "checkpoint_every"):
        if train[key] < 1:
            raise ValueError(f"{path}: train.{key} must be >= 1, got {train[key]}.")
    if train["lr"] <= 0:
        raise ValueError(f"{path}: train.lr must be > 0, got {train['lr']}.")
    if train["mixed_precision"] not in MIXED_PRECISION:
        raise ValueError(
            f"{path}: train.mixed_precision must be one of {MIXED_PRECISION}, "
            f"got {train['mixed_precision']!r}."
        )
    for key in ("base_size", "crop_size"):
        if data[key] < 8:
            raise ValueError(f"{path}: data.{key} must be >= 8, got {data[key]}.")
    lo_hi = data["scale_range"]
    if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"{path}: data.scale_range must be [low, high] with 0 < low <= high.")


# ---------------------------------------------------------------------------
# Strategy
# ---------------------------------------------------------------------------

def make_strategy(name="default", cpu_devices=None):
    """Builds the `tf.distribute` strategy; call it before any other TensorFlow op.

    Args:
        name: `"default"` (one device), `"mirrored"` (all GPUs, or `cpu_devices`
            logical CPU devices when there is no GPU or `cpu_devices` is given: how
            CI tests synchronous data parallelism), or `"multiworker"`
            (`MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` variable).
        cpu_devices: int, number of logical CPU devices for `"mirrored"`.

    Returns:
        A `tf.distribute.Strategy`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: expected one of {STRATEGIES}.")
    if cpu_devices is not None and cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
        except RuntimeError as err:  # runtime already initialized
            raise RuntimeError(
                "Logical CPU devices must be configured before TensorFlow starts; "
                "call make_strategy first."
            ) from err
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable "
                             "describing the cluster (see README, 'Distributed training').")
        _patch_keras_multiworker_reduce()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and not cpu_devices:
        return tf.distribute.MirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _patch_keras_multiworker_reduce():
    """Works around keras-team/keras#20585 (Keras 3 `fit` under MultiWorkerMirroredStrategy).

    Keras reduces each step's logs (scalar losses and metrics) across workers with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid reduction
    dimension 0 for input with 0 dimensions"). Scalars are reduced with `axis=None`
    (the mean over replicas) instead; everything else goes to Keras unchanged.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer, "reduce_per_replica", None)
    if original is None or getattr(original, "_keras_fastfcn_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            def reduce(v):
                local = strategy.experimental_local_results(v)
                if local and local[0].shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_fastfcn_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def is_chief(strategy):
    """Whether this process writes checkpoints and results (worker 0 of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="keras_fastfcn")
class SegmentationSGD(keras.optimizers.SGD):
    """SGD with PyTorch's coupled weight decay and per-layer learning-rate multipliers.

    Keras' `SGD(weight_decay=...)` decays the weights outside the momentum buffer
    (decoupled), and Keras has no parameter groups, so neither matches the official
    `torch.optim.SGD([{backbone, lr}, {jpu/head/aux, 10 lr}], weight_decay=1e-4)`.
    Here `l2 * w` is added to the gradient before momentum, and the gradient of a
    variable whose path starts with a key of `lr_multipliers` is scaled by its
    value: with momentum SGD, scaling the (decayed) gradient by m is exactly a
    learning rate of m x lr for that variable.

    Args:
        learning_rate: float or a `keras.optimizers.schedules` schedule.
        momentum: float.
        l2: float, coupled weight decay.
        decay_norm: bool, whether normalization parameters (gamma/beta) decay too
            (True officially; False is common in newer recipes).
        lr_multipliers: dict `{top-level layer name: multiplier}`.
        **kwargs: other `keras.optimizers.SGD` arguments.

    Example:
    >>> opt = SegmentationSGD(0.01, momentum=0.9, l2=1e-4, lr_multipliers={"head": 10.0})
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=1e-4, decay_norm=True,
                 lr_multipliers=None, **kwargs):
        if kwargs.get("nesterov"):
            raise ValueError("SegmentationSGD does not implement Nesterov momentum.")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = float(l2)
        self.decay_norm = bool(decay_norm)
        self.lr_multipliers = dict(lr_multipliers or {})
        self._per_var = {}

    def build(self, variables):
        super().build(variables)
        for var in variables:
            top = var.path.split("/")[0]
            is_norm = bool(re.search(r"(gamma|beta)$", var.path))
            self._per_var[self._var_key(var)] = (
                float(self.lr_multipliers.get(top, 1.0)),
                0.0 if (is_norm and not self.decay_norm) else self.l2,
            )

    def update_step(self, gradient, variable, learning_rate):
        mult, l2 = self._per_var.get(self._var_key(variable), (1.0, self.l2))
        dtype = variable.dtype
        gradient = keras.ops.cast(gradient, dtype)
        if l2:
            gradient = gradient + keras.ops.cast(l2, dtype) * variable
        lr = keras.ops.cast(learning_rate, dtype) * keras.ops.cast(mult, dtype)
        if self.momentum == 0:
            self.assign_sub(variable, lr * gradient)
            return
        # PyTorch's form, buf = m * buf + g; w -= lr * buf, which differs from
        # Keras' v = m * v - lr * g once the learning rate changes (poly decay).
        buf = self.momentums[self._get_variable_index(variable)]
        self.assign(buf, keras.ops.cast(self.momentum, dtype) * buf + gradient)
        self.assign_sub(variable, lr * buf)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, decay_norm=self.decay_norm,
                      lr_multipliers=self.lr_multipliers)
        return config


def poly_schedule(lr, total_steps, power=0.9):
    """The official poly decay `lr * (1 - step / total) ** power`, per iteration."""
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=lr, decay_steps=max(int(total_steps), 1),
        end_learning_rate=0.0, power=power)


# ---------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------

class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` with atomic writes and mid-epoch resumption.

    Keras' callback writes its weights file in place (a kill mid-write corrupts it)
    and, on restart, re-runs the interrupted epoch from its first step. This one
    writes each checkpoint (weights with optimizer state, and a JSON state with
    epoch, step in epoch and global step) into a fresh folder, then points `latest`
    at it with an atomic rename; `train` reads that state before `fit` to restore
    the weights and to continue the data stream and the epoch where they were.
    Only the chief worker writes.

    Args:
        backup_dir: folder for the checkpoints (on storage shared by all workers).
        save_freq: int, steps between checkpoints (also saved at every epoch end).
        steps_per_epoch: int, to record the position inside the epoch.
        chief: bool, whether this process writes.
    """

    def __init__(self, backup_dir, save_freq, steps_per_epoch, chief=True):
        super().__init__(backup_dir, save_freq=int(save_freq), delete_checkpoint=False)
        self.steps_per_epoch = int(steps_per_epoch)
        self.chief = chief
        self.step_offset = 0  # steps of the current epoch done before this fit()
        self._epoch = 0
        self._step_in_epoch = 0

    # Restoring happens in `train` before fit (it also positions the data stream).
    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step_in_epoch = self.step_offset + batch + 1
        if self._should_save_on_batch(batch) and self._step_in_epoch < self.steps_per_epoch:
            self._write(self._epoch, self._step_in_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        self._last_batch_seen = 0
        self._batches_seen_since_last_saving = 0
        self._write(epoch + 1, 0)

    def on_train_end(self, logs=None):
        pass

    def _write(self, epoch, step_in_epoch):
        if not self.chief:
            return
        global_step = epoch * self.steps_per_epoch + step_in_epoch
        name = f"ckpt-{global_step:09d}"
        target = os.path.join(self.backup_dir, name)
        with atomic_path(target, is_dir=True) as tmp:
            self.model.save_weights(os.path.join(tmp, "model.weights.h5"))
            state = {"epoch": epoch, "step_in_epoch": step_in_epoch,
                     "global_step": global_step, "steps_per_epoch": self.steps_per_epoch}
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f)
        with atomic_path(os.path.join(self.backup_dir, "latest")) as tmp:
            with open(tmp, "w") as f:
                f.write(name)
        for old in os.listdir(self.backup_dir):
            if old.startswith("ckpt-") and old != name:
                shutil.rmtree(os.path.join(self.backup_dir, old), ignore_errors=True)

    @staticmethod
    def read_state(backup_dir):
        """The last checkpoint's state dict (with `"weights"` path), or None."""
        pointer = os.path.join(backup_dir, "latest")
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            folder = os.path.join(backup_dir, f.read().strip())
        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        state["weights"] = os.path.join(folder, "model.weights.h5")
        return state


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """`ModelCheckpoint` that writes through a temporary file and a rename.

    Keras saves in place, so a kill during the save would leave a corrupt
    best-model file.
    """

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        with atomic_path(filepath) as tmp:
            if self.save_weights_only:
                self.model.save_weights(tmp)
            else:
                self.model.save(tmp)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saved {filepath}")


class MeanOfMetrics(keras.callbacks.Callback):
    """Adds `val_score = (val pixAcc + val mIoU) / 2`, the official model-selection score."""

    def __init__(self, miou_key, acc_key):
        super().__init__()
        self.miou_key, self.acc_key = miou_key, acc_key

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.miou_key in logs and self.acc_key in logs:
            logs["val_score"] = (logs[self.miou_key] + logs[self.acc_key]) / 2.0


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def build_model(cfg, num_classes, class_names=None, dataset=None):
    """The FastFCN model of a config (call inside the strategy scope)."""
    from keras_fastfcn.models import FastFCN

    m = cfg["model"]
    return FastFCN(
        num_classes=num_classes, head=m["head"], backbone=m["backbone"],
        upsampler=m["upsampler"], aux=m["aux"], se_loss=m["se_loss"],
        output_stride=m["output_stride"], backbone_weights=m["backbone_weights"],
        jpu_width=m["jpu_width"], jpu_remat=m["jpu_remat"], align_corners=m["align_corners"],
        class_names=class_names, dataset=dataset,
    )


def compile_model(model, cfg, total_steps):
    """Compiles with the official losses, optimizer, schedule and metrics."""
    from keras_fastfcn import metrics as metrics_lib

    t = cfg["train"]
    mults = {name: t["head_lr_mult"] for name in HEAD_LAYERS}
    optimizer = SegmentationSGD(
        poly_schedule(t["lr"], total_steps, t["lr_power"]), momentum=t["momentum"],
        l2=t["weight_decay"], decay_norm=t["weight_decay_norm"], lr_multipliers=mults)
    seg_metrics = metrics_lib.training_metrics(model.num_classes)
    if isinstance(model.output, dict):
        loss = {"logits": losses_lib.segmentation_loss()}
        weights = {"logits": 1.0}
        if "aux_logits" in model.output:
            loss["aux_logits"] = losses_lib.segmentation_loss()
            weights["aux_logits"] = t["aux_weight"]
        if "se_logits" in model.output:
            loss["se_logits"] = losses_lib.se_loss()
            weights["se_logits"] = t["se_weight"]
        metrics = {"logits": seg_metrics}
    else:
        loss, weights, metrics = losses_lib.segmentation_loss(), None, seg_metrics
    jit = t["jit_compile"]
    model.compile(optimizer=optimizer, loss=loss, loss_weights=weights, metrics=metrics,
                  jit_compile=jit if isinstance(jit, bool) else "auto")
    return model


def _datasets(cfg, source, global_batch, skip_steps, num_classes, aux, se):
    from keras_fastfcn import data as data_lib

    d, t = cfg["data"], cfg["train"]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    def with_targets(image, label):
        return image, losses_lib.training_targets(label, num_classes, aux, se)

    train = data_lib.train_pipeline(
        source.dataset(d["train_split"]), crop_size=d["crop_size"], base_size=d["base_size"],
        batch_size=global_batch, seed=t["seed"], scale_range=tuple(d["scale_range"]),
        repeat=True, skip_batches=skip_steps)
    train = train.map(with_targets, num_parallel_calls=tf.data.AUTOTUNE)
    val_batch = t["val_batch_size"] or global_batch
    val = data_lib.eval_pipeline(source.dataset(d["val_split"]), batch_size=val_batch,
                                 crop_size=d["crop_size"])
    val = val.map(with_targets, num_parallel_calls=tf.data.AUTOTUNE)
    return (train.with_options(options).prefetch(tf.data.AUTOTUNE),
            val.with_options(options).prefetch(tf.data.AUTOTUNE))


def train(cfg, strategy=None):
    """Runs (or resumes) a training run described by a loaded config.

    Writes into `cfg["output_dir"]`: `backup/` (resumable checkpoints, removed at
    the end), `best.keras` (best validation score), `model.keras` (final model, with
    the training outputs; `model.inference_model()` gives the logits-only model),
    `logs/` (TensorBoard), `history.csv` and `results.json` (final validation pixAcc
    and mIoU with the official definitions).

    Args:
        cfg: dict from `load_config`.
        strategy: a `tf.distribute.Strategy` (default: the current one).

    Returns:
        The results dict (also written to `results.json`).
    """
    from keras_fastfcn import data as data_lib

    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    t, d = cfg["train"], cfg["data"]
    out = cfg["output_dir"]
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(t["seed"])
    if t["mixed_precision"]:
        keras.mixed_precision.set_global_policy(t["mixed_precision"])

    source = data_lib.get_source(d["source"], **d["options"])
    num_classes = source.num_classes
    n_train = source.num_examples(d["train_split"])
    global_batch = t["batch_size"]
    steps_per_epoch = t["steps_per_epoch"] or (n_train // global_batch if n_train else None)
    if not steps_per_epoch:
        raise ValueError(
            f"Cannot infer steps per epoch: {n_train} training images for a batch of "
            f"{global_batch}; set train.steps_per_epoch or a smaller train.batch_size.")
    epochs = t["epochs"]
    total_steps = epochs * steps_per_epoch
    m = cfg["model"]

    with strategy.scope():
        model = build_model(cfg, num_classes, source.class_names, source.name)
        compile_model(model, cfg, total_steps)
        model.optimizer.build(model.trainable_variables)

    backup_dir = os.path.join(out, "backup")
    state = ResumableBackup.read_state(backup_dir)
    start_epoch, start_step = 0, 0
    if state is not None:
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(
                f"{backup_dir} was written with {state['steps_per_epoch']} steps per epoch, "
                f"this config gives {steps_per_epoch}: resume with the same config, or use a "
                "new output_dir.")
        model.load_weights(state["weights"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        print(f"Resuming {cfg['name']} at epoch {start_epoch + 1}, step {start_step}/"
              f"{steps_per_epoch} (global step {state['global_step']}) from {backup_dir}")

    backup = ResumableBackup(backup_dir, t["checkpoint_every"], steps_per_epoch, chief)
    prefix = "val_logits_" if isinstance(model.output, dict) else "val_"
    callbacks = [backup, MeanOfMetrics(prefix + "mean_iou", prefix + "pixel_accuracy")]
    if chief:  # other workers would write the same files
        callbacks += [
            AtomicModelCheckpoint(os.path.join(out, "best.keras"), monitor="val_score",
                                  mode="max", save_best_only=True),
            keras.callbacks.TensorBoard(os.path.join(out, "logs")),
            keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        ]
    # A resumed epoch runs its remaining steps in a first fit() call; the data
    # stream is rebuilt at each call to start at the global step reached.
    phases = []
    if start_epoch < epochs:
        if start_step:
            phases.append((start_epoch, start_epoch + 1, steps_per_epoch - start_step, start_step))
            start_epoch += 1
        if start_epoch < epochs:
            phases.append((start_epoch, epochs, steps_per_epoch, 0))
    for first, last, steps, offset in phases:
        train_ds, val_ds = _datasets(cfg, source, global_batch,
                                     first * steps_per_epoch + offset, num_classes,
                                     m["aux"], m["se_loss"])
        backup.step_offset = offset
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            _symbolic_build_without_reduce(model, train_ds)
        model.fit(train_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps, shuffle=False,
                  validation_data=val_ds, callbacks=callbacks, verbose=t["verbose"])

    results = {"name": cfg["name"], "steps": int(model.optimizer.iterations.numpy()),
               "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    results.update(final_evaluation(model, source, d["val_split"]))
    if chief:
        final = os.path.join(out, "model.keras")
        with atomic_path(final) as tmp:
            model.save(tmp)
        with atomic_path(os.path.join(out, "results.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
        shutil.rmtree(backup_dir, ignore_errors=True)
        results["model_path"] = final
    return results


def _symbolic_build_without_reduce(model, dataset):
    """Works around keras-team/keras#20585: Keras 3's `fit` under
    `MultiWorkerMirroredStrategy` fails before the first step, because its symbolic
    build `strategy.reduce`s a distributed input batch, which collective strategies
    refuse. The build only needs shapes, so it is given one undistributed batch.
    """
    sample = next(iter(dataset.take(1)))

    def build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=sample)

    model._maybe_symbolic_build = build


def final_evaluation(model, source, split):
    """pixAcc / mIoU of the whole validation images (official definitions)."""
    from keras_fastfcn import data as data_lib
    from keras_fastfcn import metrics as metrics_lib

    inference = model.inference_model()
    acc = metrics_lib.ConfusionAccumulator(model.num_classes)
    for images, labels in data_lib.eval_pipeline(source.dataset(split), batch_size=1):
        logits = inference(images, training=False)
        acc.update(labels.numpy(), keras.ops.convert_to_numpy(keras.ops.argmax(logits, -1)))
    res = acc.result()
    return {"val_pixAcc": float(res["pixAcc"]), "val_mIoU": float(res["mIoU"]),
            "val_mIoU_present": float(res["mIoU_present"]),
            "val_IoU_per_class": [float(v) for v in res["IoU"]]}


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--config", required=True,
                        help="YAML config path or bundled name (demo, camvid, ...)")
    parser.add_argument("--strategy", default="default", choices=STRATEGIES)
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="with --strategy mirrored: N logical CPU devices (no GPU needed)")
    parser.add_argument("--output-dir", default=None, help="overrides output_dir")
    parser.add_argument("--epochs", type=int, default=None, help="overrides train.epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="overrides train.steps_per_epoch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=0.01 (repeatable)")


def run(args):
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    cfg = load_config(args.config, overrides)
    strategy = make_strategy(args.strategy, args.cpu_devices)
    print(f"Training {cfg['name']} with {type(strategy).__name__} "
          f"({strategy.num_replicas_in_sync} replica(s)) into {cfg['output_dir']}")
    results = train(cfg, strategy)
    print(f"\nValidation ({cfg['data']['val_split']}): pixAcc {results['val_pixAcc']:.4f}  "
          f"mIoU {results['val_mIoU']:.4f} (official: mean over all classes)  "
          f"mIoU {results['val_mIoU_present']:.4f} (classes present)")
    if "model_path" in results:
        print(f"Final model: {results['model_path']}")
        print(f"Best model:  {os.path.join(cfg['output_dir'], 'best.keras')}")
        print(f"Results:     {os.path.join(cfg['output_dir'], 'results.json')}")
        print(f"TensorBoard: tensorboard --logdir {os.path.join(cfg['output_dir'], 'logs')}")
    sys.stdout.flush()
    return 0
