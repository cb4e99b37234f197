"""`tf.distribute` strategies for training: one device, all local GPUs, or a cluster."""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default", cpu_devices=None):
    """Builds the `tf.distribute` strategy; call it before any other TensorFlow op.

    Args:
        name: `"default"` (one device), `"mirrored"` (all GPUs, or `cpu_devices`
            logical CPU devices when there is no GPU or `cpu_devices` is given: how
            CI tests synchronous data parallelism), or `"multiworker"`
            (`MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` variable).
        cpu_devices: int >= 1, number of logical CPU devices for `"mirrored"`.

    Returns:
        A `tf.distribute.Strategy`.

    Example:
    >>> strategy = make_strategy("mirrored", cpu_devices=2)
    >>> strategy.num_replicas_in_sync
    2
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: expected one of {STRATEGIES}.")
    if cpu_devices is not None and (isinstance(cpu_devices, bool) or int(cpu_devices) < 1):
        raise ValueError(f"cpu_devices must be an int >= 1, got {cpu_devices!r}.")
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
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and not cpu_devices:
        return tf.distribute.MirroredStrategy()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def synchronize_batchnorm(model, strategy):
    """Makes every BatchNormalization of `model` compute its batch statistics over all
    replicas of `strategy` in training (the official SyncBN), when there are several.

    With one replica the layers are left as they are (the statistics are the same).
    Inference is unchanged: it uses the moving statistics. Returns the number of
    layers set.

    Example:
    >>> with strategy.scope():
    ...     seg = FastFCNImageSegmenter(...)
    >>> synchronize_batchnorm(seg, strategy)
    150
    """
    import keras

    from keras_fastfcn._keras_private import all_layers

    if strategy.num_replicas_in_sync < 2:
        return 0
    layers = [layer for layer in all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def check_tf_config():
    """Raises a `ValueError` naming the problem unless `TF_CONFIG` describes a cluster.

    Example:
    >>> os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["h1:2222", "h2:2222"]},
    ...                                       "task": {"type": "worker", "index": 0}})
    >>> check_tf_config()
    """
    text = os.environ.get("TF_CONFIG")
    how = ("see the README section 'Train on several machines': TF_CONFIG is JSON like "
           '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
           '"index": 0}}')
    if not text:
        raise ValueError(f"--strategy multiworker needs the TF_CONFIG environment variable; {how}.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err.msg} at character {err.pos}); "
                         f"{how}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' and a 'task' entry; {how}.")
    members = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(members, list) or not isinstance(index, int) \
            or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {cluster}; {how}.")


def is_chief(strategy):
    """Whether this process writes checkpoints and results (worker 0 of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and resolver.task_id == 0)


def is_multiworker(strategy):
    """Whether `strategy` spans several processes (Keras needs a workaround there)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
