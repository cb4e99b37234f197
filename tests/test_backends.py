"""The layers and models use keras.ops only: they must run on Keras' other backends."""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import JAX_QUICK_COMPILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import numpy as np, keras, keras_fastfcn as kf
from keras_fastfcn.models import registry
from keras_fastfcn.models.encoders import build_resnet_deepstem
assert keras.backend.backend() == BACKEND, keras.backend.backend()
# One block per stage: every layer type of the deep-stem ResNet, a fraction of the graph.
registry.register_encoder("tiny", lambda output_stride, weights: build_resnet_deepstem(
    (1, 1, 1, 1), output_stride, weights, name=f"tiny_os{output_stride}"), "torch")
x = np.random.RandomState(0).uniform(0, 255, (1, 72, 56, 3)).astype("float32")
# Every head once and every upsampler once (heads and upsamplers meet only through a
# channel count; all 12 pairs doubled the eager JAX run, 100 s of CI).
pairs = [(head, "jpu") for head in ("encnet", "psp", "deeplab", "fcn")]
for head, up in pairs + [("encnet", "jpu_x"), ("psp", None)]:
    model = kf.FastFCN(num_classes=3, head=head, backbone="tiny", upsampler=up,
                       jpu_width=64, aux=True, se_loss=head == "encnet")
    out = model(x, training=False)
    assert tuple(out.shape) == (1, 72, 56, 3), (head, up)
    assert np.isfinite(keras.ops.convert_to_numpy(out)).all()
    train = model(x, training=True)
    assert set(train) == {"logits", "aux_logits"} | ({"se_logits"} if head == "encnet" else set())
# Masks of another size are named (JAX and PyTorch compute the metrics before the loss).
model.compile()
try:
    model.fit(x, np.zeros((1, 36, 28), "int32"), epochs=1, verbose=0)
    raise AssertionError("masks of another size were accepted")
except ValueError as err:
    assert "masks are 36x28 but the images are 72x56" in str(err), err
for encoder in ("resnet50", "resnet50s"):  # keras.applications and the official ResNet
    deep = kf.FastFCN(num_classes=3, head="fcn", backbone=encoder, upsampler=None)
    assert tuple(deep(x).shape) == (1, 72, 56, 3)
print("OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend,module", [("torch", "torch"), ("jax", "jax")])
def test_models_run_on_other_backends(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (only the Keras {backend} backend needs it)")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO)
    if backend == "jax":
        env.update(JAX_QUICK_COMPILE)  # shapes and finiteness only
    proc = subprocess.run([sys.executable, "-c", f"BACKEND = {backend!r}\n" + SCRIPT],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
