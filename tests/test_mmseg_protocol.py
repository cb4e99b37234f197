"""mmsegmentation's test protocol (`Predictor(protocol="mmseg")`), and the CLI applying
it to `--model PRESET`.

The parity tests run mmsegmentation 1.2.2's own inference on the same images as ours:
its FastFCN model built from its config (random weights) and converted, its test
transforms (mmcv's `Resize(scale, keep_ratio=True)`, `RandomFlip`, `PackSegInputs`,
`TestTimeAug`), data preprocessor, `predict` / `postprocess_result` and
`SegTTAModel.merge_preds`. The images are arrays (mmsegmentation loads files with
OpenCV, which is not installed): only `cv2.resize` inside mmcv's resize is played by
PyTorch's bilinear resize, OpenCV's `INTER_LINEAR` on float32 images
(`mmseg_support.float_cv2_resize`); the sizes are mmcv's own. The datasets'
`Resize` scales are read from their configs and divided by `SHRINK` to keep the
ResNet-50 fast; `test_keep_ratio_size_is_mmcvs` checks the sizes at full scale.
"""

import json
import time

import keras
import numpy as np
import pytest

from harness import assert_one_line_error, run_cli
from keras_fastfcn import inference
from keras_fastfcn.inference import ensemble
from keras_fastfcn.layers.resize import resize_bilinear
from keras_fastfcn.models import presets

# Per dataset: (its mmsegmentation dataset config, the divisor of its test Resize scale,
# the size of the two test images).
PIPELINES = {"cityscapes": ("_base_/datasets/cityscapes", 16, (48, 100)),
             "ade20k": ("_base_/datasets/ade20k", 8, (56, 75))}
# EncNet: on these small images TensorFlow's 3x3 convs at dilation 12-36 (the ASPP head)
# take 20x the whole rest of the network on CPU (a feature map smaller than the dilation
# is padded to it); the protocol does not depend on the head.
MODEL_CONFIG = "fastfcn_r50-d32_jpu_enc_4xb2-80k_cityscapes-512x1024"


def _pointwise(num_classes=4, seed=0):
    """A model whose logits at a pixel depend on that pixel only: resizes and flips
    are all that differ between the protocols' arithmetic."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(inputs / 255.0))


# ------------------------------------------------------------------ no mmsegmentation


def test_keep_ratio_size_graph_agrees_with_python():
    import tensorflow as tf

    for fit in ((2048, 1024), (2048, 512), (128, 64), None):
        for h, w in ((1024, 2048), (375, 500), (512, 683), (97, 161), (600, 4)):
            for scale in inference.MS_SCALES + (0.3,):
                expected = ensemble.keep_ratio_size(h, w, fit, scale)
                got = ensemble._keep_ratio_size_tensor(tf.constant(h), tf.constant(w), fit,
                                                       scale)
                assert tuple(int(v) for v in got) == expected, (fit, h, w, scale)
    assert ensemble.keep_ratio_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert ensemble.keep_ratio_size(1024, 2048, (2048, 1024), 1.75) == (1792, 3584)
    assert ensemble.keep_ratio_size(683, 512, (2048, 512)) == (683, 512)  # portrait


def test_mmseg_log_scores_by_hand():
    """MS+flip: the mean over scales and mirrors of the softmax of the logits resized
    to the image; one scale without flip: the resized logits themselves."""
    model = _pointwise()
    images = np.random.RandomState(0).uniform(0, 255, (2, 30, 44, 3)).astype("float32")
    fit, scales = (64, 24), (0.5, 1.0, 1.5)
    probs = []
    for scale in scales:
        size = ensemble.keep_ratio_size(30, 44, fit, scale)
        x = resize_bilinear(images, size, False)
        for mirror in (False, True):
            z = np.asarray(model(x[:, :, ::-1] if mirror else x))
            z = z[:, :, ::-1] if mirror else z
            z = np.asarray(resize_bilinear(z, (30, 44), False))
            probs.append(np.asarray(keras.ops.softmax(z, axis=-1)))
    expected = np.mean(probs, axis=0)
    predictor = inference.Predictor(model, protocol="mmseg", keep_ratio_fit=fit,
                                    scales=scales, flip=True)
    log_scores = np.asarray(predictor(images))  # the dynamic-shape trace
    np.testing.assert_allclose(np.exp(log_scores), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(inference.normalize_scores(log_scores)), expected,
                               atol=1e-6)
    np.testing.assert_array_equal(predictor.class_map(images), log_scores.argmax(-1))

    single = inference.Predictor(model, protocol="mmseg", keep_ratio_fit=fit)
    size = ensemble.keep_ratio_size(30, 44, fit)
    z = resize_bilinear(model(resize_bilinear(images, size, False)), (30, 44), False)
    np.testing.assert_allclose(np.asarray(single(images)), np.asarray(z), atol=1e-5)
    # No fit: the image's own size, the logits unchanged.
    plain, logits = inference.Predictor(model, protocol="mmseg"), np.asarray(model(images))
    np.testing.assert_allclose(np.asarray(plain(images)), logits, rtol=0,
                               atol=64 * np.finfo(np.float32).eps * np.abs(logits).max())


def test_protocol_options_are_checked():
    model = _pointwise()
    cases = [({"protocol": "mmsegmentation"}, "Unknown protocol 'mmsegmentation'"),
             ({"protocol": "mmseg", "mode": "slide", "crop_size": 32},
              "predicts whole images"),
             ({"protocol": "mmseg", "base_size": 512}, "base_size is the official"),
             ({"keep_ratio_fit": (2048, 1024)}, "keep_ratio_fit belongs to protocol='mmseg'"),
             ({"protocol": "mmseg", "keep_ratio_fit": 2048}, "must be (long, short)"),
             ({"protocol": "mmseg", "keep_ratio_fit": (2048, 0)}, "keep_ratio_fit must be")]
    for options, fragment in cases:
        with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            inference.Predictor(model, **options)
    predictor = inference.Predictor(model, protocol="mmseg", keep_ratio_fit=(2048, 1024),
                                    scales=inference.MS_SCALES, flip=True)
    assert predictor.settings()["protocol"] == "mmseg"
    assert predictor.settings()["keep_ratio_fit"] == [2048, 1024]
    assert "protocol=mmseg" in predictor.describe() and "2048x1024" in predictor.describe()
    # The pixel budget is checked on the fitted sizes, naming the option.
    with pytest.raises(ValueError, match=r"keep_ratio_fit 2048x1024: at scale 1.75, the "
                                         r"network input would be 3584x1792"):
        predictor(np.zeros((1, 64, 128, 3), "uint8"))


# ------------------------------------------------------------------ mmsegmentation


@pytest.fixture(scope="module")
def mmseg_lib():
    import mmseg_support

    return mmseg_support.import_mmseg()


@pytest.fixture(scope="module")
def mmseg_and_keras(mmseg_lib):
    """mmsegmentation's EncNet FastFCN (random weights) and its conversion."""
    import mmseg_support
    from keras_fastfcn.convert.mmseg import convert_mmseg_checkpoint

    start = time.perf_counter()
    model = mmseg_support.mmseg_model(mmseg_lib, MODEL_CONFIG)
    seg = convert_mmseg_checkpoint({"state_dict": model.state_dict(), "meta": {}},
                                   dataset="cityscapes")
    print(f"mmseg build + convert {time.perf_counter() - start:.1f} s")
    return model, seg


def test_keep_ratio_size_is_mmcvs(mmseg_lib):
    """Our sizes are mmcv's `rescale_size` of the test pipelines' scales (the real ones)
    times each ratio, as mmsegmentation 0.x's MultiScaleFlipAug scales them."""
    import mmseg_support

    rng = np.random.RandomState(0)
    sizes = [(1024, 2048), (375, 500), (512, 683), (683, 512), (97, 161)] + [
        tuple(int(v) for v in rng.randint(16, 2600, 2)) for _ in range(200)]
    fits = {dataset: _resize_scale(mmseg_support.load_config(mmseg_lib, config))
            for dataset, (config, _, _) in PIPELINES.items()}
    assert fits == {"cityscapes": (2048, 1024), "ade20k": (2048, 512)}
    for dataset, fit in fits.items():
        for h, w in sizes:
            for ratio in inference.MS_SCALES:
                bounds = (int(fit[0] * ratio), int(fit[1] * ratio))
                new_w, new_h = mmseg_lib.geometric.rescale_size((w, h), bounds)
                assert inference.keep_ratio_size(h, w, fit, ratio) == (new_h, new_w), (
                    dataset, h, w, ratio)


def _resize_scale(config):
    (resize,) = [t for t in config.test_pipeline if t["type"] == "Resize"]
    assert resize["keep_ratio"]
    return tuple(resize["scale"])


def _mmseg_predictions(lib, model, bgr, transforms):
    """mmsegmentation's test of one image through `transforms` (after loading): one
    SegDataSample per augmentation (TestTimeAug) or the one of the plain pipeline."""
    import mmseg_support
    import torch

    results = {"img": bgr, "img_shape": bgr.shape[:2], "ori_shape": bgr.shape[:2],
               "img_path": "image.png"}
    with mmseg_support.float_cv2_resize(lib):
        packed = lib.TRANSFORMS.build(transforms)(results)
    with torch.no_grad():
        if isinstance(packed["inputs"], list):  # TestTimeAug: a batch of one per augmentation
            return [model.test_step({"inputs": [i], "data_samples": [d]})[0]
                    for i, d in zip(packed["inputs"], packed["data_samples"])]
        return [model.test_step({"inputs": [packed["inputs"]],
                                 "data_samples": [packed["data_samples"]]})[0]]


def _tta_transforms(fit, ratios):
    """mmsegmentation's `tta_pipeline` after loading, with 0.x's scales: the test scale
    times each ratio (1.x's `Resize(scale_factor=ratio)` scales the image instead;
    the same for Cityscapes' 2048x1024 images)."""
    return dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale=(int(fit[0] * r), int(fit[1] * r)), keep_ratio=True)
         for r in ratios],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="PackSegInputs")]])


@pytest.mark.parametrize("ms_flip", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["single", "ms_flip"])
@pytest.mark.parametrize("dataset", sorted(PIPELINES))
def test_class_maps_equal_mmsegmentation(mmseg_lib, mmseg_and_keras, dataset, ms_flip):
    import mmseg_support
    import torch

    model, seg = mmseg_and_keras
    config_name, shrink, (h, w) = PIPELINES[dataset]
    config = mmseg_support.load_config(mmseg_lib, config_name)
    full = _resize_scale(config)
    fit = (full[0] // shrink, full[1] // shrink)
    ratios = tuple(config.img_ratios) if ms_flip else (1.0,)
    if ms_flip:
        transforms = _tta_transforms(fit, ratios)
    else:  # the dataset's test pipeline without file loading, at the shrunk scale
        transforms = dict(type="Compose", transforms=[
            dict(t, scale=fit) if t["type"] == "Resize" else t for t in config.test_pipeline
            if not t["type"].startswith("Load")])
    # Two images (a batch) single-scale; one with the twelve passes of MS+flip.
    rgb = np.random.RandomState(3).uniform(0, 255, (1 if ms_flip else 2, h, w, 3)).astype(
        "float32")

    start = time.perf_counter()
    expected_maps, expected_scores = [], []
    for image in rgb:
        predictions = _mmseg_predictions(mmseg_lib, model, image[:, :, ::-1].copy(),
                                         transforms)
        if ms_flip:
            merged = mmseg_lib.SegTTAModel(module=model).merge_preds([predictions])[0]
            # What merge_preds averages, to compare with our probabilities.
            scores = torch.stack([p.seg_logits.data.softmax(0) for p in predictions]).mean(0)
        else:
            merged, scores = predictions[0], predictions[0].seg_logits.data
        expected_maps.append(merged.pred_sem_seg.data[0].numpy())
        expected_scores.append(scores.permute(1, 2, 0).numpy())
    expected_maps, expected_scores = np.stack(expected_maps), np.stack(expected_scores)
    mid = time.perf_counter()

    predictor = inference.Predictor(seg, protocol="mmseg", keep_ratio_fit=fit, scales=ratios,
                                    flip=ms_flip)
    log_scores = np.asarray(predictor(rgb))
    classes = predictor.class_map(rgb)
    got = np.asarray(inference.normalize_scores(log_scores)) if ms_flip else log_scores
    print(f"{dataset} fit {fit} {'MS+flip' if ms_flip else 'single'}: mmseg "
          f"{mid - start:.1f} s, keras {time.perf_counter() - mid:.1f} s")

    # Logits: within 1e-4 of their scale; averaged probabilities: of 1. Measured (AMD
    # EPYC Zen 4): 1e-6 to 4e-6 of the scale, every pixel's class the same.
    scale = 1.0 if ms_flip else float(np.abs(expected_scores).max())
    diff = float(np.abs(got - expected_scores).max()) / scale
    top2 = np.sort(expected_scores, -1)[..., -2:]
    near_tie = top2[..., 1] - top2[..., 0] <= 1e-4 * scale
    same = classes == expected_maps
    print(f"max|diff| / scale = {diff:.2e}, class agreement {same.mean():.6f}")
    assert classes.shape == expected_maps.shape == (len(rgb), h, w)
    assert diff < 1e-4
    assert (same | near_tie).all() and same.mean() >= 0.9999


# ------------------------------------------------------------------ CLI with a preset


@pytest.fixture
def cached_preset(tmp_path, monkeypatch, tiny_backbone):
    """A registered mmseg-format preset (5 demo classes) already converted in the cache:
    `--model NAME` runs it without a download."""
    from harness import tiny_segmenter

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    name = "test_mmseg_tiny_demo"
    monkeypatch.setitem(presets.PRESETS, name, {
        "format": "mmseg", "url": "http://127.0.0.1:9/unused.pth", "head": "fcn",
        "encoder": tiny_backbone, "num_classes": 5, "dataset": "demo",
        "inference": {"protocol": "mmseg", "keep_ratio_fit": (128, 64)}})
    model = tiny_segmenter(num_classes=5, encoder=tiny_backbone)
    presets.save_segmenter(model, presets._cached_folder(name))
    return name


def test_evaluate_applies_the_presets_protocol(cached_preset, capsys, tmp_path):
    out = tmp_path / "report.json"
    rc, stdout, err = run_cli(capsys, "evaluate", "--model", cached_preset, "--data", "demo",
                              "--limit", "2", "--quiet", "--output", out)
    assert rc == 0, err
    assert "protocol=mmseg" in stdout and "keep_ratio_fit=128x64" in stdout
    report = json.loads(out.read_text())
    assert report["model"] == cached_preset
    assert report["inference"]["protocol"] == "mmseg"
    assert report["inference"]["keep_ratio_fit"] == [128, 64]
    # Flags override the preset's options.
    rc, stdout, err = run_cli(capsys, "evaluate", "--model", cached_preset, "--data", "demo",
                              "--limit", "1", "--quiet", "--keep-ratio-fit", "96", "48", "--ms")
    assert rc == 0, err
    assert "keep_ratio_fit=96x48" in stdout and "flip=True" in stdout
    rc, stdout, err = run_cli(capsys, "evaluate", "--model", cached_preset, "--data", "demo",
                              "--limit", "1", "--quiet", "--protocol", "official",
                              "--mode", "slide", "--crop-size", "64")
    assert rc == 0, err
    assert "protocol=" not in stdout and "mode=slide" in stdout


def test_preset_flag_conflicts_and_names_are_one_line(cached_preset, capsys, tmp_path):
    cases = [(["--mode", "slide"], ["--mode slide belongs to the official protocol",
                                    f"({cached_preset}'s protocol)", "--protocol official"]),
             (["--base-size", "512"], ["--base-size belongs to the official protocol"]),
             (["--protocol", "official", "--keep-ratio-fit", "64", "32"],
              ["--keep-ratio-fit belongs to --protocol mmseg"])]
    for extra, fragments in cases:
        rc, _, err = run_cli(capsys, "evaluate", "--model", cached_preset, "--data", "demo",
                             *extra)
        assert_one_line_error(rc, err, *fragments)
    # A misspelt name is neither a file nor a preset; the closest one is suggested.
    rc, _, err = run_cli(capsys, "evaluate", "--model", "fastfcn_psp_jpu_resnet50_v1c_citscapes_b8",
                         "--data", "demo")
    assert_one_line_error(rc, err, "Model file not found",
                          "did you mean the released model fastfcn_psp_jpu_resnet50_v1c_"
                          "cityscapes_b8?")
    # A released model for other data is refused before its download.
    rc, _, err = run_cli(capsys, "evaluate", "--model", "fastfcn_psp_jpu_resnet50_v1c_"
                         "cityscapes_b8", "--data", "demo")
    assert_one_line_error(rc, err, "predicts 19 classes (cityscapes) but data 'demo' has 5")
    assert not (tmp_path / "keras_home" / "keras_fastfcn" / "downloads").exists()


def test_predict_checks_the_presets_sizes_before_loading(cached_preset, capsys, tmp_path,
                                                         monkeypatch):
    from PIL import Image

    image = tmp_path / "street.png"
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(image)
    with monkeypatch.context() as patch:
        patch.setattr(presets, "load_segmenter", _no_model_work)
        rc, _, err = run_cli(capsys, "predict", "--model", cached_preset, "--input", image,
                             "--output", tmp_path / "out", "--ms", "--max-pixels", "20000")
    assert_one_line_error(rc, err, "street.png (70x40)", "--keep-ratio-fit 128x64",
                          "at scale 1.75", "196x112 = 21952 pixels", "--max-pixels 20000")
    assert not (tmp_path / "out").exists()
    rc, stdout, err = run_cli(capsys, "predict", "--model", cached_preset, "--input", image,
                              "--output", tmp_path / "out")
    assert rc == 0, err
    assert "protocol=mmseg" in stdout and (tmp_path / "out" / "street_labels.png").exists()


def _no_model_work(*args, **kwargs):
    raise AssertionError("the model was loaded before the options were refused")
