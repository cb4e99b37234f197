"""What `FastFCNImageSegmenter.compile` and `fit` check and translate: a loss or a
learning rate that would train wrongly or not at all (warned about), the length of a
`fit` run, and the compile config of a 0.1 model."""

import math
import warnings

import keras

from keras_fastfcn.losses import IGNORE_LABEL


def warn_about_loss(loss):
    """Warns about a cross-entropy that reads the logits as probabilities or that
    counts the ignore label (255) as a class: Keras' defaults, wrong for this model."""
    sparse_ce = keras.losses.sparse_categorical_crossentropy
    if loss is sparse_ce or getattr(loss, "fn", None) is sparse_ce:
        config = getattr(loss, "_fn_kwargs", None) or {}
        from_logits = config.get("from_logits", getattr(loss, "from_logits", False))
        ignore_class = config.get("ignore_class", getattr(loss, "ignore_class", None))
        problems = []
        if not from_logits:
            problems.append("reads the model's logits as probabilities (from_logits=False)")
        if ignore_class != IGNORE_LABEL:
            problems.append(f"counts the ignore label {IGNORE_LABEL} as a class "
                            f"(ignore_class={ignore_class})")
        if problems:
            warnings.warn(
                f"The loss {' and '.join(problems)}. Use compile(loss='auto') or "
                f"keras.losses.SparseCategoricalCrossentropy(from_logits=True, "
                f"ignore_class={IGNORE_LABEL}).", stacklevel=3)


def warn_if_learning_rate_is_zero(optimizer):
    """Warns when `fit` would run at learning rate 0 (a fixed schedule that has ended)."""
    if optimizer is None:
        return
    try:
        lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except (TypeError, ValueError):  # a learning rate Keras cannot evaluate here
        return
    if lr <= 0.0:
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        warnings.warn(
            f"The learning rate is {lr} at optimizer step {step}: this fit will not change "
            f"the weights (a schedule that has run out, e.g. PolyDecay(decay_steps=N) past "
            f"step N). Call compile() again for a new schedule; compile()'s own decays "
            f"anew in every fit.", stacklevel=3)


def num_batches(x, batch_size, validation_split=0.0):
    """Batches per epoch of `x` when it is known (arrays, sized datasets), else None;
    for arrays, of the part `fit(validation_split=...)` trains on (Keras' split)."""
    cardinality = getattr(x, "cardinality", None)
    if callable(cardinality):
        n = int(cardinality())
        return n if n > 0 else None
    if hasattr(x, "__len__") and hasattr(x, "shape"):
        train = math.floor(len(x) * (1.0 - float(validation_split)))
        return math.ceil(train / (batch_size or 32))
    if hasattr(x, "__len__"):  # a keras.utils.PyDataset
        try:
            return len(x) or None
        except TypeError:
            return None
    return None


def from_per_output(model, loss, metrics, loss_weights):
    """Translates a 0.1 per-output compile config (`{"logits": ..., ...}`) to ours."""
    if isinstance(loss_weights, dict):
        if "aux_logits" in loss_weights:
            model.aux_weight = float(loss_weights["aux_logits"])
        if "se_logits" in loss_weights:
            model.se_weight = float(loss_weights["se_logits"])
    if isinstance(loss, dict):
        loss = loss.get("logits", "auto")
    if isinstance(metrics, dict):
        metrics = metrics.get("logits", [])
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    warnings.warn("Per-output losses and metrics (a keras_fastfcn 0.1 model) were mapped "
                  "onto the logits; the aux and SE terms come from aux_weight / se_weight.",
                  stacklevel=3)
    return loss, metrics
