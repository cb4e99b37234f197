import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from keras_fastfcn import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import report  # noqa: E402  (benchmarks/report.py)


def _row(upsampler, latency, gflops, peak, growth):
    return {"head": "encnet", "encoder": "resnet50", "upsampler": upsampler,
            "latency_s": latency, "fps": 1 / latency, "gflops": gflops, "xla": False,
            "params": {"encoder": 23.6e6, "upsampler": 19.7e6 if upsampler == "jpu" else 0,
                       "head": 1.6e6},
            "params_total": 45e6, "train_peak_rss_gb": peak, "train_step_growth_gb": growth}


def test_ratios_and_report(tmp_path):
    results = [_row("jpu", 0.5, 200.0, 3.0, 1.8), _row("os8", 1.5, 500.0, 4.0, 2.4),
               {"head": "encnet", "encoder": "resnet50", "upsampler": "os16", "error": "boom"}]
    (ratio,) = benchmark.ratios(results)
    assert ratio["upsampler"] == "jpu"
    assert ratio["speedup"] == pytest.approx(3.0)
    assert ratio["flops_ratio"] == pytest.approx(0.4)
    assert ratio["memory_ratio"] == pytest.approx(0.75)
    assert ratio["step_growth_ratio"] == pytest.approx(0.75)
    benchmark.write_results(results, str(tmp_path), "test machine", 512, 480, 2)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["machine"] == "test machine" and len(payload["results"]) == 3
    assert report.main([str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| encnet | resnet50 | jpu | fp32 | 0.500 | 2.00 | - | 200 |" in text
    assert "3.00x" in text and "error: boom" in text
    with Image.open(tmp_path / "chart.png") as chart:
        assert chart.size[0] > 300 and chart.size[1] > 300


def test_report_names_the_int8_runtime(tmp_path):
    """An int8 row's last column names the runtime kept and the other one's latency;
    int8 rows pair with int8 rows only."""
    int8 = {"precision": "int8", "runtime": "tflite", "int8_runtime": "auto"}
    results = [dict(_row("jpu", 0.1, 112.0, 3.0, 1.8), **int8,
                    runtime_latency_s={"tflite": 0.1, "onnx": 0.176}),
               dict(_row("os8", 0.156, 279.0, 4.0, 2.4), **int8,
                    runtime_latency_s={"tflite": 0.156},
                    runtime_errors={"onnx": "RuntimeError: no onnxruntime"}),
               _row("os8", 0.8, 279.0, 4.0, 2.4)]
    (ratio,) = benchmark.ratios(results)
    assert ratio["precision"] == "int8" and ratio["speedup"] == pytest.approx(1.56)
    benchmark.write_results(results, str(tmp_path), "test machine", 512, 480, 2)
    assert report.main([str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| jpu | int8 | 0.100 |" in text and "| TFLite (ONNX Runtime 0.176 s) |" in text
    assert "| TFLite (ONNX Runtime failed: RuntimeError: no onnxruntime) |" in text
    assert "| 1.56x (TFLite) |" in text
    assert "| os8 | fp32 | 0.800 |" in text and text.count("| off |") == 1


def test_machine_files_keep_the_newest_row_and_render_one_section_each(tmp_path):
    """`report.py --add` puts a run's rows into its machine kind's file (a newer row
    replaces the older one, whose command the file keeps), refuses another CPU, and
    the machine files render as one section and one table per machine kind."""
    cpu = {"model": "Test CPU", "flags": ["avx2", "fma"], "cores": 2, "mhz": 2000.0,
           "mhz_source": "test"}
    machines = tmp_path / "results"
    for name, (jpu, os8) in (("a", (0.5, 1.5)), ("b", (0.4, 1.6))):
        rows = [_row("jpu", jpu, 200.0, 3.0, 1.8), _row("os8", os8, 500.0, 4.0, 2.4)]
        benchmark.write_results(rows, str(tmp_path / name), "test machine", 512, 480, 2, cpu)
        assert report.main(["--add", str(tmp_path / name / "results.json"), "--to",
                            str(machines / "test.json"), "--command", f"run {name}",
                            "--date", f"2026-01-0{1 + (name == 'b')}", "--kind", "Test kind",
                            "--note", "a note"]) == 0
    payload = json.loads((machines / "test.json").read_text())
    assert [r["command"] for r in payload["runs"]] == ["run b"]
    assert {r["latency_s"] for r in payload["results"]} == {0.4, 1.6}
    assert [r["speedup"] for r in payload["ratios"]] == [pytest.approx(4.0)]
    assert "`run a` (2026-01-01)" in payload["replaced"][0]
    other = dict(cpu, flags=["avx512f"])
    benchmark.write_results([_row("jpu", 0.1, 200.0, 3.0, 1.8)], str(tmp_path / "c"),
                            "test machine", 512, 480, 2, other)
    with pytest.raises(SystemExit, match="another machine kind"):
        report.add_run(str(tmp_path / "c" / "results.json"), str(machines / "test.json"), "c")
    report.add_run(str(tmp_path / "c" / "results.json"), str(machines / "other.json"), "run c",
                   "2026-01-03", "Other kind")
    assert report.main([str(machines / "test.json"), str(machines / "other.json")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.index("## Other kind (2026-01-03)") < text.index("## Test kind (2026-01-02)")
    assert "- 1, 2026-01-03: `run c`" in text and "- 2, 2026-01-02: `run b`" in text
    assert "| encnet | resnet50 | jpu | fp32 | 0.400 |" in text and "| 4.00x | 2 |" in text
    assert "a note" in text and "run a" not in text  # older runs stay in the file
    assert (tmp_path / "chart.png").exists()


def test_int8_rows_run_their_own_child_and_compare_like_with_like(monkeypatch):
    """int8 rows come from `measure_int8_speed` (no training memory, no PyTorch
    anchor), are kept on resume only with the same --int8-runtime, whatever --freeze;
    the JPU/OS8 ratio of int8 rows divides latencies of one runtime."""
    calls = []

    def child(kind, config, options):
        calls.append((kind, config["upsampler"], options))
        fast = {"jpu": {"tflite": 0.08, "onnx": 0.15}, "os8": {"tflite": 0.20, "onnx": 0.18}}
        lat = fast[config["upsampler"]]
        best = min(lat, key=lat.get)
        return {"latency_s": lat[best], "fps": 1 / lat[best], "runtime": best,
                "runtime_latency_s": lat, "int8_runtime": options["runtime"],
                "gflops": 1.0, "params": {}, "params_total": 0, "throughput_ips": 5.0,
                "throughput_batch": 8}

    monkeypatch.setattr(benchmark.run, "_child", child)
    cpu = {"cores": 2, "mhz": 2000.0, "all_flags": ["avx2", "fma", "avx512f", "avx512_vnni"]}
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"],
                                    precisions=("int8",), cpu=cpu, log=lambda text: None)
    assert [(kind, up) for kind, up, _ in calls] == [("measure_int8_speed", "jpu"),
                                                    ("measure_int8_speed", "os8")]
    assert calls[0][2]["runtime"] == "auto" and calls[0][2]["threads"] == 2
    assert "freeze" not in calls[0][2] and "xla" not in calls[0][2]
    assert "torch_skipped" in rows[0] and "train_peak_rss_gb" not in rows[0]
    assert rows[0]["peak_gflops_s"] == pytest.approx(2 * 2.0 * 256)
    (ratio,) = benchmark.ratios(rows)
    # JPU kept TFLite (0.08 s), OS8 ONNX Runtime (0.18 s): the ratio is TFLite's 0.20/0.08.
    assert ratio["runtime"] == "tflite" and ratio["speedup"] == pytest.approx(2.5)
    assert ratio["runtime_speedup"]["onnx"] == pytest.approx(1.2)
    assert "throughput_speedup" not in ratio  # measured on two different runtimes
    calls.clear()
    benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], precisions=("int8",),
                             cpu=cpu, done=rows, freeze=True, log=lambda text: None)
    assert calls == []  # --freeze does not concern exports: the int8 rows are kept
    benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], precisions=("int8",),
                             cpu=cpu, done=rows, int8_runtime="onnx", log=lambda text: None)
    assert [(up, options["runtime"]) for _, up, options in calls] == [("jpu", "onnx")]


def test_ratios_per_precision_old_rows_are_fp32():
    """Rows written before the precision axis (no "precision") pair with fp32 rows; bf16
    rows pair only with bf16 rows."""
    old_jpu, old_os8 = _row("jpu", 0.5, 200.0, 3.0, 1.8), _row("os8", 1.5, 500.0, 4.0, 2.4)
    bf16_jpu = dict(_row("jpu", 0.25, 200.0, 3.0, 1.8), precision="bf16")
    bf16_os8 = dict(_row("os8", 1.0, 500.0, 4.0, 2.4), precision="bf16",
                    torch_latency_s=2.0)
    bf16_jpu["torch_latency_s"] = 1.0
    got = {r["precision"]: r for r in benchmark.ratios([old_jpu, old_os8, bf16_jpu, bf16_os8])}
    assert got["fp32"]["speedup"] == pytest.approx(3.0)
    assert got["bf16"]["speedup"] == pytest.approx(4.0)
    assert got["bf16"]["torch_speedup"] == pytest.approx(2.0)
    assert benchmark.row_precision(old_jpu) == "fp32"


@pytest.mark.parametrize("flags, precision, expected", [
    ({"sse4_2"}, "fp32", 16),
    ({"avx2"}, "fp32", 16),                      # AVX2 without FMA: no fused multiply-add
    ({"avx2", "fma"}, "fp32", 32),
    ({"avx2", "fma"}, "bf16", 32),               # no bf16 hardware: the fp32 figure
    ({"avx2", "fma"}, "fp16", 32),
    ({"avx2", "fma", "avx512f"}, "fp32", 64),
    ({"avx2", "fma", "avx512f", "avx512_bf16"}, "bf16", 128),
    ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16", 1024),
    ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}, "fp16", 64),
    ({"avx2", "fma", "avx512f", "avx512_fp16"}, "fp16", 128),
    ({"avx2", "fma", "avx512f", "avx512_fp16", "amx_fp16"}, "fp16", 1024),
    ({"avx2", "fma"}, "int8", 64),                # VPMADDUBSW: twice the fp32 figure
    ({"avx2", "fma", "avx_vnni"}, "int8", 128),
    ({"avx2", "fma", "avx512f", "avx512_vnni"}, "int8", 256),
    ({"avx2", "fma", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}, "int8", 2048),
    (["AVX2", "FMA"], "fp32", 32),               # any iterable, any case
])
def test_flops_per_cycle(flags, precision, expected):
    assert benchmark.flops_per_cycle(flags, precision) == expected


_SKX = ["avx2", "fma", "avx512f", "avx512_vnni"]
_SPR = _SKX + ["avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "avx_vnni"]
_ZEN4 = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"]


@pytest.mark.parametrize("vendor, family, model, flags, name, expected", [
    # (fp32, bf16, fp16, int8) FLOP/cycle/core
    ("GenuineIntel", 6, 0x55, _SKX, "Intel Skylake-SP / Cascade Lake / Cooper Lake",
     (64, 64, 64, 256)),
    ("GenuineIntel", 6, 0x6A, _SKX, "Intel Ice Lake-SP", (64, 64, 64, 256)),
    ("GenuineIntel", 6, 0x8F, _SPR, "Intel Sapphire Rapids (AMX)", (64, 1024, 128, 2048)),
    ("GenuineIntel", 6, 0xCF, _SPR, "Intel Emerald Rapids (AMX)", (64, 1024, 128, 2048)),
    ("GenuineIntel", 6, 0xAD, _SPR + ["amx_fp16"], "Intel Granite Rapids (AMX-FP16)",
     (64, 1024, 1024, 2048)),
    # A model the table lacks, with AMX (a hypervisor's number): told by the flags.
    ("GenuineIntel", 6, 167, _SPR, "Intel Sapphire Rapids (AMX)", (64, 1024, 128, 2048)),
    ("AuthenticAMD", 0x17, 0x01, ["avx2", "fma"], "AMD Zen / Zen+", (16, 16, 16, 32)),
    ("AuthenticAMD", 0x17, 0x31, ["avx2", "fma"], "AMD Zen 2", (32, 32, 32, 64)),
    ("AuthenticAMD", 0x19, 0x01, ["avx2", "fma"], "AMD Zen 3", (32, 32, 32, 64)),
    ("AuthenticAMD", 0x19, 0x11, _ZEN4, "AMD Zen 4", (32, 64, 32, 128)),
    ("AuthenticAMD", 0x19, 0xA0, _ZEN4, "AMD Zen 4", (32, 64, 32, 128)),
    ("AuthenticAMD", 0x19, 0x61, _ZEN4, "AMD Zen 4 (client die)", (32, 64, 32, 128)),
    ("AuthenticAMD", 0x19, 0x11, ["avx2", "fma", "avx512f"], "AMD Zen 4",
     (32, 32, 32, 64)),  # AVX512-BF16 / VNNI masked by the hypervisor: not used
    ("AuthenticAMD", 0x1A, 0x02, _ZEN4 + ["avx_vnni"], "AMD Zen 5", (64, 128, 64, 256)),
    ("AuthenticAMD", 0x1A, 0x44, _ZEN4 + ["avx_vnni"], "AMD Zen 5 (client die)",
     (64, 128, 64, 256)),
    ("AuthenticAMD", 0x1A, 0x24, _ZEN4 + ["avx_vnni"], "AMD Zen 5 (256-bit datapath)",
     (32, 64, 32, 128)),
    ("CentaurHauls", 7, 0x3B, ["avx2", "fma"], None, (32, 32, 32, 64)),  # flags only
])
def test_flops_per_cycle_per_microarchitecture(vendor, family, model, flags, name, expected):
    info = {"vendor": vendor, "family": family, "model_number": model, "all_flags": flags}
    arch = benchmark.cpu.microarchitecture(info)
    assert (arch.name if arch else None) == name
    assert tuple(benchmark.flops_per_cycle(flags, p, arch)
                 for p in ("fp32", "bf16", "fp16", "int8")) == expected


def test_peak_clock_is_a_maximum_never_the_nominal_clock_of_a_known_cpu():
    """A VM reports only its nominal clock; turbo runs faster, so the peak takes the
    highest boost of the microarchitecture's parts (of its EPYC parts for an EPYC)."""
    nominal = {"model": "AMD EPYC", "vendor": "AuthenticAMD", "family": 0x19,
               "model_number": 0x11, "cores": 2, "mhz": 2596.1,
               "mhz_source": "/proc/cpuinfo cpu MHz", "all_flags": _ZEN4}
    mhz, source = benchmark.cpu.peak_clock(nominal)
    assert mhz == 4400.0 and "AMD Zen 4 EPYC parts" in source and "2596" in source
    # This EPYC measured 186 GFLOP/s fp32, 349 bf16, 693 G int8 ops/s: above its
    # nominal-clock peaks (166, 333, 665), under these.
    for precision, measured in (("fp32", 186), ("bf16", 349), ("int8", 693)):
        assert measured < benchmark.peak_gflops(precision, nominal)
    assert benchmark.peak_gflops("fp32", nominal) == pytest.approx(2 * 4.4 * 32)
    ryzen = dict(nominal, model="AMD Ryzen Threadripper 7960X")
    assert benchmark.cpu.peak_clock(ryzen)[0] == 5300.0
    turbo = dict(nominal, mhz=3700.0, mhz_source="lscpu CPU max MHz")
    assert benchmark.cpu.peak_clock(turbo) == (3700.0, "lscpu CPU max MHz")
    unknown = dict(nominal, vendor="CentaurHauls", model="VIA", all_flags=["avx2", "fma"])
    mhz, source = benchmark.cpu.peak_clock(unknown)
    assert mhz == 2596.1 and "nominal clock" in source and "over 100%" in source
    # Written before family/model were recorded: told by the vendor and flags.
    old = {"model": "Intel(R) Xeon(R) Processor", "cores": 2, "mhz": 2599.998,
           "mhz_source": "/proc/cpuinfo cpu MHz", "flags": _SPR}
    assert benchmark.peak_gflops("fp32", old) == pytest.approx(2 * 4.8 * 64)
    assert "told by the ISA flags" in benchmark.cpu.peak_formula(old)


def test_recorded_results_render_under_100_percent_of_peak(tmp_path):
    """RESULTS.md works out each row's share of peak again with the current table and
    clock: no stored row may exceed its CPU's peak."""
    import glob
    import re

    files = sorted(glob.glob(os.path.join(REPO, "benchmarks", "results", "*.json")))
    assert report.main(files + ["--output", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    shares = [float(v) for v in re.findall(r"\(([0-9.]+)%\)", text)]
    assert shares and max(shares) <= 100.0, max(shares)


def test_peak_gflops():
    spr = {"cores": 2, "mhz": 3000.0,
           "all_flags": ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]}
    assert benchmark.peak_gflops("fp32", spr) == pytest.approx(2 * 3.0 * 64)
    assert benchmark.peak_gflops("bf16", spr) == pytest.approx(2 * 3.0 * 1024)
    assert benchmark.peak_gflops("fp32", {"cores": 4, "mhz": None, "all_flags": []}) is None
    assert benchmark.peak_gflops("int8", dict(spr, all_flags=spr["all_flags"] + [
        "avx512_vnni", "amx_int8"])) == pytest.approx(2 * 3.0 * 2048)
    with pytest.raises(ValueError, match="Unknown precision 'fp64'"):
        benchmark.flops_per_cycle({"avx2"}, "fp64")
    info = benchmark.cpu_info()
    assert info["cores"] >= 1 and isinstance(info["flags"], list)
    assert {"vendor", "family", "model_number", "microarchitecture", "nominal_mhz"} <= set(info)


def test_cli_rejects_unknown_names():
    from keras_fastfcn import cli

    assert cli.main(["benchmark", "--heads", "unet", "--output", "/tmp/kf_never"]) == 1
    assert cli.main(["benchmark", "--precision", "fp32,fp64", "--output", "/tmp/kf_never"]) == 1
    assert cli.main(["benchmark", "--precision", "int4", "--output", "/tmp/kf_never"]) == 1
    with pytest.raises(ValueError, match="Unknown int8 runtime 'tensorrt'"):
        benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], precisions=("int8",),
                                 int8_runtime="tensorrt", log=lambda text: None)


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    # fp32 only: the precision axis is checked below, in this process (a second
    # precision doubled this run: 150 s of CI on 2 cores).
    proc = subprocess.run([sys.executable, "-m", "keras_fastfcn", "benchmark", "--quick",
                           "--no-memory", "--precision", "fp32", "--throughput-batch", "2",
                           "--no-torch", "--xla", "off", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["upsampler"], r["precision"]): r for r in payload["results"]}
    assert set(rows) == {("jpu", "fp32"), ("os8", "fp32")}
    for row in rows.values():
        # `--no-memory`: the training-memory children would double the CI time.
        assert row["latency_s"] > 0 and row["gflops"] > 0 and "train_peak_rss_gb" not in row
        assert row["xla"] is False  # `--xla off`: the graph without XLA only (CI time)
        assert row["throughput_batch"] == 2 and row["throughput_ips"] > 0
        assert row["achieved_gflops_s"] == pytest.approx(row["gflops"] / row["latency_s"])
        assert 0 < row["peak_fraction"] and row["peak_gflops_s"] > 0
        # `--no-torch`: the anchor is tested below (it doubles the run on a small CPU).
        assert "torch_latency_s" not in row and "torch_skipped" not in row
    # JPU at stride 8 costs well under the dilated encoder.
    assert rows["jpu", "fp32"]["gflops"] < 0.6 * rows["os8", "fp32"]["gflops"]
    assert {r["precision"] for r in payload["ratios"]} == {"fp32"}
    cpu = payload["cpu"]
    assert cpu["model"] and cpu["cores"] >= 1 and set(cpu["peak_gflops_s"]) == {
        "fp32", "bf16", "fp16", "int8"}
    assert "fp32 vs os8" in proc.stdout
    assert "img/s at batch 2" in proc.stdout and "GFLOP/s" in proc.stdout
    assert report.main([str(tmp_path / "results.json")]) == 0
    assert "| fp32 |" in (tmp_path / "RESULTS.md").read_text()


def test_measure_speed_under_a_mixed_precision_policy(monkeypatch, tiny_backbone):
    """A 16-bit row, frozen: the model rebuilt under the policy, logits cast back to
    float32, the weights frozen into the graph, the FLOPs passed in (counted once per
    configuration) kept. fp16, not bf16: the same code
    path, and CPUs without AVX512-BF16 emulate bf16 slowly. The small test encoder
    stands in for ResNet-50 (the row's machinery is the point)."""
    build = benchmark._build
    monkeypatch.setattr(benchmark.timing, "_build", lambda head, encoder, up, n: build(
        head, tiny_backbone, up, n))
    row = benchmark.measure_speed("fcn", "resnet50", "jpu", size=64, num_classes=5, warmup=1,
                                  min_runs=1, min_seconds=0.01, precision="fp16",
                                  throughput_batch=2, xla="off", gflops=12.5, freeze=True)
    assert row["precision"] == "fp16" and row["gflops"] == 12.5 and row["xla"] is False
    assert row["frozen"] is True  # the weights frozen into the timed graphs (--freeze)
    assert row["latency_s"] > 0 and row["throughput_ips"] > 0
    with pytest.raises(ValueError, match="int8"):
        benchmark.measure_speed("fcn", "resnet50", "jpu", precision="int8")


def test_precision_axis_counts_flops_once_per_configuration(monkeypatch):
    calls = []

    def child(kind, config, options):
        calls.append((config["upsampler"], options["precision"], options["gflops"]))
        return {"latency_s": 1.0 if config["upsampler"] == "jpu" else 2.0, "fps": 1.0,
                "gflops": 10.0 if config["upsampler"] == "jpu" else 25.0, "params": {},
                "params_total": 0}

    monkeypatch.setattr(benchmark.run, "_child", child)
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], memory=False,
                                    precisions=("fp32", "fp16"), torch_anchor=False,
                                    log=lambda text: None)
    # The first precision of a configuration counts them; the next ones reuse the count.
    assert calls == [("jpu", "fp32", None), ("jpu", "fp16", 10.0),
                     ("os8", "fp32", None), ("os8", "fp16", 25.0)]
    ratios = {r["precision"]: r for r in benchmark.ratios(rows)}
    assert set(ratios) == {"fp32", "fp16"} and ratios["fp16"]["speedup"] == pytest.approx(2.0)


def test_resume_keeps_finished_configurations(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark.run, "_child",
                        lambda kind, config, options: calls.append((kind, config)) or
                        {"latency_s": 1.0, "fps": 1.0, "gflops": 1.0, "params": {},
                         "params_total": 0, "train_peak_rss_gb": 1.0,
                         "train_step_growth_gb": 0.5})
    done = [_row("jpu", 0.5, 200.0, 3.0, 1.8),
            {"head": "encnet", "encoder": "resnet50", "upsampler": "os8", "error": "boom"}]
    snapshots = []
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os8"], done=done,
                                    log=lambda text: None, torch_anchor=False,
                                    on_result=lambda r: snapshots.append(len(r)))
    # The finished JPU row (written before the precision axis: fp32) is kept; the failed
    # os8 row is measured again (speed + memory).
    assert rows[0] is done[0]
    assert [kind for kind, _ in calls] == ["measure_speed", "measure_train_memory"]
    assert calls[0][1]["upsampler"] == "os8" and rows[1]["latency_s"] == 1.0
    assert snapshots == [1, 2]
    # A --freeze run does not keep rows timed without it (nor the other way round).
    calls.clear()
    benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], done=done, memory=False,
                             log=lambda text: None, torch_anchor=False, freeze=True)
    assert [kind for kind, _ in calls] == ["measure_speed"]


def test_torch_anchor_rows(monkeypatch):
    """The anchor is timed in a child per row where the official code has the model and
    the CPU has the precision; otherwise the row says why it is missing."""
    calls = []

    def child(kind, config, options):
        calls.append((kind, options.get("precision")))
        if kind == "measure_torch":
            return {"latency_s": 2.0, "threads": options["threads"], "torch_version": "x"}
        return {"latency_s": 1.0, "fps": 1.0, "gflops": 10.0, "params": {},
                "params_total": 0}

    monkeypatch.setattr(benchmark.run, "_child", child)
    monkeypatch.setattr(benchmark.torch_anchor, "torch_reference_path", lambda: __file__)
    pytest.importorskip("torch")
    avx2 = {"cores": 2, "mhz": 2000.0, "all_flags": ["avx2", "fma"]}
    rows = benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu", "os16"], memory=False,
                                    precisions=("fp32", "bf16"), cpu=avx2,
                                    log=lambda text: None)
    by = {(r["upsampler"], r["precision"]): r for r in rows}
    assert by["jpu", "fp32"]["torch_latency_s"] == 2.0
    assert by["jpu", "fp32"]["speedup_vs_torch"] == pytest.approx(2.0)
    assert by["jpu", "fp32"]["torch_threads"] == 2
    assert "no bf16 hardware" in by["jpu", "bf16"]["torch_skipped"]
    assert "no os16 model" in by["os16", "fp32"]["torch_skipped"]
    assert by["jpu", "fp32"]["achieved_gflops_s"] == pytest.approx(10.0)
    assert by["jpu", "fp32"]["peak_gflops_s"] == pytest.approx(2 * 2.0 * 32)
    assert calls.count(("measure_torch", "fp32")) == 1 and ("measure_torch", "bf16") not in calls
    amx = dict(avx2, all_flags=["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"])
    calls.clear()
    benchmark.run_benchmarks(["encnet"], ["resnet50"], ["jpu"], memory=False,
                             precisions=("bf16",), cpu=amx, log=lambda text: None)
    assert ("measure_torch", "bf16") in calls


def test_measure_torch_small():
    """The official structure times at 64 px (fp32, in this process)."""
    pytest.importorskip("torch")
    out = benchmark.measure_torch("fcn", "resnet50", "os8", size=64, num_classes=5, warmup=1,
                                  min_runs=1, min_seconds=0.01, threads=1)
    assert out["latency_s"] > 0 and out["threads"] == 1


def test_benchmark_models_have_trained_like_batchnorm():
    """Fresh BatchNorms fold to zero biases, which grappler drops together with the
    Conv + BiasAdd + ReLU fusion a trained model gets: the benchmark gives them
    statistics like a trained model's, so the folded convs carry biases."""
    import keras
    import numpy as np

    from keras_fastfcn.inference.fold import fold_batchnorm

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, keras.layers.ReLU()(x))
    assert benchmark._trained_like_normalization(model, seed=1) is model
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    assert np.all((gamma >= 0.5) & (gamma <= 1.0)) and np.all((var >= 0.8) & (var <= 1.5))
    assert np.abs(beta).max() > 0 and np.abs(mean).max() > 0
    folded = fold_batchnorm(model)
    _, bias = folded.get_layer("conv").get_weights()
    assert np.abs(bias).min() > 0
    again = benchmark._trained_like_normalization(keras.models.clone_model(model), seed=1)
    assert np.array_equal(again.get_layer("bn").get_weights()[1], beta)  # seeded


def test_measure_int8_speed_times_both_runtimes(monkeypatch, tiny_backbone):
    """int8 rows: the configuration exported to TFLite and ONNX static int8, each timed
    through the runtime `predict --model FILE` uses, the faster kept; when no runtime
    runs, the error names each one's reason."""
    pytest.importorskip("onnxruntime")
    build = benchmark._build
    monkeypatch.setattr(benchmark.timing, "_build", lambda head, encoder, up, n: build(
        head, tiny_backbone, up, n))
    row = benchmark.measure_int8_speed("fcn", "resnet50", "jpu", size=64, num_classes=5,
                                       warmup=1, min_runs=1, min_seconds=0.01,
                                       throughput_batch=2, gflops=1.5, threads=1)
    assert row["precision"] == "int8" and row["int8_runtime"] == "auto"
    assert set(row["runtime_latency_s"]) == set(row["export_s"]) == {"tflite", "onnx"}
    assert row["latency_s"] == min(row["runtime_latency_s"].values())
    assert row["runtime"] == min(row["runtime_latency_s"], key=row["runtime_latency_s"].get)
    assert row["throughput_batch"] == 2 and row["throughput_ips"] > 0
    assert row["gflops"] == 1.5 and row["params"]["upsampler"] > 0
    assert "runtime_errors" not in row

    from keras_fastfcn.serving import onnx

    def no_onnx(quantize=False):
        raise RuntimeError("ONNX export needs tf2onnx and onnxruntime")

    monkeypatch.setattr(onnx, "require_onnx", no_onnx)
    # (With "auto" the TFLite row would stand and name the ONNX error in
    # `runtime_errors`; not run here: a third conversion is 25 s of CI.)
    with pytest.raises(RuntimeError, match="no int8 runtime ran: onnx: RuntimeError"):
        benchmark.measure_int8_speed("fcn", "resnet50", "jpu", size=64, num_classes=5,
                                     gflops=1.5, runtime="onnx")


def test_report_puts_openvino_beside_each_row(tmp_path):
    """`--openvino` rows: the OpenVINO latency, what it ran in, which is faster and its
    throughput; a failed export names its error; rows without it show '-'. The results
    file records the CPU's identity, so the peak can be worked out again later."""
    ov = {"openvino_latency_s": 0.8, "openvino_inference_precision": "f32",
          "openvino_throughput_ips": 1.5, "openvino_throughput_batch": 8}
    results = [dict(_row("jpu", 0.5, 112.0, 3.0, 1.8), **ov),
               dict(_row("os8", 1.6, 279.0, 4.0, 2.4), **ov),
               dict(_row("jpu", 0.2, 112.0, 3.0, 1.8), precision="bf16",
                    openvino_error="RuntimeError: cannot compile")]
    cpu = benchmark.cpu_info()
    benchmark.write_results(results, str(tmp_path), "test machine", 512, 480, 2, cpu)
    payload = json.loads((tmp_path / "results.json").read_text())
    for key in ("vendor", "family", "model_number", "microarchitecture"):
        assert payload["cpu"][key] == cpu[key]
    assert payload["cpu"]["peak_formula"] == benchmark.cpu.peak_formula(cpu)
    assert report.main([str(tmp_path / "results.json")]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 0.800 (runs f32; ours 1.60x faster); 1.50 img/s (batch 8) |" in text
    assert "| 0.800 (runs f32; OpenVINO 2.00x faster); 1.50 img/s (batch 8) |" in text
    assert "| error: RuntimeError: cannot compile |" in text
