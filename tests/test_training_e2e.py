"""End-to-end training runs in subprocesses (strategies must be set up before TF starts)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(out, *extra):
    return [sys.executable, "-m", "keras_fastfcn", "train", "--config", "demo",
            "--output-dir", str(out), "--set", "train.verbose=2", *extra]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", KERAS_FASTFCN_DEBUG="1")
    env.update(extra)
    return env


def _history(out):
    with open(os.path.join(out, "history.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_mirrored_two_cpu_devices_learns_demo(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(_cmd(out, "--strategy", "mirrored", "--cpu-devices", "2",
                               "--epochs", "4", "--steps-per-epoch", "20"),
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy (2 replica(s))" in proc.stdout
    losses = [float(row["loss"]) for row in _history(out)]
    assert losses[-1] < 0.6 * losses[0], losses
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 80
    # Chance level: predicting background everywhere gives mIoU 0.17 on the demo set.
    assert results["val_mIoU"] > 0.4, results
    assert (out / "model.keras").is_file() and (out / "best.keras").is_file()
    assert not (out / "backup").exists()


def _state(out):
    pointer = os.path.join(out, "backup", "latest")
    try:
        with open(pointer) as f:
            folder = f.read().strip()
        with open(os.path.join(out, "backup", folder, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    out = tmp_path / "run"
    args = _cmd(out, "--epochs", "3", "--steps-per-epoch", "8", "--set", "train.checkpoint_every=3")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), cwd=REPO)
    deadline = time.time() + 600
    state = None
    while time.time() < deadline and proc.poll() is None:
        state = _state(out)
        if state and state["epoch"] >= 1 and state["step_in_epoch"] > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = _state(out)
    assert state["step_in_epoch"] > 0, state
    killed_at = state["global_step"]

    resumed = subprocess.run(args, capture_output=True, text=True, env=_env(), cwd=REPO,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming demo at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}/8" \
        in resumed.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 * 8, results  # the same number of steps as one run
    # The resumed run only did the remaining steps (the optimizer's counter was restored).
    assert killed_at < 24
    epochs_logged = [int(row["epoch"]) for row in _history(out)]
    assert epochs_logged[-1] == 2


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
                 "--set", "train.batch_size=4"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(TF_CONFIG=tf_config), cwd=REPO))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
        assert "CollectiveAllReduceStrategy (2 replica(s))" in log
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
