"""Bad requests to an exported SavedModel: decompression bombs and oversized batches.

`serving_image_bytes` reads each image's declared size from its header (JPEG, PNG,
BMP) and refuses one over `max_pixels` before decoding it; every signature refuses a
request over `max_batch_pixels` (batch x height x width) before the network runs.
The bombs here are headers only: a few hundred bytes that declare 40000 x 40000
pixels, which a decoder would allocate 4.8 GB for.
"""

import io
import json
import os
import struct
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harness import tiny_segmenter
from keras_fastfcn import serving
from keras_fastfcn.serving.graph import serving_endpoints

LIMIT = 64 * 64  # max_pixels of the test export, and (by default) its request budget


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header(height, width):
    """A PNG of a signature, an IHDR (8-bit RGB) and IEND: no pixel data at all."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def jpeg_header(height, width):
    """A small baseline JPEG whose frame header (SOF0) is patched to `height x width`."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_header(height, width):
    """A small 24-bit BMP whose info header declares `height x width` (top-down)."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8), "BMP"))
    data[18:26] = struct.pack("<ii", width, -height)
    return bytes(data)


@pytest.fixture(scope="module")
def exported(tiny_backbone, tmp_path_factory):
    keras.utils.set_random_seed(0)
    base = tmp_path_factory.mktemp("bad_serving") / "sm"
    path = serving.export(tiny_segmenter(), str(base), max_pixels=LIMIT)
    return path, tf.saved_model.load(path).signatures


@pytest.mark.parametrize("make", [png_header, jpeg_header, bmp_header],
                         ids=["png", "jpeg", "bmp"])
def test_header_bomb_refused_before_decoding(exported, make):
    signature = exported[1]["serving_image_bytes"]
    bomb = make(40000, 40000)
    assert len(bomb) < 2000
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        signature(image_bytes=tf.constant([bomb]))
    message = str(info.value)
    assert "an image declares 40000x40000 pixels" in message
    assert f"limit of {LIMIT} pixels" in message and "before decoding" in message
    # A decode would first allocate 4.8 GB; the header check answers at once.
    assert time.perf_counter() - start < 10


def test_header_sizes_match_the_decoder(exported):
    signature = exported[1]["serving_image_bytes"]
    rng = np.random.RandomState(0)
    for fmt in ("PNG", "JPEG", "BMP"):
        image = rng.randint(0, 256, (48, 80, 3)).astype(np.uint8)  # 3840 <= LIMIT
        out = signature(image_bytes=tf.constant([encoded(image, fmt)]))
        assert tuple(out["class_map"].shape) == (1, 48, 80), fmt
    tall = encoded(np.zeros((65, 64, 3), np.uint8), "PNG")  # 4160 > LIMIT
    with pytest.raises(tf.errors.InvalidArgumentError, match="declares 65x64 pixels"):
        signature(image_bytes=tf.constant([tall]))


def test_gif_refused_when_the_export_has_a_limit(exported):
    gif = encoded(np.zeros((8, 8, 3), np.uint8), "GIF")
    with pytest.raises(tf.errors.InvalidArgumentError, match="GIF images are refused"):
        exported[1]["serving_image_bytes"](image_bytes=tf.constant([gif]))


def test_batch_over_the_request_budget_refused(exported):
    path, signatures = exported
    with open(os.path.join(path, "keras_fastfcn_export.json")) as f:
        options = json.load(f)["options"]
    assert options["max_pixels"] == LIMIT and options["max_batch_pixels"] == LIMIT
    fragment = f"budget of {LIMIT} pixels per request"
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment) as info:
        signatures["serving_default"](image_tensor=tf.zeros((2, 64, 64, 3), tf.uint8))
    assert "a batch of 2 images of 64x64" in str(info.value)
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
        signatures["serving_float"](image_tensor=tf.zeros((5, 32, 26, 3), tf.float32))
    # Encoded images: refused on their headers' sizes, before decoding.
    png = encoded(np.zeros((64, 64, 3), np.uint8), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment) as info:
        signatures["serving_image_bytes"](image_bytes=tf.constant([png, png]))
    assert "a batch of 2 images of 64x64" in str(info.value)


def test_batch_within_the_request_budget_works(exported):
    signatures = exported[1]
    out = signatures["serving_default"](image_tensor=tf.zeros((4, 32, 32, 3), tf.uint8))
    assert tuple(out["class_map"].shape) == (4, 32, 32)  # 4096 pixels: at the budget
    png = encoded(np.zeros((32, 32, 3), np.uint8), "PNG")
    out = signatures["serving_image_bytes"](image_bytes=tf.constant([png] * 4))
    assert tuple(out["class_map"].shape) == (4, 32, 32)


def test_request_budget_counts_the_networks_sizes():
    """With input_size, scales and flip, an image costs what the network runs on it."""
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
    # 16 x 16 at scales 1 and 2, doubled by flip: 256 * (1 + 4) * 2 = 2560 per image.
    fn, spec = serving_endpoints(model, scales=(1.0, 2.0), flip=True, input_size=(16, 16),
                                 max_batch_pixels=2 * 2560)["serving_default"]
    fn = tf.function(fn, input_signature=spec)
    assert tuple(fn(tf.zeros((2, 8, 8, 3), tf.uint8))["class_map"].shape) == (2, 8, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="counts 7680 pixels"):
        fn(tf.zeros((3, 8, 8, 3), tf.uint8))
    # An image larger than the network's input counts its own size.
    with pytest.raises(tf.errors.InvalidArgumentError, match="counts 10000 pixels"):
        fn(tf.zeros((1, 100, 100, 3), tf.uint8))


@pytest.mark.parametrize("options, fragment", [
    ({"max_batch_pixels": 0}, "max_batch_pixels must be a whole number >= 1"),
    ({"max_batch_pixels": 2.5}, "max_batch_pixels must be a whole number >= 1"),
    ({"max_pixels": -1}, "max_pixels must be a whole number >= 1"),
])
def test_bad_limits_refused_before_writing(tiny_backbone, tmp_path, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        serving.export(tiny_segmenter(), str(tmp_path / "sm"), **options)
    assert not (tmp_path / "sm").exists()
