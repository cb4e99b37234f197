"""Numeric precision of inference: `fp32`, `bf16`, `fp16` and `int8`.

- `bf16` / `fp16`: the model rebuilt under Keras' mixed-precision policy
  (`mixed_bfloat16` / `mixed_float16`) with the same weights: variables stay float32,
  convolutions and matmuls run in 16 bits, and every inference path casts the logits
  back to float32 before the scores (so the log-domain ensemble and argmax are the
  float32 code). `with_precision` does it for any Keras model; exported SavedModels,
  ONNX and TFLite files made from the rebuilt model keep it.
- `int8`: post-training static quantization of a deploy format, calibrated on images
  from any data source (`calibration_images`): TFLite full-integer and ONNX Runtime QDQ
  (per-channel weights). `int8_dynamic` is the variant without calibration (weights int8,
  activations quantized on the fly): TFLite dynamic range, ONNX Runtime dynamic.
  TensorFlow itself has no int8 kernels for these graphs, so `int8` is an export
  option (and `keras-fastfcn evaluate` measures it through the exported file).

Which precision is fastest depends on the CPU: bf16 needs AVX512-BF16 or AMX (Intel
Sapphire Rapids and later; AMD Zen 4), otherwise it is emulated and slower than fp32;
int8 uses VNNI or AMX-INT8 where present and still AVX2 `vpmaddubsw` elsewhere.
`benchmarks/precision.py` measures speed and accuracy of each on the machine at hand.

Example:
>>> model = keras_fastfcn.models.FastFCNImageSegmenter(
...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
>>> fast = with_precision(model, "bf16")
>>> fast.predict(np.zeros((1, 64, 64, 3)), verbose=0).dtype  # logits of a mixed model
dtype('float32')
"""

import numpy as np

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8_dynamic")
KERAS_PRECISIONS = ("fp32", "bf16", "fp16")
# What each export format holds: `keras_fastfcn.serving.formats`.
_POLICIES = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def check_precision(precision, allowed=PRECISIONS, where=None):
    """`precision` if it is one of `allowed`, else a `ValueError` naming the choices."""
    if precision not in allowed:
        at = f" for {where}" if where else ""
        hint = ""
        if precision in ("int8", "int8_dynamic") and "int8" not in allowed:
            hint = (" int8 is a post-training quantization of an export: "
                    "`keras-fastfcn export --format tflite|onnx --precision int8`, then "
                    "`keras-fastfcn evaluate --model FILE.onnx|.tflite` scores it.")
        raise ValueError(f"Unknown precision {precision!r}{at}: expected one of "
                         f"{list(allowed)}.{hint}")
    return precision


# The float policies `with_precision` replaces (a quantized policy is left alone).
_FLOAT_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16", "bfloat16", "float16")


def _with_policy(config, policy):
    """The serialized model `config` with every layer's float policy set to `policy`."""
    if isinstance(config, list):
        return [_with_policy(c, policy) for c in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        if key == "dtype" and isinstance(value, dict) and value.get("class_name") in (
                "DTypePolicy", "FloatDTypePolicy"):
            if value.get("config", {}).get("name") in _FLOAT_POLICIES:
                value = {**value, "config": {**value["config"], "name": policy}}
            out[key] = value
        else:
            out[key] = _with_policy(value, policy)
    return out


def with_precision(model, precision):
    """`model` computing in `precision`.

    Args:
        model: a Keras segmentation model (any registered or functional model).
        precision: `"fp32"`, `"bf16"` or `"fp16"`.

    Returns:
        For `"bf16"` / `"fp16"`, a new model with the same weights whose layers use
        the mixed-precision policy; its outputs are 16-bit: the package's inference
        and export paths cast the logits to float32. For `"fp32"`, `model` itself if
        every layer computes in float32, else (a model built or trained under a
        mixed policy) a float32 copy with the same weights: an fp32 export or
        prediction computes in fp32 whatever the policy the model was saved with.
    """
    import keras

    from keras_fastfcn._keras_private import all_layers

    check_precision(precision, KERAS_PRECISIONS, "a Keras model")
    if precision == "fp32" and all(layer.dtype_policy.compute_dtype == "float32"
                                   for layer in all_layers(model)):
        return model
    policy = _POLICIES.get(precision, "float32")
    config = _with_policy(keras.saving.serialize_keras_object(model), policy)
    config.pop("compile_config", None)
    # Layers built from arguments (the FastFCN models, as keras-hub's) take the global
    # policy; functional configs carry a policy per layer (rewritten above).
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        rebuilt = keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
    weights = model.get_weights()
    if len(rebuilt.weights) != len(weights):
        raise ValueError(f"Cannot rebuild {model.name!r} in {precision}: its config does "
                         "not describe all of its weights.")
    rebuilt.set_weights(weights)
    return rebuilt


def calibration_images(source, count, size=None, split="train", seed=0):
    """`count` images of a data source, for int8 calibration (uint8 `(H, W, 3)` each).

    Args:
        source: a data source spec (`"camvid"`, `"demo"`, `"folder:PATH"`, ...) or a
            `Source`.
        count: number of images (100 is plenty; the order is shuffled with `seed`).
        size: None (each image's own size) or `(H, W)` to resize to (fixed-size
            exports such as TFLite).
        split: the split to draw from (calibrate on training images, evaluate on val).
    """
    from PIL import Image

    from keras_fastfcn import data

    if int(count) < 1:
        raise ValueError(f"calibration images must be >= 1, got {count}.")
    src = data.get_source(source) if isinstance(source, str) else source
    ds = src.dataset(split).shuffle(256, seed=seed).take(int(count))
    images = []
    for image, _ in ds:
        image = np.asarray(image, np.uint8)
        if size is not None and tuple(image.shape[:2]) != tuple(size):
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]),
                                                             Image.BILINEAR))
        images.append(image)
    if not images:
        raise ValueError(f"The {split} split of {source!r} has no images to calibrate on.")
    return images
