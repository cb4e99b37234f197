"""A training run from a config: the official FastFCN recipe with `model.fit`.

Recipe (wuhuikai/FastFCN `experiments/segmentation/train.py` and `option.py`): SGD
with momentum 0.9 and weight decay 1e-4 on every parameter (coupled, as PyTorch's
SGD), poly learning-rate decay with power 0.9 per iteration, the JPU, head and
auxiliary head at 10x the backbone's learning rate, cross-entropy + 0.2 x auxiliary
loss + 0.2 x SE loss, best model by (pixAcc + mIoU) / 2 on the validation set.

`run(config)` is what `keras-fastfcn train` does; its pieces are public for Python
users who assemble their own loop: `build_segmenter`, `compile_segmenter` (the
official optimizer and schedule), `datasets` (the official augmentation) and the
callbacks of `keras_fastfcn.train.callbacks`.

Backends: TensorFlow (`tf.distribute` strategies, SyncBN by `synchronized=True`) and
JAX (`keras.distribution.DataParallel` over the local devices; batch statistics over
the global batch). Both read `tf.data` where TensorFlow is installed and the Python
loader (`data.pyloader`) where it is not (`data.loader` in the config). The files a
run writes are the same on both: a `.keras` file trained on JAX loads, evaluates and
exports in a TensorFlow process.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from typing import Sequence, Union

import keras

from keras_fastfcn import _keras_private, data
from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.data.pyloader import EvalBatches, TrainBatches
from keras_fastfcn.evaluation import evaluate_dataset
from keras_fastfcn.fileio import FolderLock, atomic_path, remove_stale_temporaries, save_model
from keras_fastfcn.inference import Predictor
from keras_fastfcn.models import FastFCNBackbone, FastFCNImageSegmenter, registry
from keras_fastfcn.optimizers import PolyDecay, SegmentationSGD
from keras_fastfcn.train.callbacks import (BestModel, HistoryCSV, OfficialScore, ResumableBackup,
                                           StopOnNonFiniteLoss, TrainingDiverged)
from keras_fastfcn.train.config import effective_lr, load_config
from keras_fastfcn.train.distribute import Replicas


def build_segmenter(cfg, source):
    """The `FastFCNImageSegmenter` of a config for a data source (call in the strategy scope).

    Example:
    >>> model = build_segmenter(load_config("demo", ["model.width=64"]), data.get_source("demo"))
    >>> model.num_classes
    5
    """
    m, t = cfg["model"], cfg["train"]
    backbone = FastFCNBackbone(
        encoder=m["encoder"], upsampler=m["upsampler"], width=m["width"],
        output_stride=m["output_stride"], encoder_weights=m["encoder_weights"],
        remat=m["remat"], align_corners=m["align_corners"])
    return FastFCNImageSegmenter(
        backbone, num_classes=source.num_classes, head=m["head"], aux=m["aux"],
        se_loss=m["se_loss"], aux_weight=t["aux_weight"], se_weight=t["se_weight"],
        class_names=source.class_names, dataset=source.name)


def compile_segmenter(model, cfg, total_steps):
    """Compiles with the official optimizer: `SegmentationSGD` + `PolyDecay(total_steps)`.

    The loss (cross-entropy ignoring 255, plus the aux and SE terms) and the metrics
    are the model's `"auto"` ones.
    """
    t = cfg["train"]
    optimizer = SegmentationSGD(
        PolyDecay(effective_lr(t), total_steps, t["lr_power"]), momentum=t["momentum"],
        l2=t["weight_decay"], decay_norm=t["weight_decay_norm"],
        lr_multipliers=model.lr_multipliers(t["head_lr_mult"]))
    jit = t["jit_compile"]
    model.compile(optimizer=optimizer, jit_compile=jit if isinstance(jit, bool) else "auto",
                  sync_batchnorm=t["sync_batchnorm"])
    return model


def _has_tensorflow():
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def input_loader(setting="auto"):
    """`"tf"` or `"python"`: the input pipeline a config's `data.loader` selects.

    `"auto"` is tf.data where TensorFlow is installed, else the Python loader.
    """
    has_tf = _has_tensorflow()
    if setting == "auto":
        return "tf" if has_tf else "python"
    if setting == "tf" and not has_tf:
        raise ValueError("data.loader: tf needs TensorFlow (pip install tensorflow); "
                         "data.loader: python reads without it.")
    return setting


def datasets(cfg, source, global_batch, skip_steps=0, val_multiple=1):
    """`(train, val)` input pipelines: official augmentation, `(images, masks)` batches.

    tf.data pipelines (`data.pipelines`, sharded by data across replicas) or, with
    `data.loader: python` or no TensorFlow installed, `keras.utils.PyDataset`s
    (`data.pyloader`). The training stream repeats forever from step `skip_steps`
    (a resumed run continues where it stopped).

    Args:
        val_multiple: the last validation batch is padded to a multiple of this with
            blank images labelled 255 (ignored: pixAcc, mIoU and the score are
            unchanged). JAX's DataParallel splits every batch evenly over its devices.
    """
    d, t = cfg["data"], cfg["train"]
    if input_loader(d["loader"]) == "python":
        train = TrainBatches(source, d["train_split"], d["crop_size"], d["base_size"],
                             global_batch, seed=t["seed"], scale_range=tuple(d["scale_range"]),
                             skip_batches=skip_steps)
        val = EvalBatches(source, d["val_split"], t["val_batch_size"] or global_batch,
                          d["crop_size"], pad_to=val_multiple)
        return train, val
    import tensorflow as tf

    if keras.config.backend() != "tensorflow":
        # tf.data only feeds the host: keep TensorFlow off the GPUs JAX trains on.
        tf.config.set_visible_devices([], "GPU")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = data.train_pipeline(
        source.dataset(d["train_split"]), crop_size=d["crop_size"], base_size=d["base_size"],
        batch_size=global_batch, seed=t["seed"], scale_range=tuple(d["scale_range"]),
        repeat=True, skip_batches=skip_steps)
    val = data.eval_pipeline(source.dataset(d["val_split"]),
                             batch_size=t["val_batch_size"] or global_batch,
                             crop_size=d["crop_size"])
    if val_multiple > 1:
        def pad(images, labels):
            extra = (-tf.shape(images)[0]) % val_multiple
            return (tf.pad(images, [[0, extra], [0, 0], [0, 0], [0, 0]]),
                    tf.pad(labels, [[0, extra], [0, 0], [0, 0]], constant_values=255))

        val = val.map(pad)
    return (train.with_options(options).prefetch(tf.data.AUTOTUNE),
            val.with_options(options).prefetch(tf.data.AUTOTUNE))


def _verbose(setting):
    # Keras' live progress bar writes "\r" and terminal codes: one line per epoch in logs.
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return setting


def run(config: Union[str, dict], strategy=None,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        overrides: Sequence[str] = (), overwrite: bool = False) -> dict:
    """Runs (or resumes) the training run described by a config.

    Writes into the config's `output_dir`: `backup/` (resumable checkpoints, removed
    at the end), `best.keras` (best validation score), `model.keras` (the final
    model; both without optimizer state, loadable with `keras.models.load_model`
    after `import keras_fastfcn`), `logs/` (TensorBoard), `history.csv` and
    `results.json` (final validation pixAcc and mIoU, official definitions, on whole
    images: the numbers `keras-fastfcn evaluate` gives for `model.keras`).

    Args:
        config: a dict from `load_config`, or a config path / bundled name.
        strategy: TensorFlow: a `tf.distribute.Strategy` (default: the current
            one); JAX: a `keras.distribution.DataParallel` (default: the global
            one, else one device). `make_strategy` builds either.
        callbacks: more Keras callbacks for `fit`.
        overrides: `"section.key=value"` strings when `config` is a path or name.
        overwrite: train from the start into an `output_dir` that holds a finished
            run (its `results.json`), replacing its files. Without it such a folder
            is refused: a second run of the same command would otherwise replace
            `best.keras` with the first epoch of a new run. (A folder with a
            checkpoint in `backup/` is an unfinished run: it is resumed.)

    Returns:
        The results dict (also written to `results.json`).

    Example:
    >>> results = run("demo", overrides=["train.epochs=1",  # doctest: +SKIP
    ...                                  "output_dir=runs/demo"])  # minutes on a CPU
    >>> sorted(results)[:3]  # doctest: +SKIP
    ['epochs', 'model_path', 'name']
    """
    cfg = config if isinstance(config, dict) else load_config(config, overrides)
    replicas = Replicas(strategy)
    chief = replicas.chief
    t, d = cfg["train"], cfg["data"]
    out = cfg["output_dir"]

    m = cfg["model"]
    # Unknown names fail here, before anything is written.
    registry.encoder(m["encoder"])
    registry.upsampler_name(m["upsampler"])
    registry.head(m["head"])
    source = data.get_source(d["source"], **d["options"])
    if source.num_classes < 2:
        raise ValueError(
            f"The data source {d['source']!r} has {source.num_classes} class "
            f"{list(source.class_names or [])}: a segmentation model needs at least 2 classes "
            "to tell apart (e.g. background and the object); add the background class.")
    n_train = source.num_examples(d["train_split"])
    global_batch = t["batch_size"]
    steps_per_epoch = t["steps_per_epoch"] or (n_train // global_batch if n_train else None)
    if not steps_per_epoch:
        raise ValueError(
            f"Cannot infer steps per epoch: {n_train} training images for a batch of "
            f"{global_batch}; set train.steps_per_epoch or a smaller train.batch_size.")
    # JAX's DataParallel gives every device an equal slice of each batch.
    even = replicas.count if replicas.backend == "jax" else 1
    for key, size in (("batch_size", global_batch), ("val_batch_size", t["val_batch_size"])):
        if size and size % even:
            raise ValueError(f"train.{key}={size} does not split evenly over the "
                             f"{even} devices of this run; use a multiple of {even}.")
    # Every run folder this process writes into is locked and, should the run fail
    # before its first checkpoint, left as it was found.
    created = chief and not os.path.isdir(out)
    lock = FolderLock(out, "a training run").acquire() if chief else None
    try:
        before = set(os.listdir(out)) if chief else set()
        had_checkpoint = chief and os.path.isfile(os.path.join(out, "backup", "latest"))
        # Every worker checks (the folder is on storage they share): one refusing
        # alone would leave the others waiting for it.
        if not overwrite and not os.path.isfile(os.path.join(out, "backup", "latest")):
            _refuse_finished_run(out)
        try:
            return _train(cfg, replicas, source, steps_per_epoch, even, callbacks)
        except Exception as err:
            if chief and not had_checkpoint:
                _discard_unfinished(out, before, created)
            if isinstance(err, TrainingDiverged):
                raise _diverged_message(err, cfg, out) from None
            raise
    finally:
        if lock is not None:
            lock.release()


def _refuse_finished_run(out):
    """A `ValueError` if `out` holds the results of a finished run."""
    results = os.path.join(out, "results.json")
    if os.path.isfile(results):
        raise ValueError(
            f"{out} holds a finished run ({results}, model.keras, best.keras): train "
            "into another output folder (--output-dir), or pass --overwrite "
            "(train.run(..., overwrite=True)) to train again from the start and replace "
            "its files.")


def _discard_unfinished(out, before, created):
    """Removes what a run that failed before its first checkpoint wrote into `out`."""
    if not os.path.isfile(os.path.join(out, "backup", "latest")):
        if created:
            shutil.rmtree(out, ignore_errors=True)
            return
        for name in set(os.listdir(out)) - before - {FolderLock.NAME}:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _diverged_message(err, cfg, out):
    backup = os.path.join(out, "backup")
    state = None
    with contextlib.suppress(ValueError, OSError):
        state = ResumableBackup.read_state(backup)
    step = err.epoch * state["steps_per_epoch"] + err.step if state else None
    if state and step == state["global_step"] + 1:
        # The loss of the step after a checkpoint comes from the checkpoint's weights.
        kept = (f"The last checkpoint ({backup}, step {state['global_step']}) holds the "
                "weights that gave this loss: remove it, lower train.lr and start again")
    elif state:
        kept = (f"The files in {out} are those of the last checkpoint before it ({backup}): "
                "lower train.lr and run the same command to resume from there, or start "
                "anew in another output folder")
    else:
        kept = (f"No checkpoint was written before it, and {out} holds nothing of this "
                "run: lower train.lr and start again")
    return TrainingDiverged(
        f"{err} (train.lr {cfg['train']['lr']:g}); nothing of the diverged model "
        f"was saved. {kept}", err.epoch, err.step, err.loss)


def _signature(cfg, source):
    """What a checkpoint's weights depend on: resuming needs the same."""
    m = cfg["model"]
    keys = ("encoder", "upsampler", "width", "output_stride", "head", "aux", "se_loss")
    return {**{f"model.{k}": m[k] for k in keys}, "num_classes": source.num_classes}


def _check_resumable(state, backup_dir, signature, steps_per_epoch):
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(
            f"{backup_dir} was written with {state['steps_per_epoch']} steps per epoch, "
            f"this config gives {steps_per_epoch}: resume with the same config, or use a "
            "new output_dir.")
    recorded = state.get("signature")
    if recorded is not None and recorded != signature:
        diff = ", ".join(f"{k} {recorded.get(k)!r} there, {signature.get(k)!r} now"
                         for k in sorted(set(recorded) | set(signature))
                         if recorded.get(k) != signature.get(k))
        raise ValueError(
            f"{backup_dir} holds a checkpoint of another configuration ({diff}): resume "
            "with the config it was written with, use another output folder, or remove "
            f"{backup_dir} to train this configuration from the start here.")


def _resume(model, state, backup_dir):
    try:
        model.load_weights(state["weights"])
    except (ValueError, KeyError, OSError) as err:
        # Keras' message goes on to list every layer: its first line says enough.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(
            f"The checkpoint {state['weights']} does not load into this configuration's "
            f"model ({first}): resume with the config it was written with, use another "
            f"output folder, or remove {backup_dir} to start over here.") from None


def _train(cfg, replicas, source, steps_per_epoch, even, callbacks):
    chief = replicas.chief
    t, d = cfg["train"], cfg["data"]
    out = cfg["output_dir"]
    global_batch, epochs = t["batch_size"], t["epochs"]
    if chief:
        remove_stale_temporaries(out)
    # A checkpoint that cannot be resumed is refused before the model is built.
    backup_dir = os.path.join(out, "backup")
    state = ResumableBackup.read_state(backup_dir) or {}
    start_epoch, start_step = state.get("epoch", 0), state.get("step_in_epoch", 0)
    signature = _signature(cfg, source)
    if state:
        _check_resumable(state, backup_dir, signature, steps_per_epoch)
    keras.utils.set_random_seed(t["seed"])
    if t["mixed_precision"]:
        keras.mixed_precision.set_global_policy(t["mixed_precision"])

    with replicas.scope():
        model = build_segmenter(cfg, source)
        compile_segmenter(model, cfg, epochs * steps_per_epoch)  # synchronizes BatchNorm
        synced = sum(getattr(layer, "synchronized", False) for layer in all_layers(model))
        if synced:
            print(f"BatchNorm synchronized across {replicas.count} "
                  f"replicas ({synced} layers; train.sync_batchnorm: false to turn off)")
        elif replicas.backend == "jax" and replicas.count > 1:
            print(f"BatchNorm statistics over the global batch of {replicas.count} devices "
                  "(one XLA program under DataParallel: the official SyncBN)")
        model.optimizer.build(model.trainable_variables)

    if state:
        _resume(model, state, backup_dir)
        print(f"Resuming {cfg['name']} at epoch {start_epoch + 1}, step {start_step}/"
              f"{steps_per_epoch} (global step {state['global_step']}) from {backup_dir}")

    best = BestModel(os.path.join(out, "best.keras"), best=state.get("best"),
                     best_epoch=state.get("best_epoch"), deferred=True)
    if chief:
        best.recover()
    history = HistoryCSV(os.path.join(out, "history.csv"), rows=state.get("history", ()))
    backup = ResumableBackup(backup_dir, t["checkpoint_every"], steps_per_epoch, chief,
                             history=history, best=best, signature=signature,
                             resumed_from=state.get("name"))
    guard = StopOnNonFiniteLoss()
    fit_callbacks = [guard, OfficialScore()]
    if chief:  # other workers would write the same files
        fit_callbacks += [best, history]
        # Keras' TensorBoard callback writes through tf.summary.
        if _has_tensorflow():
            fit_callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs")))
    fit_callbacks += list(callbacks) + [backup]

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
        train_ds, val_ds = datasets(cfg, source, global_batch, first * steps_per_epoch + offset,
                                    val_multiple=even)
        backup.step_offset = guard.step_offset = offset
        if replicas.multiworker:
            _keras_private.patch_multiworker_fit(model, next(iter(train_ds.take(1))))
        with replicas.fit_scope():
            model.fit(
                train_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                shuffle=False, validation_data=val_ds, callbacks=fit_callbacks,
                verbose=_verbose(t["verbose"]))

    steps_done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    results = {"name": cfg["name"], "steps": steps_done,
               "epochs": epochs, "steps_per_epoch": steps_per_epoch}
    results.update(final_evaluation(model, source, d["val_split"]))
    if chief:
        final = os.path.join(out, "model.keras")
        save_model(model, final, include_optimizer=False)
        with atomic_path(os.path.join(out, "results.json")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
        shutil.rmtree(backup_dir, ignore_errors=True)
        results["model_path"] = final
    return results


def final_evaluation(model, source, split):
    """pixAcc / mIoU of the whole validation images: the code path of `keras-fastfcn evaluate`.

    Returns:
        `val_pixAcc`, `val_mIoU` (official, all classes), `val_mIoU_present` and
        `val_IoU_per_class`.
    """
    # Folded as `evaluate` does: the model is final here.
    # No pixel budget: the validation images are the run's own, and a refusal after
    # hours of training would lose the run's results.
    res = evaluate_dataset(Predictor(model, fold_batchnorm=True, max_pixels=None),
                           source.examples(split),
                           model.num_classes, ignore_label=source.ignore_label, verbose=0)
    return {"val_pixAcc": float(res["pixAcc"]), "val_mIoU": float(res["mIoU"]),
            "val_mIoU_present": float(res["mIoU_present"]),
            "val_IoU_per_class": [float(v) for v in res["IoU"]]}
