"""ONNX export (tf2onnx): input `images` float32 `[B, H, W, 3]` RGB 0-255.

B, H, W are dynamic (or H, W fixed with `input_size`); outputs `class_map` int32 and
`probabilities`; the class names are in the model's metadata
(`metadata_props["class_names"]`, JSON). Float input was chosen over uint8 because it
is what ONNX Runtime / TensorRT pipelines usually hold.

`precision="int8"` quantizes the exported graph with ONNX Runtime's static
post-training quantization (`onnxruntime.quantization.quantize_static`: QDQ format,
per-channel int8 weights, uint8 activations, the U8S8 form x86 kernels run fastest),
calibrated on `calibration` images; `"int8_dynamic"` is `quantize_dynamic` (weights
only, no calibration).
"""

import json
import os
import re
import tempfile

from keras_fastfcn.fileio import atomic_path
from keras_fastfcn.serving.graph import fixed_function
from keras_fastfcn.serving.model import prepare
from keras_fastfcn.serving.targets import check_options, check_target_file

DEFAULT_OPSET = 17


def require_onnx(quantize=False):
    """Raises a clear error (before any slow work) unless tf2onnx and onnx (and for
    quantization onnxruntime) import."""
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401

        if quantize:
            import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"ONNX export needs tf2onnx and onnx ({err.name} is missing): "
            "pip install 'keras_fastfcn[export]'") from None


def export_onnx(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                flip=False, input_size=None, base_size=None, fold_bn=True,
                opset=DEFAULT_OPSET, precision="fp32", calibration=None):
    """Writes an ONNX model (tf2onnx) to `output` (`*.onnx`).

    Input `images` float32 `[B, H, W, 3]` RGB 0-255, with B, H, W dynamic, or
    H, W fixed to `input_size`. Outputs `class_map` int32 `[B, H, W]` and
    (unless `probabilities=False`) `probabilities` float32 `[B, H, W, C]`.
    Class names and export options are stored in the model's metadata.

    Args:
        model: a segmentation model (see `export_saved_model`).
        output: path ending in `.onnx`.
        overwrite: replace an existing file.
        probabilities, scales, flip, base_size, fold_bn: as `export_saved_model`.
        input_size: None (dynamic) or `(H, W)` (a fixed input size).
        opset: ONNX opset, >= 17.
        precision: `"fp32"`, `"int8"` (static, calibrated) or `"int8_dynamic"`.
        calibration: for `"int8"`, a list of uint8 `(H, W, 3)` images.

    Returns:
        The path written.

    Example:
    >>> export_onnx(model, "fastfcn.onnx")
    'fastfcn.onnx'
    """
    from keras_fastfcn.precision import check_export_precision

    check_export_precision("onnx", precision, calibration)
    require_onnx(quantize=precision != "fp32")
    import onnx
    import tensorflow as tf
    import tf2onnx

    if int(opset) < 17:
        raise ValueError(f"opset must be >= 17, got {opset}.")
    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size)
    output = check_target_file(output, overwrite, ".onnx")
    net, info = prepare(model, fold_bn)
    fn, spec = fixed_function(net, probabilities, scales, flip, input_size, base_size,
                              info.align_corners)
    proto, _ = tf2onnx.convert.from_function(
        tf.function(fn, input_signature=[spec], autograph=False),
        input_signature=[spec], opset=int(opset))
    _rename_onnx_outputs(proto, ["class_map"] + (["probabilities"] if probabilities else []))
    _name_onnx_dims(proto)
    options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                   input_size=list(input_size) if input_size else None,
                   base_size=base_size, fold_bn=bool(fold_bn), opset=int(opset),
                   precision=precision)
    meta = {
        "class_names": json.dumps(info.class_names),
        "num_classes": str(info.num_classes),
        "dataset": json.dumps(info.dataset),
        "input": "images: float32 [B, H, W, 3], RGB 0-255",
        "keras_fastfcn_export": json.dumps(options),
    }
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "keras_fastfcn (tf2onnx)"
    onnx.checker.check_model(proto)
    with atomic_path(output) as tmp:
        if precision == "fp32":
            onnx.save(proto, tmp)
        else:
            _quantize(proto, tmp, precision, calibration)
    return output


def _quantize(proto, path, precision, calibration):
    """Writes `proto` quantized to int8 at `path` (ONNX Runtime quantization)."""
    import onnx
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._images = iter(calibration or ())

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {"images": image[None].astype("float32")}

    with tempfile.TemporaryDirectory(prefix=".onnx-quant-",
                                     dir=os.path.dirname(os.path.abspath(path))) as tmp:
        source = os.path.join(tmp, "fp32.onnx")
        onnx.save(proto, source)
        if precision == "int8_dynamic":
            q.quantize_dynamic(source, path, weight_type=q.QuantType.QInt8, per_channel=True)
        else:
            q.quantize_static(source, path, Reader(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax)
    quantized = onnx.load(path)
    present = {prop.key for prop in quantized.metadata_props}
    for prop in proto.metadata_props:  # class names and options, kept whatever ORT does
        if prop.key not in present:
            quantized.metadata_props.add().CopyFrom(prop)
    onnx.save(quantized, path)


def _rename_onnx_outputs(proto, names):
    """Gives the graph outputs their plain names (tf2onnx keeps `name:0`)."""
    graph = proto.graph
    renames = {}
    for out in graph.output:
        base = re.sub(r":\d+$", "", out.name).split("/")[-1]
        for name in names:
            if base == name or base.startswith(name):
                renames[out.name] = name
    for node in graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for out in graph.output:
        out.name = renames.get(out.name, out.name)
    # Keep a deterministic order: class_map first.
    order = {name: i for i, name in enumerate(names)}
    outs = sorted(graph.output, key=lambda o: order.get(o.name, len(order)))
    del graph.output[:]
    graph.output.extend(outs)


def _name_onnx_dims(proto):
    """Names the dynamic input/output dims `batch`, `height`, `width` (not `unk__N`)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "height", "width")):
            if not dim.HasField("dim_value"):
                dim.dim_param = name
