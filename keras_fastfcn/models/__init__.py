"""FastFCN models in the shape of keras-hub: a Backbone, a Task, a Preprocessor, presets.

Example:
>>> import keras, keras_fastfcn as kf
>>> backbone = kf.models.FastFCNBackbone(encoder="resnet50", upsampler="jpu", width=512)
>>> seg = kf.models.FastFCNImageSegmenter(backbone=backbone, num_classes=11, head="encnet")
>>> seg.compile()                       # the official loss, optimizer and metrics
>>> seg.fit(train_ds, validation_data=val_ds, epochs=2)   # (images, masks) pairs
>>> seg.backbone.trainable = False      # fine-tune the head only
>>> seg = kf.models.FastFCNImageSegmenter.from_preset("fastfcn_encnet_jpu_resnet50_pcontext")

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
