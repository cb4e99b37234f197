"""TFLite export (fixed input size): `[1, H, W, 3]` float32 RGB 0-255 in, `class_map`
int32 `[1, H, W]` and `probabilities` out; float32, float16 weights, or int8. The file
carries the class names and the export's options as the ONNX export does
(`tflite_metadata`).

`precision="int8"` is full-integer post-training quantization calibrated on
`calibration` images (per-channel weights, int8 activations; an op without an int8
kernel falls back to float); `"int8_dynamic"` quantizes the weights only (dynamic
range); `"fp16"` stores float16 weights (computed in float32 on CPUs). With `keep_float`
(Keras layer names), the int8 model keeps those layers' ops in float32
(`tf.lite.experimental.QuantizationDebugger` with `denylisted_nodes`: selective
quantization), where quantizing them costs accuracy (`benchmarks/PRECISION.md`); the
class map's ARG_MAX then reads float scores too. By default (`keep_float=None`) that
is `DEFAULT_KEEP_FLOAT`, the layers measured to lose the most."""

import warnings

from keras_fastfcn.fileio import atomic_path, removing_new_folders, scratch_folder
from keras_fastfcn.serving.formats import check_export_precision
from keras_fastfcn.serving.graph import fixed_function
from keras_fastfcn.serving.onnx import (_first_line, _scope_matches, _strip_call_suffix,
                                       check_keep_float, default_keep_float)
from keras_fastfcn.inference.prepare import prepare
from keras_fastfcn.serving.saved_model import write_saved_model
from keras_fastfcn.serving.targets import (check_options, check_target_file,
                                           export_metadata)
from keras_fastfcn.serving.tflite_metadata import with_metadata

# What full-integer int8 keeps in float by default: the class scores (as ONNX) and the
# tensors the QuantizationDebugger measured worst (benchmarks/PRECISION.md: the input
# preprocessing and EncNet's Encoding + its BatchNorm1d, errors of 38x to 43969x the
# quantization step). On the CamVid EncNet: -20.4 mIoU points with everything int8,
# -1.9 with these in float (ONNX Runtime's int8 is within 1 point with only the scores).
DEFAULT_KEEP_FLOAT = ("preprocessing", "encoding", "encoding_bn", "classifier", "logits")


def export_tflite(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                  flip=False, input_size=None, base_size=None, fold_bn=True,
                  precision="fp32", calibration=None, keep_float=None):
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
        keep_float: for `"int8"`, Keras layer names (or `/`-joined paths such as
            `"head/conv5"`) whose ops stay float32; each must name some tensors. None
            (the default): `DEFAULT_KEEP_FLOAT` where the model has those layers; `()`:
            every op int8.

    Returns:
        The path written.

    Example:
    >>> inputs = keras.Input((None, None, 3))
    >>> features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(features))
    >>> export_tflite(model, "fastfcn.tflite", input_size=(512, 512))
    'fastfcn.tflite'
    >>> images = [np.full((64, 64, 3), 100 + i, np.uint8) for i in range(4)]
    >>> export_tflite(model, "int8.tflite", input_size=(64, 64), precision="int8",
    ...               calibration=images, keep_float=("classifier",))
    'int8.tflite'
    """
    import tensorflow as tf

    check_export_precision("tflite", precision, calibration)
    keep_float = check_keep_float(keep_float, precision)
    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size,
                                                        model)
    if input_size is None:
        raise ValueError("TFLite export needs a fixed input size: pass --input-size H W "
                         "(input_size=(H, W)).")
    output = check_target_file(output, overwrite, ".tflite", create=False)
    net, info = prepare(model, fold_bn, native_resizes=True)
    if keep_float is None:
        keep_float = default_keep_float(net, DEFAULT_KEEP_FLOAT) if precision == "int8" else ()
    fn, spec = fixed_function(net, probabilities, scales, flip, input_size, base_size,
                              info.align_corners, batch=1)
    with removing_new_folders(output), atomic_path(output) as tmp:
        # Through a temporary SavedModel written like the TF Serving export:
        # converting a concrete function that captures Keras variables directly
        # silently drops the weights in this TF version.
        with scratch_folder(output) as saved_model_dir:
            write_saved_model({"serving_default": (fn, [spec])}, saved_model_dir)
            converter = tf.lite.TFLiteConverter.from_saved_model(
                saved_model_dir, signature_keys=["serving_default"])
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
                if keep_float:
                    flatbuffer = _selectively_quantized(saved_model_dir, converter,
                                                        calibration, keep_float)
                else:
                    flatbuffer = converter.convert()
            except ValueError:
                raise
            except Exception as err:
                raise RuntimeError(f"TFLite conversion failed, nothing was written to "
                                   f"{output}: {type(err).__name__}: "
                                   f"{_first_line(err)}") from err
        options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                       input_size=list(input_size), base_size=base_size,
                       fold_bn=bool(fold_bn), precision=precision,
                       keep_float=list(keep_float))
        meta = export_metadata(info, options)
        meta["input"] = f"images: float32 [1, {input_size[0]}, {input_size[1]}, 3], RGB 0-255"
        flatbuffer = with_metadata(flatbuffer, meta)
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return output


def float_tensor_names(tensor_names, keep_float):
    """The TFLite tensor names (op outputs) that belong to the Keras layers `keep_float`.

    A converted op's output is named after the TensorFlow ops fused into it, joined
    with `;` (`model/head_1/classifier_1/BiasAdd;model/head_1/classifier_1/Conv2D`);
    a tensor belongs to a layer when one of those op names has the layer in its scope
    (matched as `keras_fastfcn.serving.onnx.float_node_names` does).

    Args:
        tensor_names: the tensor names of the float TFLite model.
        keep_float: layer names or `/`-joined paths.

    Raises:
        ValueError: a name matches no tensor.

    Example:
    >>> float_tensor_names(["m/head_1/classifier_1/BiasAdd"], ["classifier"])
    ['m/head_1/classifier_1/BiasAdd']
    """
    names, unmatched = [], []
    for pattern in keep_float:
        hits = [t for t in tensor_names
                if any(_scope_matches(op.split("/")[:-1], pattern) for op in t.split(";"))]
        if not hits:
            unmatched.append(pattern)
        names += [t for t in hits if t not in names]
    if unmatched:
        layers = sorted({_strip_call_suffix(part) for t in tensor_names
                         for op in t.split(";") for part in op.split("/")[1:-1]})
        raise ValueError(f"keep_float {unmatched!r} names no layer of this model; its layers "
                         f"include {layers[:40]}{' ...' if len(layers) > 40 else ''}.")
    return names


def _selectively_quantized(saved_model_dir, converter, calibration, keep_float):
    """The int8 flatbuffer of `converter` with the ops of the layers `keep_float` left
    in float32 (the QuantizationDebugger's selective quantization)."""
    import tensorflow as tf

    float_converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"])
    float_converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=float_converter.convert())
    names = float_tensor_names([t["name"] for t in interpreter.get_tensor_details()],
                               keep_float)
    # The class map's ARG_MAX and the probabilities' SOFTMAX sit outside the model's
    # layers; left to the quantizer they get an int8 copy of the scores, whose coarse
    # steps turn near-ties into ties (ARG_MAX: won by the lowest class; SOFTMAX: 1/k
    # for k tied classes, disagreeing with the class map): with the scores kept in
    # float they must read them as they are.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=names, denylisted_ops=["ARG_MAX", "SOFTMAX"]))
    return debugger.get_nondebug_quantized_model()
