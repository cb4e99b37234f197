"""The FastFCN model: backbone -> (JPU | JPU_X | dilated backbone) -> head."""

import os

import keras

from keras_fastfcn import backbones as backbones_lib
from keras_fastfcn import layers as L
from keras_fastfcn.ops import check_image_batch

HEADS = ("encnet", "psp", "deeplab", "fcn")
UPSAMPLERS = ("jpu", "jpu_x", None)
_HEAD_ALIASES = {"enc": "encnet", "pspnet": "psp", "deeplabv3": "deeplab", "aspp": "deeplab"}
_UPSAMPLER_ALIASES = {"jpux": "jpu_x", "none": None, "dilated": None}


def _normalize_head(head):
    key = str(head).lower()
    key = _HEAD_ALIASES.get(key, key)
    if key not in HEADS:
        raise ValueError(f"Unknown head {head!r}: expected one of {HEADS}.")
    return key


def _normalize_upsampler(upsampler):
    if upsampler is None:
        return None
    key = str(upsampler).lower()
    key = _UPSAMPLER_ALIASES.get(key, key)
    if key not in UPSAMPLERS:
        raise ValueError(f"Unknown upsampler {upsampler!r}: expected one of {UPSAMPLERS}.")
    return key


@keras.saving.register_keras_serializable(package="keras_fastfcn")
class FastFCN(keras.Model):
    """FastFCN semantic segmentation model (Wu et al., 2019) as a functional model.

    The model takes 0-255 RGB images of any size and returns per-pixel logits at
    the input size. Preprocessing (mean/std for the backbone's weights) is part of
    the graph. With `upsampler="jpu"` (or `"jpu_x"`) the backbone runs at output
    stride 32 and JPU builds stride-8 features from C3, C4, C5; with
    `upsampler=None` the backbone itself is dilated to `output_stride` (8 by
    default): the paper's DilatedFCN baseline.

    Outputs: with `aux=False` and `se_loss=False` a single logits tensor
    `(B, H, W, num_classes)`. With either, a dict: `"logits"`, plus
    `"aux_logits"` (FCN head on C4, at the input size) and/or `"se_logits"`
    (`(B, num_classes)` class presence, EncNet only), so `model.fit` can take a loss
    per output. `inference_model()` returns the logits-only model sharing the same
    weights, for prediction and export.

    Args:
        num_classes: int >= 1.
        head: `"encnet"`, `"psp"`, `"deeplab"` (ASPP) or `"fcn"`.
        backbone: a name from `keras_fastfcn.backbones.available_backbones()`.
        upsampler: `"jpu"`, `"jpu_x"` or `None` (dilated backbone).
        aux: bool, add the auxiliary FCN head on C4 (training; weight 0.2).
        se_loss: bool, EncNet only: add the SE class-presence logits.
        output_stride: backbone output stride; must be 32 (or None) with a JPU;
            8 (default), 16 or 32 without.
        weights: None, or a path to a `.weights.h5` file of this whole model.
        backbone_weights: None (random init, the default, as keras-hub's model
            constructors), `"imagenet"` or a path to backbone weights.
        preprocessing: `"auto"` (the mode the backbone's weights were trained
            with: caffe-style for keras.applications ResNets, ImageNet mean/std for
            the official deep-stem ResNets) or an explicit `ImageNormalization` mode.
        jpu_width: int, JPU width (512 in the paper).
        jpu_remat: bool, recompute the JPU's separable-conv intermediates in the
            backward pass instead of storing them (same results, about -0.5 GB per
            2 x 480^2 training images for +4% step time; no effect on inference).
        align_corners: bool, resize semantics of every upsampling (True officially).
        class_names: optional list of class names carried in the config (used by
            prediction and export).
        dataset: optional dataset name carried in the config (palette lookup).
        input_shape: `(H, W, 3)`; H and W may be None.
        name: model name.

    Example:
    >>> model = FastFCN(num_classes=5, head="fcn", backbone="resnet50", jpu_width=64)
    >>> model(keras.ops.zeros((1, 97, 131, 3))).shape
    (1, 97, 131, 5)
    """

    def __init__(self, num_classes, head="encnet", backbone="resnet50", upsampler="jpu",
                 aux=False, se_loss=False, output_stride=None, weights=None,
                 backbone_weights=None, preprocessing="auto", jpu_width=512,
                 jpu_remat=True, align_corners=True, class_names=None, dataset=None,
                 input_shape=(None, None, 3), name=None, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}.")
        head = _normalize_head(head)
        upsampler = _normalize_upsampler(upsampler)
        if se_loss and head != "encnet":
            raise ValueError(f"se_loss=True needs head='encnet' (the SE branch), got head={head!r}.")
        if upsampler is not None:
            if output_stride not in (None, 32):
                raise ValueError(
                    f"upsampler={upsampler!r} works on a stride-32 backbone; got "
                    f"output_stride={output_stride}. Use upsampler=None for a dilated backbone."
                )
            output_stride = 32
        elif output_stride is None:
            output_stride = 8
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}."
            )
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape must be (H, W, 3), got {input_shape}.")
        if preprocessing == "auto":
            preprocessing = backbones_lib.backbone_preprocessing(backbone)

        # === Layers ===
        backbone_model = backbones_lib.build_backbone(backbone, output_stride, backbone_weights)
        normalize = L.ImageNormalization(preprocessing, name="preprocessing")
        if upsampler == "jpu":
            upsample_layer = L.JPU(jpu_width, align_corners=align_corners, remat=jpu_remat,
                                   name="jpu")
        elif upsampler == "jpu_x":
            upsample_layer = L.JPUX(jpu_width, align_corners=align_corners, remat=jpu_remat,
                                    name="jpu")
        else:
            upsample_layer = None
        head_layer = {
            "encnet": lambda: L.EncHead(num_classes, se_loss=se_loss,
                                        jpu=upsampler is not None, name="head"),
            "psp": lambda: L.PSPHead(num_classes, align_corners=align_corners, name="head"),
            "deeplab": lambda: L.ASPPHead(num_classes, name="head"),
            "fcn": lambda: L.FCNHead(num_classes, name="head"),
        }[head]()

        # === Functional graph ===
        images = keras.Input(shape=input_shape, name="images")
        c2, c3, c4, c5 = backbone_model(normalize(images))
        feat = upsample_layer([c3, c4, c5]) if upsample_layer is not None else c5
        head_out = head_layer(feat)
        se_logits = None
        if head == "encnet" and se_loss:
            head_out, se_logits = head_out
        # float32 outputs keep losses stable under mixed precision.
        logits = L.BilinearResize(align_corners, dtype="float32", name="logits")(
            [head_out, images]
        )
        if aux or se_loss:
            outputs = {"logits": logits}
            if aux:
                aux_out = L.FCNHead(num_classes, name="auxlayer")(c4)
                outputs["aux_logits"] = L.BilinearResize(
                    align_corners, dtype="float32", name="aux_logits")([aux_out, images])
            if se_loss:
                outputs["se_logits"] = keras.layers.Activation(
                    "linear", dtype="float32", name="se_logits")(se_logits)
        else:
            outputs = logits
        super().__init__(inputs=images, outputs=outputs, name=name or f"fastfcn_{head}", **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.head = head
        self.backbone = backbone
        self.upsampler = upsampler
        self.aux = bool(aux)
        self.se_loss = bool(se_loss)
        self.output_stride = output_stride
        self.preprocessing = preprocessing
        self.jpu_width = int(jpu_width)
        self.jpu_remat = bool(jpu_remat)
        self.align_corners = bool(align_corners)
        self.class_names = list(class_names) if class_names is not None else None
        self.dataset = dataset
        self.input_shape_hw = input_shape

        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"Model weights file not found: {weights}")
            self.load_weights(weights)

    def __call__(self, *args, **kwargs):
        images = args[0] if args else kwargs.get("inputs")
        if images is not None and not isinstance(images, dict):
            check_image_batch(images)
        return super().__call__(*args, **kwargs)

    def inference_model(self):
        """The logits-only model (shares this model's layers and weights)."""
        if not isinstance(self.output, dict):
            return self
        return keras.Model(self.input, self.output["logits"], name=f"{self.name}_inference")

    def get_config(self):
        # Weights travel with the saved file, so rebuilding must not download or
        # load any: both weight arguments are left out.
        return {
            "num_classes": self.num_classes,
            "head": self.head,
            "backbone": self.backbone,
            "upsampler": self.upsampler,
            "aux": self.aux,
            "se_loss": self.se_loss,
            "output_stride": self.output_stride,
            "preprocessing": self.preprocessing,
            "jpu_width": self.jpu_width,
            "jpu_remat": self.jpu_remat,
            "align_corners": self.align_corners,
            "class_names": self.class_names,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape_hw),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
