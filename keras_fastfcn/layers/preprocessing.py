"""In-model input normalization, so the model takes 0-255 RGB images, and its input check."""

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")

# keras.applications' `preprocess_input` modes and the official FastFCN mean/std.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "none")


@_register
class ImageNormalization(keras.layers.Layer):
    """Maps 0-255 RGB images to what a backbone's weights expect.

    Args:
        mode: one of
            - `"caffe"`: RGB -> BGR and subtract the ImageNet mean, no scaling
              (keras.applications ResNet v1 ImageNet weights);
            - `"tf"`: scale to [-1, 1] (keras.applications ResNet v2);
            - `"torch"`: `(x / 255 - mean) / std` with mean (.485, .456, .406) and
              std (.229, .224, .225) (the official FastFCN checkpoints);
            - `"none"`: identity (inputs are already normalized).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> norm = ImageNormalization("torch")
    >>> norm(keras.ops.full((1, 2, 2, 3), 255.0)).shape
    (1, 2, 2, 3)
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode is None:
            mode = "none"
        if mode not in MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}: expected one of {MODES}.")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if x.shape[-1] is None:
            # A graph traced with every dimension unknown (tf.function relaxes shapes
            # after retracing, as `predict` on images of varying sizes does), where
            # `check_image_batch` cannot see the channels: pinning them to 3 makes 1 or
            # 4 channels fail here (a reshape of the wrong size) instead of a grayscale
            # image broadcasting silently into three channels.
            shape = ops.shape(x)
            x = ops.reshape(x, (shape[0], shape[1], shape[2], 3))
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode)
        return config


def check_image_batch(images, name="images", channels=3):
    """Raises a `ValueError` naming the problem unless `images` is `(B, H, W, channels)`.

    Works on eager tensors, numpy arrays and symbolic `KerasTensor`s (static shape
    only: unknown dimensions pass).
    """
    shape = tuple(getattr(images, "shape", ()))
    dtype = str(getattr(images, "dtype", ""))
    if (any(word in dtype for word in ("string", "bool", "complex", "object", "str"))
            or dtype.lstrip("<>|=").startswith(("U", "S"))):  # numpy: <U5, |S3
        raise ValueError(f"{name} must be a real-valued image tensor (uint8 or float), got "
                         f"dtype {dtype}.")
    if len(shape) != 4:
        hint = ""
        if len(shape) == 3 and shape[-1] in (1, 3, 4):
            hint = " Add a batch axis, e.g. images[None]."
        elif len(shape) == 2:
            hint = " A 2-D array is a single grayscale image: convert it to RGB (H, W, 3) and add a batch axis."
        raise ValueError(
            f"{name} must be a 4-D batch (batch, height, width, {channels}), got shape {shape}.{hint}"
        )
    if shape[-1] is not None and shape[-1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels (RGB, 0-255), got {shape[-1]} in shape {shape}. "
            "Convert grayscale or RGBA images to RGB first."
        )
    if 0 in shape[:3]:
        what = "an empty batch" if shape[0] == 0 else "an image of 0 pixels"
        raise ValueError(f"{name} is {what}: shape {shape}; give at least one image of "
                         "at least 1x1 pixels.")

