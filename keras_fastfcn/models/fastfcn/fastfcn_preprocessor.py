"""Image converter and preprocessor of FastFCN: resizing images and masks for batching.

As keras-hub's `ImageConverter` / `ImageSegmenterPreprocessor` pair, with one
difference: FastFCN models normalize inside their graph (the backbone's
`preprocessing` layer, per the encoder's weights), so that `model(images)`, SavedModel,
ONNX and TFLite all take raw 0-255 RGB. What is left outside the model is what a
batch needs: one size for every image (bilinear, `align_corners` as the model) and
the matching masks (nearest neighbour lined up with it, so class ids stay class ids
and stay on their pixels).

Example:
>>> pre = FastFCNImageSegmenterPreprocessor(FastFCNImageConverter(image_size=(256, 256)))
>>> ds = ds.map(pre)            # (image, mask) -> resized (image, mask)   # doctest: +SKIP
"""

import sys

import keras
from keras import ops

from keras_fastfcn.layers.resize import resize_bilinear, resize_nearest

_register = keras.saving.register_keras_serializable(package="keras_fastfcn")


def _tf_data_tensor(x):
    """Whether `x` is a TensorFlow tensor met on another Keras backend (in `tf.data`).

    Keras' own preprocessing layers switch to TensorFlow ops there (a private
    `DataLayer`), as keras-hub's preprocessors do: JAX and PyTorch ops cannot take a
    symbolic `tf.Tensor`. The two layers below do the same in `__call__`.
    """
    tf = sys.modules.get("tensorflow")
    return (tf is not None and keras.config.backend() != "tensorflow"
            and isinstance(x, tf.Tensor))


def _check_size(image_size):
    if image_size is None:
        return None
    size = tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be (height, width) > 0 or None, got {image_size!r}.")
    return size


@_register
class FastFCNImageConverter(keras.layers.Layer):
    """Converts images to float32 0-255 RGB at `image_size` (None: sizes unchanged).

    Args:
        image_size: `(height, width)` or None.
        align_corners: bool, bilinear resize semantics (the model's; True officially).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> FastFCNImageConverter((64, 96))(np.zeros((2, 30, 40, 3), "uint8")).shape
    (2, 64, 96, 3)
    """

    def __init__(self, image_size=None, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _check_size(image_size)
        self.align_corners = bool(align_corners)

    def __call__(self, images, **kwargs):
        if _tf_data_tensor(images):
            return self._tf_call(images)
        return super().__call__(images, **kwargs)

    def call(self, images):
        images = ops.cast(images, "float32")
        single = len(images.shape) == 3
        if single:
            images = images[None]
        if self.image_size is not None:
            images = resize_bilinear(images, self.image_size, self.align_corners)
        return images[0] if single else images

    def _tf_call(self, images):
        """`call` in TensorFlow ops (in `tf.data` on another backend): the same
        PyTorch-style bilinear resize, TensorFlow's `ResizeBilinear` kernel."""
        tf = sys.modules["tensorflow"]
        images = tf.cast(images, tf.float32)
        single = images.shape.rank == 3
        if single:
            images = images[None]
        if self.image_size is not None:
            images = tf.raw_ops.ResizeBilinear(
                images=images, size=self.image_size, align_corners=self.align_corners,
                half_pixel_centers=not self.align_corners)
        return images[0] if single else images

    def compute_output_shape(self, input_shape):
        if self.image_size is None:
            return tuple(input_shape)
        return tuple(input_shape[:-3]) + self.image_size + (input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, align_corners=self.align_corners)
        return config


@_register
class FastFCNImageSegmenterPreprocessor(keras.layers.Layer):
    """`(images, masks, sample_weight)` -> the same, images converted, masks matched.

    Masks are int class ids `(B, H, W)` or `(B, H, W, 1)` (255 = ignore); they come
    out `(B, H, W)` int32, resized with nearest neighbour to the converted images'
    size when `resize_output_mask` (the default, so batches line up), lined up with
    the images' bilinear resize (`keras_fastfcn.layers.resize_nearest`).

    Args:
        image_converter: a `FastFCNImageConverter` (None: images only cast).
        resize_output_mask: bool.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> pre = FastFCNImageSegmenterPreprocessor(FastFCNImageConverter((32, 32)))
    >>> x, y = pre(np.zeros((1, 20, 20, 3)), np.zeros((1, 20, 20), "int32"))
    >>> x.shape, y.shape
    ((1, 32, 32, 3), (1, 32, 32))
    """

    def __init__(self, image_converter=None, resize_output_mask=True, **kwargs):
        super().__init__(**kwargs)
        self.image_converter = image_converter or FastFCNImageConverter()
        self.resize_output_mask = bool(resize_output_mask)

    def __call__(self, x, y=None, sample_weight=None, **kwargs):
        if _tf_data_tensor(x):  # no Keras conversion of the inputs (see _tf_data_tensor)
            return self.call(x, y, sample_weight)
        return super().__call__(x, y, sample_weight, **kwargs)

    def call(self, x, y=None, sample_weight=None):
        x = self.image_converter(x)
        if y is not None:
            y = self._resize_masks(y, len(x.shape))
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def _resize_masks(self, y, image_rank):
        tf = sys.modules["tensorflow"] if _tf_data_tensor(y) else None
        y = tf.cast(y, tf.int32) if tf else ops.cast(y, "int32")
        if len(y.shape) == image_rank:  # (B, H, W, 1)
            y = y[..., 0]
        size = self.image_converter.image_size
        if self.resize_output_mask and size is not None:
            # Nearest neighbour lined up with the images' bilinear resize (its
            # `align_corners`), so each label stays on the pixels it labels.
            align = self.image_converter.align_corners
            single = len(y.shape) == 2
            masks = (y[None] if single else y)[..., None]
            if tf:  # TensorFlow's kernel, the values of `resize_nearest`
                masks = tf.raw_ops.ResizeNearestNeighbor(
                    images=masks, size=size, align_corners=align,
                    half_pixel_centers=not align)
            else:
                masks = resize_nearest(masks, size, align)
            y = masks[..., 0]
            y = y[0] if single else y
        return y

    def get_config(self):
        config = super().get_config()
        config.update(image_converter=keras.layers.serialize(self.image_converter),
                      resize_output_mask=self.resize_output_mask)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("image_converter"), dict):
            config["image_converter"] = keras.layers.deserialize(config["image_converter"])
        return cls(**config)
