"""Full-size prediction: whole image or sliding window, multi-scale and flip.

One module per concept:

- `ensemble`: the official evaluator's multi-scale + flip ensemble, computed in the
  log domain (`multiscale_log_scores`, `normalize_scores`, `scaled_size`), and
  mmsegmentation's test protocol (`mmseg_log_scores`, `keep_ratio_size`); its
  docstring states the maths;
- `prepare`: the one step that turns a segmenter into the model that runs
  (precision, logits only, BatchNorm folding, the exports' native resizes), used by
  `predict`, `evaluate`, every export and the benchmark; `fold`: its layer rewrites;
- `tracing`: `tf.function` per input shape, XLA parts, frozen weights;
- `predictor`: `Predictor` (whole or sliding window) and `predict`.

Loading a model and reading what it is (`load_model`, `model_info`, `logits_model`)
live with the models (`keras_fastfcn.models.segmentation_model`) and are re-exported
here.

Example:
>>> model = keras_fastfcn.models.FastFCNImageSegmenter(
...     keras_fastfcn.models.FastFCNBackbone(width=64), num_classes=3, head="fcn")
>>> predictor = Predictor(model, scales=MS_SCALES, flip=True)
>>> predictor(np.zeros((1, 64, 96, 3), "uint8")).shape
TensorShape([1, 64, 96, 3])
"""

from keras_fastfcn.inference import fold
from keras_fastfcn.inference.ensemble import (MAX_PIXELS, MODES, MS_SCALES, PROTOCOLS,
                                              STRIDE_RATE, fit_to_pixels, keep_ratio_size,
                                              mmseg_log_scores, multiscale_log_scores,
                                              normalize_scores, scaled_size)
from keras_fastfcn.inference.predictor import Predictor, predict
from keras_fastfcn.inference.prepare import prepare
from keras_fastfcn.inference.tracing import (FROZEN_SHAPES, JIT_OPTIONS, STATIC_SHAPES,
                                             trace, xla_parts)
from keras_fastfcn.models.segmentation_model import (ModelInfo, load_model, logits_model,
                                                     model_info)

__all__ = ["FROZEN_SHAPES", "JIT_OPTIONS", "MAX_PIXELS", "MODES", "MS_SCALES", "ModelInfo",
           "PROTOCOLS", "Predictor", "STATIC_SHAPES", "STRIDE_RATE", "fit_to_pixels", "fold",
           "keep_ratio_size", "load_model", "logits_model", "model_info", "mmseg_log_scores",
           "multiscale_log_scores", "normalize_scores", "predict", "prepare", "scaled_size",
           "trace", "xla_parts"]
