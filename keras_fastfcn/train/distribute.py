"""Where a training run's replicas are: `tf.distribute` strategies on TensorFlow,
`keras.distribution.DataParallel` on JAX.

`make_strategy(name)` builds what the backend uses and `Replicas` wraps either for
the runner (scope, replica count, chief, name), so `keras-fastfcn train` is one code
path on both backends. On JAX every local device gets a slice of each batch inside
one XLA program: BatchNorm's batch statistics are computed over the global batch
(the official SyncBN) without any setting.
"""

import contextlib
import json
import os

import keras
import numpy as np

STRATEGIES = ("default", "mirrored", "multiworker")


def make_strategy(name="default", cpu_devices=None):
    """Builds the backend's data-parallel setup; call it before any other TensorFlow or JAX op.

    TensorFlow: a `tf.distribute` strategy. JAX: a `keras.distribution.DataParallel`
    over the local devices, or None for a single device (`"default"` and
    `"mirrored"` both take every local device; `"multiworker"` is TensorFlow's).

    Args:
        name: `"default"` (TensorFlow: one device; JAX: all local devices),
            `"mirrored"` (all GPUs, or `cpu_devices` logical CPU devices when there
            is no GPU or `cpu_devices` is given: how CI tests synchronous data
            parallelism), or `"multiworker"` (TensorFlow
            `MultiWorkerMirroredStrategy`, cluster from the `TF_CONFIG` variable).
        cpu_devices: int >= 1, number of (logical) CPU devices to train on.

    Returns:
        A `tf.distribute.Strategy` (TensorFlow), or a `keras.distribution.DataParallel`
        or None (JAX).

    Example:
    >>> strategy = make_strategy("mirrored", cpu_devices=2)  # before TF starts  # doctest: +SKIP
    >>> Replicas(strategy).count  # doctest: +SKIP
    2
    >>> Replicas(make_strategy("default")).count
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: expected one of {STRATEGIES}.")
    if cpu_devices is not None and (isinstance(cpu_devices, bool) or int(cpu_devices) < 1):
        raise ValueError(f"cpu_devices must be an int >= 1, got {cpu_devices!r}.")
    backend = keras.config.backend()
    if backend == "jax":
        return _jax_distribution(name, cpu_devices)
    if backend != "tensorflow":
        raise ValueError(f"keras-fastfcn train runs on the tensorflow and jax backends of Keras, "
                         f"not {backend!r} (set KERAS_BACKEND).")
    import tensorflow as tf

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


def _jax_distribution(name, cpu_devices):
    if name == "multiworker":
        raise ValueError(
            "--strategy multiworker is TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG); "
            "on JAX, keras-fastfcn train uses the local devices of one process "
            "(keras.distribution.DataParallel): drop --strategy, or set KERAS_BACKEND=tensorflow.")
    if cpu_devices is not None and cpu_devices > 1:
        # XLA makes N host devices only if told before JAX starts its CPU backend.
        flag = f"--xla_force_host_platform_device_count={int(cpu_devices)}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        import jax

        found = len(jax.devices("cpu"))
        if found != cpu_devices:
            raise RuntimeError(f"JAX started with {found} CPU device(s) before make_strategy "
                               f"could ask for {cpu_devices}; call make_strategy first.")
        devices = [f"cpu:{i}" for i in range(cpu_devices)]
    elif cpu_devices == 1:
        devices = ["cpu:0"]
    else:
        devices = keras.distribution.list_devices()
    if len(devices) < 2:
        return None
    return keras.distribution.DataParallel(devices=devices)


class Replicas:
    """A run's replicas on either backend (what `make_strategy` returned, or the current one).

    Args:
        strategy: TensorFlow: a `tf.distribute.Strategy` (None: the current one).
            JAX: a `keras.distribution.DataParallel` (None: the global one set with
            `keras.distribution.set_distribution`, if any, else one device).

    Attributes:
        strategy: what was passed (or found).
        count: number of replicas (devices sharing each batch).
        name: the strategy's class name, for messages.

    Example:
    >>> from keras_fastfcn import data
    >>> from keras_fastfcn.train import build_segmenter, load_config
    >>> replicas = Replicas(make_strategy("default"))  # or "mirrored", "multiworker", ...
    >>> with replicas.scope():
    ...     model = build_segmenter(load_config("demo", ["model.width=64"]),
    ...                             data.get_source("demo"))
    >>> replicas.count, replicas.chief
    (1, True)
    """

    def __init__(self, strategy=None):
        self.backend = keras.config.backend()
        if self.backend == "tensorflow":
            import tensorflow as tf

            self.strategy = strategy or tf.distribute.get_strategy()
            if not isinstance(self.strategy, tf.distribute.Strategy):
                raise ValueError(f"On TensorFlow, strategy must be a tf.distribute.Strategy, "
                                 f"got {type(strategy).__name__}.")
            self.count = self.strategy.num_replicas_in_sync
        else:
            # keras.distribution exports no common base class of its distributions.
            known = (keras.distribution.DataParallel, keras.distribution.ModelParallel)
            if strategy is not None and not isinstance(strategy, known):
                raise ValueError(f"On {self.backend}, strategy must be a keras.distribution "
                                 f"DataParallel or ModelParallel, or None, got "
                                 f"{type(strategy).__name__}.")
            self.strategy = strategy if strategy is not None else keras.distribution.distribution()
            self.count = (int(np.prod(self.strategy.device_mesh.shape))
                          if self.strategy is not None else 1)
        self.name = type(self.strategy).__name__ if self.strategy is not None else "OneDevice"

    def scope(self):
        """Context for building, compiling and fitting the model."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    def fit_scope(self):
        """Context for `fit`: JAX shards each batch over the distribution in scope
        (TensorFlow's `fit` finds the strategy the model was built in)."""
        if self.backend == "tensorflow":
            return contextlib.nullcontext()
        return self.scope()

    @property
    def chief(self):
        """Whether this process writes checkpoints and results."""
        if self.backend == "tensorflow":
            return is_chief(self.strategy)
        if self.backend == "jax":
            import jax

            return jax.process_index() == 0
        return True

    @property
    def multiworker(self):
        return self.backend == "tensorflow" and is_multiworker(self.strategy)


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
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
