"""Class names and export options inside a `.tflite` file, as the ONNX and OpenVINO
exports carry them (`class_names`, `num_classes`, `dataset`, `input`,
`keras_fastfcn_export`: JSON strings, the same keys and values).

The TFLite flatbuffer has a list of named metadata buffers (the converter writes its
own `min_runtime_version` and `CONVERSION_METADATA` there), but neither the converter
nor `tf.lite.Interpreter` has an API to write or read other entries; the
`tflite_support` package that had one is deprecated. So this module uses TensorFlow's
generated flatbuffer schema (`tensorflow.lite.python.schema_py_generated`, a private
module), and only here; `check()` fails loudly if that schema changes.
"""

import flatbuffers
import numpy as np


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def with_metadata(flatbuffer, metadata):
    """`flatbuffer` (the bytes of a `.tflite` model) with the string entries
    `metadata` (`{name: str}`) added, replacing entries of the same names.

    The model is unpacked and packed again, as TensorFlow's converter does to add its
    own entry; a model over 2 GB (weights after the flatbuffer) is returned unchanged.

    Example:
    >>> double = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec([4])])
    >>> flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions(
    ...     [double.get_concrete_function()], double).convert()
    >>> data = with_metadata(flatbuffer, {"class_names": '["road", "sky"]'})
    >>> read_metadata(data)["class_names"]
    '["road", "sky"]'
    """
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    if any((b.offset or 0) > 1 for b in (model.buffers or [])):
        # Weights stored after the flatbuffer (models over 2 GB): repacking would
        # lose them. TensorFlow's converter leaves its own metadata out there too.
        return bytes(flatbuffer)
    model.metadata = [m for m in (model.metadata or [])
                      if m.name.decode() not in metadata]
    model.buffers = list(model.buffers or [])
    for name, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode("utf-8"), np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(flatbuffer):
    """The string metadata entries of a `.tflite` model's bytes, `{name: str}`, ours
    and the converter's (entries that are not UTF-8 text are left out)."""
    schema = _schema()
    model = schema.Model.GetRootAs(flatbuffer, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        data = model.Buffers(entry.Buffer()).DataAsNumpy()
        if isinstance(data, np.ndarray):  # 0 when the buffer is empty
            try:
                entries[entry.Name().decode()] = data.tobytes().decode("utf-8")
            except UnicodeDecodeError:
                pass
    return entries


def check():
    """Raises `RuntimeError` unless TensorFlow's TFLite schema still has what this
    module uses (run by the test suite, so a TensorFlow upgrade that moves it fails
    there, not in a user's export)."""
    try:
        schema = _schema()
        missing = [name for name in ("ModelT", "BufferT", "MetadataT", "Model")
                   if not hasattr(schema, name)]
    except ImportError as err:
        missing = [f"the module itself ({err})"]
    if missing:
        raise RuntimeError("tensorflow.lite.python.schema_py_generated lacks "
                           f"{', '.join(missing)}: keras_fastfcn.serving.tflite_metadata "
                           "needs updating for this TensorFlow version.")
