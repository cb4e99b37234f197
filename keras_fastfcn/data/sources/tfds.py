"""tensorflow-datasets as a source: a registered builder, or a prepared tfds folder."""

import os
import pathlib

import numpy as np
import tensorflow as tf

from keras_fastfcn.data import palettes
from keras_fastfcn.data.errors import tagged
from keras_fastfcn.data.sources.base import Source, _attach_lazy, label_lut
from keras_fastfcn.data.sources.cityscapes import LABEL_ID_TO_TRAIN_ID


# --------------------------------------------------------------------------- tfds
# How to read a segmentation dataset from tensorflow-datasets. Keys checked against
# the builders of tensorflow-datasets 4.9 (datasets/scene_parse150, datasets/cityscapes
# and object_detection/voc.py).
_TFDS_KNOWN = {
    # FeaturesDict(image: Image(None, None, 3) jpeg, annotation: Image(None, None, 3)
    # png); splits train (20,210) and test (2,000: the ADE20K validation images).
    # The builder reads ChallengeData2017/annotations_instance: R = category id of the
    # 100 instance classes (0 = no instance: stuff or unlabelled), G = instance id.
    # So this is a 100-class "things" dataset, not the 150-class benchmark (for that,
    # use ade20k:PATH). Mapping as the official ADE20K code: 0 -> ignore, v -> v - 1.
    "scene_parse150": dict(image_key="image", label_key="annotation", label_channel=0,
                           reduce_zero_label=True, num_classes=100,
                           class_names=palettes.ADE20K_INSTANCE_CLASSES,
                           split_aliases={"val": "test"}),
    # Prepared by hand (MANUAL_DOWNLOAD_INSTRUCTIONS: leftImg8bit_trainvaltest.zip and
    # gtFine_trainvaltest.zip in the manual folder). FeaturesDict(image_id, image_left:
    # Image(1024, 2048, 3), segmentation_label: Image(1024, 2048, 1) of labelIds;
    # config semantic_segmentation_extra: gtCoarse labelIds, same ids). Splits train,
    # validation, test; the test labels are placeholders (no public labels), so test is
    # left out. labelIds -> the 19 train ids as cityscapes:PATH does.
    "cityscapes": dict(image_key="image_left", label_key="segmentation_label",
                       label_channel=0, num_classes=19,
                       class_names=palettes.CITYSCAPES_CLASSES,
                       label_map=LABEL_ID_TO_TRAIN_ID, split_aliases={"val": "validation"},
                       unlabelled_splits=("test",)),
}
# Builders without segmentation masks, with where to go instead.
_TFDS_NO_MASKS = {
    "voc": "tfds 'voc' holds boxes and image-level labels only (no segmentation "
           "masks); for Pascal VOC segmentation use 'voc:PATH' with the extracted "
           "VOCdevkit/VOC2012 (JPEGImages, SegmentationClass, ImageSets/Segmentation)",
}


def _prepared_tfds_dir(spec):
    """The prepared-dataset folder `spec` points to, or None if `spec` is a name."""
    looks_like_path = spec.startswith(("/", "~", "./", "../")) or os.path.isdir(spec)
    if not looks_like_path:
        return None
    root = pathlib.Path(os.path.expanduser(spec))
    if not root.is_dir():
        raise FileNotFoundError(f"tfds dataset folder not found: {root}")
    if (root / "dataset_info.json").is_file():
        return root
    # DATA_DIR/NAME or DATA_DIR/NAME/CONFIG given: find the VERSION folder below.
    found = sorted(p.parent for p in list(root.glob("*/dataset_info.json")) +
                   list(root.glob("*/*/dataset_info.json")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no prepared tfds dataset (dataset_info.json) in {root} "
                                f"or the two folder levels below it")
    raise ValueError(f"several prepared tfds datasets under {root}: "
                     f"{', '.join(str(p) for p in found)}; pass one of them")


class TfdsSource(Source):
    """A tensorflow-datasets dataset (downloaded and prepared by tfds, or already on disk).

    `spec` is a registered name (`"scene_parse150"`, `"NAME/CONFIG"`, `"NAME:1.0.0"`)
    built with `tfds.builder(spec, data_dir=...)`, or the folder of an already prepared
    dataset (`DATA_DIR/NAME/VERSION`, holding `dataset_info.json`), opened with
    `tfds.builder_from_directory` so neither the builder code nor a download is needed.
    Not yet prepared data is downloaded and prepared when `download=True` (the
    `tfds.load` default).

    Known datasets need no options: `scene_parse150` (see `_TFDS_KNOWN` notes: 100
    ADE20K instance categories, split `val` = tfds `test`) and `cityscapes` (19
    classes, labelIds mapped as `cityscapes:PATH` does, split `val` = tfds
    `validation`). Others need `label_key` (an image feature of class ids) and
    `num_classes`.

    Args:
        spec: name or prepared folder.
        data_dir: tfds data folder (default: tfds's, `~/tensorflow_datasets`).
        download: download and prepare when not prepared yet.
        image_key, label_key, label_channel: features to read (label channel index
            for multi-channel label images).
        num_classes, class_names, ignore_index, reduce_zero_label, label_map: as in
            `folder_source`.
        name: dataset name (default: the tfds name).
        palette: colours.

    Example:
    >>> src = TfdsSource("scene_parse150", data_dir="~/tensorflow_datasets")  # doctest: +SKIP
    """

    def __init__(self, spec, data_dir=None, download=True, image_key=None, label_key=None,
                 label_channel=None, num_classes=None, class_names=None, ignore_index=(),
                 reduce_zero_label=None, label_map=None, name=None, palette=None):
        import tensorflow_datasets as tfds

        spec = str(spec)
        data_dir = os.path.expanduser(str(data_dir)) if data_dir is not None else None
        prepared_dir = _prepared_tfds_dir(spec)
        if prepared_dir is not None:
            builder = tfds.builder_from_directory(str(prepared_dir))
        else:
            try:
                builder = tfds.builder(spec, data_dir=data_dir)
            except tfds.core.DatasetNotFoundError as err:
                raise ValueError(f"tfds:{spec}: {str(err).splitlines()[0]}") from None
        tfds_name = builder.info.name
        if tfds_name in _TFDS_NO_MASKS and label_key is None:
            features = ", ".join(sorted(builder.info.features.keys()))
            raise ValueError(f"tfds:{spec}: {_TFDS_NO_MASKS[tfds_name]} (features: {features})")
        known = _TFDS_KNOWN.get(tfds_name, {})
        image_key = image_key or known.get("image_key", "image")
        label_key = label_key or known.get("label_key")
        features = builder.info.features
        if label_key is None:
            raise ValueError(f"tfds:{spec}: no built-in mapping for {tfds_name!r}; pass "
                             f"label_key= (one of {', '.join(sorted(features.keys()))}) "
                             f"and num_classes=")
        for key in (image_key, label_key):
            if key not in features:
                raise ValueError(f"tfds:{spec}: no feature {key!r}; features: "
                                 f"{', '.join(sorted(features.keys()))}")
        if num_classes is None:
            num_classes = known.get("num_classes")
            if class_names is not None:
                num_classes = len(class_names)
        if num_classes is None:
            raise ValueError(f"tfds:{spec}: pass num_classes= for {tfds_name!r}")
        if class_names is None and int(num_classes) == known.get("num_classes"):
            class_names = known.get("class_names")
        if reduce_zero_label is None:
            reduce_zero_label = known.get("reduce_zero_label", False)
        if label_map is None and int(num_classes) == known.get("num_classes"):
            label_map = known.get("label_map")
        self._label_channel = label_channel if label_channel is not None else \
            known.get("label_channel", 0)
        self._split_aliases = dict(known.get("split_aliases", {}))
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(
                    f"tfds:{spec} is not prepared in {builder.data_dir}; pass "
                    f"download=True or data_dir= where it is prepared")
            try:
                builder.download_and_prepare()
            except AssertionError as err:
                # tfds asserts when the files of a manual download are missing
                # (cityscapes): one line with its instructions, not a traceback.
                raise FileNotFoundError(f"tfds:{spec} is not prepared: "
                                        f"{' '.join(str(err).split())}") from None
        splits = tuple(s for s in builder.info.splits.keys()
                       if s not in known.get("unlabelled_splits", ()))
        splits += tuple(a for a, s in self._split_aliases.items()
                        if s in splits and a not in splits)
        super().__init__(name or tfds_name, num_classes, class_names, palette, splits)
        self.builder = builder
        self._image_key, self._label_key = image_key, label_key
        dtype = getattr(features[label_key], "np_dtype", np.uint8)
        size = 65536 if np.dtype(dtype).itemsize > 1 else 256
        self._lut = label_lut(self.num_classes, ignore_index, reduce_zero_label, label_map,
                              size=size)

    def _tfds_split(self, split):
        return self._split_aliases.get(self._split(split), split)

    def num_examples(self, split):
        return int(self.builder.info.splits[self._tfds_split(split)].num_examples)

    def dataset(self, split):
        import tensorflow_datasets as tfds

        tfds_split = self._tfds_split(split)
        features = self.builder.info.features
        image_feature, label_feature = features[self._image_key], features[self._label_key]
        # Keep images encoded until after shuffling (train_pipeline shuffles records).
        decoders = {k: tfds.decode.SkipDecoding() for k in (self._image_key, self._label_key)
                    if isinstance(features[k], tfds.features.Image)}
        records = self.builder.as_dataset(
            split=tfds_split, shuffle_files=False, decoders=decoders,
            read_config=tfds.ReadConfig(add_tfds_id=True))
        image_key, label_key = self._image_key, self._label_key

        def select(example):
            return example["tfds_id"], example[image_key], example[label_key]

        keys = records.map(select)
        lut = tf.constant(self._lut)
        channel, source = self._label_channel, f"tfds {self.builder.info.full_name} {split}"
        num_classes = self.num_classes

        def decode(feature, key, value):
            return feature.decode_example(value) if key in decoders else value

        @tf.autograph.experimental.do_not_convert
        def load(record_id, image, label):
            image = decode(image_feature, self._image_key, image)
            label = decode(label_feature, self._label_key, label)
            if image.shape.rank == 2:
                image = tf.expand_dims(image, -1)
            image = tf.cast(image, tf.uint8)
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            if label.shape.rank == 3:
                label = label[..., channel]
            raw = tf.cast(label, tf.int32)
            mapped = tf.gather(lut, tf.clip_by_value(raw, 0, lut.shape[0] - 1))
            bad = tf.boolean_mask(raw, (mapped < 0) | (raw < 0) | (raw >= lut.shape[0]))
            same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(raw)))
            where = tagged(f"{source} record ") + record_id
            checks = [
                tf.debugging.Assert(same_size, [where + tf.strings.format(
                    ": image is {} but label is {} (H, W)",
                    (tf.shape(image)[:2], tf.shape(raw)))]),
                tf.debugging.Assert(tf.size(bad) == 0, [where + tf.strings.format(
                    ": label values {} are not class ids 0..%d nor 255 (ignore)"
                    % (num_classes - 1), tf.sort(tf.unique(bad)[0])[:10])]),
            ]
            with tf.control_dependencies(checks):
                mapped = tf.identity(mapped)
            image.set_shape([None, None, 3])
            mapped.set_shape([None, None])
            return image, mapped

        ds = keys.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _attach_lazy(ds, keys, load, self.num_examples(split), keys_are_small=False)
