"""mmsegmentation's FastFCN checkpoints -> Keras: parity with mmsegmentation's own code, errors.

The parity tests build each of the three FastFCN models from mmsegmentation 1.2.2's own
config files (`configs/fastfcn/fastfcn_r50-d32_jpu_{psp,aspp,enc}_4xb2-80k_cityscapes-
512x1024.py`) with its own modules, give every BatchNorm random statistics, save the
state dict as mmsegmentation saves checkpoints, convert it and compare the logits with
mmsegmentation's `EncoderDecoder` inference (its data preprocessor included: BGR input,
mean/std normalization). The error tests need no mmsegmentation: their checkpoints are
made from the key mapping.
"""

import os
import time

import keras
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="converting PyTorch checkpoints needs PyTorch")

import mmseg_support
from keras_fastfcn import cli
from keras_fastfcn.convert import CheckpointMismatchError
from keras_fastfcn.convert import mmseg as mmseg_convert
from keras_fastfcn.data import palettes
from keras_fastfcn.models import presets

torch.set_num_threads(2)

HEADS = {"psp": "psp", "aspp": "mmseg_aspp", "enc": "mmseg_encnet"}
CITYSCAPES = list(palettes.CITYSCAPES_CLASSES)


@pytest.fixture(scope="module")
def mmseg_lib():
    """mmsegmentation's registries and configs (`mmseg_support.import_mmseg`)."""
    return mmseg_support.import_mmseg()


def _mmseg_model(lib, head, seed=0):
    """mmsegmentation's FastFCN `head` model for Cityscapes (random weights and BN)."""
    return mmseg_support.mmseg_model(
        lib, f"fastfcn_r50-d32_jpu_{head}_4xb2-80k_cityscapes-512x1024", seed)


@pytest.fixture(scope="module", params=sorted(HEADS))
def converted(request, mmseg_lib, tmp_path_factory):
    """(mmseg head name, mmseg model, its checkpoint path, the converted Keras model)."""
    head = request.param
    start = time.perf_counter()
    model = _mmseg_model(mmseg_lib, head)
    path = str(tmp_path_factory.mktemp(head) / f"fastfcn_{head}.pth")
    # As mmengine's save_checkpoint writes them (mmcv 1.x, which wrote the released
    # files, kept the class names in meta["CLASSES"]; a bare state dict has none).
    meta = {"psp": {"dataset_meta": {"classes": tuple(CITYSCAPES)}, "mmseg_version": "1.2.2"},
            "aspp": {"CLASSES": tuple(CITYSCAPES), "PALETTE": [[0, 0, 0]] * 19}}.get(head)
    torch.save({"meta": meta, "state_dict": model.state_dict()} if meta
               else model.state_dict(), path)
    seg = mmseg_convert.convert_mmseg_checkpoint(
        path, dataset=None if meta else "cityscapes")
    print(f"{head}: mmseg build + save + convert {time.perf_counter() - start:.1f} s")
    return head, model, path, seg


def _mmseg_outputs(model, rgb, head=None):
    """mmsegmentation's inference on 0-255 RGB images (it reads BGR, as cv2 loads); with
    `head`, also the auxiliary head's logits and (EncHead) the SE logits."""
    bgr = [torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1)))
           for im in rgb]
    h, w = rgb.shape[1:3]
    metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))] * len(rgb)
    with torch.no_grad():
        inputs = model.data_preprocessor({"inputs": bgr}, False)["inputs"]
        out = {"logits": model.encode_decode(inputs, metas)}
        if head is None:
            return {"logits": out["logits"].permute(0, 2, 3, 1).numpy()}
        feats = model.extract_feat(inputs)
        out["aux_logits"] = model.auxiliary_head.predict(feats, metas, model.test_cfg)
        if head == "enc":
            out["se_logits"] = model.decode_head.forward(feats)[1]
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).numpy() for k, v in out.items()}


def _check_logits(got, expected, what):
    """Max |difference| within 1e-4 of the logit scale; class maps equal except where the
    reference's top-2 margin is a near-tie (1e-4 of the scale). Measured: 1.3e-6 to
    1.7e-6 of the scale, 100% argmax agreement (AMD EPYC Zen 4, AVX-512)."""
    scale = float(np.abs(expected).max())
    rel = float(np.abs(got - expected).max()) / scale
    top2 = np.sort(expected, -1)[..., -2:]
    near_tie = top2[..., 1] - top2[..., 0] <= 1e-4 * scale
    same = got.argmax(-1) == expected.argmax(-1)
    print(f"{what}: max|diff| / max|logit| = {rel:.2e} (scale {scale:.3g}), argmax "
          f"agreement {same.mean():.6f}")
    assert rel < 1e-4, what
    assert (same | near_tie).all() and same.mean() >= 0.9999, what


def test_parity_with_mmsegmentation(converted):
    """All outputs (the training-only aux and SE ones in inference mode too) on a batch of
    two odd-sized images: padding, pooling bins and resizes where sizes do not divide."""
    head, model, _, seg = converted
    assert seg.head_name == HEADS[head] and seg.num_classes == 19
    assert seg.backbone.encoder_name == "resnet50_v1c" and not seg.align_corners
    assert seg.aux and seg.se_loss == (head == "enc") and seg.aux_weight == 0.4
    assert seg.class_names == CITYSCAPES and seg.dataset == "cityscapes"
    rgb = np.random.RandomState(1).uniform(0, 255, (2, 97, 161, 3)).astype("float32")
    expected = _mmseg_outputs(model, rgb, head)
    got = keras.Model(seg.input, seg.output)(rgb, training=False)
    _check_logits(np.asarray(got["logits"]), expected["logits"], f"{head} logits")
    _check_logits(np.asarray(got["aux_logits"]), expected["aux_logits"], f"{head} aux")
    if head == "enc":
        se, ref = np.asarray(got["se_logits"]), expected["se_logits"]
        assert np.abs(se - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.slow
def test_parity_with_mmsegmentation_at_512x1024(converted):
    """The models' training crop size (Cityscapes 512x1024), logits only."""
    head, model, _, seg = converted
    rgb = np.random.RandomState(2).uniform(0, 255, (1, 512, 1024, 3)).astype("float32")
    start = time.perf_counter()
    expected = _mmseg_outputs(model, rgb)["logits"]
    mid = time.perf_counter()
    got = np.asarray(seg(rgb, training=False))
    print(f"{head} 512x1024: mmseg {mid - start:.1f} s, keras {time.perf_counter() - mid:.1f} s")
    _check_logits(got, expected, f"{head} 512x1024 logits")


# ------------------------------------------------------------------ errors (no mmseg)


@pytest.fixture(scope="module")
def psp_state_dict():
    """A valid mmsegmentation PSP state dict (19 classes) made from the key mapping."""
    return mmseg_support.mmseg_state_dict(mmseg_convert.build_mmseg_segmenter("psp", 19))


def test_mapping_covers_mmseg_keys(psp_state_dict):
    keys = set(psp_state_dict)
    assert {"backbone.stem.0.weight", "backbone.stem.7.running_var",
            "backbone.layer4.0.downsample.0.weight",
            "neck.conv_layers.2.0.conv.weight",
            "neck.dilation_layers.3.0.depthwise_conv.conv.weight",
            "neck.dilation_layers.0.0.pointwise_conv.bn.bias",
            "decode_head.psp_modules.3.1.conv.weight", "decode_head.bottleneck.bn.weight",
            "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight",
            "auxiliary_head.conv_seg.weight"} <= keys
    assert psp_state_dict["backbone.stem.0.weight"].shape == (32, 3, 3, 3)
    assert psp_state_dict["neck.dilation_layers.0.0.depthwise_conv.conv.weight"].shape == (
        1536, 1, 3, 3)
    config = mmseg_convert.infer_mmseg_config(psp_state_dict)
    assert config == {"head": "psp", "encoder": "resnet50_v1c", "blocks": (3, 4, 6, 3),
                      "width": 512, "num_classes": 19, "aux": True, "se_loss": False}


def test_jpu_channel_order_is_permuted(psp_state_dict):
    """mmseg's JPU concatenates [C3, C4, C5], ours [C5, C4, C3]: channel block j of ours
    holds mmseg's block 2 - j in the depthwise conv, its BN and the pointwise input."""
    model = mmseg_convert.convert_mmseg_checkpoint(psp_state_dict, aux=False)
    branch = model.backbone.upsampler.dilation_branches[1]
    key = "neck.dilation_layers.1.0."
    dw = psp_state_dict[key + "depthwise_conv.conv.weight"]  # (1536, 1, 3, 3)
    np.testing.assert_array_equal(np.asarray(branch.sep.conv1.kernel)[..., :512, 0],
                                  dw[1024:, 0].transpose(1, 2, 0))
    np.testing.assert_array_equal(np.asarray(branch.sep.bn.moving_mean)[1024:],
                                  psp_state_dict[key + "depthwise_conv.bn.running_mean"][:512])
    pw = psp_state_dict[key + "pointwise_conv.conv.weight"]  # (512, 1536, 1, 1)
    np.testing.assert_array_equal(np.asarray(branch.sep.pointwise.kernel)[0, 0, 1024:],
                                  pw[:, :512, 0, 0].T)
    assert model.aux_layer is None


def test_missing_unexpected_and_misshapen_keys_are_named(psp_state_dict):
    bad = dict(psp_state_dict)
    del bad["backbone.layer2.1.conv2.weight"]
    del bad["neck.dilation_layers.2.0.depthwise_conv.bn.bias"]
    bad["decode_head.extra.weight"] = np.zeros(3, "float32")
    bad["neck.conv_layers.1.0.conv.weight"] = np.zeros((512, 1024, 1, 1), "float32")
    with pytest.raises(CheckpointMismatchError) as info:
        mmseg_convert.convert_mmseg_checkpoint({"state_dict": bad, "meta": {}})
    err = info.value
    assert err.missing == ["backbone.layer2.1.conv2.weight",
                           "neck.dilation_layers.2.0.depthwise_conv.bn.bias"]
    assert err.unexpected == ["decode_head.extra.weight"]
    assert [k for k, _, _ in err.mismatched] == ["neck.conv_layers.1.0.conv.weight"]
    assert ("neck.conv_layers.1.0.conv.weight: checkpoint (512, 1024, 1, 1), model expects "
            "(512, 1024, 3, 3)") in str(err)


def test_wrong_checkpoints_are_named(psp_state_dict):
    convert = mmseg_convert.convert_mmseg_checkpoint
    with pytest.raises(ValueError, match=r"keys start with \['head', 'jpu', 'pretrained'\]"):
        convert({"pretrained.conv1.0.weight": np.zeros(1), "jpu.conv5.0.weight": np.zeros(1),
                 "head.conv5.0.weight": np.zeros(1)})
    v1b = {k: v for k, v in psp_state_dict.items() if not k.startswith("backbone.stem.")}
    v1b["backbone.conv1.weight"] = np.zeros((64, 3, 7, 7), "float32")
    with pytest.raises(ValueError, match="7x7 stem conv.*ResNetV1b"):
        convert(v1b)
    with pytest.raises(ValueError, match="no neck.* keys: not a FastFCN"):
        convert({k: v for k, v in psp_state_dict.items() if not k.startswith("neck.")})
    r101 = dict(psp_state_dict, **{"backbone.layer3.22.conv1.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"\(3, 4, 23, 3\) blocks per stage"):
        convert(r101)
    no_head = {k: v for k, v in psp_state_dict.items() if "psp_modules" not in k}
    with pytest.raises(ValueError, match="Cannot tell the decode head.*decode_head.bottleneck"):
        convert(no_head)
    with pytest.raises(ValueError, match="3 class names given for a 19-class"):
        convert(psp_state_dict, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="dataset 'ade20k' has 150 classes, but the "
                                         "checkpoint has 19: wrong --dataset"):
        convert(psp_state_dict, dataset="ade20k")
    # Also where the file names its 19 classes (it was converted with ADE20K's palette).
    cityscapes = {"state_dict": psp_state_dict,
                  "meta": {"CLASSES": list(palettes.class_names("cityscapes"))}}
    with pytest.raises(ValueError, match="dataset 'ade20k' has 150 classes"):
        convert(cityscapes, dataset="ade20k")
    assert convert(cityscapes, aux=False).dataset == "cityscapes"
    with pytest.raises(ValueError, match="encoder='resnet50s' was asked for"):
        convert(psp_state_dict, encoder="resnet50s")


def test_cli_and_preset_reader_convert_format_mmseg(psp_state_dict, tmp_path, capsys):
    """`keras-fastfcn convert --format mmseg` and the preset reader of format "mmseg" (what
    `from_preset` uses for an entry with `"format": "mmseg"`) on a saved checkpoint."""
    path = str(tmp_path / "fastfcn_psp.pth")
    torch.save({"meta": {"dataset_meta": {"classes": tuple(CITYSCAPES)}},
                "state_dict": {k: torch.from_numpy(np.asarray(v))
                               for k, v in psp_state_dict.items()}}, path)
    assert presets.CHECKPOINT_FORMATS["mmseg"] == "keras_fastfcn.convert.mmseg"
    entry = {"head": "psp", "encoder": "resnet50_v1c", "num_classes": 19,
             "dataset": "cityscapes", "format": "mmseg"}
    reader = presets._checkpoint_reader("mmseg")
    model = reader(path, entry)
    assert model.class_names == CITYSCAPES and model.dataset == "cityscapes"
    np.testing.assert_array_equal(np.asarray(model.head_layer.classifier.bias),
                                  psp_state_dict["decode_head.conv_seg.bias"])
    with pytest.raises(ValueError, match="head='mmseg_encnet' was asked for"):
        reader(path, dict(entry, head="mmseg_encnet"))

    out = tmp_path / "models" / "psp.weights.h5"
    code = cli.main(["convert", "--format", "mmseg", "--checkpoint", path,
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "psp head, resnet50_v1c, upsampler=jpu, 19 classes" in capsys.readouterr().out
    assert os.listdir(out.parent) == ["psp.weights.h5"]  # no temporary file left behind
    before = [np.asarray(w).copy() for w in model.weights]
    model.load_weights(str(out))
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
    # A wrong --head or option: one error line, nothing written.
    for extra, fragment in ((["--head", "mmseg_aspp"], "head='mmseg_aspp' was asked for"),
                            (["--upsampler", "jpu_x"], "all use the JPU"),
                            (["--backbone-only"], "--backbone-only reads official")):
        bad = tmp_path / "bad.keras"
        code = cli.main(["convert", "--format", "mmseg", "--checkpoint", path,
                         "--output", str(bad)] + extra)
        err = capsys.readouterr().err
        assert code == 1 and fragment in err and err.count("error:") == 1, err
        assert "Traceback" not in err and not bad.exists()
