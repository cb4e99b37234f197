"""The official PyTorch structure (`torch_reference`) timed in the same run: the\nanchor of every speed comparison."""

import os

from keras_fastfcn.benchmark.cpu import cpu_info
from keras_fastfcn.benchmark.timing import _time

TORCH_ENCODERS = {"resnet50": "resnet50s", "resnet101": "resnet101s"}


TORCH_UPSAMPLERS = {"jpu": "JPU", "jpu_x": "JPU_X", "os8": None}


TORCH_PRECISIONS = ("fp32", "bf16")
TORCH_HEADS = ("encnet", "psp", "deeplab", "fcn")


def torch_reference_path():
    """Path of `torch_reference.py` (the official module structure), shipped with the
    package so that an installed copy times it too."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")


def torch_anchor_available(upsampler, precision, flags=None, head=None):
    """Why the official PyTorch structure is not timed for this row, or None.

    Args:
        upsampler: the row's upsampler (the official code has JPU, JPU_X and OS8).
        precision: the row's precision (`fp32`, or `bf16` through `torch.autocast`).
        head: the row's head (None: not checked); a head of your own has no official
            structure to time.
        flags: the CPU's ISA flags (None: read them). Without AVX512_BF16 or AMX-BF16,
            PyTorch emulates bf16 convolutions: on the AVX2 EPYC of this project
            autocast ran EncNet+JPU at 128 px in 48 s against 3.3 s in fp32, which
            would make a 512 px run last hours, so bf16 is not timed there.

    Example:
    >>> torch_anchor_available("os16", "fp32")
    'the official code has no os16 model'
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    if head is not None and head not in TORCH_HEADS:
        return f"the official code has no {head} head"
    if upsampler not in TORCH_UPSAMPLERS:
        return f"the official code has no {upsampler} model"
    if precision not in TORCH_PRECISIONS:
        return f"no PyTorch CPU anchor for {precision}"
    if precision == "bf16":
        flags = set(cpu_info()["all_flags"] if flags is None else flags)
        if not flags & {"avx512_bf16", "amx_bf16"}:
            return "this CPU has no bf16 hardware (AVX512_BF16 / AMX-BF16): PyTorch emulates it"
    return None


def measure_torch(head, encoder, upsampler, size=512, num_classes=59, warmup=3,
                  min_runs=5, min_seconds=10.0, precision="fp32", threads=None):
    """Batch-1 latency of the official FastFCN structure in PyTorch (in this process).

    The model of `torch_reference.py` (the official module tree: deep-stem
    ResNet, JPU / JPU_X or dilated output stride 8, the official heads) in eval mode
    without the auxiliary head, random weights, under `torch.inference_mode`, timed
    with the protocol of `measure_speed`. bf16: `torch.autocast("cpu", torch.bfloat16)`.

    Args:
        head, encoder, upsampler: as `measure_speed` (`resnet50` is timed as the
            official `resnet50s`, the deep-stem variant the paper uses).
        precision: `"fp32"` or `"bf16"`.
        threads: `torch.set_num_threads` (default: the CPUs this process may use, as
            TensorFlow's pool).

    Example:
    >>> measure_torch("encnet", "resnet50", "jpu", size=128,
    ...               min_seconds=1)["latency_s"] > 0  # a benchmark  # doctest: +SKIP
    True
    """
    import importlib.util

    import torch

    why = torch_anchor_available(upsampler, precision, flags=("avx512_bf16",))
    if why:  # bf16 here is timed even where emulated: the caller decides
        raise ValueError(f"Cannot time the official code: {why}.")
    spec = importlib.util.spec_from_file_location("torch_reference",
                                                  torch_reference_path())
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    threads = threads or cpu_info()["cores"]
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = ref.SegmentationModel(head, num_classes, ref.DEPTHS[TORCH_ENCODERS[encoder]],
                                  jpu=TORCH_UPSAMPLERS[upsampler], aux=False,
                                  se_loss=head == "encnet").eval()
    image = torch.rand(1, 3, size, size)  # normalized range, as the official loader gives
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def run():
        with torch.inference_mode(), autocast:
            model(image)[0].float()

    median, fastest, runs = _time(run, warmup, min_runs, min_seconds)
    return {"latency_s": median, "latency_min_s": fastest, "runs": runs,
            "threads": int(threads), "torch_version": torch.__version__}
