"""Training faults: a diverging loss, bad data met mid-run, a damaged or foreign
checkpoint, a folder in use, a full disk. Each ends in one `error:` line, with the
output folder as it was (or, past a checkpoint, resumable from it).

The runs use the small test encoder (tests/tiny_encoder.py) in subprocesses; the
checks that fail before any model is built run in process.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_fastfcn.cli import main
from keras_fastfcn.fileio import FolderLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--set", "data.crop_size=64", "--set", "data.base_size=64",
         "--set", "train.batch_size=4", "--set", "model.width=16",
         "--set", "train.verbose=2", "--steps-per-epoch", "3"]
DEMO = ["--set", "data.options.size=64", "--set", "data.options.num_val=8"]


def _train(out, *extra, data=DEMO, timeout=600):
    """`keras-fastfcn train` with the test encoder; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_FASTFCN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "tiny_encoder.py"), "train",
         "--config", "demo", "--output-dir", str(out), "--set", "model.encoder=tiny_resnet",
         *SMALL, *data, *extra], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _one_error_line(err):
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


@pytest.mark.slow
def test_a_ctrl_c_that_tensorflow_swallowed_or_mangled_still_interrupts(monkeypatch, capsys):
    """A Ctrl-C while TensorFlow traced the first step was swallowed (the training ran
    on to its end) or came out as `SystemError: ... bad argument to internal function`
    with a traceback. The command now says "interrupted" (exit 130) either way."""
    import signal
    import time

    from keras_fastfcn import cli
    from keras_fastfcn.cli import evaluate, interrupts

    def ctrl_c():
        signal.raise_signal(signal.SIGINT)
        time.sleep(1)  # the handler runs here

    def swallowed(args):
        try:
            ctrl_c()
        except KeyboardInterrupt:  # as TensorFlow's C++ code may
            pass
        stop = interrupts.callback()  # the train command's: stops at the next step
        stop.on_train_batch_end(0)
        raise AssertionError("not stopped")

    def mangled(args):
        try:
            ctrl_c()
        except KeyboardInterrupt:
            raise SystemError("Objects/listobject.c:338: bad argument to internal function")

    before = signal.getsignal(signal.SIGINT)
    for run in (swallowed, mangled):
        monkeypatch.setattr(evaluate, "run", run)
        assert cli.main(["evaluate", "--model", "m.keras", "--data", "demo"]) == 130
        assert capsys.readouterr().err.strip() == "keras-fastfcn evaluate: interrupted"
        assert signal.getsignal(signal.SIGINT) is before  # Python's again after it


def test_diverging_loss_stops_and_saves_nothing(tmp_path):
    """lr 1e30 (finite, accepted): the loss turns NaN at step 2. Without a checkpoint
    the run folder goes; no best.keras or model.keras is ever written."""
    out = tmp_path / "run"
    code, _, err = _train(out, "--epochs", "2", "--set", "train.lr=1e30")
    line = _one_error_line(err)
    assert code == 1 and "Training diverged: the loss is nan" in line, err[-2000:]
    assert "nothing of the diverged model was saved" in line and "lower train.lr" in line
    assert not out.exists()


def _folder_dataset(root, label_value):
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for i in range(4):
            base = root / split
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.randint(0, 255, (64, 64, 3), np.uint8)).save(
                base / "images" / f"{i}.png")
            label = rng.randint(0, 3, (64, 64)).astype(np.uint8)
            if split == "train" and i == 2:
                label[5, 5] = label_value
            Image.fromarray(label).save(base / "labels" / f"{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")


@pytest.mark.slow
def test_data_error_mid_run_leaves_no_run_folder(tmp_path):
    """A label value outside the classes, met by the input pipeline during `fit`: one
    line naming the file, and the run folder it created is gone."""
    _folder_dataset(tmp_path / "data", label_value=7)
    out = tmp_path / "run"
    code, _, err = _train(out, "--epochs", "1",
                          data=["--set", f"data.source=folder:{tmp_path}/data"])
    line = _one_error_line(err)
    assert code == 1 and "2.png" in line and "7" in line, err[-2000:]
    assert not out.exists()


@pytest.mark.slow
def test_full_disk_one_line_and_the_last_checkpoint_resumes(tmp_path):
    """A 200 MB disk holds one checkpoint of this model (89 MB) and the best model's
    pending file, not a second checkpoint next to them: the epoch-end checkpoint is
    refused before writing, in one line; the step-2 checkpoint stays and resumes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        out = disk / "run"
        args = ("--epochs", "2", "--set", "train.checkpoint_every=2")
        code, _, err = _train(out, *args)
        line = _one_error_line(err)
        assert code == 1 and "No space left" in line and "ckpt-000000003" in line, err[-2000:]
        assert (out / "backup" / "latest").read_text() == "ckpt-000000002"
        assert not [n for n in _listing(out) if ".tmp" in n], _listing(out)
        moved = tmp_path / "run"
        shutil.copytree(out, moved)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    code, stdout, err = _train(moved, *args)
    assert code == 0, err[-3000:]
    assert "Resuming demo at epoch 1, step 2/3" in stdout
    assert json.loads((moved / "results.json").read_text())["steps"] == 6


def _checkpoint(out, state=None, text=None):
    folder = out / "backup" / "ckpt-000000003"
    folder.mkdir(parents=True)
    (folder / "model.weights.h5").write_bytes(b"\x89HDF")
    (folder / "state.json").write_text(text if text is not None else json.dumps(state))
    (out / "backup" / "latest").write_text("ckpt-000000003")


def _signature(**changes):
    # The demo config's model on the demo source (5 classes).
    sig = {"model.encoder": "resnet50", "model.upsampler": "jpu", "model.width": 64,
           "model.output_stride": None, "model.head": "encnet", "model.aux": True,
           "model.se_loss": True, "num_classes": 5}
    sig.update(changes)
    return sig


STATE = {"epoch": 1, "step_in_epoch": 0, "global_step": 3, "steps_per_epoch": 3,
         "history": [], "best": None, "best_epoch": None}


@pytest.mark.parametrize("state,text,fragment", [
    (None, '{"epoch": 1, "step_in', "state.json is damaged"),
    (None, "[1, 2]", "state.json is damaged"),
    (dict(STATE, steps_per_epoch=None), None, "no integer steps_per_epoch"),
    (dict(STATE, signature=_signature(**{"model.width": 32})), None,
     "another configuration (model.width 32 there, 64 now)"),
    (dict(STATE, signature=_signature(num_classes=11)), None, "num_classes 11 there, 5 now"),
    (dict(STATE, steps_per_epoch=5), None, "5 steps per epoch"),
], ids=["truncated", "not-an-object", "field", "width", "classes", "steps"])
def test_checkpoint_that_cannot_resume_is_refused_before_the_model(
        state, text, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    _checkpoint(out, state, text)
    before = _listing(out)
    code = main(["train", "--config", "demo", "--output-dir", str(out),
                 "--steps-per-epoch", "3"])
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert code == 1 and fragment in line, err
    if "damaged" in fragment or "integer" in fragment:
        assert str(out / "backup") in line and "Remove" in line
    assert _listing(out) == before  # the checkpoint is left for the user to decide


def test_pointer_to_a_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "latest").write_text("ckpt-000000009")
    assert main(["train", "--config", "demo", "--output-dir", str(out)]) == 1
    assert "names the checkpoint 'ckpt-000000009', which has no state.json" in \
        _one_error_line(capsys.readouterr().err)


def test_finished_run_is_refused_unless_overwrite(tmp_path, capsys, tiny_backbone):
    """Running the same command again over a finished run (results.json, no
    checkpoint) is refused in one line before anything is written, naming --overwrite;
    with --overwrite it trains from the start and replaces the run's files."""
    out = tmp_path / "run"
    out.mkdir()
    for name, text in (("results.json", '{"val_mIoU": 0.5}'), ("best.keras", "old"),
                       ("model.keras", "old")):
        (out / name).write_text(text)
    before = _listing(out)
    quick = ["--epochs", "1", "--steps-per-epoch", "1", "--set", "data.options.num_val=2",
             "--set", f"model.encoder={tiny_backbone}", "--set", "data.options.size=64",
             "--set", "data.crop_size=64", "--set", "data.base_size=64",
             "--set", "model.width=16", "--set", "train.batch_size=2"]
    assert main(["train", "--config", "demo", "--output-dir", str(out), *quick]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"{out} holds a finished run" in line and "--overwrite" in line, line
    assert _listing(out) == before and (out / "best.keras").read_text() == "old"

    assert main(["train", "--config", "demo", "--output-dir", str(out), *quick,
                 "--overwrite"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 1 and "val_mIoU" in results
    assert (out / "best.keras").read_bytes()[:2] == b"PK"  # a new .keras (zip) file


def test_folder_in_use_by_another_training_is_refused(tmp_path, capsys):
    """Another process holds the folder's lock: refused in one line naming the lock,
    nothing written. The lock goes with its process, however it ends."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from keras_fastfcn.fileio import FolderLock;"
         f"lock = FolderLock({str(out)!r}, 'a training run').acquire(); print('held', flush=True);"
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _listing(out)
        # (were the lock not held, this would train: one step only)
        assert main(["train", "--config", "demo", "--output-dir", str(out), "--epochs", "1",
                     "--steps-per-epoch", "1", "--set", "data.options.num_val=2"]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"{out} is in use by a training run" in line and str(out / ".lock") in line
        assert f"'pid': {holder.pid}" in line or f'"pid": {holder.pid}' in line, line
        assert _listing(out) == before
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(out, "a training run"):  # free again once its holder is gone
        pass
    assert not (out / ".lock").exists()


def test_backup_removes_only_its_own_older_checkpoints(tmp_path):
    """Checkpoints it did not write (another run's, in the same folder) stay; its own
    older ones, and the one it resumed from, go once a newer one is written."""
    import keras

    from keras_fastfcn.train.callbacks import ResumableBackup

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = tmp_path / "backup"
    for name in ("ckpt-000000004", "ckpt-000000007"):  # 7: another run's
        (backup / name).mkdir(parents=True)
    callback = ResumableBackup(str(backup), save_freq=1, steps_per_epoch=10,
                               resumed_from="ckpt-000000004")
    callback.set_model(model)
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(4)  # step 5
    assert sorted(os.listdir(backup)) == ["ckpt-000000005", "ckpt-000000007", "latest"]
    callback.on_train_batch_end(5)
    assert sorted(os.listdir(backup)) == ["ckpt-000000006", "ckpt-000000007", "latest"]
    state = ResumableBackup.read_state(str(backup))
    assert state["global_step"] == 6 and state["name"] == "ckpt-000000006"
