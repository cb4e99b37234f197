"""Every registered part through the shared harness (tests/harness.py): each layer
class registered by keras_fastfcn, each head and upsampler in the registry, each
export format. Adding one without a case here fails `test_every_*_has_a_case`."""

import importlib.util

import keras
import pytest

import keras_fastfcn.inference  # noqa: F401  (registers the export-only layers)
import keras_fastfcn.layers as L
from harness import run_export_test, run_layer_test, run_segmenter_test
from keras_fastfcn.inference import fold
from keras_fastfcn.models import registry
from keras_fastfcn.models.fastfcn import fastfcn_preprocessor as pre
from keras_fastfcn.serving.formats import FORMATS

# name -> (factory, input shape(s) (B, H, W, C))
LAYER_CASES = {
    "ASPP": (lambda: L.ASPP(rates=(1, 2), out_channels=16), (1, 8, 8, 32)),
    "ASPPHead": (lambda: L.ASPPHead(3, rates=(1, 2)), (1, 8, 8, 32)),
    "BilinearResize": (lambda: L.BilinearResize(), [(1, 4, 5, 8), (1, 13, 17, 3)]),
    "ConvBNReLU": (lambda: L.ConvBNReLU(8, dilation_rate=2), (1, 8, 8, 4)),
    "DilatedBranch": (lambda: L.DilatedBranch(8, 2), (1, 8, 8, 16)),
    "EncHead": (lambda: L.EncHead(3, width=32, num_codes=4), (1, 8, 8, 64)),
    "EncModule": (lambda: L.EncModule(3, num_codes=4), (1, 8, 8, 16)),
    "Encoding": (lambda: L.Encoding(num_codes=4), (1, 8, 8, 16)),
    "FCNHead": (lambda: L.FCNHead(3), (1, 8, 8, 32)),
    "FastFCNImageConverter": (lambda: pre.FastFCNImageConverter((16, 24)), (1, 20, 30, 3)),
    "ImageNormalization": (lambda: L.ImageNormalization("torch"), (1, 8, 8, 3)),
    "JPU": (lambda: L.JPU(width=16, dilations=(1, 2)),
            [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32)]),
    "JPUX": (lambda: L.JPUX(width=64), [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32)]),
    "JUM": (lambda: L.JUM(32), [(1, 4, 4, 16), (1, 8, 8, 8)]),
    "MMSegASPPHead": (lambda: L.MMSegASPPHead(3, dilations=(1, 2), channels=16), (1, 8, 8, 32)),
    "NativeBilinearResize": (lambda: fold.NativeBilinearResize(),
                             [(1, 4, 5, 8), (1, 13, 17, 3)]),
    "PSPHead": (lambda: L.PSPHead(3, bins=(1, 2)), (1, 8, 8, 32)),
    "PaddedConv2D": (lambda: fold.PaddedConv2D(
        pad=(2, 2, 3, 3), filters=4, kernel_size=3, dilation_rate=(2, 3)), (1, 8, 8, 4)),
    "PaddedDepthwiseConv2D": (lambda: fold.PaddedDepthwiseConv2D(
        pad=(2, 2, 2, 2), kernel_size=3, dilation_rate=2), (1, 8, 8, 4)),
    "PyramidPooling": (lambda: L.PyramidPooling(bins=(1, 2)), (1, 8, 8, 16)),
    "SeparableConvBN": (lambda: L.SeparableConvBN(8, dilation_rate=2), (1, 8, 8, 4)),
}
# Registered layers that are not a model's layer and are tested on their own:
# the preprocessor maps (images, masks) pairs (tests/test_keras_habits.py, test_models_*).
NOT_MODEL_LAYERS = {"FastFCNImageSegmenterPreprocessor"}


def _registered_layers():
    return sorted(name.split(">", 1)[1] for name, cls in keras.saving.get_custom_objects().items()
                  if name.startswith("keras_fastfcn>") and issubclass(cls, keras.layers.Layer)
                  and not issubclass(cls, keras.Model))


def test_every_registered_layer_has_a_case():
    missing = set(_registered_layers()) - set(LAYER_CASES) - NOT_MODEL_LAYERS
    assert not missing, f"add a LAYER_CASES entry for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer(name, tmp_path):
    make, shapes = LAYER_CASES[name]
    run_layer_test(make, shapes, tmp_path)


@pytest.mark.parametrize("head", registry.available("head"))
def test_head(head, tmp_path, tiny_backbone):
    run_segmenter_test(tmp_path, head=head)


@pytest.mark.parametrize("upsampler", registry.available("upsampler"))
def test_upsampler(upsampler, tmp_path, tiny_backbone):
    run_segmenter_test(tmp_path, upsampler=upsampler)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_format(fmt, tmp_path, tiny_backbone):
    if fmt in ("onnx", "openvino") and importlib.util.find_spec("tf2onnx") is None:
        pytest.skip("tf2onnx is not installed (pip install -e '.[export]')")
    if fmt == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install -e '.[openvino]')")
    run_export_test(tmp_path, fmt)
