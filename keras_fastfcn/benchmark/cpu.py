"""This CPU: model, ISA flags, cores, clock, and its peak GFLOP/s per precision."""

import os
import platform
import subprocess

from keras_fastfcn.precision import KERAS_PRECISIONS

# The precisions of the benchmark's rows, each with a peak (`flops_per_cycle`).
BENCHMARK_PRECISIONS = KERAS_PRECISIONS + ("int8",)  # int8: the exports (`timing`)
# Peak FLOP per cycle and core, from the widest FMA each ISA extension gives. An FMA
# counts 2 FLOPs; x86 server cores since Haswell issue 2 FMAs per cycle (AVX-512 on
# Xeon Gold/Platinum: 2 units; some Xeon Silver/Bronze have 1, AMD Zen 4 runs AVX-512
# on 256-bit units: for those the fp32 figure is an upper bound).
#   fp32: AVX-512 2 x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; SSE (mul + add) 16.
#   bf16: AMX-BF16 1024 (a 16x32 tile op per 16 cycles: 16*16*32*2/16);
#         AVX512_BF16 128 (VDPBF16PS: 2 x 32 products x 2).
#   fp16: AMX-FP16 1024; AVX512_FP16 128 (2 x 32 lanes x 2).
#   int8 (integer multiply-adds, counted as FLOPs are): AMX-INT8 2048 (a 16x64 tile op
#         per 16 cycles); AVX512_VNNI 256 (VPDPBUSD: 2 x 64 products x 2); AVX-VNNI 128;
#         without VNNI twice the fp32 figure (VPMADDUBSW + VPMADDWD: an upper bound).
_FP32_FLOPS = (("avx512f", 64), ("avx2", 32))


_PEAK_LOW = {"bf16": (("amx_bf16", 1024), ("avx512_bf16", 128)),
             "fp16": (("amx_fp16", 1024), ("avx512_fp16", 128)),
             "int8": (("amx_int8", 2048), ("avx512_vnni", 256), ("avx_vnni", 128))}


def flops_per_cycle(flags, precision="fp32"):
    """Peak FLOP/cycle/core of a CPU with ISA `flags` in `precision`.

    fp32: AVX-512 (2 FMA units) 64, AVX2 with FMA 32, else 16. bf16: AMX-BF16 1024,
    AVX512_BF16 128, else the fp32 figure (TensorFlow then converts bf16 to fp32 and
    computes in fp32). fp16: AMX-FP16 1024, AVX512_FP16 128, else the fp32 figure.
    int8 (integer operations): AMX-INT8 2048, AVX512_VNNI 256, AVX-VNNI 128, else twice
    the fp32 figure.

    Args:
        flags: the CPU's flags as in `/proc/cpuinfo` (`avx2`, `fma`, `avx512f`,
            `amx_bf16`, ...), any iterable of strings.
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.

    Example:
    >>> flops_per_cycle({"avx2", "fma"}, "bf16")
    32
    """
    flags = {f.lower() for f in flags}
    if precision not in BENCHMARK_PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: expected one of "
                         f"{list(BENCHMARK_PRECISIONS)}.")
    fp32 = 16
    for flag, value in _FP32_FLOPS:
        if flag in flags and (flag != "avx2" or "fma" in flags):
            fp32 = value
            break
    for flag, value in _PEAK_LOW.get(precision, ()):
        if flag in flags:
            return value
    return 2 * fp32 if precision == "int8" else fp32


def cpu_info():
    """This CPU's model name, ISA flags, cores and clock, for the peak and the results.

    Cores: the CPUs this process may run on (what TensorFlow sizes its thread pool to).
    Clock: `lscpu`'s "CPU max MHz" (the turbo limit), else the first "cpu MHz" of
    `/proc/cpuinfo` (what a virtual machine reports; the nominal clock).

    Returns:
        A dict: `model`, `flags` (the SIMD/AMX ones, sorted), `cores`, `mhz`,
        `mhz_source`, and `all_flags` (every flag, for `flops_per_cycle`).

    Example:
    >>> cpu_info()["cores"] >= 1
    True
    """
    model, flags, mhz, source = platform.processor() or platform.machine(), [], None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not flags:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                elif key == "cpu MHz" and mhz is None:
                    mhz, source = float(value), "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError):
        pass
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "CPU max MHz" and float(value) > 0:
                mhz, source = float(value), "lscpu CPU max MHz"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")) or f == "f16c")
    return {"model": model, "flags": isa, "cores": int(cores or 1), "mhz": mhz,
            "mhz_source": source, "all_flags": flags}


def peak_gflops(precision, info=None):
    """This CPU's peak GFLOP/s in `precision`: cores x clock (GHz) x `flops_per_cycle`.

    Args:
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.
        info: `cpu_info()` (or a dict with `cores`, `mhz`, `all_flags`); None reads it.

    Returns:
        The peak, or None where the clock is unknown.

    Example:
    >>> round(peak_gflops("fp32", {"cores": 2, "mhz": 2445.4, "all_flags": ["avx2", "fma"]}), 1)
    156.5
    """
    info = cpu_info() if info is None else info
    if not info.get("mhz"):
        return None
    return info["cores"] * info["mhz"] / 1000.0 * flops_per_cycle(
        info.get("all_flags") or info.get("flags", ()), precision)


def _vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def machine_description():
    """One line naming this machine, its Python, TensorFlow and Keras (the results' key
    for `--resume`; the CPU's flags and peak are in `cpu_info`).

    Example:
    >>> "TensorFlow" in machine_description()
    True
    """
    import keras
    import tensorflow as tf

    cpu = cpu_info()["model"]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, backend "
            f"{keras.backend.backend()}")
