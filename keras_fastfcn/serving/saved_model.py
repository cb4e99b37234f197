"""SavedModel export for TF Serving: `BASE/VERSION/` with three signatures.

| signature | input | dtype, shape |
|---|---|---|
| `serving_default` | `image_tensor` | uint8 `[B, H, W, 3]`, RGB |
| `serving_image_bytes` | `image_bytes` | string `[B]`, encoded JPEG/PNG/GIF/BMP |
| `serving_float` | `image_tensor` | float32 `[B, H, W, 3]`, RGB 0-255 |

B, H and W are dynamic; with `input_size=(H, W)` the network itself runs at that fixed
size (images resized to it in the graph, results resized back, as Model Garden's
`input_image_size` + `rescale_output`). Outputs: `class_map` int32 `[B, H, W]`,
`probabilities` float32 `[B, H, W, C]` (unless `probabilities=False`) and, when the
model carries class names, `class_names` string `[B, C]` (repeated per image because
TF Serving's REST row format requires every output to share the batch dimension).
`serving_image_bytes` decodes with `tf.io.decode_image`, which ignores EXIF
orientation: send upright pixels (`keras_fastfcn.serving.client` applies the EXIF
orientation before sending, as every reader of the package does).

Two limits keep one request from exhausting the server's memory, both refused with
the signature's own message before the network runs: `max_pixels` per image
(height x width) and `max_batch_pixels` per request (batch x height x width, counted
at the sizes the network runs; by default the same number as `max_pixels`, so that a
request never costs more than one image at the limit). `serving_image_bytes` checks
both on the sizes the JPEG/PNG/BMP headers declare, before decoding: a small file
that declares 40000 x 40000 pixels is refused without being decoded. With a limit
set it refuses GIFs, whose decoded size is not in their header.
"""

import json
import numbers
import os

import keras

from keras_fastfcn.fileio import atomic_path, removing_new_folders
from keras_fastfcn.inference import MAX_PIXELS
from keras_fastfcn.serving.formats import check_export_precision
from keras_fastfcn.serving.graph import SIGNATURE_INPUTS, SIGNATURES, serving_endpoints
from keras_fastfcn.inference.prepare import prepare
from keras_fastfcn.serving.targets import (METADATA_FILE, check_options,
                                           check_saved_model_target, metadata)


def write_saved_model(endpoints, path):
    """Writes `endpoints` as signatures of a SavedModel at `path`.

    Keras' ExportArchive tracks the model's variables directly on the saved root
    object. That layout also loads in TF1-style sessions, which is how TF Serving
    (and the TFLite converter) load SavedModels; saving a `tf.Module` holding
    the Keras model does not (its variables are not found there).
    """
    archive = keras.export.ExportArchive()
    # No `archive.track(net)`: the archive already saves the variables the
    # endpoints use, and tracking the model as well stores every weight twice.
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    archive.write_out(path, verbose=False)


def _pixel_limit(name, value):
    if value is None:
        return None
    if (isinstance(value, (bool, str)) or not isinstance(value, numbers.Real)
            or int(value) != value or value < 1):
        raise ValueError(f"{name} must be a whole number >= 1 or None, got {value!r}.")
    return int(value)


def export_saved_model(model, output, overwrite=False, probabilities=True, scales=(1.0,),
                       flip=False, input_size=None, base_size=None, fold_bn=True,
                       max_pixels=MAX_PIXELS, precision="fp32", max_batch_pixels="auto"):
    """Writes a SavedModel for TF Serving at `output` (`BASE` or `BASE/VERSION`).

    The version folder is written next to its final place and renamed into it,
    so TF Serving (which polls `BASE`) never sees a half-written version, and a
    failed export leaves nothing behind.

    Args:
        model: a segmentation model (`FastFCNImageSegmenter`, or any Keras model
            from 0-255 RGB images to logits).
        output: `BASE` (the next free integer version is used) or `BASE/VERSION`.
        overwrite: replace an existing `BASE/VERSION`.
        probabilities: include the `probabilities` output.
        scales, flip, base_size: in-graph multi-scale / flip inference.
        input_size: None, or `(H, W)`: run the network at a fixed size (images
            are resized in the graph, outputs resized back).
        fold_bn: fold BatchNorms into the convolutions first.
        max_pixels: requests with an image over this many pixels (height x width)
            fail with a clear error instead of exhausting the server's memory
            (default 2048 x 2048; None: no limit).
        max_batch_pixels: the budget of one request: batch x height x width, each
            image counted at the larger of its own size and the pixels the network
            runs on it (at `input_size`, or its long side at `base_size`, summed over
            `scales`, doubled with `flip`). `"auto"` (default): `max_pixels`, so a
            request costs at most what one image at the limit does (a batch of 4
            images of 1024 x 1024, or 1 of 2048 x 2048, by default). None: no limit.
            Recorded in the export's metadata (`options.max_batch_pixels`).
        precision: `"fp32"`, `"bf16"` or `"fp16"` (Keras mixed precision in the
            graph; outputs stay float32). TensorFlow has no int8 kernels for this
            graph: int8 is a TFLite / ONNX export.

    Returns:
        The version folder written.

    Example:
    >>> inputs = keras.Input((None, None, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
    >>> export_saved_model(model, "saved_models/demo")
    'saved_models/demo/1'
    """
    check_export_precision("saved_model", precision, None)
    scales, flip, input_size, base_size = check_options(scales, flip, input_size, base_size,
                                                        model)
    max_pixels = _pixel_limit("max_pixels", max_pixels)
    max_batch_pixels = (max_pixels if max_batch_pixels == "auto"
                        else _pixel_limit("max_batch_pixels", max_batch_pixels))
    target, version = check_saved_model_target(output, overwrite, create=False)
    net, info = prepare(model, fold_bn, precision, native_resizes=True)
    endpoints = serving_endpoints(
        net, info.class_names, probabilities, scales, flip, input_size, base_size,
        info.align_corners, max_pixels, max_batch_pixels)
    options = dict(probabilities=probabilities, scales=list(scales), flip=flip,
                   input_size=list(input_size) if input_size else None,
                   base_size=base_size, fold_bn=bool(fold_bn), max_pixels=max_pixels,
                   max_batch_pixels=max_batch_pixels, precision=precision)

    with removing_new_folders(target), atomic_path(target, is_dir=True) as tmp:
        write_saved_model(endpoints, tmp)
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata(model, info, "saved_model", options,
                               {"signatures": list(SIGNATURES), "inputs": SIGNATURE_INPUTS,
                                "version": version}),
                      f, indent=2)
    return target
