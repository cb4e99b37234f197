"""The layers and models use keras.ops only: they must run on Keras' other backends."""

import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import numpy as np, keras, keras_fastfcn as kf
assert keras.backend.backend() == BACKEND, keras.backend.backend()
x = np.random.RandomState(0).uniform(0, 255, (1, 72, 56, 3)).astype("float32")
for head in ("encnet", "psp", "deeplab", "fcn"):
    for up in ("jpu", "jpu_x", None):
        model = kf.FastFCN(num_classes=3, head=head, upsampler=up, jpu_width=64,
                           aux=True, se_loss=head == "encnet")
        out = model(x, training=False)
        assert tuple(out["logits"].shape) == (1, 72, 56, 3), (head, up)
        assert np.isfinite(keras.ops.convert_to_numpy(out["logits"])).all()
deep = kf.FastFCN(num_classes=3, head="fcn", backbone="resnet50s", upsampler=None)
assert tuple(deep(x).shape) == (1, 72, 56, 3)
print("OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend,module", [("torch", "torch"), ("jax", "jax")])
def test_models_run_on_other_backends(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (only the Keras {backend} backend needs it)")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", f"BACKEND = {backend!r}\n" + SCRIPT],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
