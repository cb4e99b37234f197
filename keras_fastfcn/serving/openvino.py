"""OpenVINO export: an IR (`NAME.xml` + `NAME.bin`) with the ONNX export's interface.

Input `images` float32 `[B, H, W, 3]` RGB 0-255 (B, H, W dynamic, or H, W fixed with
`input_size`); outputs `class_map` int32 and `probabilities`. Class names, the class
count and the export options (`precision` among them) are in the IR's runtime info
(`rt_info["keras_fastfcn"]`, the keys of the ONNX export's metadata).

The graph is the ONNX export's (`serving.onnx.export_onnx`, written to a scratch folder)
converted by `openvino.convert_model`. Converting the `tf.function` directly is 3x
quicker, but OpenVINO's TensorFlow frontend keeps TensorFlow's SpaceToBatch /
BatchToSpace around each dilated JPU convolution (tf2onnx folds them into one dilated
`Conv`), which the CPU plugin runs with reference kernels (about 9% of the fp32
EncNet+JPU R50 time), and it names convolutions `Convolution_N`, without the Keras
layer scopes that `keep_float` is matched against.

Precisions: `"fp32"` and `"bf16"` write the same float32 IR with the precision and
OpenVINO's `INFERENCE_PRECISION_HINT` for it (`f32` / `bf16`; int8: `f32`, for its
float layers) recorded as `rt_info["keras_fastfcn"]["inference_precision_hint"]`, which
`serving.runtime.ExportPredictor` compiles with. OpenVINO reads no hint from an IR and
runs it in bf16 by default on CPUs with bf16 hardware (AVX512-BF16, AMX): a runtime of
your own must pass `{"INFERENCE_PRECISION_HINT": "f32"}` to get an fp32 export's fp32
results. `"int8"` is NNCF
post-training quantization (`nncf.quantize`) calibrated on `calibration` images, with the
layers `keep_float` (by default the ONNX int8 export's: the classifier and the logits
upsampling) in NNCF's `ignored_scope`.

The class map's ArgMax is rewritten in the ONNX graph before the conversion
(`argmax_as_reductions`): OpenVINO's frontend turns an ONNX ArgMax into a stable TopK,
which its CPU plugin runs 2.6x slower than the same first-maximum index as reductions.
"""

import json
import logging
import os

import numpy as np

from keras_fastfcn.fileio import atomic_path, removing_new_folders, scratch_folder
from keras_fastfcn.serving import onnx as onnx_export
from keras_fastfcn.serving.formats import check_export_precision
from keras_fastfcn.serving.onnx import (DEFAULT_KEEP_FLOAT, DEFAULT_OPSET, _first_line,
                                       _scope_matches, check_keep_float, inferred_shapes,
                                       match_scopes, require_onnx)
from keras_fastfcn.serving.targets import check_options, check_target_file

# OpenVINO's name of each precision's inference precision (int8: its float parts).
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
RT_INFO_KEY = "keras_fastfcn"


def require_openvino(quantize=False):
    """Raises a clear `RuntimeError` (before any slow work) unless openvino (and for
    int8 nncf) and the ONNX converters the export goes through import."""
    try:
        import openvino  # noqa: F401

        if quantize:
            import nncf  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"OpenVINO export needs openvino{' and nncf' if quantize else ''} ({err.name} "
            "is missing): pip install 'keras_fastfcn[openvino]'") from None
    try:
        require_onnx()
    except RuntimeError as err:
        raise RuntimeError(f"OpenVINO export goes through ONNX: {err}") from None


def bin_path(xml):
    """The weights file that OpenVINO reads with the IR `xml` (`NAME.bin`)."""
    return os.path.splitext(os.fspath(xml))[0] + ".bin"


def check_openvino_target(output, overwrite):
    """`output` as the `.xml` path of a new IR; raises unless it ends in `.xml` and
    neither it nor its `.bin` exists (unless `overwrite`)."""
    output = check_target_file(output, overwrite, ".xml", create=False)
    weights = bin_path(output)
    if os.path.isdir(weights):
        raise IsADirectoryError(f"{weights} (the weights file of {output}) is a folder.")
    if os.path.exists(weights) and not overwrite:
        raise FileExistsError(f"{weights} already exists (the weights file of {output}); "
                              "pass --overwrite (overwrite=True) to replace it.")
    return output


def export_openvino(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                    flip=False, input_size=None, base_size=None, fold_bn=True,
                    precision="fp32", calibration=None, keep_float=None):
    """Writes an OpenVINO IR to `output` (`NAME.xml`, and its weights `NAME.bin`).

    Input `images` float32 `[B, H, W, 3]` RGB 0-255, B, H, W dynamic or H, W fixed
    to `input_size`; outputs `class_map` int32 `[B, H, W]` and (unless
    `probabilities=False`) `probabilities` float32 `[B, H, W, C]`. Class names and
    export options are stored in the IR's runtime info (`rt_info["keras_fastfcn"]`).
    Both files appear complete or not at all (the `.bin` is renamed into place just
    before the `.xml`).

    Args:
        model: a segmentation model (see `export_saved_model`).
        output: path ending in `.xml`.
        overwrite: replace an existing IR.
        probabilities, scales, flip, base_size, fold_bn: as `export_saved_model`.
        input_size: None (dynamic) or `(H, W)` (a fixed input size).
        precision: `"fp32"`, `"bf16"` (the runtime's inference precision, recorded
            here) or `"int8"` (NNCF, calibrated).
        calibration: for `"int8"`, a list of uint8 `(H, W, 3)` images (at
            `input_size` when it is set).
        keep_float: for `"int8"`, Keras layer names (or `/`-joined paths) whose ops
            NNCF leaves in float (`ignored_scope`); each must name some ops. None: the
            ONNX export's `DEFAULT_KEEP_FLOAT` where the model has those layers; `()`:
            every op NNCF quantizes.

    Returns:
        The path of the `.xml` written.

    Example:
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))
    >>> export_openvino(model, "fastfcn.xml")
    'fastfcn.xml'
    >>> images = [np.full((64, 64, 3), 100 + i, np.uint8) for i in range(4)]
    >>> export_openvino(model, "int8.xml", precision="int8", calibration=images)
    'int8.xml'
    """
    check_export_precision("openvino", precision, calibration)
    keep_float = check_keep_float(keep_float, precision)
    require_openvino(quantize=precision == "int8")
    import openvino as ov

    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size,
                                                        model)
    output = check_openvino_target(output, overwrite)
    if precision == "int8":
        calibration = _check_calibration(calibration, input_size)
    with removing_new_folders(output):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with scratch_folder(output) as tmp:
            onnx_path = os.path.join(tmp, "model.onnx")
            try:
                onnx_export.export_onnx(
                    model, onnx_path, probabilities=probabilities, scales=scales, flip=flip,
                    input_size=input_size, base_size=base_size, fold_bn=fold_bn,
                    opset=DEFAULT_OPSET)
            except RuntimeError as err:  # its message names the scratch file: ours
                detail = str(err).replace(f", nothing was written to {onnx_path}", "")
                raise RuntimeError(f"OpenVINO export failed, nothing was written to "
                                   f"{output}: {detail}") from err
            meta = _read_and_rewrite_onnx(onnx_path)
            try:
                ov_model = ov.convert_model(onnx_path)
            except Exception as err:
                raise RuntimeError(f"OpenVINO conversion failed, nothing was written to "
                                   f"{output}: {type(err).__name__}: {_first_line(err)}") \
                    from err
            os.remove(onnx_path)  # not the weights twice on disk while the IR is saved
            if precision == "int8":
                if keep_float is None:
                    keep_float = _present(ov_model, DEFAULT_KEEP_FLOAT)
                ov_model = _quantize(ov_model, calibration, keep_float, output)
            options = json.loads(meta.pop("keras_fastfcn_export", "{}"))
            options.pop("opset", None)
            options.update(precision=precision, keep_float=list(keep_float or ()),
                           openvino_version=ov.get_version().split("-")[0])
            meta["keras_fastfcn_export"] = json.dumps(options)
            meta["inference_precision_hint"] = INFERENCE_PRECISION[precision]
            for key, value in meta.items():
                ov_model.set_rt_info(value, [RT_INFO_KEY, key])
            _save(ov, ov_model, tmp, output)
    return output


def _check_calibration(calibration, input_size):
    """`calibration` as a list; a `ValueError` (before any slow work) for an image of
    another size than a fixed-size export's input."""
    images = [np.asarray(image) for image in calibration]
    for image in images:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"calibration images must be (height, width, 3) RGB, got an "
                             f"array of shape {image.shape}.")
        if input_size and tuple(image.shape[:2]) != tuple(input_size):
            raise ValueError(
                f"calibration images must be {input_size[0]}x{input_size[1]}, the fixed "
                f"input size, got one of {image.shape[0]}x{image.shape[1]}: resize them "
                "(keras_fastfcn.precision.calibration_images(..., size=input_size)).")
    if not images:
        raise ValueError("int8 OpenVINO export needs calibration images, got none.")
    return images


def _read_and_rewrite_onnx(path):
    """The export's metadata (class names, options, ...) as the ONNX exporter wrote it,
    from one read of the file, which is rewritten in place for OpenVINO
    (`argmax_as_reductions`) where that changes a node."""
    import onnx

    proto = onnx.load(path)
    if argmax_as_reductions(proto):
        onnx.save(proto, path)
    return {prop.key: prop.value for prop in proto.metadata_props}


def argmax_as_reductions(proto):
    """Rewrites each ONNX `ArgMax` (first index of the maximum) of `proto` in place as
    `ReduceMin(Where(x == ReduceMax(x), index, n))` along its axis: the same int64
    indices, ties to the lowest index, on every runtime.

    Why: OpenVINO's ONNX frontend turns ArgMax into `TopK(k=1, stable=true)` (stable
    keeps ONNX's first-index rule), and its CPU plugin runs a stable TopK with a slow
    kernel. The class map of a 512x512 EncNet with 59 classes took 34.7 ms that way and
    13.1 ms as these reductions (ReduceMax 2.3, Equal+Where 8.2, ReduceMin 2.5) on a
    Zen 4 EPYC (2 cores, OpenVINO 2026.4, `benchmarks/profile_ops.py --runtime
    openvino`); an unstable TopK would be faster still but may pick any of tied
    classes. ONNX Runtime's own ArgMax is faster than the reductions there (578
    against 637-698 ms for the whole model), so only the OpenVINO export rewrites.
    An ArgMax whose input rank shape inference cannot tell, or with
    `select_last_index`, is left as it is. A NaN in a row gives index `n`
    (no element equals the NaN maximum): the exports' inputs are checked finite.

    Args:
        proto: an `onnx.ModelProto` (opset >= 13), changed in place.

    Returns:
        How many ArgMax nodes were rewritten.

    Example:
    >>> import onnx
    >>> from keras_fastfcn.serving.onnx import export_onnx
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))
    >>> proto = onnx.load(export_onnx(model, "fastfcn.onnx"))
    >>> argmax_as_reductions(proto)
    1
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    if not any(node.op_type == "ArgMax" for node in graph.node):
        return 0  # no shape inference (a copy of the whole model) for nothing
    opset = max([o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
                or [0])
    ranks = {name: len(dims) for name, dims in inferred_shapes(proto).items()}
    taken = {name for node in graph.node for name in node.output}
    taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input}

    def fresh(base):
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def constant(base, value):
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def reduce(op, x, out, axis, keepdims, name):
        if opset >= 18:  # axes became an input in opset 18
            return helper.make_node(op, [x, constant(name + "_axes", [axis])], [out],
                                    name=name, keepdims=keepdims)
        return helper.make_node(op, [x], [out], name=name, axes=[axis], keepdims=keepdims)

    nodes, rewritten = [], 0
    for node in graph.node:
        rank = ranks.get(node.input[0]) if node.op_type == "ArgMax" else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if rank else {}
        if not rank or attrs.get("select_last_index", 0):
            nodes.append(node)
            continue
        axis, keepdims = attrs.get("axis", 0) % rank, attrs.get("keepdims", 1)
        x, base = node.input[0], (node.name or node.output[0]).replace("/", "_")
        shape, n, iota, index, peak, is_peak, indices = (
            fresh(f"{base}__{part}")
            for part in ("shape", "count", "range", "index", "max", "is_max", "indices"))
        nodes += [
            helper.make_node("Shape", [x], [shape], name=fresh(base + "__shape_op")),
            helper.make_node("Gather", [shape, constant(base + "__axis", axis)], [n],
                             name=fresh(base + "__count_op")),
            helper.make_node("Range", [constant(base + "__zero", 0), n,
                                       constant(base + "__one", 1)], [iota],
                             name=fresh(base + "__range_op")),
            helper.make_node("Unsqueeze", [iota, constant(
                base + "__other_axes", [i for i in range(rank) if i != axis])], [index],
                name=fresh(base + "__index_op")),
            reduce("ReduceMax", x, peak, axis, 1, fresh(base + "__max_op")),
            helper.make_node("Equal", [x, peak], [is_peak], name=fresh(base + "__is_max_op")),
            helper.make_node("Where", [is_peak, index, n], [indices],
                             name=fresh(base + "__indices_op")),
            reduce("ReduceMin", indices, node.output[0], axis, keepdims,
                   fresh(base + "__first_max_op")),
        ]
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _save(ov, ov_model, tmp, output):
    """Writes the IR into `tmp` (a scratch folder beside `output`), then moves the
    `.bin` and last the `.xml` into place: an `.xml` is there only with its weights.
    An `.xml` being overwritten is removed first, so that a write cut short between
    the two renames leaves no old `.xml` reading the new weights."""
    xml = os.path.join(tmp, "model.xml")
    # fp32 weights as trained: compress_to_fp16 (OpenVINO's default) would round them.
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    with atomic_path(output) as xml_tmp, atomic_path(bin_path(output)) as bin_tmp:
        os.replace(bin_path(xml), bin_tmp)
        os.replace(xml, xml_tmp)
        if os.path.exists(output):
            os.remove(output)


def _ops(ov_model):
    """The model's computing ops (no constants, parameters or results)."""
    return [op for op in ov_model.get_ordered_ops()
            if op.get_type_name() not in ("Constant", "Parameter", "Result")]


def _scope_names(op):
    """The op's `/`-joined names: its friendly name and its output tensors' names."""
    names = [op.get_friendly_name()]
    for out in op.outputs():
        names += sorted(out.get_names())
    return [name.split(":")[0] for name in names if "/" in name]


def _scopes(ov_model):
    """`{op friendly name: layer scope}` for every computing op.

    The ONNX frontend names an op after its ONNX node, which tf2onnx names after the
    TensorFlow op (`model/head_1/classifier_1/convolution`: layer scopes, then the
    op); an op without such a name (`Resize__682`, a rewrite by tf2onnx or OpenVINO)
    takes the scope of the nearest named op it feeds, else of one feeding it, as
    `serving.onnx.float_node_names` does for the ONNX graph."""
    ops = _ops(ov_model)
    scopes = {}
    for op in ops:
        queue, seen, scope = [op], {id(op)}, []
        while queue:
            current = queue.pop(0)
            named = _scope_names(current)
            if named:
                scope = named[0].split("/")[:-1]
                break
            neighbours = [target.get_node() for out in current.outputs()
                          for target in out.get_target_inputs()]
            neighbours += [value.get_node() for value in current.input_values()]
            for other in neighbours:
                if id(other) not in seen and other.get_type_name() != "Constant":
                    seen.add(id(other))
                    queue.append(other)
        scopes[op.get_friendly_name()] = scope
    return scopes


def float_op_names(ov_model, keep_float):
    """Friendly names of the ops of `ov_model` (converted from a keras-fastfcn ONNX
    export) that belong to the Keras layers `keep_float`: NNCF's `ignored_scope`.

    Args:
        ov_model: an `openvino.Model`.
        keep_float: layer names or `/`-joined paths (`"classifier"`, `"head/conv5"`).

    Returns:
        The names, in graph order.

    Raises:
        ValueError: a name matches no op (the message lists the layer names found).

    Example:
    >>> import openvino
    >>> from keras_fastfcn.serving.onnx import export_onnx
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))
    >>> float_op_names(openvino.convert_model(export_onnx(model, "m.onnx")), ["classifier"])
    [...classifier...]
    """
    return match_scopes(_scopes(ov_model), keep_float)


def _present(ov_model, defaults):
    """The layer names of `defaults` that name some op of `ov_model`."""
    scopes = list(_scopes(ov_model).values())
    return tuple(name for name in defaults
                 if any(_scope_matches(scope, name) for scope in scopes))


def _quantize(ov_model, calibration, keep_float, output):
    """`ov_model` quantized by NNCF (int8, calibrated on `calibration`), the ops of the
    layers `keep_float` left in float."""
    import nncf

    ignored = float_op_names(ov_model, keep_float) if keep_float else []
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # its per-step INFO lines; errors still show
    try:
        return nncf.quantize(
            ov_model,
            nncf.Dataset(calibration,
                         lambda image: {"images": np.asarray(image, np.float32)[None]}),
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    except ValueError:
        raise
    except Exception as err:
        raise RuntimeError(f"OpenVINO int8 quantization (NNCF) failed, nothing was written "
                           f"to {output}: {type(err).__name__}: {_first_line(err)}") from err
    finally:
        logger.setLevel(previous)
