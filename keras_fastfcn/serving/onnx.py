"""ONNX export (tf2onnx): input `images` float32 `[B, H, W, 3]` RGB 0-255.

B, H, W are dynamic (or H, W fixed with `input_size`); outputs `class_map` int32 and
`probabilities`; the class names are in the model's metadata
(`metadata_props["class_names"]`, JSON). Float input was chosen over uint8 because it
is what ONNX Runtime / TensorRT pipelines usually hold.

`precision="int8"` quantizes the exported graph with ONNX Runtime's static
post-training quantization (`onnxruntime.quantization.quantize_static`: QDQ format,
per-channel int8 weights, uint8 activations, the U8S8 form x86 kernels run fastest),
calibrated on `calibration` images; `"int8_dynamic"` is `quantize_dynamic` (weights
only, no calibration). `keep_float` names Keras layers (`"encoding"`, `"classifier"`,
`"head/conv5"`) whose nodes stay float32 in the int8 graph (`nodes_to_exclude`). By
default that is the class scores (`DEFAULT_KEEP_FLOAT`): on the CamVid EncNet of
`benchmarks/PRECISION.md` quantizing everything loses 11 mIoU points, and keeping the
classifier and the logits resize in float (nothing else) recovers the fp32 mIoU.

Before conversion, the dilated convolutions (the JPU's depthwise ones, the ASPP heads',
a dilated encoder's) are written as explicit padding + valid convolution
(`fold.pad_dilated_convs`), so that tf2onnx exports each as one dilated `Conv` instead
of SpaceToDepth/DepthToSpace around an undilated one.
"""

import contextlib
import os
import re

import numpy as np

from keras_fastfcn._keras_private import all_layers
from keras_fastfcn.fileio import atomic_path, removing_new_folders, scratch_folder
from keras_fastfcn.serving.formats import check_export_precision
from keras_fastfcn.serving.graph import fixed_function
from keras_fastfcn.inference.prepare import prepare
from keras_fastfcn.serving.targets import (check_options, check_target_file,
                                           export_metadata)

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
                opset=DEFAULT_OPSET, precision="fp32", calibration=None, keep_float=None):
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
        keep_float: for `"int8"`, Keras layer names (or `/`-joined paths such as
            `"head/conv5"`) whose nodes are left out of quantization and run in
            float32 (`float_node_names`); each must name some nodes. None (the
            default): `DEFAULT_KEEP_FLOAT`, the class scores, where the model has
            those layers; `()`: every node int8.

    Returns:
        The path written.

    Example:
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))
    >>> export_onnx(model, "fastfcn.onnx")
    'fastfcn.onnx'
    >>> images = [np.full((64, 64, 3), 100 + i, np.uint8) for i in range(4)]
    >>> export_onnx(model, "int8.onnx", precision="int8", calibration=images,
    ...             keep_float=("classifier",))
    'int8.onnx'
    """
    check_export_precision("onnx", precision, calibration)
    keep_float = check_keep_float(keep_float, precision)
    require_onnx(quantize=precision != "fp32")
    import onnx
    import tensorflow as tf
    import tf2onnx

    if int(opset) < 17:
        raise ValueError(f"opset must be >= 17, got {opset}.")
    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size,
                                                        model)
    output = check_target_file(output, overwrite, ".onnx", create=False)
    net, info = prepare(model, fold_bn, pad_dilations=True, native_resizes=True)
    if keep_float is None:
        keep_float = default_keep_float(net) if precision == "int8" else ()
    fn, spec = fixed_function(net, probabilities, scales, flip, input_size, base_size,
                              info.align_corners)
    try:
        with _lean_tf2onnx():
            proto, _ = tf2onnx.convert.from_function(
                tf.function(fn, input_signature=[spec], autograph=False),
                input_signature=[spec], opset=int(opset))
        _rename_onnx_outputs(proto, ["class_map"] + (["probabilities"] if probabilities else []))
        _name_onnx_dims(proto)
        _fuse_pad_into_conv(proto)
        _cancel_layout_transposes(proto)
        # An op tf2onnx cannot convert stays a TensorFlow op: the checker names it.
        onnx.checker.check_model(proto)
    except Exception as err:
        raise RuntimeError(f"ONNX conversion failed, nothing was written to {output}: "
                           f"{type(err).__name__}: {_first_line(err)}") from err
    options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                   input_size=list(input_size) if input_size else None,
                   base_size=base_size, fold_bn=bool(fold_bn), opset=int(opset),
                   precision=precision, keep_float=list(keep_float))
    for key, value in export_metadata(info, options).items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "keras_fastfcn (tf2onnx)"
    with removing_new_folders(output), atomic_path(output) as tmp:
        if precision == "fp32":
            onnx.save(proto, tmp)
        else:
            _quantize(proto, tmp, precision, calibration,
                      float_node_names(proto, keep_float) if keep_float else (), output)
    return output


def _first_line(err, limit=300):
    return (str(err).strip().splitlines() or [""])[0][:limit]


@contextlib.contextmanager
def _lean_tf2onnx():
    """Runs tf2onnx without the copies of the weights its optimizer passes pile up.

    After each pass (36 on a FastFCN graph) tf2onnx rewrites every node's NodeProto
    attributes in place, and upb (protobuf's C runtime) frees a removed field only
    with its message: every pass added a copy of every weight to the nodes, 3.5 GB
    for the 100 MB of an R50 EncNet. Each node gets a fresh NodeProto instead. tf2onnx
    also deep-copies the graph before each pass to roll a failing one back; those
    copies are reference cycles that only a full garbage collection frees (3 GB more):
    `TF2ONNX_CATCH_ERRORS=FALSE` turns them off (as tf2onnx does for large models), so
    a failing pass fails the export instead of being skipped. A value the user set is
    kept.
    """
    from tf2onnx import constants
    from tf2onnx.graph import Node

    original = getattr(Node, "update_proto", None)

    def update_proto(self, *args, **kwargs):
        old = getattr(self, "_op", None)
        if old is not None:
            del old.attribute[:]  # rewritten by `original` from the node's own attributes
            self._op = type(old)()
            self._op.CopyFrom(old)
        return original(self, *args, **kwargs)

    key = getattr(constants, "ENV_TF2ONNX_CATCH_ERRORS", "TF2ONNX_CATCH_ERRORS")
    set_here = key not in os.environ
    if set_here:
        os.environ[key] = "FALSE"
    if original is not None:  # another tf2onnx: converts as it is
        Node.update_proto = update_proto
    try:
        yield
    finally:
        if original is not None:
            Node.update_proto = original
        if set_here:
            os.environ.pop(key, None)


# What static int8 keeps in float by default: the class scores, i.e. the classifier's
# output and its bilinear resize to the image size. Logits of a trained model reach the
# hundreds, and 8 bits over that range move the argmax: on the CamVid EncNet
# (benchmarks/PRECISION.md) ONNX int8 loses 11.3 mIoU points with them quantized and
# gains 0.7 with them in float, at 2.3x the Keras fp32 speed either way.
DEFAULT_KEEP_FLOAT = ("classifier", "logits")


def default_keep_float(net, defaults=DEFAULT_KEEP_FLOAT):
    """The names of `defaults` that are layers of `net` (a model of the user's may have
    none of them: then nothing is kept in float)."""
    names = {layer.name for layer in all_layers(net)}
    return tuple(name for name in defaults if name in names)


def check_keep_float(keep_float, precision):
    """`keep_float` as a tuple of layer names (None stays None: the exporter's default);
    a `ValueError` unless they are non-empty strings and `precision` is `"int8"` (the
    only calibrated, per-node quantization)."""
    if keep_float is None:
        return None
    if isinstance(keep_float, str):
        keep_float = (keep_float,)
    keep_float = tuple(keep_float or ())
    bad = [name for name in keep_float if not isinstance(name, str) or not name.strip("/")]
    if bad:
        raise ValueError(f"keep_float must be layer names such as 'encoding' or "
                         f"'head/classifier', got {bad!r}.")
    if keep_float and precision != "int8":
        raise ValueError(f"keep_float applies to static int8 exports only, not to "
                         f"precision={precision!r}.")
    return keep_float


def _strip_call_suffix(part):
    # tf.function scopes a layer called inside another function as `name_1`.
    return re.sub(r"_\d+$", "", part)


def _scope_matches(scope, pattern):
    """True if the `/`-joined `pattern` is a run of consecutive components of `scope`
    (each compared as is and without TensorFlow's `_N` call suffix)."""
    want = pattern.strip("/").split("/")
    for start in range(len(scope) - len(want) + 1):
        if all(part == w or _strip_call_suffix(part) == w
               for part, w in zip(scope[start:start + len(want)], want)):
            return True
    return False


def float_node_names(proto, keep_float):
    """Names of the nodes of the ONNX graph `proto` that belong to the Keras layers
    `keep_float`.

    tf2onnx names a node after its TensorFlow op (`model/head_1/classifier_1/BiasAdd`:
    layer scopes, then the op), so a layer's nodes are those whose scope contains the
    layer name. Nodes tf2onnx created itself (`MatMul__2142`, no scope) take the scope
    of the nearest scoped node they feed (else of the nearest one feeding them): they
    are rewrites of that layer's ops.

    Args:
        proto: an `onnx.ModelProto` exported by tf2onnx.
        keep_float: layer names or `/`-joined paths (`"encoding"`, `"head/conv5"`).

    Returns:
        The node names, in graph order.

    Raises:
        ValueError: a name matches no node (the message lists the layer names found).

    Example:
    >>> import onnx
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))
    >>> float_node_names(onnx.load(export_onnx(model, "m.onnx")), ["classifier"])
    [...classifier...]
    """
    nodes = list(proto.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    consumers = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def scope(node):
        # Breadth-first: consumers before producers (the op this rewrite feeds).
        queue, seen = [node], {node.name}
        while queue:
            current = queue.pop(0)
            if "/" in current.name:
                return current.name.split("/")[:-1]
            neighbours = [c for out in current.output for c in consumers.get(out, ())]
            neighbours += [producer[i] for i in current.input if i in producer]
            for other in neighbours:
                if other.name not in seen:
                    seen.add(other.name)
                    queue.append(other)
        return []

    scopes = {node.name: scope(node) for node in nodes}
    names = match_scopes(scopes, keep_float)
    order = {n.name: i for i, n in enumerate(nodes)}
    return sorted(names, key=order.get)


def match_scopes(scopes, keep_float):
    """The op names (keys of `scopes`, an op name -> its Keras layer path) that a
    `keep_float` name matches, each once; a `ValueError` lists the model's layers when a
    name matches none. Shared by the ONNX and OpenVINO exports."""
    names, unmatched = [], []
    for pattern in keep_float:
        hits = [name for name, scope in scopes.items() if _scope_matches(scope, pattern)]
        if not hits:
            unmatched.append(pattern)
        names += [n for n in hits if n not in names]
    if unmatched:
        layers = sorted({_strip_call_suffix(part) for s in scopes.values() for part in s[1:]})
        raise ValueError(f"keep_float {unmatched!r} names no layer of this model; its layers "
                         f"include {layers[:40]}{' ...' if len(layers) > 40 else ''}.")
    return names


def _quantize(proto, path, precision, calibration, exclude=(), output=None):
    """Writes `proto` quantized to int8 at `path` (ONNX Runtime quantization), the
    nodes named in `exclude` left in float; its scratch files go beside `output` (the
    final path, `path` by default)."""
    import onnx
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._images = iter(calibration or ())

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {"images": image[None].astype("float32")}

    with scratch_folder(output or path) as tmp:
        source = os.path.join(tmp, "fp32.onnx")
        onnx.save(proto, source)
        if precision == "int8_dynamic":
            q.quantize_dynamic(source, path, weight_type=q.QuantType.QInt8, per_channel=True)
        else:
            q.quantize_static(source, path, Reader(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax,
                              nodes_to_exclude=list(exclude))
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


def _fuse_pad_into_conv(proto):
    """Moves each zero `Pad` that only feeds a `Conv` (the dilated JPU and ASPP branches:
    `fold.pad_dilated_convs`) into the conv's `pads`; returns how many.

    ONNX Runtime does this itself for a float graph (its PadFusion), but not once
    `_quantize` has put QuantizeLinear / DequantizeLinear around the Pad: the int8
    graph then pads in float, with a dequantize and a quantize of the 1536-channel map
    for each of the three dilated branches, about 7 ms each at 512 px on the AMX Xeon.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def zero_constant(name):
        return name == "" or (name in inits and not numpy_helper.to_array(inits[name]).any())

    fused = []
    for pad in graph.node:
        users = consumers.get(pad.output[0], [])
        if (pad.op_type != "Pad" or len(users) != 1 or users[0].op_type != "Conv"
                or users[0].input[0] != pad.output[0] or pad.output[0] in outputs
                or len(pad.input) < 2 or pad.input[1] not in inits):
            continue
        conv, mode = users[0], "constant"
        for attr in pad.attribute:
            if attr.name == "mode":
                mode = helper.get_attribute_value(attr).decode()
        if mode != "constant" or (len(pad.input) > 2 and not zero_constant(pad.input[2])) or (
                len(pad.input) > 3 and pad.input[3]):  # explicit axes: left alone
            continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(np.int64).reshape(2, -1)
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if (pads[:, :2].any() or (pads < 0).any()
                or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"):
            continue
        spatial = pads[:, 2:]  # (begin, end) x spatial dims -> ONNX Conv's pads order
        merged = np.asarray(attrs.get("pads", [0] * spatial.size)) + spatial.reshape(-1)
        for attr in list(conv.attribute):
            if attr.name == "pads":
                conv.attribute.remove(attr)
        conv.attribute.append(helper.make_attribute("pads", [int(v) for v in merged]))
        conv.input[0] = pad.input[0]
        fused.append(pad)
    for pad in fused:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for name in {pad.input[1] for pad in fused} - used:
        graph.initializer.remove(inits[name])
    return len(fused)


def inferred_shapes(proto):
    """`{tensor name: [dim, ...]}` of the tensors of `proto` whose rank ONNX shape
    inference finds (a dim it cannot tell is None), initializers included. It works on
    a copy of the whole model: call it only where a rewrite has something to do."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                       for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input)
              + list(inferred.output) if v.type.tensor_type.HasField("shape")}
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    return shapes


def _cancel_layout_transposes(proto):
    """Removes the layout transposes that tf2onnx leaves around a channel-wise product:
    `Transpose(Mul(Transpose(x, P), g), P^-1)` becomes `Mul(x, Transpose(g, P^-1))`,
    and `Transpose(Transpose(x, P), P^-1)` becomes `x`. The values are unchanged (the
    same elementwise ops on the same numbers).

    Why: Keras is channels-last and ONNX convolutions channels-first, so tf2onnx wraps
    the NHWC parts of the graph in transposes and then cancels what its optimizer can.
    It cannot push a transpose through a product with a tensor that is not a constant,
    such as EncNet's channel attention `x + x * gamma` (gamma `(B, 1, 1, C)`), nor
    cancel a pair whose first transpose has other users. In the 512 px EncNet+JPU R50
    that left three transposes of its (1, 64, 64, 512) map, which OpenVINO runs as
    copies (its int8 export 0.171 -> 0.165 s without them on a Zen 4, 2 cores; ONNX
    Runtime cancels them itself).

    A binary elementwise node is rewritten only when its other operand has the same
    rank and at most two dimensions that are not 1 (so its own transpose is small) and
    every user of its output is the inverse transpose (so no transpose is added). A
    graph with control flow (subgraphs) is left as it is.

    Args:
        proto: an `onnx.ModelProto`, changed in place.

    Returns:
        The number of Transpose nodes removed, net.
    """
    from onnx import helper

    graph = proto.graph
    if not any(node.op_type == "Transpose" for node in graph.node):
        return 0  # no shape inference (a copy of the whole model) for nothing
    if any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute):
        return 0  # control flow: its subgraphs may read the names this would remove
    dims = inferred_shapes(proto)
    outputs = {o.name for o in graph.output}
    before = sum(node.op_type == "Transpose" for node in graph.node)

    def perm(node):
        if node is not None and node.op_type == "Transpose":
            return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        return None

    def inverse(p):
        return [p.index(i) for i in range(len(p))]

    def links():
        producer = {name: node for node in graph.node for name in node.output}
        users = {}
        for node in graph.node:
            for name in node.input:
                users.setdefault(name, []).append(node)
        return producer, users

    # 1. Op(Transpose(x, P), g) -> Transpose(Op(x, Transpose(g, P^-1)), P), where the
    #    outer transpose meets its inverse in step 2.
    producer, users = links()
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
            continue
        for k in (0, 1):
            p, other = perm(producer.get(node.input[k])), node.input[1 - k]
            shape = dims.get(other)
            if (p is None or shape is None or len(shape) != len(p)
                    or sum(d != 1 for d in shape) > 2 or node.output[0] in outputs
                    or not users.get(node.output[0])
                    or any(perm(u) != inverse(p) for u in users[node.output[0]])):
                continue
            base = node.name or node.output[0]
            small, inner = f"{other}__{base}__untransposed", f"{node.output[0]}__untransposed"
            inputs = list(node.input)
            inputs[k], inputs[1 - k] = producer[node.input[k]].input[0], small
            nodes[-1:] = [
                helper.make_node("Transpose", [other], [small], perm=inverse(p),
                                 name=small + "_op"),
                helper.make_node(node.op_type, inputs, [inner], name=base + "__untransposed"),
                helper.make_node("Transpose", [inner], [node.output[0]], perm=p,
                                 name=base + "__transposed")]
            break
    del graph.node[:]
    graph.node.extend(nodes)

    # 2. Transpose(Transpose(x, P), P^-1) -> x, then drop transposes left unused.
    producer, _ = links()
    alias = {}
    for node in graph.node:
        p, q = perm(producer.get(node.input[0]) if node.input else None), perm(node)
        if p and q and q == inverse(p) and node.output[0] not in outputs:
            alias[node.output[0]] = producer[node.input[0]].input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[i] = name
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node
                if node.op_type == "Transpose" and node.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return before - sum(node.op_type == "Transpose" for node in graph.node)


def _name_onnx_dims(proto):
    """Names the dynamic input/output dims `batch`, `height`, `width` (not `unk__N`)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "height", "width")):
            if not dim.HasField("dim_value"):
                dim.dim_param = name
