"""The official FastFCN optimizer: SGD with coupled weight decay, parameter groups, poly decay.

The authors train with `torch.optim.SGD([{backbone, lr}, {jpu/head/aux, 10 lr}],
momentum=0.9, weight_decay=1e-4)` and `lr * (1 - iter / total) ** 0.9` per iteration
(`encoding/utils/lr_scheduler.py`). Keras' `SGD(weight_decay=...)` decays outside the
momentum buffer (decoupled), Keras has no parameter groups, and its momentum form
differs from PyTorch's once the learning rate changes, so `SegmentationSGD` does the
PyTorch update; `PolyDecay` is the official schedule.
"""

import re

import keras

from keras_fastfcn import _keras_private


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The official poly schedule `lr * (1 - step / decay_steps) ** power`.

    With `decay_steps` set, `step` is the optimizer's step count (the training
    command's schedule: the whole run, resumed where a checkpoint stopped). With
    `decay_steps=None` the schedule is **per fit**: each `FastFCNImageSegmenter.fit`
    call runs its own decay from `initial_learning_rate` to 0 over its own steps
    (`start_fit`), so a second `fit` (a frozen backbone, a loaded model) trains
    again; outside a `fit` the rate is `initial_learning_rate`.

    Args:
        initial_learning_rate: float.
        decay_steps: int >= 1, or None for the per-fit decay.
        power: float (0.9 officially).

    Example:
    >>> schedule = PolyDecay(0.01, decay_steps=100)
    >>> round(float(schedule(50)), 5)
    0.00536
    >>> per_fit = PolyDecay(0.01)
    >>> _ = per_fit.start_fit(first_step=100, steps=100)
    >>> round(float(per_fit(150)), 5)
    0.00536
    """

    def __init__(self, initial_learning_rate, decay_steps=None, power=0.9):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = None if decay_steps is None else max(int(decay_steps), 1)
        self.power = float(power)
        # The current fit's (first step, steps) for the per-fit decay; not saved.
        self.fit_window = None
        # On TensorFlow the window is also held in two variables, which a traced
        # training step reads when it runs: a new `fit` needs no new trace (seconds
        # for a ResNet-50 step). On JAX a variable that is not the model's or the
        # optimizer's would be a constant of the compiled step, so there the window
        # is a constant and a new window means a new trace (`start_fit`'s result);
        # as optimizer variables they would change the optimizer's saved state.
        self._window = None
        if self.decay_steps is None and keras.config.backend() == "tensorflow":
            self._window = (
                keras.Variable(0, dtype="int64", trainable=False, name="poly_fit_first"),
                keras.Variable(0, dtype="int64", trainable=False, name="poly_fit_steps"))

    @property
    def per_fit(self):
        return self.decay_steps is None

    def start_fit(self, first_step, steps):
        """Arms the per-fit decay for a `fit` that starts at optimizer step `first_step`
        and runs `steps` steps. Returns whether a traced training function must be
        traced again: on backends other than TensorFlow it holds the window as
        constants, and the window changed."""
        window = (int(first_step), max(int(steps), 1))
        changed = window != self.fit_window
        self.fit_window = window
        if self._window is not None:
            for variable, value in zip(self._window, window):
                variable.assign(value)
            return False
        return changed

    def end_fit(self):
        """Disarms the per-fit decay when its `fit` ends (the rate is
        `initial_learning_rate` again). Returns whether a traced training function
        must be traced again (as `start_fit`)."""
        was, self.fit_window = self.fit_window, None
        if self._window is not None:
            self._window[1].assign(0)  # no window: the compiled rate
            return False
        return was is not None

    def __call__(self, step):
        lr = keras.ops.convert_to_tensor(self.initial_learning_rate, "float32")
        if self.decay_steps is not None:
            first, steps = 0.0, float(self.decay_steps)
        elif self._window is not None:  # read when the step runs; 0 steps: no window
            first, steps = (keras.ops.cast(v, "float32") for v in self._window)
        elif self.fit_window is not None:
            first, steps = (float(v) for v in self.fit_window)
        else:
            return lr
        step = keras.ops.clip(keras.ops.cast(step, "float32") - first, 0.0, steps)
        decayed = lr * keras.ops.power(1.0 - step / keras.ops.maximum(steps, 1.0), self.power)
        return keras.ops.where(steps > 0.0, decayed, lr)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "power": self.power}


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class SegmentationSGD(keras.optimizers.SGD):
    """SGD with PyTorch's coupled weight decay and per-layer learning-rate multipliers.

    `l2 * w` is added to the gradient before momentum (PyTorch's `weight_decay`),
    and the gradient of a variable whose path starts with a key of
    `lr_multipliers` is scaled by its value: with momentum SGD, scaling the
    (decayed) gradient by m is exactly a learning rate of m x lr for that variable
    (the official parameter groups). The momentum buffer is PyTorch's
    `buf = m * buf + g; w -= lr * buf`.

    Args:
        learning_rate: float or a `keras.optimizers.schedules` schedule
            (`PolyDecay` officially).
        momentum: float.
        l2: float, coupled weight decay.
        decay_norm: bool, whether normalization parameters (gamma/beta) decay too
            (True officially; False is common in newer recipes).
        lr_multipliers: dict `{variable path prefix: multiplier}`; a prefix matches
            whole path components (`"head"` matches `head/classifier/kernel`).
        **kwargs: other `keras.optimizers.SGD` arguments.

    Example:
    >>> opt = SegmentationSGD(PolyDecay(0.01, 1000), momentum=0.9, l2=1e-4,
    ...                       lr_multipliers={"head": 10.0})
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, l2=1e-4, decay_norm=True,
                 lr_multipliers=None, **kwargs):
        if kwargs.get("nesterov"):
            raise ValueError("SegmentationSGD does not implement Nesterov momentum.")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        # The schedule object itself (Keras keeps it privately), so that a model's
        # `fit` can set the length of a `PolyDecay` left open at compile time.
        self.schedule = (learning_rate if isinstance(
            learning_rate, keras.optimizers.schedules.LearningRateSchedule) else None)
        self.l2 = float(l2)
        self.decay_norm = bool(decay_norm)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self._per_variable = []

    def _multiplier(self, path):
        for prefix, mult in self.lr_multipliers.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return mult
        return 1.0

    def build(self, variables):
        super().build(variables)
        # In the order of `variables`, which is the optimizer's variable index.
        self._per_variable = [
            (self._multiplier(var.path),
             0.0 if (not self.decay_norm and re.search(r"(gamma|beta)$", var.path)) else self.l2)
            for var in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = _keras_private.optimizer_variable_index(self, variable)
        mult, l2 = self._per_variable[index]
        dtype = variable.dtype
        gradient = keras.ops.cast(gradient, dtype)
        if l2:
            gradient = gradient + keras.ops.cast(l2, dtype) * variable
        lr = keras.ops.cast(learning_rate, dtype) * keras.ops.cast(mult, dtype)
        if self.momentum == 0:
            self.assign_sub(variable, lr * gradient)
            return
        buf = self.momentums[index]
        self.assign(buf, keras.ops.cast(self.momentum, dtype) * buf + gradient)
        self.assign_sub(variable, lr * buf)

    def load_own_variables(self, store):
        # A model saved without its optimizer state (`fileio.save_model(...,
        # include_optimizer=False)`: the final and best models of a run) or saved
        # before its first step (only the step counter, and a float learning rate)
        # has no state to load: the optimizer starts fresh, as after `compile`,
        # instead of Keras' "Skipping variable loading" warning.
        if len(store.keys()) < len(self.variables) and len(store.keys()) <= 2:
            return
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, decay_norm=self.decay_norm,
                      lr_multipliers=self.lr_multipliers)
        return config
