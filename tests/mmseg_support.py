"""mmsegmentation for the tests that compare with it: importing it without OpenCV and
mmcv's compiled ops, its FastFCN models from its own configs, and mmcv's resize.

- `import_mmseg()`: `mmseg` and what the tests use of it, or a skip that says what to
  install. Importing `mmseg` imports `mmcv`, whose package `__init__` imports OpenCV
  (`cv2`, for image I/O), and `mmseg.utils` imports `mmcv.ops` (compiled CUDA/C++ ops
  that mmcv-lite, the only mmcv installable without a compiler, lacks). The modules
  compared (ResNetV1c, JPU, the heads, the data preprocessor, the test transforms,
  `SegTTAModel`) call neither, so missing ones are stubbed during the import and
  removed afterwards.
- `mmseg_model(lib, config)`: a FastFCN model built by mmsegmentation from its config,
  with random weights and BatchNorm statistics, in eval mode.
- `float_cv2_resize(lib)`: mmcv's `Resize` transform (`mmcv.imrescale` ->
  `mmcv.imresize`) with `cv2.resize` played by PyTorch's bilinear resize
  (`align_corners=False`, no antialiasing): OpenCV's `INTER_LINEAR` on a float32 image.
  The sizes are mmcv's own computation; only the pixel kernel is substituted.
"""

import contextlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

MMSEG_INSTALL = ("pip install --no-deps mmengine==0.10.7 mmcv-lite==2.1.0 "
                 "mmsegmentation==1.2.2 addict yapf platformdirs ftfy regex wcwidth "
                 "(or pip install -e '.[mmseg]')")


class _Stub(types.ModuleType):
    """A module whose every attribute is 0: stands in, during mmsegmentation's import
    only, for what its model code imports but never calls."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return 0


def import_mmseg():
    """mmsegmentation's registries, config loader and config folder (module docstring),
    or `pytest.skip` naming what to install."""
    missing = [n for n in ("mmseg", "mmengine", "mmcv", "torch")
               if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"the mmsegmentation comparisons need {missing}: {MMSEG_INSTALL}")
    stubs = []
    if importlib.util.find_spec("cv2") is None:
        sys.modules["cv2"] = _Stub("cv2")
        stubs.append("cv2")
    if importlib.util.find_spec("mmcv._ext") is None:
        sys.modules["mmcv.ops"] = _Stub("mmcv.ops")
        stubs.append("mmcv.ops")
    try:
        import mmcv.image.geometric as geometric
        import mmseg
        import mmseg.datasets  # noqa: F401  (registers the transforms)
        import mmseg.models  # noqa: F401  (registers the models)
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmseg.models.segmentors import SegTTAModel
        from mmseg.registry import MODELS, TRANSFORMS
    except ImportError as err:
        pytest.skip(f"mmsegmentation does not import ({err}): {MMSEG_INSTALL}")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    init_default_scope("mmseg")
    configs = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    if not os.path.isdir(os.path.join(configs, "fastfcn")):
        pytest.skip(f"mmsegmentation's configs are not installed ({configs})")
    return types.SimpleNamespace(Config=Config, MODELS=MODELS, TRANSFORMS=TRANSFORMS,
                                 SegTTAModel=SegTTAModel, configs=configs,
                                 geometric=geometric)


def load_config(lib, name):
    """mmsegmentation's config `configs/NAME.py` (e.g. `"fastfcn/fastfcn_r50-d32_jpu_psp_
    4xb2-80k_cityscapes-512x1024"`, `"_base_/datasets/ade20k"`)."""
    return lib.Config.fromfile(os.path.join(lib.configs, name + ".py"))


def mmseg_model(lib, config, seed=0):
    """mmsegmentation's model of the FastFCN `config` (a name under `configs/fastfcn/`),
    random weights and BatchNorm statistics, in eval mode (SyncBN runs as BN there)."""
    import torch

    # A ConfigDict, not `.to_dict()`: the model reads `test_cfg.mode` as an attribute.
    model_cfg = load_config(lib, "fastfcn/" + config).model
    model_cfg.pop("pretrained", None)  # an ImageNet download, on init_weights() only
    torch.manual_seed(seed)
    model = lib.MODELS.build(model_cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.uniform_(-0.2, 0.2, generator=gen)
                module.running_mean.uniform_(-0.2, 0.2, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
    return model.eval()


class _TorchCv2:
    """The one `cv2` function mmcv's resize calls, on float32 images."""

    @staticmethod
    def resize(img, size, dst=None, interpolation=None):
        import torch

        assert img.dtype == np.float32, "substituted for float32 images only"
        width, height = size
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        out = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                              align_corners=False)
        return out[0].permute(1, 2, 0).numpy()


@contextlib.contextmanager
def float_cv2_resize(lib):
    """mmcv's resize with `cv2.resize` played by PyTorch (module docstring)."""
    saved = lib.geometric.cv2
    lib.geometric.cv2 = _TorchCv2()
    try:
        yield
    finally:
        lib.geometric.cv2 = saved


def mmseg_state_dict(model, seed=0):
    """An mmsegmentation state dict (numpy, PyTorch layouts) for the keras_fastfcn
    `model` (`convert.mmseg.build_mmseg_segmenter`), made from the converter's key
    mapping with random values, with the `num_batches_tracked` buffers PyTorch has."""
    from keras_fastfcn.convert import mmseg as mmseg_convert

    rng = np.random.RandomState(seed)
    state = {}
    for key, variable, layout in mmseg_convert.mmseg_weight_mapping(model):
        shape = tuple(variable.shape)
        if layout == "conv":
            shape = (shape[3], shape[2], shape[0], shape[1])
        elif layout == "depthwise":
            shape = (shape[2], shape[3], shape[0], shape[1])
        elif layout == "dense":
            shape = shape[::-1]
        state[key] = rng.uniform(0.5, 1.5, shape).astype("float32")
        if key.endswith(".running_var"):
            state[key[:-len("running_var")] + "num_batches_tracked"] = np.array(7)
    return state
