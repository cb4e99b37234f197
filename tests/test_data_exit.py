"""A data error must not leave the process hanging at exit.

TensorFlow destroys a live parallel-map iterator during interpreter finalization and
waits for its Python calls in flight, which Python stops there (see
`keras_fastfcn.data.exit_guard`). Before the guard, 5 of 6 such runs hung for good.
Each case runs twice in its own process: a hang shows as a timeout.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from keras_fastfcn.data import exit_guard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    from keras_fastfcn.data.sources.files import FileSource
    root, mode = sys.argv[1], sys.argv[2]
    pairs = [(f"{root}/{i}.png", f"{root}/{i}_label.png") for i in range(4)] * 50
    it = iter(FileSource("x", {"train": pairs}, num_classes=3)
              .dataset("train").batch(2).prefetch(2))
    if mode == "uncaught":
        for _ in it:
            pass
    try:
        for _ in it:
            pass
    except Exception as err:
        print("caught", type(err).__name__, flush=True)
""")


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_labels")
    rng = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rng.randint(0, 255, (32, 32, 3), np.uint8)).save(root / f"{i}.png")
        label = rng.randint(0, 3, (32, 32)).astype(np.uint8)
        label[3, 3] = 7 if i == 2 else label[3, 3]  # not a class id
        Image.fromarray(label).save(root / f"{i}_label.png")
    (root / "run.py").write_text(SCRIPT)
    return root


@pytest.mark.parametrize("mode", ["uncaught", "caught_iterator_kept_global"])
def test_a_data_error_ends_the_process(bad_folder, mode):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    for _ in range(2):
        try:
            proc = subprocess.run([sys.executable, str(bad_folder / "run.py"),
                                   str(bad_folder), mode],
                                  capture_output=True, text=True, env=env, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{mode}: the process hung at exit after the data error")
        if mode == "uncaught":
            assert proc.returncode == 1 and "2_label.png" in proc.stderr, proc.stderr[-2000:]
        else:
            assert proc.returncode == 0 and "caught InvalidArgumentError" in proc.stdout, \
                proc.stderr[-2000:]


def test_guarded_counts_calls_and_the_release_returns_when_idle():
    seen = []
    fn = exit_guard.guarded(lambda x: seen.append(exit_guard.in_flight()) or x + 1)
    assert fn(1) == 2 and seen == [1] and exit_guard.in_flight() == 0
    assert exit_guard.release_pipelines(timeout=2.0) is True
