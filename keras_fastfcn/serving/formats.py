"""The export formats: one registry that `serving.export`, `keras-fastfcn export`,
`predict` / `evaluate --model FILE` and the exporters' precision checks all read.

Light (no TensorFlow): an entry names its exporter as `"module:function"`, imported
when an export is written.

Example:
>>> sorted(FORMATS)
['onnx', 'openvino', 'saved_model', 'tflite']
>>> FORMATS["tflite"].precisions
('fp32', 'fp16', 'int8', 'int8_dynamic')
"""

import dataclasses
import importlib
from typing import Optional, Tuple

from keras_fastfcn.precision import KERAS_PRECISIONS, PRECISIONS, check_precision


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """An export format.

    Attributes:
        name: the `--format` name.
        title: how messages name it (`"a SavedModel"`, `"ONNX"`).
        exporter: `"module:function"`, `function(model, output, **options) -> path`.
        precisions: the precisions it holds, in `precision.PRECISIONS` order.
        suffix: the file suffix of a one-file export (None: a folder; OpenVINO's
            `.xml` has its weights in a `.bin` beside it).
        runtime: the `serving.runtime.ExportPredictor` runner of its files (None: run
            by its own server, as TF Serving runs a SavedModel).
        precision_help: one line on its precisions for `--help`.
    """

    name: str
    title: str
    exporter: str
    precisions: Tuple[str, ...]
    suffix: Optional[str] = None
    runtime: Optional[str] = None
    precision_help: str = ""

    def export_function(self):
        module, function = self.exporter.split(":")
        return getattr(importlib.import_module(module), function)


FORMATS = {}


def register_format(fmt):
    """Adds an `ExportFormat` (a format of your own reaches `serving.export`, the
    `export` command and the precision checks through this)."""
    unknown = [p for p in fmt.precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"Format {fmt.name!r}: unknown precisions {unknown} "
                         f"(expected among {list(PRECISIONS)}).")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name):
    """The `ExportFormat` called `name`, or a `ValueError` naming the choices."""
    if name not in FORMATS:
        raise ValueError(f"Unknown export format {name!r}: expected one of {list(FORMATS)}.")
    return FORMATS[name]


def format_of_file(path):
    """The format whose runtime runs the file `path` (by its suffix), or None."""
    lower = str(path).lower()
    for fmt in FORMATS.values():
        if fmt.suffix and fmt.runtime and lower.endswith(fmt.suffix):
            return fmt
    return None


def export_precisions():
    """Every precision some format holds, in `PRECISIONS` order (the CLI's choices)."""
    return tuple(p for p in PRECISIONS if any(p in f.precisions for f in FORMATS.values()))


def check_export_precision(name, precision, calibration):
    """Raises a `ValueError` unless format `name` holds `precision` and, for `"int8"`,
    `calibration` (images, or the CLI's data spec) is given."""
    fmt = get_format(name)
    check_precision(precision, fmt.precisions, fmt.title)
    if precision == "int8" and not calibration:
        raise ValueError(f"int8 {fmt.title} export needs calibration images "
                         "(--calibration-data SPEC --calibration-images N).")


register_format(ExportFormat(
    "saved_model", "a SavedModel", "keras_fastfcn.serving.saved_model:export_saved_model",
    KERAS_PRECISIONS, precision_help="fp32, bf16, fp16 (Keras mixed precision)"))
register_format(ExportFormat(
    "onnx", "ONNX", "keras_fastfcn.serving.onnx:export_onnx",
    ("fp32", "int8", "int8_dynamic"), suffix=".onnx", runtime="onnx",
    precision_help="fp32, int8 (QDQ), int8_dynamic"))
register_format(ExportFormat(
    "tflite", "TFLite", "keras_fastfcn.serving.tflite:export_tflite",
    ("fp32", "fp16", "int8", "int8_dynamic"), suffix=".tflite", runtime="tflite",
    precision_help="fp32, fp16 (weights), int8 (full integer), int8_dynamic"))
register_format(ExportFormat(
    "openvino", "OpenVINO", "keras_fastfcn.serving.openvino:export_openvino",
    ("fp32", "bf16", "int8"), suffix=".xml", runtime="openvino",
    precision_help="fp32, bf16 (the runtime's inference precision), int8 (NNCF)"))
