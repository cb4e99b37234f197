"""TFLite export (fixed input size): `[1, H, W, 3]` float32 RGB 0-255 in, `class_map`
int32 `[1, H, W]` and `probabilities` out; float32, float16 weights, or int8.

`precision="int8"` is full-integer post-training quantization calibrated on
`calibration` images (per-channel weights, int8 activations; an op without an int8
kernel falls back to float); `"int8_dynamic"` quantizes the weights only (dynamic
range); `"fp16"` stores float16 weights (computed in float32 on CPUs)."""

import os
import tempfile

from keras_fastfcn.fileio import atomic_path
from keras_fastfcn.serving.graph import fixed_function
from keras_fastfcn.serving.model import prepare
from keras_fastfcn.serving.saved_model import write_saved_model
from keras_fastfcn.serving.targets import check_options, check_target_file


def export_tflite(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                  flip=False, input_size=None, base_size=None, fold_bn=True,
                  precision="fp32", calibration=None):
    """Writes a float32 TFLite model with a fixed input size to `output` (`*.tflite`).

    Input `[1, H, W, 3]` float32 RGB 0-255; outputs `class_map` int32
    `[1, H, W]` and (unless `probabilities=False`) `probabilities`.

    Args:
        model: a segmentation model (see `export_saved_model`).
        output: path ending in `.tflite`.
        overwrite: replace an existing file.
        input_size: `(H, W)`, required unless the model was built with a fixed
            `input_shape`.
        probabilities, scales, flip, base_size, fold_bn: as `export_saved_model`.
        precision: `"fp32"`, `"fp16"`, `"int8"` or `"int8_dynamic"`.
        calibration: for `"int8"`, a list of uint8 `(H, W, 3)` images at
            `input_size` (`keras_fastfcn.precision.calibration_images`).

    Returns:
        The path written.

    Example:
    >>> export_tflite(model, "fastfcn.tflite", input_size=(512, 512))
    'fastfcn.tflite'
    """
    import tensorflow as tf

    from keras_fastfcn.precision import check_export_precision

    check_export_precision("tflite", precision, calibration)
    if input_size is None:
        h, w = (tuple(model.input_shape) + (None, None, None))[1:3]
        if h is None or w is None:
            raise ValueError("TFLite export needs a fixed input size: pass --input-size H W "
                             "(input_size=(H, W)).")
        input_size = (h, w)
    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size)
    output = check_target_file(output, overwrite, ".tflite")
    net, info = prepare(model, fold_bn)
    fn, spec = fixed_function(net, probabilities, scales, flip, input_size, base_size,
                              info.align_corners, batch=1)
    # Through a temporary SavedModel written like the TF Serving export:
    # converting a concrete function that captures Keras variables directly
    # silently drops the weights in this TF version.
    with tempfile.TemporaryDirectory(prefix=".tflite-", dir=os.path.dirname(
            os.path.abspath(output))) as tmp_dir:
        write_saved_model( {"serving_default": (fn, [spec])}, tmp_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp_dir, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if precision != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if precision == "int8":
            converter.representative_dataset = lambda: (
                [image[None].astype("float32")] for image in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = converter.convert()
        except Exception as err:
            raise RuntimeError(f"TFLite conversion failed: {err}") from err
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return output
