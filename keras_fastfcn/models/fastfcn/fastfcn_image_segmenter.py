"""`FastFCNImageSegmenter`: the FastFCN task (backbone + head), trained on `(images, masks)`."""

import math
import numbers
import types
from typing import Optional, Sequence, Union

import keras

from keras_fastfcn import _keras_private
from keras_fastfcn import losses as losses_lib
from keras_fastfcn import metrics as metrics_lib
from keras_fastfcn import optimizers
from keras_fastfcn.layers.heads import FCNHead
from keras_fastfcn.layers.resize import BilinearResize
from keras_fastfcn.models import presets as presets_lib
from keras_fastfcn.models.batchnorm import synchronize_batchnorm
from keras_fastfcn.models import registry
from keras_fastfcn.models.fastfcn.fastfcn_backbone import (
    FastFCNBackbone,
    ImageInputsMixin,
    check_model_kwargs,
    dtype_config,
    dtype_policy_scope,
    freeze_after_init,
    freeze_layers,
    frozen_layers,
)
from keras_fastfcn.models.fastfcn.fastfcn_fit_checks import (
    from_per_output, num_batches, warn_about_loss, warn_if_learning_rate_is_zero)
from keras_fastfcn.models.fastfcn.label_check import LabelCheck

IGNORE_LABEL = losses_lib.IGNORE_LABEL
# The official recipe: JPU, head and auxiliary head train at 10x the backbone's rate.
HEAD_LR_MULTIPLIER = 10.0


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class FastFCNImageSegmenter(ImageInputsMixin, keras.Model):
    """FastFCN semantic segmentation (Wu et al., 2019) as a Keras task model.

    A `FastFCNBackbone` (encoder + JPU) and a head (EncNet, PSP, DeepLabV3 or FCN)
    mapping 0-255 RGB images of any size to per-pixel logits `(B, H, W, C)` at the
    input size. For training it also has the official auxiliary FCN head on C4 and,
    with EncNet, the SE (class presence) branch; their outputs exist only when the
    model is called with `training=True`, and `compute_loss` builds their targets
    from the masks. So `fit` takes plain `(images, masks)` (masks int `(B, H, W)`,
    255 = ignore), while `__call__`, `predict` and `export` give logits only.

    `compile()` with its `"auto"` defaults is the official recipe: cross-entropy
    ignoring 255 + `aux_weight` x auxiliary + `se_weight` x SE loss; SGD (momentum
    0.9, coupled weight decay 1e-4) with the JPU, head and auxiliary head at 10x
    the backbone's learning rate, poly decay over each `fit` call; pixel accuracy
    and the official mIoU (all classes) as metrics.

    The graph is built on the backbone's own (so `model.backbone.trainable = False`
    freezes the encoder and JPU in this model): its top-level layers are the
    backbone's (`preprocessing`, the encoder, `jpu`), then `head`, `auxlayer` and the
    resizes to the input (`logits`, `aux_logits`). `model.backbone` is the
    `FastFCNBackbone`.

    Args:
        backbone: a `FastFCNBackbone`.
        num_classes: int >= 2.
        head: a registered head: `"encnet"`, `"psp"`, `"deeplab"` (ASPP) or `"fcn"`.
        aux: bool, train with the auxiliary FCN head on C4 (official: True).
        se_loss: bool or None (default: True for heads with an SE branch, EncNet).
        aux_weight: float, weight of the auxiliary loss (0.2; 0.4 in the official
            PSP and DeepLabV3 scripts).
        se_weight: float, weight of the SE loss (0.2).
        class_names: optional list of `num_classes` names (used by prediction,
            evaluation and export).
        dataset: optional dataset name (palette lookup: `"pascal_context"`,
            `"ade20k"`, `"camvid"`, ...).
        preprocessor: optional `FastFCNImageSegmenterPreprocessor`: `fit`,
            `evaluate` and `predict` pass their data through it (images resized to
            its `image_size`, masks with nearest neighbour), so a dataset of images
            of different sizes can be batched; `model(images)` and exports do not.
        name: model name.
        dtype: dtype policy of the head's layers (e.g. `"mixed_bfloat16"`; default:
            the global policy); saved with the model, like the backbone's.
        **kwargs: standard `keras.Model` arguments (`trainable`).

    Example:
    >>> backbone = FastFCNBackbone(encoder="resnet50", upsampler="jpu", width=64)
    >>> seg = FastFCNImageSegmenter(backbone=backbone, num_classes=11, head="encnet")
    >>> seg.compile()
    >>> seg.fit(images, masks, epochs=2)            # doctest: +SKIP
    >>> seg.backbone.trainable = False               # fine-tune the head only
    >>> seg.predict(keras.ops.zeros((1, 64, 80, 3)), verbose=0).shape
    (1, 64, 80, 11)
    """

    backbone_cls = FastFCNBackbone

    def __init__(self, backbone: FastFCNBackbone, num_classes: int, head: str = "encnet",
                 aux: bool = True, se_loss: Optional[bool] = None, aux_weight: float = 0.2,
                 se_weight: float = 0.2, class_names: Optional[Sequence[str]] = None,
                 dataset: Optional[str] = None, preprocessor=None, name: Optional[str] = None,
                 dtype=None, **kwargs):
        check_model_kwargs(self, kwargs)
        with dtype_policy_scope(dtype):
            if not isinstance(backbone, FastFCNBackbone):
                raise ValueError(
                    f"backbone must be a keras_fastfcn FastFCNBackbone, got {type(backbone).__name__}.")
            if (isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral)
                    or num_classes < 2):
                # Softmax over one class is 1 everywhere: nothing to learn or predict.
                raise ValueError("num_classes must be an int >= 2 (a segmentation model "
                                 "tells classes apart: 2 for object and background), got "
                                 f"{num_classes!r}.")
            num_classes = int(num_classes)
            spec = registry.head(head)
            se_loss = spec.se_loss if se_loss is None else bool(se_loss)
            if se_loss and not spec.se_loss:
                raise ValueError(f"se_loss=True needs a head with an SE branch (encnet), got "
                                 f"head={head!r}.")
            for what, value in (("aux_weight", aux_weight), ("se_weight", se_weight)):
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{what} must be a number >= 0, got {value!r}.")
            if class_names is not None:
                class_names = [str(n) for n in class_names]
                if len(class_names) != num_classes:
                    raise ValueError(f"class_names has {len(class_names)} names but num_classes "
                                     f"is {num_classes}.")
            align_corners = backbone.align_corners

            # === Layers ===
            head_layer = spec.builder(num_classes, se_loss=se_loss,
                                      upsampled=backbone.upsampler is not None,
                                      align_corners=align_corners, name="head")
            aux_layer = FCNHead(num_classes, name="auxlayer") if aux else None

            # === Functional graph (on the backbone's tensors, see the class docstring) ===
            images = backbone.input
            head_out = head_layer(backbone.output)
            se_logits = None
            if se_loss:
                head_out, se_logits = head_out
            # float32 outputs keep losses stable under mixed precision.
            logits = BilinearResize(align_corners, dtype="float32", name="logits")(
                [head_out, images])
            outputs = logits
            if aux or se_loss:
                outputs = {"logits": logits}
                if aux:
                    outputs["aux_logits"] = BilinearResize(
                        align_corners, dtype="float32", name="aux_logits")(
                        [aux_layer(backbone.pyramid_outputs["P4"]), images])
                if se_loss:
                    outputs["se_logits"] = keras.layers.Activation(
                        "linear", dtype="float32", name="se_logits")(se_logits)
            trainable = kwargs.pop("trainable", True)
            super().__init__(inputs=images, outputs=outputs,
                             name=name or "fastfcn_image_segmenter", **kwargs)
            freeze_after_init(self, trainable)

            # === Config ===
            self.backbone = backbone
            self.head_layer = head_layer
            self.aux_layer = aux_layer
            self.head_name = spec.name
            self.num_classes = num_classes
            self.aux = bool(aux)
            self.se_loss = se_loss
            self.aux_weight = float(aux_weight)
            self.se_weight = float(se_weight)
            self.class_names = class_names
            self.dataset = dataset
            self.preprocessor = preprocessor
            self._segmentation_loss = None
            self._poly_schedule = None
            self._class_weight = None  # fit's class_weight, one weight per class

        # ------------------------------------------------------------------ outputs

    def call(self, inputs, training=None, mask=None, **kwargs):
        outputs = super().call(inputs, training=training, mask=mask, **kwargs)
        return outputs if training else _logits(outputs)

    def compute_output_spec(self, inputs, training=None, mask=None):
        outputs = super().compute_output_spec(inputs, training=training, mask=mask)
        return outputs if training else _logits(outputs)

    @property
    def align_corners(self):
        return self.backbone.align_corners

    def get_layer(self, name=None, index=None):
        """`keras.Model.get_layer`; `get_layer("backbone")` is `self.backbone`.

        The backbone's layers are this model's own top-level layers (see the class
        docstring), so the backbone is not a layer of its own in the graph; this
        keeps the usual `model.get_layer("backbone").trainable = False` working.
        """
        if name == "backbone" and index is None:
            return self.backbone
        return super().get_layer(name, index)

    # ----------------------------------------------------------------- training

    def head_layers(self):
        """The layers the official recipe trains at 10x: upsampler, head, aux head."""
        return [layer for layer in (self.backbone.upsampler, self.head_layer, self.aux_layer)
                if layer is not None]

    def lr_multipliers(self, multiplier=HEAD_LR_MULTIPLIER):
        """`{variable path prefix: multiplier}` of `head_layers()` for `SegmentationSGD`."""
        prefixes = {var.path.split("/")[0] for layer in self.head_layers()
                    for var in layer.weights}
        return {prefix: float(multiplier) for prefix in sorted(prefixes)}

    def compile(self, optimizer: Union[str, keras.optimizers.Optimizer] = "auto",
                loss="auto", *, metrics="auto", learning_rate: float = 0.01,
                weight_decay: float = 1e-4, momentum: float = 0.9,
                poly_decay: bool = True, sync_batchnorm: bool = True, **kwargs):
        """Configures training; `"auto"` arguments give the official recipe.

        Args:
            optimizer: `"auto"`: `SegmentationSGD` (momentum, coupled weight decay,
                10x learning rate for JPU, head and aux head) with a per-fit
                `PolyDecay` (each `fit` decays from `learning_rate` to 0 over its own
                steps); or any Keras optimizer.
            loss: `"auto"`: cross-entropy ignoring 255; or any Keras loss for the
                logits (the auxiliary head gets the same loss). The aux and SE terms
                are added by `compute_loss` (weights `aux_weight`, `se_weight`).
            metrics: `"auto"`: pixel accuracy and the official mean IoU (all
                classes, ignoring 255); or a list of Keras metrics on the logits.
            learning_rate: base learning rate for `optimizer="auto"` (the official
                rates are given per 16 images: scale by `batch_size / 16`).
            weight_decay: coupled L2 for `optimizer="auto"`.
            momentum: for `optimizer="auto"`.
            poly_decay: for `optimizer="auto"`: the per-fit poly decay (official);
                False: a constant `learning_rate`, for callbacks that set the rate
                (`keras.callbacks.ReduceLROnPlateau`, `LearningRateScheduler`).
            sync_batchnorm: compiled in the scope of a `tf.distribute` strategy with
                several replicas, compute BatchNorm statistics over all of them (the
                official SyncBN). Without it each replica also keeps moving
                statistics of its own slice of the batch, and a saved model holds
                the first replica's. On JAX nothing to set: under
                `keras.distribution.DataParallel` the statistics are those of the
                whole batch already (one XLA program over all devices).
            **kwargs: other `keras.Model.compile` arguments.

        Example:
        >>> seg = FastFCNImageSegmenter(FastFCNBackbone(width=64), num_classes=3)
        >>> seg.compile(learning_rate=0.004 / 16 * 8)   # ADE20K rate, batch 8
        """
        loss_weights = kwargs.pop("loss_weights", None)
        if isinstance(loss, dict) or isinstance(metrics, dict) or isinstance(loss_weights, dict):
            # The compile config of a 0.1 `.keras` file: one entry per output.
            loss, metrics = from_per_output(self, loss, metrics, loss_weights)
        elif loss_weights is not None:
            raise ValueError("loss_weights: use aux_weight / se_weight of the model instead.")
        if optimizer == "auto":
            self._poly_schedule = (optimizers.PolyDecay(learning_rate, decay_steps=None)
                                   if poly_decay else None)
            optimizer = optimizers.SegmentationSGD(
                self._poly_schedule or float(learning_rate), momentum=momentum,
                l2=weight_decay, lr_multipliers=self.lr_multipliers())
        else:
            schedule = getattr(optimizer, "schedule", None)
            self._poly_schedule = schedule if isinstance(schedule, optimizers.PolyDecay) else None
        if loss == "auto":
            loss = losses_lib.segmentation_loss(IGNORE_LABEL)
        self._segmentation_loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        warn_about_loss(self._segmentation_loss)
        if metrics == "auto":
            metrics = metrics_lib.segmentation_metrics(self.num_classes)
        if sync_batchnorm and keras.config.backend() == "tensorflow":
            # Only on TensorFlow, where compile() may run in a tf.distribute scope
            # (imported here: the models import no backend at module level).
            import tensorflow as tf

            synchronize_batchnorm(self, tf.distribute.get_strategy())
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # What `keras.models.load_model` calls for a compiled file; Keras skips models
        # that override `compile` unless they define this.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _checked_labels(self, y):
        """`y` with invalid values (not a class id, not 255) set to 255, and their
        `[count, smallest, largest]`: the loss and metrics never see them (TensorFlow's
        cross-entropy would fail with a bare graph error, JAX's count them), and
        `LabelCheck` raises a clear error at the end of the step."""
        invalid, stats = losses_lib.invalid_labels(y, self.num_classes, IGNORE_LABEL)
        return keras.ops.where(invalid, IGNORE_LABEL, keras.ops.cast(y, "int32")), stats

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        extra = y_pred if isinstance(y_pred, dict) else {}
        logits = _logits(y_pred)
        _check_mask_shape(y, logits)
        y, _ = self._checked_labels(y)
        # `fit(class_weight=...)` weighs the training loss only, as in Keras.
        pixels = losses_lib.pixel_weights(y, sample_weight,
                                          self._class_weight if training else None)
        total = super().compute_loss(x=x, y=y, y_pred=logits, sample_weight=pixels,
                                     training=training)
        if "aux_logits" in extra and self.aux_weight:
            total = total + self.aux_weight * self._segmentation_loss(
                y, extra["aux_logits"], pixels)
        if "se_logits" in extra and self.se_weight:
            presence = losses_lib.class_presence(y, self.num_classes)
            total = total + self.se_weight * losses_lib.se_loss()(
                presence, extra["se_logits"], losses_lib.image_weights(sample_weight))
        return total

    def _use_class_weight(self, class_weight):
        """Checks `fit`'s / `train_on_batch`'s `class_weight` (a dict class id ->
        weight, as Keras', missing classes 1.0) and keeps it for the training step as
        one weight per class; a step traced with other class weights is traced again.
        Keras' own handling reads each mask as one class id and fails."""
        table = None
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise ValueError("class_weight must be a dict {class id: weight}, got "
                                 f"{type(class_weight).__name__}.")
            bad = [k for k in class_weight if isinstance(k, bool) or not isinstance(
                k, numbers.Integral) or not 0 <= k < self.num_classes]
            if bad:
                raise ValueError(f"class_weight has keys {bad} that are not class ids "
                                 f"0..{self.num_classes - 1} (num_classes={self.num_classes}).")
            values = {int(k): v for k, v in class_weight.items()}
            for k, v in values.items():
                if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"class_weight[{k}] must be a number >= 0, got {v!r}.")
            table = tuple(float(values.get(c, 1.0)) for c in range(self.num_classes))
        if table != self._class_weight:
            self._class_weight = table
            self.train_function = None  # the traced step holds the weights as constants

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        _check_mask_shape(y, _logits(y_pred))  # JAX and PyTorch compute these first
        y, stats = self._checked_labels(y)
        # Per-image weights as per-pixel ones (the metrics count pixels of weight > 0).
        logs = dict(super().compute_metrics(x, y, _logits(y_pred),
                                            losses_lib.pixel_weights(y, sample_weight)))
        logs.update(LabelCheck.logs(stats))
        return logs

    def get_metrics_result(self):
        # The label check's entries too (as zeros: nothing met outside a step), so that
        # a step's logs and the metrics' results have the same keys; Keras reports the
        # last step's logs instead of the metrics' results where they differ.
        logs = dict(super().get_metrics_result())
        for key in LabelCheck.KEYS:
            logs.setdefault(key, 0.0)
        return logs

    def evaluate(self, x=None, y=None, *args, callbacks=None, return_dict=False, **kwargs):
        """`keras.Model.evaluate`; labels other than `0..C-1` and 255 raise `ValueError`;
        the data goes through the model's `preprocessor` first, if it has one."""
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation: done by fit
            x, y = self._preprocessed(x, y, kwargs.get("batch_size"))
        logs = super().evaluate(x, y, *args, callbacks=LabelCheck.added_to(callbacks, self),
                                return_dict=True, **kwargs)
        return self._checked_logs(logs, return_dict)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, the images through the model's `preprocessor` first, if
        it has one (the logits are then at the preprocessor's `image_size`)."""
        x, _ = self._preprocessed(x, None, kwargs.get("batch_size"))
        return super().predict(x, *args, **kwargs)

    def _preprocessed(self, x, y=None, batch_size=None):
        """`(x, y)` through `self.preprocessor` (keras-hub's tasks do the same).

        A `tf.data.Dataset` is mapped: its elements are `(images, masks)` pairs or
        images, batched or single; single images of any size are batched after their
        resize (`batch_size`, 32 by default, as Keras). A `keras.utils.PyDataset` or a
        generator has each batch preprocessed as it comes. Arrays go through at once.
        """
        pre = self.preprocessor
        if pre is None or x is None:
            return x, y
        if isinstance(x, keras.utils.PyDataset):
            return _PreprocessedPyDataset(x, pre), y
        if isinstance(x, types.GeneratorType):
            return (_preprocessed_batch(pre, batch) for batch in x), y
        if hasattr(x, "map") and hasattr(x, "element_spec"):  # a tf.data.Dataset
            spec = x.element_spec
            images = spec[0] if isinstance(spec, tuple) else spec
            x = x.map(pre)
            if getattr(images, "shape", None) is not None and images.shape.rank == 3:
                x = x.batch(batch_size or 32)
            return x, y
        if y is None:
            return pre(x), None
        return pre(x, y)

    def train_on_batch(self, x=None, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """`keras.Model.train_on_batch`; `class_weight` weighs each class's pixels in
        the loss (`fit`), and layers frozen since the last step stay frozen."""
        self._settle_training_step(class_weight)
        return self._checked_logs(super().train_on_batch(x, y, sample_weight=sample_weight,
                                                         return_dict=True), return_dict)

    def test_on_batch(self, *args, return_dict=False, **kwargs):
        return self._checked_logs(super().test_on_batch(*args, return_dict=True, **kwargs),
                                  return_dict)

    def _checked_logs(self, logs, return_dict):
        """`logs` after `LabelCheck`, as a dict or in Keras' list order (the loss, the
        compiled metrics in compile order, then any other logs by name; one value
        alone as a scalar)."""
        logs = dict(logs)
        LabelCheck.check(logs, self.num_classes)
        if return_dict:
            return logs
        values = _keras_private.logs_in_order(self, logs)
        return values[0] if len(values) == 1 else values

    def fit(self, x=None, y=None, epochs=1, steps_per_epoch=None, initial_epoch=0, **kwargs):
        """`keras.Model.fit`; with `compile()`'s poly schedule, each call decays anew.

        `compile()`'s `PolyDecay` is per fit: every `fit` call runs the official poly
        decay from the compiled learning rate to 0 over its own
        `(epochs - initial_epoch) * steps_per_epoch` steps (`steps_per_epoch` from the
        argument or the dataset's known size). So a second `fit` (after freezing the
        backbone, or on a model from `keras.models.load_model`) trains again. A fixed
        schedule that has run out (`PolyDecay(decay_steps=N)` past step N, as
        `.keras` files of keras_fastfcn 0.2 hold) is warned about: it trains nothing.

        Keras' weighting works on masks: `sample_weight` per image `(batch,)` or per
        pixel `(batch, height, width)`, and `class_weight={class id: weight}` on each
        class's pixels (training loss only; the metrics count every labelled pixel).
        The weighted losses are averaged over the labelled pixels, as Keras does
        (`keras_fastfcn.losses.pixel_weights`).
        """
        _check_rate_callbacks(self.optimizer, kwargs.get("callbacks"))
        x, y = self._preprocessed(x, y, kwargs.get("batch_size"))
        validation = kwargs.get("validation_data")
        if validation is not None and self.preprocessor is not None:
            if isinstance(validation, (tuple, list)) and len(validation) >= 2:
                # (x, y[, sample_weight]): the weights pass through as they are.
                kwargs["validation_data"] = (*self._preprocessed(
                    validation[0], validation[1], kwargs.get("batch_size")),
                    *validation[2:])
            else:
                kwargs["validation_data"] = self._preprocessed(
                    validation, None, kwargs.get("batch_size"))[0]
        self._settle_training_step(kwargs.pop("class_weight", None))
        schedule = self._poly_schedule
        callbacks = LabelCheck.added_to(kwargs.get("callbacks"), self)
        window = None
        if schedule is not None and schedule.per_fit:
            steps = steps_per_epoch or num_batches(x, kwargs.get("batch_size"),
                                                   kwargs.get("validation_split") or 0.0)
            if not steps:
                raise ValueError(
                    "compile()'s poly learning-rate decay needs the length of the run: pass "
                    "steps_per_epoch to fit (the dataset's size is unknown), or compile with "
                    "an optimizer of your own.")
            first = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
            span = max(int(epochs) - int(initial_epoch), 1) * int(steps)
            if schedule.start_fit(first, span):
                # The traced step holds the schedule's window as constants (not on
                # TensorFlow, where it reads the window when it runs).
                self.train_function = None
            window = _ResumedFitWindow(schedule, int(initial_epoch), int(steps), span)
            if isinstance(callbacks, keras.callbacks.CallbackList):
                # The user's own list, used as it is: the window leaves it again
                # below, or a second `fit` with the list would carry this one's.
                window.set_model(self)
                callbacks.callbacks.append(window)
            else:
                callbacks = list(callbacks) + [window]
        warn_if_learning_rate_is_zero(self.optimizer)
        kwargs["callbacks"] = callbacks
        try:
            return super().fit(x, y, epochs=epochs, steps_per_epoch=steps_per_epoch,
                               initial_epoch=initial_epoch, **kwargs)
        finally:
            if isinstance(callbacks, keras.callbacks.CallbackList) and \
                    window in callbacks.callbacks:
                callbacks.callbacks.remove(window)
            if schedule is not None and schedule.per_fit and schedule.end_fit():
                # Outside a fit the rate is the compiled one again (`train_on_batch`
                # after a fit ran at the window's end: 0, and trained nothing).
                self.train_function = None

    def _settle_training_step(self, class_weight):
        """What `fit` and `train_on_batch` settle before Keras runs (or traces) a
        training step: the class weights it holds, an optimizer for the layers
        trainable now, and the optimizer's slots and the metrics' state, which created
        during the first trace make TensorFlow trace it twice."""
        self._use_class_weight(class_weight)
        self._rebuild_optimizer_if_trainables_changed()
        _keras_private.build_before_tracing(self)

    def _rebuild_optimizer_if_trainables_changed(self):
        """A new optimizer (same config, same state where a variable kept it) when
        layers were frozen or unfrozen since it was built.

        JAX steps need the optimizer's slots 1:1 with the trainable variables, and
        no backend updates a variable it was not built for: Keras asks for another
        `compile()`, which would also drop the momentum of the layers still trained.
        """
        optimizer = self.optimizer
        if optimizer is None or not optimizer.built:
            return
        built = _keras_private.optimizer_built_variables(optimizer)
        if [id(v) for v in built] == [id(v) for v in self.trainable_variables]:
            return
        state = {v.name: v for v in optimizer.variables}
        self.compile(**keras.saving.deserialize_keras_object(self.get_compile_config()))
        self.optimizer.build(self.trainable_variables)
        for variable in self.optimizer.variables:
            old = state.get(variable.name)
            if old is not None and tuple(old.shape) == tuple(variable.shape):
                variable.assign(old)

    # ------------------------------------------------------------------- config

    def get_config(self):
        # Don't chain to super: the functional config cannot rebuild this class.
        return {
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "head": self.head_name,
            "aux": self.aux,
            "se_loss": self.se_loss,
            "aux_weight": self.aux_weight,
            "se_weight": self.se_weight,
            "class_names": self.class_names,
            "dataset": self.dataset,
            "preprocessor": (keras.layers.serialize(self.preprocessor)
                             if self.preprocessor is not None else None),
            "name": self.name,
            "trainable": self.trainable,
            "frozen_layers": frozen_layers(self),
            "dtype": dtype_config(self),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        frozen = config.pop("frozen_layers", None)
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        model = cls(**config)
        freeze_layers(model, frozen)
        return model

    # ------------------------------------------------------------------ presets

    presets = presets_lib.ClassPresets()

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True,
                    checkpoint: Optional[str] = None, **kwargs) -> "FastFCNImageSegmenter":
        """A segmenter from a preset: a released model's name or a preset folder.

        Args:
            preset: a name from `FastFCNImageSegmenter.presets` (the authors'
                released models: downloaded once into the Keras cache, verified,
                converted and cached; PyTorch is needed for that one conversion), or
                the path of a folder written by `save_to_preset`.
            load_weights: False builds the architecture with random weights, with no
                download (and no network access at all).
            checkpoint: path of the released model's checkpoint file downloaded by
                hand (offline machines, a refused download): converted and cached
                instead of downloading. Only for a released model's name.
            **kwargs: constructor arguments that override the preset's (e.g.
                `class_names`).

        Example:
        >>> seg = FastFCNImageSegmenter.from_preset(
        ...     "fastfcn_encnet_jpu_resnet50_pcontext", load_weights=False)
        >>> seg.num_classes
        59
        """
        return presets_lib.load_segmenter(cls, preset, load_weights=load_weights,
                                          checkpoint=checkpoint, **kwargs)

    def save_to_preset(self, preset_dir: str) -> str:
        """Writes this model as a preset folder (`from_preset(preset_dir)` loads it);
        returns the folder.

        Example:
        >>> seg = FastFCNImageSegmenter(FastFCNBackbone(width=64), num_classes=3)
        >>> seg.save_to_preset("my_preset")
        'my_preset'
        >>> FastFCNImageSegmenter.from_preset("my_preset").num_classes
        3
        """
        return presets_lib.save_segmenter(self, preset_dir)


class _ResumedFitWindow(keras.callbacks.Callback):
    """Moves the per-fit decay's window back to where the interrupted `fit` began
    when `keras.callbacks.BackupAndRestore` restored it to a later epoch, so that the
    resumed fit continues the decay instead of starting it again (`fit` set the
    window from the optimizer's step before the callback restored it)."""

    def __init__(self, schedule, initial_epoch, steps_per_epoch, span):
        super().__init__()
        self.schedule = schedule
        self.initial_epoch = initial_epoch
        self.steps_per_epoch = steps_per_epoch
        self.span = span

    def on_train_begin(self, logs=None):
        restored = _keras_private.restored_epoch(self.model)
        if not restored or restored <= self.initial_epoch:
            return
        now = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        first = now - (restored - self.initial_epoch) * self.steps_per_epoch
        if self.schedule.start_fit(first, self.span):
            self.model.make_train_function(force=True)


def _preprocessed_batch(pre, batch):
    """A batch of a `PyDataset` or a generator (`images`, or `(images[, masks[,
    sample_weight]])`) through the preprocessor, in the same form."""
    if not isinstance(batch, (tuple, list)):
        return pre(batch)
    out = pre(*batch)
    return out if isinstance(out, tuple) else (out,)


class _PreprocessedPyDataset(keras.utils.PyDataset):
    """A user's `keras.utils.PyDataset` whose batches go through the preprocessor,
    with the same workers and epoch hooks."""

    def __init__(self, data, preprocessor):
        super().__init__(workers=data.workers, use_multiprocessing=data.use_multiprocessing,
                         max_queue_size=data.max_queue_size)
        self.data, self.preprocessor = data, preprocessor

    def __len__(self):
        return len(self.data)

    @property
    def num_batches(self):
        return self.data.num_batches

    def __getitem__(self, index):
        return _preprocessed_batch(self.preprocessor, self.data[index])

    def on_epoch_begin(self):
        self.data.on_epoch_begin()

    def on_epoch_end(self):
        self.data.on_epoch_end()


def _check_rate_callbacks(optimizer, callbacks):
    """A `ValueError` before training when a callback would set the learning rate of
    an optimizer that follows a schedule: Keras raises a `TypeError` only when the
    callback first sets it (`ReduceLROnPlateau`: at the first plateau, hours in)."""
    schedule = getattr(optimizer, "schedule", None)  # SegmentationSGD's, as compiled
    if schedule is None:
        return
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    for callback in callbacks or ():
        if isinstance(callback, (keras.callbacks.ReduceLROnPlateau,
                                 keras.callbacks.LearningRateScheduler)):
            raise ValueError(
                f"{type(callback).__name__} sets the learning rate, but the optimizer "
                f"follows a schedule ({type(schedule).__name__}, compile()'s official "
                "poly decay unless you chose another), whose rate cannot be set: "
                "compile(poly_decay=False) for a constant rate the callback can set, or "
                "drop the callback.")


def _check_mask_shape(masks, logits):
    """A `ValueError` naming the shapes unless `masks` are class ids `(B, H, W)` (or
    `(B, H, W, 1)`) at the logits' (the images') size, as far as the traced shapes
    tell; Keras' loss would fail with a graph error on the cross-entropy instead."""
    shape, size = tuple(masks.shape), tuple(logits.shape)[1:3]
    if len(shape) == 4 and shape[-1] not in (1, None):
        raise ValueError(f"masks must be class ids (batch, height, width), got shape {shape}: "
                         "one-hot masks? Pass their argmax over the last axis.")
    if len(shape) not in (3, 4):
        raise ValueError(f"masks must be class ids (batch, height, width), got shape {shape}.")
    if any(m is not None and s is not None and m != s for m, s in zip(shape[1:3], size)):
        raise ValueError(f"masks are {shape[1]}x{shape[2]} but the images are "
                         f"{size[0]}x{size[1]} (height x width): masks must have the size of "
                         "their images (resize them with nearest neighbour).")


def _logits(outputs):
    return outputs["logits"] if isinstance(outputs, dict) else outputs
