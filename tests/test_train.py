import os

import keras
import numpy as np
import pytest
try:  # the parity tests against PyTorch skip without it (pip install -e ".[test]")
    import torch
except ImportError:
    torch = None
requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

from keras_fastfcn import train as training
from keras_fastfcn.losses import class_presence, segmentation_loss
from keras_fastfcn.optimizers import PolyDecay, SegmentationSGD


def test_bundled_configs_load():
    names = sorted(f[:-5] for f in os.listdir(training.CONFIG_DIR) if f.endswith(".yaml"))
    assert {"demo", "camvid", "ade20k_encnet_jpu_r50", "pcontext_encnet_jpu_r50"} <= set(names)
    for name in names:
        cfg = training.load_config(name)
        assert cfg["name"] == name
    ade = training.load_config("ade20k_encnet_jpu_r101")
    assert (ade["train"]["lr"], ade["train"]["epochs"], ade["model"]["encoder"]) == (0.01, 120, "resnet101")
    assert ade["train"]["head_lr_mult"] == 10.0 and ade["train"]["weight_decay"] == 1e-4


def test_config_overrides_and_errors(tmp_path):
    cfg = training.load_config("demo", ["train.epochs=3", "model.head=psp"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["head"] == "psp"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"):
        training.load_config(str(bad))
    bad.write_text("modle:\n  head: psp\n")
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        training.load_config(str(bad))
    # A bad --set key is the override's fault, not the file's.
    with pytest.raises(ValueError, match=r"^--set train.epoch=3: unknown config key "
                                         r"'train.epoch' \(did you mean 'train.epochs'"):
        training.load_config("demo", ["train.epoch=3"])
    assert training.load_config("demo", ["data.options.num_val=2"])["data"]["options"] == {
        "num_val": 2}  # data.options is free-form
    bad.write_text("train:\n  batch_size: eight\n")
    with pytest.raises(ValueError, match="'train.batch_size' must be of type int"):
        training.load_config(str(bad))
    bad.write_text("train:\n  mixed_precision: float8\n")
    with pytest.raises(ValueError, match="mixed_precision"):
        training.load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        training.load_config("no_such_config")
    with pytest.raises(ValueError, match="section.key=value"):
        training.load_config("demo", ["train.epochs"])
    # Numbers as users write them (YAML 1.1 reads 1e-3 as a string), finite only.
    assert training.load_config("demo", ["train.lr=1e-3"])["train"]["lr"] == 0.001
    for value in (".inf", "1e400", ".nan"):
        with pytest.raises(ValueError, match=r"train.lr must be a finite number"):
            training.load_config("demo", [f"train.lr={value}"])


def _twin_models(rng):
    inp = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="backbone_dense")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(hidden))
    w = [v.numpy() for v in model.weights]
    t1, t2 = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    with torch.no_grad():
        for lin, (k, b) in ((t1, w[:2]), (t2, w[2:])):
            lin.weight.copy_(torch.from_numpy(k.T))
            lin.bias.copy_(torch.from_numpy(b))
    return model, t1, t2


@requires_torch
def test_optimizer_matches_official_pytorch_recipe(rng):
    """Poly lr, momentum, coupled weight decay and the 10x head group, step for step."""
    model, t1, t2 = _twin_models(rng)
    lr, steps = 0.05, 6
    model.compile(SegmentationSGD(PolyDecay(lr, steps, 0.9), momentum=0.9,
                                  l2=1e-2, lr_multipliers={"head": 10.0}), loss="mse")
    groups = [{"params": t1.parameters(), "lr": lr}, {"params": t2.parameters(), "lr": lr * 10}]
    topt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-2)
    x, y = rng.randn(8, 3).astype("float32"), rng.randn(8, 2).astype("float32")
    for i in range(steps):
        factor = (1 - i / steps) ** 0.9  # the official LR_Scheduler('poly')
        topt.param_groups[0]["lr"], topt.param_groups[1]["lr"] = lr * factor, 10 * lr * factor
        topt.zero_grad()
        ((t2(t1(torch.from_numpy(x))) - torch.from_numpy(y)) ** 2).mean().backward()
        topt.step()
        model.train_on_batch(x, y)
    np.testing.assert_allclose(model.weights[0].numpy(), t1.weight.detach().numpy().T, atol=1e-6)
    np.testing.assert_allclose(model.weights[2].numpy(), t2.weight.detach().numpy().T, atol=1e-6)


def test_optimizer_serializes():
    opt = SegmentationSGD(PolyDecay(0.1, 100), l2=1e-4, decay_norm=False,
                          lr_multipliers={"jpu": 10.0})
    clone = SegmentationSGD.from_config(opt.get_config())
    assert isinstance(clone.schedule, PolyDecay) and clone.schedule.decay_steps == 100
    assert clone.lr_multipliers == {"jpu": 10.0} and clone.decay_norm is False


def test_a_traced_step_reads_the_per_fit_window_when_it_runs():
    """On TensorFlow each `fit`'s decay window is read by the traced step when it runs,
    so a second `fit` needs no new trace (a ResNet-50 step: seconds) and gets its own
    decay; outside a fit the rate is the compiled one."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's traced step")
    import tensorflow as tf

    schedule = PolyDecay(0.1)
    rate = tf.function(schedule, input_signature=[tf.TensorSpec([], tf.int64)])
    want = []
    for window, step in ((None, 5), ((4, 4), 6), ((10, 2), 11), ((10, 2), 20), (None, 11)):
        if window is None:
            schedule.end_fit()
            want.append(0.1)
        else:
            assert schedule.start_fit(*window) is False  # no new trace needed
            want.append(0.1 * (1 - min(step - window[0], window[1]) / window[1]) ** 0.9)
        assert float(rate(step)) == pytest.approx(want[-1], rel=1e-6)
    assert rate.experimental_get_tracing_count() == 1


@requires_torch
def test_losses_match_pytorch(rng):
    logits = rng.randn(2, 5, 6, 4).astype("float32")
    labels = rng.randint(0, 4, (2, 5, 6))
    labels[0, :2] = 255
    ours = float(segmentation_loss()(labels, logits))
    ref = float(torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(labels).long(),
        ignore_index=255))
    assert ours == pytest.approx(ref, rel=1e-5)


def test_se_targets():
    labels = np.array([[[0, 2], [255, 2]], [[1, 1], [1, 3]]], "int32")
    np.testing.assert_array_equal(np.asarray(class_presence(labels, 4)),
                                  [[1, 0, 1, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(np.asarray(class_presence(labels[..., None], 4)),
                                  [[1, 0, 1, 0], [0, 1, 0, 1]])


def test_strategy_errors(monkeypatch):
    with pytest.raises(ValueError, match="Unknown strategy"):
        training.make_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{cluster: 1}")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        training.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(ValueError, match="not in its cluster"):
        training.make_strategy("multiworker")


def test_config_numeric_ranges_and_old_names(tmp_path):
    cfg = training.load_config("demo", ["model.backbone=resnet101", "model.jpu_width=32"])
    assert cfg["model"]["encoder"] == "resnet101" and cfg["model"]["width"] == 32
    for override, message in [
        ("train.steps_per_epoch=-1", "train.steps_per_epoch must be >= 1"),
        ("train.steps_per_epoch=0", "train.steps_per_epoch must be >= 1"),
        ("train.steps_per_epoch=abc", "train.steps_per_epoch must be an int"),
        ("train.val_batch_size=0", "train.val_batch_size must be >= 1"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.momentum=1.5", "train.momentum must be < 1"),
        ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
        ("train.aux_weight=-0.2", "train.aux_weight must be >= 0"),
        ("data.crop_size=4", "data.crop_size must be >= 8"),
        ("model.width=0", "model.width must be >= 1"),
        ("model.output_stride=12", "model.output_stride must be 8, 16, 32"),
    ]:
        with pytest.raises(ValueError, match=message):
            training.load_config("demo", [override])


def test_history_rows_say_how_many_steps_their_training_metrics_cover(tmp_path):
    """history.csv's `steps`: the steps an epoch's training metrics average over; an
    epoch resumed mid-way (a first `fit` call with its remaining steps, as the runner
    does) says so. Rows restored from a checkpoint of an older version (no `steps`)
    are kept."""
    import csv

    from keras_fastfcn.train.callbacks import HistoryCSV

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 2), "float32"), np.zeros((8, 1), "float32")
    path = tmp_path / "history.csv"
    history = HistoryCSV(str(path), rows=[{"epoch": 0, "loss": 1.0}])
    model.fit(x, y, batch_size=2, epochs=2, initial_epoch=1, steps_per_epoch=1,
              callbacks=[history], verbose=0)  # epoch 1 resumed with 1 step left
    model.fit(x, y, batch_size=2, epochs=3, initial_epoch=2, callbacks=[history],
              verbose=0)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:2] == ["epoch", "steps"]
    assert [(r["epoch"], r["steps"]) for r in rows] == [("0", ""), ("1", "1"), ("2", "4")]
