"""Official PyTorch FastFCN checkpoints -> Keras: key mapping, parity and errors.

A PyTorch model with the official module tree (keras_fastfcn/benchmark/torch_reference.py)
gets random weights and BN statistics, its state dict is converted, and the Keras
model must reproduce its outputs.
"""

import argparse
import os

import keras
import numpy as np
import pytest
torch = pytest.importorskip("torch", reason="the PyTorch parity tests need PyTorch")

from keras_fastfcn.benchmark import torch_reference as ref
from keras_fastfcn import FastFCN, cli, convert
from keras_fastfcn.cli import convert as convert_cli
from keras_fastfcn.models import registry
from keras_fastfcn.models.encoders.resnet_deepstem import build_resnet_deepstem

torch.set_num_threads(2)

# A one-block-per-stage deep-stem ResNet keeps the parity tests fast; the mapping
# and the layers are the same as for resnet50s (which test_full_resnet50s_* covers).
TINY = "tiny_deepstem_1111"
registry.register_encoder(
    TINY, lambda output_stride, weights: build_resnet_deepstem(
        (1, 1, 1, 1), output_stride, weights, name=f"{TINY}_os{output_stride}"), "torch")

MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def _torch_model(head, jpu="JPU", layers=(1, 1, 1, 1), width=64, nclass=11, aux=True,
                 se_loss=True, seed=0):
    model = ref.SegmentationModel(head, nclass, layers=layers, jpu=jpu, aux=aux,
                                  se_loss=se_loss, width=width)
    return ref.randomize_(model, seed).eval()


def _save(state_dict, path, wrap=False):
    if wrap:  # as the official train.py: {"state_dict": model.module.state_dict(), ...}
        state_dict = {"epoch": 80, "best_pred": 0.5,
                      "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}
    torch.save(state_dict, path)
    return str(path)


def _compare(torch_model, keras_model, hw, seed=1):
    """Max abs logit difference relative to the logits' scale, and argmax agreement."""
    x = np.random.RandomState(seed).uniform(0, 255, (2,) + hw + (3,)).astype("float32")
    with torch.no_grad():
        outs = torch_model(torch.from_numpy((x / 255.0 - MEAN) / STD).permute(0, 3, 1, 2))
    # Every output (training-only ones too) in inference mode: the model's graph.
    got = keras.Model(keras_model.input, keras_model.output)(x, training=False)
    if not isinstance(got, dict):
        got = {"logits": got}
    expected = outs[0].permute(0, 2, 3, 1).numpy()
    logits = np.asarray(got["logits"])
    rel = np.abs(expected - logits).max() / np.abs(expected).max()
    agree = (expected.argmax(-1) == logits.argmax(-1)).mean()
    others = {}
    if "se_logits" in got:
        others["se"] = np.abs(outs[1].numpy() - np.asarray(got["se_logits"])).max()
    if "aux_logits" in got:
        aux = outs[-1].permute(0, 2, 3, 1).numpy()
        others["aux"] = np.abs(aux - np.asarray(got["aux_logits"])).max() / np.abs(aux).max()
    return rel, agree, others


@pytest.mark.parametrize("head,jpu", [("encnet", "JPU"), ("psp", "JPU"), ("deeplab", "JPU"),
                                      ("encnet", "JPU_X"), ("fcn", "JPU"), ("encnet", None)])
def test_parity_with_official_structure(head, jpu, tmp_path):
    torch_model = _torch_model(head, jpu)
    path = _save(torch_model.state_dict(), tmp_path / "model.pth")
    model = convert.convert_checkpoint(path, encoder=TINY)
    upsampler = {"JPU": "jpu", "JPU_X": "jpu_x", None: None}[jpu]
    assert (model.head_name, model.backbone.upsampler_name) == (head, upsampler)
    assert model.aux and model.se_loss == (head == "encnet")
    assert model.backbone.preprocessing == "torch"
    if jpu:
        assert model.backbone.width == 64
    else:  # the dilated baseline: official output stride 8
        assert model.backbone.output_stride == 8
    for hw in [(64, 64), (72, 96)]:
        rel, agree, others = _compare(torch_model, model, hw)
        print(f"{head}+{jpu} {hw}: max|diff|/max|logit| {rel:.2e}, argmax agreement "
              f"{agree:.5f}, {others}")
        assert rel < 1e-3 and agree >= 0.999
        assert others["aux"] < 1e-3
        if head == "encnet":
            assert others["se"] < 1e-3


def test_full_resnet50s_encnet_jpu_cli_roundtrip(tmp_path, capsys):
    """Full-size EncNet+JPU on resnet50s (the official Pascal Context layout), through the
    CLI: training-checkpoint wrapper, DataParallel prefix, atomic .keras write, reload."""
    torch_model = _torch_model("encnet", "JPU", layers=ref.DEPTHS["resnet50s"], width=512,
                               nclass=59)
    state_dict = torch_model.state_dict()
    assert "pretrained.fc.weight" in state_dict  # the official models carry the ImageNet fc
    path = _save(state_dict, tmp_path / "encnet_res50_pcontext.pth.tar", wrap=True)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"class{i}" for i in range(59)) + "\n")
    out = tmp_path / "models" / "encnet.keras"
    code = cli.main(["convert", "--checkpoint", path, "--head", "encnet", "--backbone", "resnet50s",
                     "--num-classes", "59", "--dataset", "pcontext", "--class-names", str(names),
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "encnet head, resnet50s, upsampler=jpu, 59 classes" in capsys.readouterr().out
    assert os.listdir(out.parent) == ["encnet.keras"]  # no temporary file left behind
    model = keras.saving.load_model(str(out))
    assert model.dataset == "pascal_context" and model.class_names[58] == "class58"
    assert model.backbone.encoder_name == "resnet50s" and model.backbone.width == 512
    rel, agree, others = _compare(torch_model, model, (64, 64))
    print(f"resnet50s EncNet+JPU (64, 64): {rel:.2e}, {agree:.5f}, {others}")
    assert rel < 1e-3 and agree >= 0.999 and others["se"] < 1e-3 and others["aux"] < 1e-3
    # The backbone alone, from the same segmentation checkpoint (pretrained.* keys).
    backbone = convert.convert_backbone_checkpoint(path)
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("layer4_2_bn3").moving_variance),
        state_dict["pretrained.layer4.2.bn3.running_var"].numpy())


def test_full_resnet101s_jpu_x_key_coverage():
    """Every key of a full-size resnet101s EncNet+JPU_X checkpoint maps, with the right shape."""
    torch_model = ref.SegmentationModel("encnet", 150, layers=ref.DEPTHS["resnet101s"],
                                        jpu="JPU_X", width=512)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    config = convert.infer_config(state_dict)
    assert config == {"head": "encnet", "backbone": "resnet101s", "upsampler": "jpu_x",
                      "jpu_width": 512, "num_classes": 150, "aux": True, "se_loss": True}
    model = FastFCN(150, head="encnet", backbone="resnet101s", upsampler="jpu_x", aux=True,
                    se_loss=True)
    mapping = convert.weight_mapping(model)
    assert len(mapping) == len(model.weights)
    keys = {key for key, _, _ in mapping}
    ignored = {k for k in state_dict if k.endswith("num_batches_tracked")
               or k.startswith("pretrained.fc.")}
    assert keys == set(state_dict) - ignored
    for key, variable, layout in mapping:
        shape = state_dict[key].shape
        if layout == "conv":
            shape = (shape[2], shape[3], shape[1], shape[0])
        elif layout == "depthwise":
            shape = (shape[2], shape[3], shape[0], shape[1])
        elif layout == "dense":
            shape = shape[::-1]
        assert tuple(variable.shape) == tuple(shape), key


def test_mismatch_lists_every_bad_key_and_changes_nothing():
    torch_model = _torch_model("fcn", "JPU", aux=True)
    good = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    bad = dict(good)
    del bad["pretrained.layer2.0.conv2.weight"], bad["jpu.dilation3.0.bn.running_var"]
    bad["head.extra.weight"] = np.zeros(3, "float32")
    bad["pretrained.layer9.0.conv1.weight"] = np.zeros(3, "float32")
    bad["head.conv5.4.bias"] = np.zeros(12, "float32")
    bad["jpu.conv4.0.weight"] = np.zeros((64, 1024, 1, 1), "float32")
    model = convert.convert_checkpoint(good, encoder=TINY)
    before = [np.asarray(v).copy() for v in model.weights]
    with pytest.raises(convert.CheckpointMismatchError) as info:
        convert.load_official_weights(model, bad)
    err = info.value
    assert err.missing == ["pretrained.layer2.0.conv2.weight", "jpu.dilation3.0.bn.running_var"]
    assert err.unexpected == ["head.extra.weight", "pretrained.layer9.0.conv1.weight"]
    assert sorted(k for k, _, _ in err.mismatched) == ["head.conv5.4.bias", "jpu.conv4.0.weight"]
    text = str(err)
    for key in err.missing + err.unexpected:
        assert key in text
    assert "jpu.conv4.0.weight: checkpoint (64, 1024, 1, 1), model expects (64, 1024, 3, 3)" in text
    assert "head.conv5.4.bias: checkpoint (12,), model expects (11,)" in text
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_cli_reports_mismatch_on_one_line_per_key(tmp_path, capsys):
    torch_model = _torch_model("psp", "JPU", aux=False)
    path = _save(torch_model.state_dict(), tmp_path / "psp.pth")
    # --head encnet on a PSP checkpoint: missing EncNet keys, unexpected PSP keys.
    code = cli.main(["convert", "--checkpoint", path, "--head", "encnet", "--backbone",
                     "resnet50s", "--output", str(tmp_path / "m.keras")])
    err = capsys.readouterr().err
    assert code == 1
    assert "missing key(s)" in err and "head.encmodule.encoding.3.codewords" in err
    assert "unexpected key(s)" in err and "head.conv5.0.conv4.0.weight" in err
    assert "the checkpoint's keys suggest head='psp'" in err
    assert not (tmp_path / "m.keras").exists()


def test_inference_only_drops_training_heads(tmp_path):
    torch_model = _torch_model("encnet", "JPU")
    path = _save(torch_model.state_dict(), tmp_path / "enc.pth")
    out = tmp_path / "enc.keras"
    args = argparse.Namespace(checkpoint=path, output=str(out), head=None, encoder=TINY,
                              num_classes=None, upsampler="auto", dataset="my_dataset",
                              class_names=None, inference_only=True, backbone_only=False)
    assert convert_cli.run(args) == 0
    model = keras.saving.load_model(str(out))
    assert not model.aux and not model.se_loss and model.dataset == "my_dataset"
    rel, agree, _ = _compare(torch_model, model, (64, 64))
    assert rel < 1e-3 and agree >= 0.999


def test_backbone_only_from_imagenet_checkpoint(tmp_path):
    """The official ImageNet resnet50s (bare keys + fc) -> .weights.h5 for any output stride."""
    torch_net = ref.randomize_(ref.DeepStemResNet(ref.DEPTHS["resnet50s"], output_stride=8),
                               seed=5).eval()
    path = _save(torch_net.state_dict(), tmp_path / "resnet50s-imagenet.pth")
    out = tmp_path / "resnet50s.weights.h5"
    assert cli.main(["convert", "--backbone-only", "--checkpoint", path,
                     "--output", str(out)]) == 0
    backbone = registry.build_encoder("resnet50s", output_stride=8, weights=str(out))
    x = np.random.RandomState(0).randn(1, 64, 64, 3).astype("float32")
    with torch.no_grad():
        expected = torch_net.features(torch.from_numpy(x).permute(0, 3, 1, 2))
    for e, g in zip(expected, backbone(x)):
        e = e.permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(g), e, atol=1e-4 * np.abs(e).max())


def test_loads_official_training_checkpoint_with_numpy_scalars(tmp_path):
    """The official train.py saves best_pred as a numpy float64 (pixAcc/mIoU are numpy),
    possibly in the legacy (non-zip) format with numpy 1.x module names."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    checkpoint = {"epoch": 80, "state_dict": {"w": torch.ones(2, 3)},
                  "optimizer": optimizer.state_dict(), "best_pred": np.float64(0.5)}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    old = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    for data in (path.read_bytes(), old):
        path.write_bytes(data)
        state_dict = convert.load_state_dict(path)
        assert list(state_dict) == ["w"] and state_dict["w"].shape == (2, 3)


def test_load_state_dict_refuses_pickled_code_and_bad_input(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        convert.load_state_dict(path)
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        convert.load_state_dict(tmp_path / "no_such.pth")
    torch.save({"w": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(ValueError, match=r"\['epoch'\] are not tensors"):
        convert.load_state_dict(path)


def test_unsupported_checkpoints_are_named():
    plain_stem = {"pretrained.conv1.weight": np.zeros((64, 3, 7, 7), "float32")}
    with pytest.raises(ValueError, match="single 7x7 stem conv"):
        convert.infer_backbone(plain_stem)
    torch_model = _torch_model("encnet", "JPU", aux=False)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    state_dict["head.connect.0.0.weight"] = np.zeros((512, 512, 1, 1), "float32")
    with pytest.raises(convert.CheckpointMismatchError, match="'lateral'"):
        convert.convert_checkpoint(state_dict, encoder=TINY)
    with pytest.raises(ValueError, match="3 class names given for a 11-class"):
        convert.convert_checkpoint(state_dict, encoder=TINY, class_names=["a", "b", "c"])


def test_dataset_class_names_come_from_palettes(monkeypatch):
    """With --dataset and no --class-names, names come from keras_fastfcn.data.palettes."""
    from keras_fastfcn.convert import checkpoint
    from keras_fastfcn.data import palettes

    calls = []
    monkeypatch.setattr(palettes, "class_names", lambda name: calls.append(name) or [
        f"{name}_{i}" for i in range(59)])
    assert checkpoint.palettes is palettes
    torch_model = _torch_model("fcn", "JPU", aux=False, nclass=59)
    state_dict = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    with pytest.warns(DeprecationWarning, match=r"use encoder="):  # the 0.2 name
        model = convert.convert_checkpoint(state_dict, backbone=TINY, dataset="pcontext")
    assert calls == ["pascal_context"]
    assert model.dataset == "pascal_context" and model.class_names[3] == "pascal_context_3"
    with pytest.raises(ValueError, match="'ade20k' has 150 classes .* checkpoint has 59"):
        convert.convert_checkpoint(state_dict, encoder=TINY, dataset="ade20k")
    assert convert.normalize_dataset("ADE") == "ade20k"
