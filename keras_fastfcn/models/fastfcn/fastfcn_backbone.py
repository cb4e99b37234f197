"""`FastFCNBackbone`: encoder (a ResNet) + upsampler (JPU), images -> stride-8 features."""

import contextlib
import inspect
import numbers
import warnings
from typing import Optional, Sequence

import keras

from keras_fastfcn._keras_private import sublayers
from keras_fastfcn.layers.preprocessing import ImageNormalization, check_image_batch
from keras_fastfcn.models import presets as presets_lib
from keras_fastfcn.models import registry


class ImageInputsMixin:
    """Checks the images a model is called on (shape, channels, dtype) before Keras does.

    A wrong input (a 2-D image, 1 or 4 channels, a string tensor) then fails with a
    `ValueError` naming the problem instead of an error from deep inside a conv.
    """

    def __call__(self, *args, **kwargs):
        images = args[0] if args else kwargs.get("inputs")
        if images is not None and not isinstance(images, dict):
            check_image_batch(images)
        return super().__call__(*args, **kwargs)

    # `fit`, `evaluate` and `predict` slice arrays into batches before calling the
    # model: check the whole array first, so the message shows the user's shape
    # (an H x W x 3 image), not the slice Keras made of it.
    def fit(self, x=None, *args, **kwargs):
        _check_array(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        _check_array(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        _check_array(x)
        return super().predict(x, *args, **kwargs)


def _check_array(x):
    """`check_image_batch` for an array or tensor given to fit/evaluate/predict."""
    if x is not None and hasattr(x, "shape") and hasattr(x, "dtype"):
        check_image_batch(x)


def check_positive_int(value, what):
    """`value` as an int if it is an integer >= 1 (numpy integers too); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}.")
    return int(value)


def check_model_kwargs(model, kwargs):
    """A `TypeError` naming the keyword arguments of `model`'s constructor that are
    neither its own nor `trainable`: Keras' functional init drops unknown keywords,
    so a misspelt `num_clases=5` would silently give the default model."""
    unknown = sorted(set(kwargs) - {"trainable"})
    if unknown:
        own = [p for p in inspect.signature(type(model).__init__).parameters
               if p not in ("self", "kwargs")]
        raise TypeError(f"{type(model).__name__} got unexpected keyword argument(s) "
                        f"{registry.with_hints(unknown, own)}.")


def freeze_after_init(model, trainable):
    """Applies a `trainable=False` constructor argument once `model` tracks its layers.

    Keras' functional init sets the flag before it tracks the graph's layers, so the
    layers stay trainable: a backbone saved frozen would come back from its config
    with every variable trainable (and a segmenter built on it would fine-tune it).
    `True` is left alone, so that layers frozen one by one stay frozen.
    """
    if not trainable:
        model.trainable = False


def frozen_layers(model):
    """The `/`-joined name paths of the layers frozen one by one inside `model`
    (`trainable=False` under a trainable parent), for its config.

    The models rebuild their layers from arguments, so a config keeps only the model's
    own `trainable`; without these paths a model with a frozen encoder or head layer
    would reload with it trainable (and train it, without the optimizer state saved
    for the other variables)."""
    paths = []

    def walk(layer, prefix):
        for child in sublayers(layer):
            if not child.trainable:
                paths.append(prefix + child.name)
            else:
                walk(child, prefix + child.name + "/")

    if model.trainable:
        walk(model, "")
    return paths


def freeze_layers(model, paths):
    """Sets `trainable=False` on the layers of `model` at `paths` (`frozen_layers`).
    A path that names no layer (a config edited by hand, a renamed layer) is skipped
    with a warning: the model still loads."""
    for path in paths or ():
        layer = model
        for name in path.split("/"):
            layer = next((c for c in sublayers(layer) if c.name == name), None)
            if layer is None:
                break
        if layer is None:
            warnings.warn(f"{model.name}: no layer {path!r} to freeze, as its config "
                          "says; it stays trainable.", stacklevel=2)
        else:
            layer.trainable = False


@contextlib.contextmanager
def channels_last():
    """Builds layers channels-last whatever `keras.config.image_data_format()` says:
    the models are NHWC (the layers of this package pin `data_format` themselves;
    an encoder from keras.applications or a registry takes the global one)."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")
    try:
        yield
    finally:
        keras.config.set_image_data_format(previous)


@contextlib.contextmanager
def dtype_policy_scope(dtype):
    """Builds layers under `dtype` (a policy name, dict or `DTypePolicy`; None: the
    global policy as it is), restoring the global policy afterwards.

    Keras layers keep their policy in their own configs; our models rebuild their
    layers from arguments, so the models take `dtype` and save it: without it a
    `mixed_bfloat16` model would reload under the global policy."""
    if dtype is None:
        yield
        return
    previous = keras.config.dtype_policy()
    policy = (keras.dtype_policies.deserialize(dtype) if isinstance(dtype, dict)
              else keras.dtype_policies.get(dtype))
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def dtype_config(model):
    """The `dtype` entry of `model`'s config: its policy, serialized."""
    return keras.dtype_policies.serialize(model.dtype_policy)


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class FastFCNBackbone(ImageInputsMixin, keras.Model):
    """FastFCN backbone (Wu et al., 2019): a ResNet encoder and a Joint Pyramid Upsampler.

    Maps 0-255 RGB images of any size to stride-8 features. The images are normalized
    inside the graph for the encoder's weights (layer `preprocessing`), the encoder
    returns C2..C5 (strides 4, 8, 16, 32), and with an upsampler (`"jpu"` or
    `"jpu_x"`) the encoder runs at output stride 32 and the upsampler (layer `jpu`)
    builds stride-8 features from C3, C4, C5: `4 * width` channels for the JPU. With
    `upsampler=None` the encoder itself is dilated to `output_stride` (8 by default),
    the paper's DilatedFCN baseline, and the features are its C5 (2048 channels).

    `pyramid_outputs` holds the encoder's `{"P2": c2, ..., "P5": c5}` symbolic
    tensors, for heads that need more than the stride-8 features (the auxiliary FCN
    head reads C4), as keras-hub backbones do. The encoder is `backbone.encoder`
    (a `keras.Model`), the upsampler layer `backbone.upsampler` (None when dilated).

    Normalization is part of this graph (unlike keras-hub, whose image converters
    normalize outside the model) so that every entry point, `model(images)`,
    `predict`, SavedModel, ONNX and TFLite, takes the same raw 0-255 RGB images.

    Args:
        encoder: a registered encoder (`keras_fastfcn.models.registry`):
            `"resnet50"`, `"resnet101"`, `"resnet152"` (keras.applications) or the
            official deep-stem `"resnet50s"`, `"resnet101s"`, `"resnet152s"`.
        upsampler: `"jpu"`, `"jpu_x"` or None (dilated encoder, no upsampler).
        width: int, the upsampler's width (512 in the paper).
        output_stride: the encoder's output stride: 32 (or None) with an upsampler;
            8 (default), 16 or 32 without.
        encoder_weights: None (random init), `"imagenet"` (keras.applications
            ResNets, downloaded on first use) or a path to weights of the encoder.
        preprocessing: `"auto"` (the normalization of the encoder's weights:
            caffe-style for keras.applications, ImageNet mean/std for the deep-stem
            ResNets) or an `ImageNormalization` mode.
        align_corners: bool, resize semantics of the upsampler (True officially).
        remat: bool, recompute the upsampler's separable-conv intermediates in the
            backward pass instead of storing them (same results, less memory).
        input_shape: `(H, W, 3)`; H and W may be None.
        name: model name.
        dtype: dtype policy of the layers (e.g. `"mixed_bfloat16"`; default: the
            global policy); saved with the model.
        **kwargs: standard `keras.Model` arguments (`trainable`).

    Example:
    >>> backbone = FastFCNBackbone(encoder="resnet50", upsampler="jpu", width=64)
    >>> backbone(keras.ops.zeros((1, 64, 96, 3))).shape
    (1, 8, 12, 256)
    >>> backbone.pyramid_outputs["P4"].shape
    (None, None, None, 1024)
    """

    def __init__(self, encoder: str = "resnet50", upsampler: Optional[str] = "jpu",
                 width: int = 512, output_stride: Optional[int] = None,
                 encoder_weights: Optional[str] = None, preprocessing: str = "auto",
                 align_corners: bool = True, remat: bool = True,
                 input_shape: Sequence[Optional[int]] = (None, None, 3),
                 name: Optional[str] = None, dtype=None, **kwargs):
        check_model_kwargs(self, kwargs)
        with dtype_policy_scope(dtype):
            spec = registry.encoder(encoder)
            upsampler = registry.upsampler_name(upsampler)
            width = check_positive_int(width, "width")
            if upsampler is not None:
                if output_stride not in (None, 32):
                    raise ValueError(
                        f"upsampler={upsampler!r} works on a stride-32 encoder; got "
                        f"output_stride={output_stride}. Use upsampler=None for a dilated encoder.")
                output_stride = 32
            elif output_stride is None:
                output_stride = 8
            input_shape = tuple(input_shape)
            if len(input_shape) != 3 or input_shape[-1] != 3:
                raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}.")
            if preprocessing == "auto":
                preprocessing = spec.preprocessing

            # === Layers ===
            normalize = ImageNormalization(preprocessing, name="preprocessing")
            with channels_last():  # keras.applications reads the global data format
                encoder_model = registry.build_encoder(spec.name, output_stride,
                                                       encoder_weights)
            upsample = (registry.UPSAMPLERS[upsampler](width, align_corners, remat, "jpu")
                        if upsampler is not None else None)

            # === Functional graph ===
            images = keras.Input(shape=input_shape, name="images")
            c2, c3, c4, c5 = encoder_model(normalize(images))
            features = upsample([c3, c4, c5]) if upsample is not None else c5
            trainable = kwargs.pop("trainable", True)
            super().__init__(inputs=images, outputs=features, name=name or "fastfcn_backbone",
                             **kwargs)
            freeze_after_init(self, trainable)

            # === Config ===
            self.pyramid_outputs = {"P2": c2, "P3": c3, "P4": c4, "P5": c5}
            self.encoder = encoder_model
            self.upsampler = upsample
            self.encoder_name = spec.name
            self.upsampler_name = upsampler
            self.width = width
            self.output_stride = output_stride
            self.preprocessing = preprocessing
            self.align_corners = bool(align_corners)
            self.remat = bool(remat)
            self.image_shape = input_shape

    def get_config(self):
        # The encoder weights travel with the saved file: rebuilding must not
        # download or read any, so `encoder_weights` is left out.
        return {
            "encoder": self.encoder_name,
            "upsampler": self.upsampler_name,
            "width": self.width,
            "output_stride": self.output_stride,
            "preprocessing": self.preprocessing,
            "align_corners": self.align_corners,
            "remat": self.remat,
            "input_shape": list(self.image_shape),
            "name": self.name,
            "trainable": self.trainable,
            "frozen_layers": frozen_layers(self),
            "dtype": dtype_config(self),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        frozen = config.pop("frozen_layers", None)
        model = cls(**config)
        freeze_layers(model, frozen)
        return model

    presets = presets_lib.ClassPresets()

    @classmethod
    def from_preset(cls, preset: str, load_weights: bool = True,
                    checkpoint: Optional[str] = None) -> "FastFCNBackbone":
        """The backbone (encoder + upsampler) of a preset.

        Args:
            preset: a released model's name (`FastFCNBackbone.presets`) or a folder
                written by `FastFCNImageSegmenter.save_to_preset`.
            load_weights: False builds the architecture with random weights, with no
                download (and no network access at all).
            checkpoint: the released model's checkpoint file downloaded by hand (see
                `FastFCNImageSegmenter.from_preset`).

        Example:
        >>> backbone = FastFCNBackbone.from_preset(
        ...     "fastfcn_encnet_jpu_resnet50_pcontext", load_weights=False)
        >>> backbone.upsampler.name
        'jpu'
        """
        return presets_lib.load_backbone(cls, preset, load_weights=load_weights,
                                         checkpoint=checkpoint)
