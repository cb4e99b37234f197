"""Running an exported model (ONNX Runtime, TFLite) where a Keras predictor would run.

`keras-fastfcn evaluate --model m.onnx` (or `.tflite`) scores the export itself, so the
accuracy of an int8 / fp16 file is measured by the same code and metrics as the
`.keras` model it came from; `keras-fastfcn predict --model m.onnx` predicts with it.
The export's inference options (scales, flip, input size, precision) were fixed when it
was written; they are read from its metadata.

Example:
>>> predictor = ExportPredictor("fastfcn_int8.onnx")  # doctest: +SKIP
>>> predictor(images).shape                               # (B, H, W) class map
"""

import json
import os
import warnings

import numpy as np

from keras_fastfcn.inference import ModelInfo
from keras_fastfcn.serving.formats import FORMATS, format_of_file

# The one-file formats that run in process (`serving.formats`: ONNX, TFLite).
EXPORT_SUFFIXES = tuple(f.suffix for f in FORMATS.values() if f.suffix and f.runtime)


def is_export(path):
    """True if `path` names an export this module runs (by its suffix)."""
    return format_of_file(os.fspath(path)) is not None


class ExportPredictor:
    """Calls an exported `.onnx` / `.tflite` model on `(B, H, W, 3)` 0-255 RGB images and
    returns its `class_map` output, `(B, H, W)` int32.

    ONNX Runtime runs the batch at once (dynamic sizes unless the export fixed them);
    TFLite one image at a time, at its fixed input size. Images of another size than a
    fixed-size export's are a `ValueError` (resizing would score another image than the
    label's).

    Args:
        path: the `.onnx` or `.tflite` file (from `keras-fastfcn export`).
        threads: CPU threads of the runtime (None: every core).

    Attributes:
        format: `"onnx"` or `"tflite"`.
        num_classes: from the export's metadata (ONNX) or its probabilities output
            (TFLite); None when it has neither.
        class_names: list or None.
        dataset: the dataset name recorded at export (ONNX), for its palette; or None.
        input_size: `(H, W)` of a fixed-size export (every TFLite file), else None.
        options: the export's options (`precision`, `scales`, ...) where recorded.

    Example:
    >>> predictor = ExportPredictor("fastfcn.onnx")  # doctest: +SKIP
    >>> predictor(np.zeros((1, 360, 480, 3), np.float32)).shape
    (1, 360, 480)
    """

    def __init__(self, path, threads=None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Model file not found: {path}")
        if not is_export(path):
            raise ValueError(f"{path} is not an .onnx or .tflite export.")
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
                             f"{str(err).splitlines()[0][:200]}") from None
        inputs = self._session.get_inputs()
        outputs = [o.name for o in self._session.get_outputs()]
        if [i.name for i in inputs] != ["images"] or "class_map" not in outputs:
            raise ValueError(f"{self.path} is not a keras_fastfcn export (input 'images', "
                             f"output 'class_map'); its inputs: {[i.name for i in inputs]}, "
                             f"outputs: {outputs}.")
        shape = inputs[0].shape
        self.input_size = (tuple(shape[1:3]) if all(isinstance(d, int) for d in shape[1:3])
                           else None)
        meta = self._session.get_modelmeta().custom_metadata_map
        if "class_names" in meta:
            self.class_names = json.loads(meta["class_names"]) or None
        if "dataset" in meta:
            self.dataset = json.loads(meta["dataset"]) or None
        if "num_classes" in meta:
            self.num_classes = int(meta["num_classes"])
        self.options = json.loads(meta.get("keras_fastfcn_export", "{}"))

    def _open_tflite(self):
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            try:
                interpreter = tf.lite.Interpreter(self.path, num_threads=self.threads)
            except ValueError as err:
                raise ValueError(f"{self.path} is not a readable TFLite model: "
                                 f"{str(err)[:200]}") from None
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details()
        if "images" not in details or "class_map" not in runner.get_output_details():
            raise ValueError(f"{self.path} is not a keras_fastfcn TFLite export (input "
                             f"'images', output 'class_map').")
        self.input_size = tuple(int(d) for d in details["images"]["shape"][1:3])
        probabilities = runner.get_output_details().get("probabilities")
        if probabilities is not None:
            self.num_classes = int(probabilities["shape"][-1])
        self._runner = runner

    def __call__(self, images):
        """The class map `(B, H, W)` int32 of `images` `(B, H, W, 3)`, 0-255 RGB."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Expected images (batch, height, width, 3), got {images.shape}.")
        fixed = self.input_size
        if fixed is not None and images.shape[1:3] != fixed:
            raise ValueError(
                f"{self.path} takes {fixed[0]}x{fixed[1]} images (fixed when it "
                f"was exported); this one is {images.shape[1]}x{images.shape[2]}. Export it "
                "again with --input-size for this data, or without it (ONNX: any size).")
        if self.format == "onnx":
            return self._session.run(["class_map"], {"images": images})[0]
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
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else "any size"
        return (f"{self.format} export, precision={precision}, input {size}, "
                f"{self.threads} threads")
