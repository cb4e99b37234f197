"""Running an exported model (ONNX Runtime, TFLite, OpenVINO) where a Keras predictor would run.

`keras-fastfcn evaluate --model m.onnx` (or `.tflite`, or an OpenVINO `.xml`) scores the
export itself, so the
accuracy of an int8 / fp16 file is measured by the same code and metrics as the
`.keras` model it came from; `keras-fastfcn predict --model m.onnx` predicts with it.
The export's inference options (scales, flip, input size, precision) were fixed when it
was written; they are read from its metadata.

Example:
>>> from keras_fastfcn import serving
>>> inputs = keras.Input((None, None, 3))
>>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
>>> predictor = ExportPredictor(serving.export(model, "fastfcn.onnx", format="onnx"))
>>> predictor(np.zeros((2, 64, 96, 3), np.uint8)).shape  # (B, H, W) class map
(2, 64, 96)
"""

import json
import os
import warnings

import numpy as np

from keras_fastfcn.inference import ModelInfo
from keras_fastfcn.serving.formats import FORMATS, format_of_file
from keras_fastfcn.serving.tflite_metadata import read_metadata

# The file formats that run in process (`serving.formats`: ONNX, TFLite, OpenVINO).
EXPORT_SUFFIXES = tuple(f.suffix for f in FORMATS.values() if f.suffix and f.runtime)


def _ir_files(folder):
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(".xml"))


def is_export(path):
    """True if `path` names an export this module runs (by its suffix), or is a folder
    holding an OpenVINO IR (`.xml`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return bool(_ir_files(path))
    return format_of_file(path) is not None


def resolve_export(path):
    """The export file of `path`: itself, or the one `.xml` IR of a folder (a
    `ValueError` naming them when the folder holds several)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    found = _ir_files(path)
    if len(found) != 1:
        raise ValueError(f"{path} holds {len(found)} OpenVINO IRs ({', '.join(found)}); "
                         "give the .xml file to run.")
    return os.path.join(path, found[0])


# What `keras-fastfcn export` writes, in the words of the errors for other files.
EXPECTED = ("one input 'images' float32 (batch, height, width, 3), RGB 0-255, and an "
            "output 'class_map' int32 (batch, height, width)")
_ONNX_TYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(uint8)": "uint8", "tensor(float16)": "float16"}
# OpenVINO's inference precisions an export may record (`serving.openvino`).
_OPENVINO_HINTS = ("f32", "bf16", "f16")


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _check_interface(path, title, inputs, outputs, note=""):
    """A `ValueError` naming `path` and its first difference from an export's inputs and
    outputs (`{name: (dtype, shape)}`, a dim an int or a name)."""
    problem = None
    image, labels = inputs.get("images"), outputs.get("class_map")
    if list(inputs) != ["images"]:
        problem = f"its inputs are {list(inputs)}"
    elif labels is None:
        problem = f"its outputs are {list(outputs)}"
    elif len(image[1]) != 4:
        problem = f"its input 'images' has rank {len(image[1])} (shape {list(image[1])})"
    elif isinstance(image[1][-1], int) and image[1][-1] != 3:
        problem = f"its input 'images' has {image[1][-1]} channels (shape {list(image[1])})"
    elif image[0] != "float32":
        problem = f"its input 'images' is {image[0]}"
    elif len(labels[1]) != 3 or labels[0] not in ("int32", "int64"):
        problem = f"its output 'class_map' is {labels[0]} of shape {list(labels[1])}"
    if problem is not None:
        raise ValueError(f"{path} is not a keras-fastfcn {title} export{note}: {problem}; "
                         f"an export has {EXPECTED}.")


class ExportPredictor:
    """Calls an exported `.onnx` / `.tflite` / OpenVINO `.xml` model on `(B, H, W, 3)`
    0-255 RGB images and returns its `class_map` output, `(B, H, W)` int32.

    ONNX Runtime and OpenVINO run the batch at once (dynamic sizes unless the export
    fixed them); TFLite one image at a time, at its fixed input size. Images of another
    size than a fixed-size export's are a `ValueError` (resizing would score another
    image than the label's). OpenVINO compiles the IR for the CPU with the inference
    precision its export recorded (fp32 and int8: `f32`, bf16: `bf16`; OpenVINO's own
    default is bf16 on CPUs with bf16 hardware).

    Args:
        path: the `.onnx`, `.tflite` or `.xml` file (from `keras-fastfcn export`), or a
            folder holding one `.xml` (with its `.bin`).
        threads: CPU threads of the runtime (None: every core).

    Attributes:
        format: `"onnx"`, `"tflite"` or `"openvino"`.
        num_classes: from the export's metadata or its probabilities output; None
            when it has neither.
        class_names: list or None.
        dataset: the dataset name recorded at export, for its palette; or None.
        input_size: `(H, W)` of a fixed-size export (every TFLite file), else None.
        options: the export's options (`precision`, `scales`, ...) where recorded.
        compile_config: OpenVINO only: the properties it compiled the IR with (threads,
            latency hint, the recorded inference precision), for a profiler to compile
            it the same way.

    Example:
    >>> from keras_fastfcn import serving
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
    >>> predictor = ExportPredictor(serving.export(model, "fastfcn.onnx", format="onnx"))
    >>> predictor(np.zeros((1, 360, 480, 3), np.float32)).shape
    (1, 360, 480)
    """

    def __init__(self, path, threads=None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Model file not found: {path}")
        if not is_export(path):
            raise ValueError(f"{path} is not an export: expected a "
                             f"{', '.join(EXPORT_SUFFIXES)} file.")
        path = resolve_export(path)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1 (or None: every core), got {threads}.")
        self.path = path
        self.threads = int(threads or os.cpu_count() or 1)
        self.format = format_of_file(path).name
        self.class_names, self.num_classes, self.dataset, self.options = None, None, None, {}
        getattr(self, f"_open_{format_of_file(path).runtime}")()

    def _open_onnx(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("Running an .onnx model needs onnxruntime: "
                               "pip install 'keras_fastfcn[export]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        try:
            self._session = ort.InferenceSession(self.path, options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types
            raise ValueError(f"{self.path} is not a readable ONNX model: "
                             f"{_first_line(err)}") from None
        meta = self._session.get_modelmeta().custom_metadata_map
        ours = "keras_fastfcn_export" in meta
        _check_interface(
            self.path, "ONNX",
            {i.name: (_ONNX_TYPES.get(i.type, i.type), i.shape)
             for i in self._session.get_inputs()},
            {o.name: (_ONNX_TYPES.get(o.type, o.type), o.shape)
             for o in self._session.get_outputs()},
            "" if ours else " (no keras_fastfcn_export metadata)")
        shape = self._session.get_inputs()[0].shape
        self.input_size = (tuple(shape[1:3]) if all(isinstance(d, int) for d in shape[1:3])
                           else None)
        self._read_metadata(meta)
        if self.num_classes is None:  # a file of the user's: the scores' size, if fixed
            scores = {o.name: o.shape for o in self._session.get_outputs()}.get("probabilities")
            if scores and isinstance(scores[-1], int):
                self.num_classes = scores[-1]

    def _read_metadata(self, meta):
        """Class names, count, dataset and export options from the export's metadata; a
        `ValueError` naming the file and the key where one does not parse."""

        def read(key, parse, valid, expected):
            if key not in meta:
                return None
            try:
                value = parse(meta[key])
            except (ValueError, TypeError):
                value = valid = None
            if valid is None or not valid(value):
                raise ValueError(f"{self.path}: its metadata {key!r} is {meta[key][:80]!r}, "
                                 f"not {expected}; export the model again with "
                                 "keras-fastfcn export.")
            return value

        names = read("class_names", json.loads,
                     lambda v: v is None or (isinstance(v, list)
                                             and all(isinstance(n, str) for n in v)),
                     "a JSON list of class names")
        count = read("num_classes", int, lambda v: v >= 1, "a class count >= 1")
        dataset = read("dataset", json.loads, lambda v: v is None or isinstance(v, str),
                       "a JSON dataset name")
        options = read("keras_fastfcn_export", json.loads, lambda v: isinstance(v, dict),
                       "a JSON object of export options")
        if names and count and len(names) != count:
            raise ValueError(f"{self.path}: its metadata names {len(names)} classes but "
                             f"num_classes is {count}.")
        self.class_names, self.num_classes = names or None, count
        self.dataset, self.options = dataset or None, options or {}

    def _open_tflite(self):
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            try:
                interpreter = tf.lite.Interpreter(self.path, num_threads=self.threads)
            except Exception as err:  # ValueError, or RuntimeError from the flatbuffer
                raise ValueError(f"{self.path} is not a readable TFLite model: "
                                 f"{_first_line(err)}") from None
        signatures = interpreter.get_signature_list()
        if "serving_default" in signatures:
            key = "serving_default"
        elif len(signatures) == 1:
            key = next(iter(signatures))
        else:
            found = f"the signatures {sorted(signatures)}" if signatures else "no signature"
            raise ValueError(f"{self.path} is not a keras-fastfcn TFLite export: it has "
                             f"{found}; an export has a 'serving_default' signature with "
                             f"{EXPECTED}.")
        runner = interpreter.get_signature_runner(key)

        def io(details):
            return {name: (np.dtype(d["dtype"]).name, [int(v) for v in d["shape"]])
                    for name, d in details.items()}

        inputs, outputs = io(runner.get_input_details()), io(runner.get_output_details())
        _check_interface(self.path, "TFLite", inputs, outputs)
        if inputs["images"][1][0] != 1:
            raise ValueError(f"{self.path}: its input 'images' has shape "
                             f"{inputs['images'][1]}; a TFLite export takes one image "
                             "(1, height, width, 3).")
        self.input_size = tuple(inputs["images"][1][1:3])
        with open(self.path, "rb") as f:
            self._read_metadata(read_metadata(f.read()))
        probabilities = outputs.get("probabilities")
        if self.num_classes is None and probabilities is not None:
            self.num_classes = int(probabilities[1][-1])
        self._runner = runner

    def _open_openvino(self):
        try:
            import openvino as ov
        except ImportError:
            raise RuntimeError("Running an OpenVINO model needs openvino: "
                               "pip install 'keras_fastfcn[openvino]'") from None
        weights = os.path.splitext(self.path)[0] + ".bin"
        if not os.path.isfile(weights):
            raise ValueError(f"{self.path}: its weights file {weights} is missing; an "
                             "OpenVINO IR is the .xml and the .bin beside it.")
        core = ov.Core()
        try:
            model = core.read_model(self.path, weights)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"{self.path} is not a readable OpenVINO model: "
                             f"{_first_line(err)}") from None

        def io(ports):
            return {port.get_any_name() if port.get_names() else f"#{i}": (
                _ov_type(port.get_element_type()),
                [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
                if port.get_partial_shape().rank.is_static else [])
                for i, port in enumerate(ports)}

        key = "keras_fastfcn"
        meta = ({name: model.get_rt_info([key, name]).astype(str)
                 for name in ("class_names", "num_classes", "dataset", "keras_fastfcn_export",
                              "inference_precision_hint")
                 if model.has_rt_info([key, name])} if model.has_rt_info(key) else {})
        inputs, outputs = io(model.inputs), io(model.outputs)
        _check_interface(self.path, "OpenVINO", inputs, outputs,
                         "" if "keras_fastfcn_export" in meta
                         else " (no keras_fastfcn_export runtime info)")
        shape = inputs["images"][1]
        self.input_size = (tuple(shape[1:3]) if all(isinstance(d, int) for d in shape[1:3])
                           else None)
        self._read_metadata(meta)
        scores = outputs.get("probabilities")
        if self.num_classes is None and scores and isinstance(scores[1][-1], int):
            self.num_classes = scores[1][-1]
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        hint = meta.get("inference_precision_hint")
        if hint is not None and hint not in _OPENVINO_HINTS:
            raise ValueError(f"{self.path}: its runtime info 'inference_precision_hint' is "
                             f"{hint[:80]!r}, not one of {list(_OPENVINO_HINTS)}; export the "
                             "model again with keras-fastfcn export.")
        if hint:  # without one (a file of the user's) OpenVINO picks: bf16 where it can
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            compiled = core.compile_model(model, "CPU", config)
        except Exception as err:
            raise ValueError(f"{self.path}: OpenVINO cannot compile it for the CPU: "
                             f"{_first_line(err)}") from None
        # What it runs: the hint's own default where none was recorded, and f32 where
        # the CPU has no bf16.
        self.inference_precision = compiled.get_property(
            "INFERENCE_PRECISION_HINT").get_type_name()
        self.compile_config = config
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._class_map = compiled.output("class_map")

    def __call__(self, images):
        """The class map `(B, H, W)` int32 of `images` `(B, H, W, 3)`, 0-255 RGB."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected images (batch, height, width, 3), got {images.shape}.")
        if 0 in images.shape:
            # ONNX Runtime fails with a bare `Fail`, TFLite in a concatenate, and an
            # OpenVINO request stays broken for every later call.
            raise ValueError(f"Expected a non-empty batch of images, got shape {images.shape}.")
        if not np.isfinite(images).all():
            # The in-graph checks of the SavedModel refuse them too; the runtimes would
            # give a constant class map (TFLite: 2**31 - 1 everywhere).
            raise ValueError("images hold NaN or infinite values (expected 0-255 RGB).")
        fixed = self.input_size
        if fixed is not None and images.shape[1:3] != fixed:
            raise ValueError(
                f"{self.path} takes {fixed[0]}x{fixed[1]} images (height x width, fixed "
                f"when it was exported); this one is {images.shape[1]}x{images.shape[2]}. "
                "Export it again with --input-size for this data, or without it (ONNX: "
                "any size).")
        if self.format == "onnx":
            try:
                return self._session.run(["class_map"], {"images": images})[0]
            except Exception as err:
                if type(err).__name__ != "InvalidArgument":  # ORT's bad-input error
                    raise
                raise ValueError(f"{self.path} cannot run on images of shape {images.shape}: "
                                 f"{_first_line(err)}") from None
        if self.format == "openvino":
            try:
                result = self._request.infer({"images": images})
            except RuntimeError as err:  # e.g. a batch other than a foreign IR's fixed one
                raise ValueError(f"{self.path} cannot run on images of shape {images.shape}: "
                                 f"{_first_line(err)}") from None
            # A copy: the request's output tensor is overwritten by its next call.
            return np.array(result[self._class_map], np.int32)
        return np.concatenate([self._runner(images=image[None])["class_map"]
                               for image in images])

    class_map = __call__  # what `evaluation.class_map` calls: the export's output is one

    def info(self):
        """The export's `inference.ModelInfo` (`num_classes` None when not recorded)."""
        return ModelInfo(num_classes=self.num_classes, class_names=self.class_names,
                         dataset=self.dataset,
                         align_corners=True)  # unused: the export's resizes are in its graph

    def settings(self):
        """The export's format and options as a JSON-ready dict (evaluation reports)."""
        return {"export": self.format, **self.options}

    def describe(self):
        """One line naming the export (printed by the CLI)."""
        precision = self.options.get("precision", "not recorded")
        if getattr(self, "inference_precision", None):  # what OpenVINO compiled it for
            precision += f" (runs {self.inference_precision})"
        size = (f"{self.input_size[0]}x{self.input_size[1]} (height x width)"
                if self.input_size else "any size")
        return (f"{self.format} export, precision={precision}, input {size}, "
                f"{self.threads} threads")


def _ov_type(element_type):
    """An OpenVINO element type as a numpy dtype name (`"float32"`, `"int32"`)."""
    try:
        return np.dtype(element_type.to_dtype()).name
    except Exception:  # a type numpy has no name for (bf16, u1, dynamic)
        return element_type.get_type_name()
