"""This CPU: model, ISA flags, cores, clock, and its peak GFLOP/s per precision."""

import collections
import os
import platform
import subprocess

from keras_fastfcn.precision import KERAS_PRECISIONS

# The precisions of the benchmark's rows, each with a peak (`flops_per_cycle`).
BENCHMARK_PRECISIONS = KERAS_PRECISIONS + ("int8",)  # int8: the exports (`timing`)

# Peak FLOP per cycle and core of each ISA extension, for a core that issues 2 FMAs per
# cycle at the extension's full width (Intel server cores since Haswell; an FMA counts 2
# FLOPs), from the Intel 64 and IA-32 Architectures Optimization Reference Manual:
#   fp32: AVX-512 2 x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; without FMA (SSE/AVX
#         mul + add) 16.
#   bf16: AMX-BF16 1024 (TDPBF16PS: a 16x16x32 tile product, 16*16*32*2 FLOPs, one per
#         16 cycles); AVX512_BF16 128 (VDPBF16PS: 2 x 32 products x 2).
#   fp16: AMX-FP16 1024 (as AMX-BF16); AVX512_FP16 128 (2 x 32 lanes x 2).
#   int8 (integer multiply-adds, counted as FLOPs are): AMX-INT8 2048 (TDPBUSD: a
#         16x16x64 tile product per 16 cycles); AVX512_VNNI 256 (VPDPBUSD: 2 x 64
#         products x 2); AVX-VNNI 128; without VNNI twice the fp32 figure
#         (VPMADDUBSW + VPMADDWD: an upper bound).
# A microarchitecture whose units differ overrides some of these (`MICROARCHITECTURES`);
# a CPU that is in no row of that table gets these figures (an upper bound where a core
# has one 512-bit FMA unit: Xeon Bronze/Silver, some Gold 5xxx, Ice/Tiger Lake clients).
_UNITS = {"avx512f": 64, "avx2": 32, "amx_bf16": 1024, "avx512_bf16": 128, "amx_fp16": 1024,
          "avx512_fp16": 128, "amx_int8": 2048, "avx512_vnni": 256, "avx_vnni": 128}
_PRECISION_UNITS = {"fp32": ("avx512f", "avx2"), "bf16": ("amx_bf16", "avx512_bf16"),
                    "fp16": ("amx_fp16", "avx512_fp16"),
                    "int8": ("amx_int8", "avx512_vnni", "avx_vnni")}
_NO_FMA = 16  # SSE / AVX without FMA: a 4- or 8-lane mul and add per cycle

# AMD's FP units, from the Software Optimization Guides for AMD Family 17h (pub. 55723),
# 19h (56665) and 1Ah (58455) Processors: Zen / Zen+ have two 128-bit FMA pipes (a 256-bit
# op takes both: fp32 2 x 4 x 2 = 16); Zen 2 / Zen 3 two 256-bit FMA pipes (32, the
# default's AVX2 figure); Zen 4 runs AVX-512 as two 256-bit halves on those pipes (one
# 512-bit FMA per cycle: 32; VDPBF16PS 64; VPDPBUSD 128, as A. Yee's Zen 4 AVX-512
# teardown measured, numberworld.org 2022); Zen 5 on EPYC 9005 / Ryzen 9000 has a full
# 512-bit datapath (the default's AVX-512 figures, numberworld.org 2024), Zen 5 in
# Strix Point runs 512-bit ops on 256-bit units like Zen 4.
_ZEN1 = {"avx2": 16}
_ZEN4 = {"avx512f": 32, "avx512_bf16": 64, "avx512_vnni": 128}
_ZEN5_256 = dict(_ZEN4, avx_vnni=128)

Microarchitecture = collections.namedtuple(
    "Microarchitecture", "name vendor family models units server_mhz boost_mhz")
Microarchitecture.__doc__ = """One row of `MICROARCHITECTURES`.

name: what the results print; vendor, family: `/proc/cpuinfo`'s `vendor_id` and `cpu
family`; models: ranges (first, last) of its `model`; units: the FLOP/cycle/core that
differ from the Intel 2-FMA figures (`_UNITS`); server_mhz: the highest boost clock of
its Xeon / EPYC parts, boost_mhz: of all its parts (the peak's clock where the OS
reports only the nominal one: `peak_clock`)."""

_AMD, _INTEL = "AuthenticAMD", "GenuineIntel"
# Family/model ranges: Linux's arch/x86/kernel/cpu/amd.c (bsp_init_amd, the Zen
# generations) and arch/x86/include/asm/intel-family.h. Boost clocks: the vendors'
# product pages (ark.intel.com, amd.com), the part named in the comment; where no part
# of a range has been checked the figure is an assumption, said so.
MICROARCHITECTURES = (
    # Xeon W-2295 / Core i9-10980XE: 4.8 GHz (Turbo Boost Max 3.0); Xeon Scalable 1st-3rd
    # gen (Skylake-SP, Cascade Lake, Cooper Lake: stepping tells them apart) up to 4.5.
    Microarchitecture("Intel Skylake-SP / Cascade Lake / Cooper Lake", _INTEL, 6,
                      ((0x55, 0x55),), {}, 4800, 4800),
    # Xeon W-3375 / W-3345: 4.0 GHz; Xeon Scalable 3rd gen up to 3.7.
    Microarchitecture("Intel Ice Lake-SP", _INTEL, 6, ((0x6A, 0x6A), (0x6C, 0x6C)), {},
                      4000, 4000),
    # Xeon w9-3495X: 4.8 GHz (Turbo Boost Max 3.0); Xeon Scalable 4th gen up to 4.2.
    Microarchitecture("Intel Sapphire Rapids (AMX)", _INTEL, 6, ((0x8F, 0x8F),), {},
                      4800, 4800),
    # Xeon Gold 6544Y: 4.1 GHz.
    Microarchitecture("Intel Emerald Rapids (AMX)", _INTEL, 6, ((0xCF, 0xCF),), {},
                      4100, 4100),
    # Xeon 6 P-core (AMX-FP16): 4.8 GHz is an assumption (the 6900P parts turbo to 3.9;
    # the workstation parts' clocks were not checked).
    Microarchitecture("Intel Granite Rapids (AMX-FP16)", _INTEL, 6,
                      ((0xAD, 0xAE),), {}, 4800, 4800),
    # EPYC 7371: 3.8 GHz; Ryzen 7 2700X: 4.3.
    Microarchitecture("AMD Zen / Zen+", _AMD, 0x17, ((0x00, 0x2F), (0x50, 0x5F)), _ZEN1,
                      3800, 4300),
    # EPYC 7F32: 3.9 GHz; Ryzen 9 3950X: 4.7.
    Microarchitecture("AMD Zen 2", _AMD, 0x17, ((0x30, 0x4F), (0x60, 0x7F), (0x90, 0x91),
                                                (0xA0, 0xAF)), {}, 3900, 4700),
    # EPYC 72F3: 4.1 GHz; Ryzen 9 5950X: 4.9.
    Microarchitecture("AMD Zen 3", _AMD, 0x19, ((0x00, 0x0F), (0x20, 0x5F)), {}, 4100, 4900),
    # Genoa, Bergamo, Siena, Storm Peak: EPYC 9174F 4.4 GHz; Threadripper 7960X 5.3.
    Microarchitecture("AMD Zen 4", _AMD, 0x19, ((0x10, 0x1F), (0xA0, 0xAF)), _ZEN4,
                      4400, 5300),
    # Raphael, Phoenix (also EPYC 4004): Ryzen 9 7950X and EPYC 4584PX 5.7 GHz.
    Microarchitecture("AMD Zen 4 (client die)", _AMD, 0x19, ((0x60, 0x7F),), _ZEN4,
                      5700, 5700),
    # Turin (EPYC 9005), Shimada Peak, Strix Halo: EPYC 9575F 5.0 GHz; Threadripper 9980X
    # 5.4. 512-bit datapath on Strix Halo: an assumption.
    Microarchitecture("AMD Zen 5", _AMD, 0x1A, ((0x00, 0x1F), (0x70, 0x7F)), {}, 5000, 5400),
    # Granite Ridge (also EPYC 4005): Ryzen 9 9950X 5.7 GHz.
    Microarchitecture("AMD Zen 5 (client die)", _AMD, 0x1A, ((0x40, 0x4F),), {}, 5700, 5700),
    # Strix Point (Ryzen AI 9 HX 370: 5.1 GHz), Krackan Point: 256-bit units (Krackan's:
    # an assumption).
    Microarchitecture("AMD Zen 5 (256-bit datapath)", _AMD, 0x1A, ((0x20, 0x2F),
                                                                   (0x60, 0x6F)),
                      _ZEN5_256, 5100, 5100),
)
_BY_NAME = {arch.name: arch for arch in MICROARCHITECTURES}
# Records written without family/model (results files of 0.3 and older): the row their
# vendor and ISA flags leave, the one with the higher peak where several fit (so that
# the share of peak is a lower bound): (vendor, flags it needs, flags it must not have).
_GUESSES = ((_INTEL, {"amx_fp16"}, set(), "Intel Granite Rapids (AMX-FP16)"),
            (_INTEL, {"amx_bf16"}, set(), "Intel Sapphire Rapids (AMX)"),
            (_INTEL, {"avx512f"}, set(), "Intel Skylake-SP / Cascade Lake / Cooper Lake"),
            (_AMD, {"avx512f", "avx_vnni"}, set(), "AMD Zen 5"),
            (_AMD, {"avx512f"}, set(), "AMD Zen 4"),
            (_AMD, {"avx2"}, {"avx512f"}, "AMD Zen 3"))
# Where the clock comes from: a maximum (these sources) or the nominal clock.
_MAX_CLOCK_SOURCES = ("cpufreq cpuinfo_max_freq", "lscpu CPU max MHz")
NOMINAL_SOURCE = "/proc/cpuinfo cpu MHz"


def _vendor(info):
    vendor = info.get("vendor")
    if vendor:
        return vendor
    name = (info.get("model") or "").lower()
    return _AMD if "amd" in name else _INTEL if "intel" in name else None


def _matches(arch, info):
    model = info.get("model_number")
    return ((arch.vendor, arch.family) == (_vendor(info), info.get("family"))
            and model is not None and any(low <= model <= high for low, high in arch.models))


def microarchitecture(info):
    """The row of `MICROARCHITECTURES` of a CPU, or None for one the table lacks.

    Matched on vendor, family and model; a record without them (results files of 0.3
    and older) or with a model the table lacks is matched on its vendor (else from the
    model name) and ISA flags, to the row with the higher peak where several fit.

    Args:
        info: `cpu_info()`, or a dict with some of `vendor`, `family`, `model_number`,
            `model` (the name) and `all_flags` / `flags`.

    Example:
    >>> microarchitecture({"vendor": "AuthenticAMD", "family": 25, "model_number": 17}).name
    'AMD Zen 4'
    """
    vendor = _vendor(info)
    for arch in MICROARCHITECTURES:
        if _matches(arch, info):
            return arch
    # A hypervisor may report a model of another generation (the AMX KVM guest of
    # benchmarks/results/xeon_amx.json is labelled family 6, model 167, a Rocket Lake
    # number): the flags then tell.
    flags = {f.lower() for f in info.get("all_flags") or info.get("flags") or ()}
    for guess_vendor, needs, excludes, name in _GUESSES:
        if vendor == guess_vendor and needs <= flags and not excludes & flags:
            return _BY_NAME[name]
    return None


def flops_per_cycle(flags, precision="fp32", arch=None):
    """Peak FLOP/cycle/core in `precision` of a CPU with ISA `flags`.

    The fastest unit the flags offer for the precision, at the microarchitecture's
    throughput (`arch`; None: 2 full-width FMA units, Intel's server cores).
    fp32: AVX-512 64, AVX2 with FMA 32, else 16. bf16: AMX-BF16 1024, AVX512_BF16 128,
    else the fp32 figure (TensorFlow then converts bf16 to fp32 and computes in fp32).
    fp16: AMX-FP16 1024, AVX512_FP16 128, else the fp32 figure. int8 (integer
    operations): AMX-INT8 2048, AVX512_VNNI 256, AVX-VNNI 128, else twice the fp32
    figure. AMD Zen 4 (AVX-512 on 256-bit units): fp32 32, bf16 64, int8 128; Zen / Zen+:
    fp32 16.

    Args:
        flags: the CPU's flags as in `/proc/cpuinfo` (`avx2`, `fma`, `avx512f`,
            `amx_bf16`, ...), any iterable of strings.
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.
        arch: a `Microarchitecture` (`microarchitecture(cpu_info())`), or None.

    Example:
    >>> flops_per_cycle({"avx2", "fma"}, "bf16")
    32
    >>> flops_per_cycle({"avx2", "fma", "avx512f"}, "fp32",
    ...                 microarchitecture({"vendor": "AuthenticAMD", "family": 25,
    ...                                    "model_number": 17}))
    32
    """
    flags = {f.lower() for f in flags}
    if precision not in BENCHMARK_PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: expected one of "
                         f"{list(BENCHMARK_PRECISIONS)}.")
    units = dict(_UNITS, **(arch.units if arch is not None else {}))
    # FMA comes with AVX2 on every x86 core but a few VIA/Zhaoxin ones: without it
    # AVX2 multiplies and adds apart, as SSE does.
    have = {f for f in flags if f != "avx2" or "fma" in flags}
    fp32 = max([units[f] for f in _PRECISION_UNITS["fp32"] if f in have], default=_NO_FMA)
    if precision == "fp32":
        return fp32
    low = max([units[f] for f in _PRECISION_UNITS[precision] if f in have], default=0)
    return low or (2 * fp32 if precision == "int8" else fp32)


def peak_clock(info):
    """The clock of the peak (MHz) and where it comes from.

    A maximum the OS reports (cpufreq's `cpuinfo_max_freq`, `lscpu`'s "CPU max MHz")
    as it is. Where only the nominal clock is known (a virtual machine's `/proc/cpuinfo`
    "cpu MHz"), the highest boost clock of the microarchitecture's parts (of its Xeon /
    EPYC parts for a CPU so named): the cores may run that fast, so the share of peak
    is a lower bound, never above 100%. For a CPU the table lacks, the nominal clock
    (the share of peak may then exceed 100%, which the source says).

    Args:
        info: `cpu_info()`, or a dict with `mhz`, `mhz_source` and what
            `microarchitecture` reads.

    Returns:
        `(mhz, source)`; `mhz` None where no clock is known.

    Example:
    >>> peak_clock({"vendor": "AuthenticAMD", "family": 25, "model_number": 17,
    ...             "model": "AMD EPYC", "mhz": 2596.1, "mhz_source": "/proc/cpuinfo cpu MHz"})[0]
    4400.0
    """
    mhz, source = info.get("mhz"), info.get("mhz_source")
    if source in _MAX_CLOCK_SOURCES or not mhz:
        return mhz, source
    if source != NOMINAL_SOURCE:  # chosen by an earlier `peak_clock`: kept
        return mhz, source
    arch = microarchitecture(info)
    if arch is None:
        return mhz, (f"{source}, the nominal clock: a turbo clock above it can take "
                     "a row over 100% of this peak")
    name = (info.get("model") or "").lower()
    server = "EPYC" if "epyc" in name else "Xeon" if "xeon" in name else ""
    boost = float(arch.server_mhz if server else arch.boost_mhz)
    if boost <= mhz:
        return mhz, source
    return boost, (f"the highest boost clock of the {arch.name} {server} parts, assumed: "
                   f"{source} {mhz:.0f} is the nominal clock").replace("  ", " ")


def cpu_info():
    """This CPU's model name, vendor, family/model, ISA flags, cores and clock, for the
    peak and the results.

    Cores: the CPUs this process may run on (what TensorFlow sizes its thread pool to).
    Clock (`peak_clock`): cpufreq's `cpuinfo_max_freq` or `lscpu`'s "CPU max MHz" (the
    turbo limit), else, from the first "cpu MHz" of `/proc/cpuinfo` (what a virtual
    machine reports: the nominal clock), the highest boost of the microarchitecture.

    Returns:
        A dict: `model` (the name), `vendor` (`vendor_id`), `family`, `model_number`,
        `microarchitecture` (its name in `MICROARCHITECTURES`, or None), `flags` (the
        SIMD/AMX ones, sorted), `cores`, `mhz` and `mhz_source` (the peak's clock),
        `nominal_mhz`, and `all_flags` (every flag, for `flops_per_cycle`).

    Example:
    >>> cpu_info()["cores"] >= 1
    True
    """
    model, flags, mhz, source = platform.processor() or platform.machine(), [], None, None
    ids, nominal = {}, None
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model_number"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not flags:
                    model = value.strip()
                elif key in keys and keys[key] not in ids:
                    ids[keys[key]] = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                elif key == "cpu MHz" and nominal is None:
                    nominal = float(value)
    except (OSError, ValueError):
        pass
    if nominal:
        mhz, source = nominal, NOMINAL_SOURCE
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            mhz, source = int(f.read()) / 1000.0, _MAX_CLOCK_SOURCES[0]  # kHz
    except (OSError, ValueError):
        pass
    lscpu = {"Vendor ID": "vendor", "CPU family": "family", "Model": "model_number"}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in lscpu and lscpu[key] not in ids:
                ids[lscpu[key]] = value.strip()
            elif (key == "CPU max MHz" and source != _MAX_CLOCK_SOURCES[0]
                    and float(value) > 0):
                mhz, source = float(value), _MAX_CLOCK_SOURCES[1]
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    info = {"model": model, "vendor": ids.get("vendor")}
    for key in ("family", "model_number"):
        try:
            info[key] = int(ids[key])
        except (KeyError, ValueError):
            info[key] = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")) or f == "f16c")
    info.update(flags=isa, cores=int(cores or 1), nominal_mhz=nominal, all_flags=flags,
                mhz=mhz, mhz_source=source)
    arch = microarchitecture(info)
    info["microarchitecture"] = arch.name if arch is not None else None
    info["mhz"], info["mhz_source"] = peak_clock(info)
    return info


def peak_gflops(precision, info=None):
    """This CPU's peak GFLOP/s in `precision`: cores x clock (GHz) x `flops_per_cycle`.

    Clock and microarchitecture as `peak_clock` and `microarchitecture` find them, so a
    results file's `"cpu"` record gives its peak with the current table.

    Args:
        precision: `"fp32"`, `"bf16"`, `"fp16"` or `"int8"`.
        info: `cpu_info()` (or a dict with `cores`, `mhz`, `mhz_source`, `all_flags`
            and, for the microarchitecture, `vendor`, `family`, `model_number`); None
            reads it.

    Returns:
        The peak, or None where the clock is unknown.

    Example:
    >>> round(peak_gflops("fp32", {"cores": 2, "mhz": 2445.4, "all_flags": ["avx2", "fma"]}), 1)
    156.5
    """
    info = cpu_info() if info is None else info
    mhz, _ = peak_clock(info)
    if not mhz:
        return None
    return info["cores"] * mhz / 1000.0 * flops_per_cycle(
        info.get("all_flags") or info.get("flags", ()), precision, microarchitecture(info))


def peak_formula(info):
    """How the peak of `info` is made, in words, for the results (`"peak_formula"`).

    Example:
    >>> peak_formula({"cores": 2, "mhz": 2000.0, "all_flags": ["avx2", "fma"]})
    'cores x clock x FLOP/cycle/core (ISA flags, 2 FMA units: fp32 32, bf16 32, fp16 32, int8 64)'
    """
    arch = microarchitecture(info)
    flags = info.get("all_flags") or info.get("flags", ())
    figures = ", ".join(f"{p} {flops_per_cycle(flags, p, arch)}" for p in BENCHMARK_PRECISIONS)
    what = "ISA flags, 2 FMA units"
    if arch is not None:
        what = arch.name if _matches(arch, info) else f"{arch.name}, told by the ISA flags"
    return f"cores x clock x FLOP/cycle/core ({what}: {figures})"


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
