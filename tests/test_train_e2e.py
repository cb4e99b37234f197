"""End-to-end training runs in subprocesses (strategies must be set up before TF starts)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(out, *extra):
    # The `keras-fastfcn` command with the small test encoder (tests/tiny_encoder.py):
    # these tests check the training machinery, not ResNet-50.
    return [sys.executable, os.path.join(REPO, "tests", "tiny_encoder.py"), "train",
            "--config", "demo", "--output-dir", str(out), "--set", "train.verbose=2",
            "--set", "model.encoder=tiny_resnet", *extra]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", KERAS_FASTFCN_DEBUG="1")
    env.update(extra)
    return env


SMALL = ["--set", "data.crop_size=64", "--set", "data.base_size=64",
         "--set", "data.options.size=64", "--set", "data.options.num_val=8",
         "--set", "train.batch_size=4"]


def _history(out):
    with open(os.path.join(out, "history.csv")) as f:
        return list(csv.DictReader(f))


def _leftovers(out):
    from keras_fastfcn.fileio import _TEMP

    return [os.path.join(root, name) for root, dirs, files in os.walk(out)
            for name in dirs + files if _TEMP.match(name) or name.endswith(".pending.keras")]


@pytest.mark.slow
def test_kill_at_every_write_phase_then_resume(tmp_path, tiny_backbone):
    """SIGKILL at each write phase of a run, one after the other in the same output
    folder (tests/fault_train.py): mid checkpoint (half-written weights), between a
    checkpoint and the best model's rename, between an epoch's history row and its
    checkpoint, mid final model. Each rerun of the same command resumes; the last one
    ends with the run's step count, one history row per epoch, the best epoch's model
    in best.keras and no temporary file."""
    out = tmp_path / "run"
    args = [sys.executable, os.path.join(REPO, "tests", "fault_train.py"),
            *_cmd(out, "--epochs", "3", "--steps-per-epoch", "4",
                  "--set", "train.checkpoint_every=2", *SMALL)[2:]]
    kills = [r"^ckpt-@2",            # epoch 0's end checkpoint, weights cut in half
             r"^best\.keras$@1",     # after the checkpoint, before best.keras is renamed
             r"^history\.csv$@2",    # epoch 1's row written, its checkpoint not
             r"^model\.keras$@1"]    # the final model
    for kill in kills + [None]:
        env = _env(KERAS_FASTFCN_TEST_KILL=kill) if kill else _env()
        proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=600)
        if kill:
            assert proc.returncode == -signal.SIGKILL, (kill, proc.stdout[-2000:],
                                                        proc.stderr[-3000:])
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming demo" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 * 4, results
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2], rows
    assert _leftovers(out) == [] and not (out / "backup").exists()

    # best.keras is the model of the best epoch on record: its validation score, computed
    # again here, is the best val_score of history.csv.
    import keras

    import keras_fastfcn  # noqa: F401
    from keras_fastfcn import data, train

    cfg = train.load_config("demo", ["data.crop_size=64", "data.base_size=64",
                                     "data.options.size=64", "data.options.num_val=8",
                                     "train.batch_size=4"])
    source = data.get_source("demo", **cfg["data"]["options"])
    _, val_ds = train.datasets(cfg, source, 4)
    best = keras.models.load_model(out / "best.keras")
    logs = best.evaluate(val_ds, verbose=0, return_dict=True)
    score = (logs["pixel_accuracy"] + logs["mean_iou"]) / 2
    assert score == pytest.approx(max(float(r["val_score"]) for r in rows), abs=1e-4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiworker_two_processes(tmp_path):
    out = tmp_path / "run"
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            _cmd(out, "--strategy", "multiworker", "--epochs", "1", "--steps-per-epoch", "3",
                 *SMALL),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(TF_CONFIG=tf_config), cwd=REPO))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
        assert "CollectiveAllReduceStrategy (2 replica(s))" in log
        assert "BatchNorm synchronized across 2 replicas" in log  # the official SyncBN
        assert "3/3" in log
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3
    assert (out / "model.keras").is_file()


def test_train_cli_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 1\n")
    proc = subprocess.run([sys.executable, "-m", "keras_fastfcn", "train", "--config", str(bad)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                          cwd=REPO, timeout=300)
    assert proc.returncode == 1
    assert "unknown config key 'train.epochz'" in proc.stderr
    assert "Traceback" not in proc.stderr
