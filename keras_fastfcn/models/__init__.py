"""FastFCN models in the shape of keras-hub: a Backbone, a Task, a Preprocessor, presets.

Example:
>>> import keras_fastfcn as kf
>>> from keras_fastfcn.data import demo
>>> backbone = kf.models.FastFCNBackbone(encoder="resnet50", upsampler="jpu", width=64)
>>> seg = kf.models.FastFCNImageSegmenter(backbone=backbone, num_classes=5, head="encnet")
>>> seg.compile()                       # the official loss, optimizer and metrics
>>> images, masks = demo.generate("train", num_images=2, size=64)
>>> history = seg.fit(images, masks, epochs=1)  # or a tf.data of (image, mask)  # doctest: +SKIP
>>> seg.backbone.trainable = False      # fine-tune the head only
>>> released = kf.models.FastFCNImageSegmenter.from_preset(
...     "fastfcn_encnet_jpu_resnet50_pcontext")  # doctest: +SKIP

Parts are looked up by name in `registry` (encoders, upsamplers, heads); adding one
is a module plus one `registry.register_*` call.
"""

from keras_fastfcn.models import registry
from keras_fastfcn.models.fastfcn import (
    FastFCN,
    FastFCNBackbone,
    FastFCNImageConverter,
    FastFCNImageSegmenter,
    FastFCNImageSegmenterPreprocessor,
)
from keras_fastfcn.models.presets import list_presets

__all__ = ["FastFCN", "FastFCNBackbone", "FastFCNImageConverter", "FastFCNImageSegmenter",
           "FastFCNImageSegmenterPreprocessor", "list_presets", "registry"]
